"""The map constructors at the edges of their arguments, against what
bitsandbytes 0.50.2 does with the same arguments (Tests/golden/map_edges.json,
from tools/gen_fixtures_map_edges.py): every map it returns with 256 entries
is returned bit for bit; every argument it refuses is refused with a
ValueError. Deliberate differences (docs/CONFORMANCE.md): maps bitsandbytes
returns with other than 256 entries (total_bits 9) and non-finite maps
(create_normal_map at offset 0.5 or 1) are refused."""
import base64
import json
import os

import numpy as np
import pytest

import qembed.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "..", "..", "Tests", "golden", "map_edges.json")
CASES = json.load(open(GOLDEN))["cases"]


def case_id(c):
    return c["fn"] + "(" + ",".join(f"{k}={v}" for k, v in c["args"].items()) + ")"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_map_edge(case):
    fn = getattr(F, case["fn"])
    if "code" in case and case["length"] == 256 and case["finite"]:
        want = np.frombuffer(base64.b64decode(case["code"]), "<f4")
        got = fn(**case["args"])
        assert got.dtype == np.float32 and got.shape == (256,)
        differ = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert differ.size == 0, f"{differ.size} entries differ, first at {differ[:5]}: {got[differ[:5]]} vs {want[differ[:5]]}"
    else:
        why = case.get("raises") or ("a %d-entry map" % case["length"] if case["length"] != 256 else "a non-finite map")
        with pytest.raises(ValueError) as err:
            fn(**case["args"])
        msg = str(err.value)
        assert any(name in msg for name in ("total_bits", "max_exponent_bits", "exponent_bits", "offset")), \
            f"bitsandbytes: {why}; qembed's message names no argument: {msg}"


def test_the_audit_covers_the_reported_case():
    # issue: create_dynamic_map(True, 8, 8) was refused; bitsandbytes' tests use it
    assert any(c["fn"] == "create_dynamic_map" and c["args"] == {"signed": True, "max_exponent_bits": 8, "total_bits": 8}
               and "code" in c for c in CASES)
    assert np.array_equal(F.create_dynamic_map(True, 8, 8), F.create_dynamic_map(True, 7, 8))
