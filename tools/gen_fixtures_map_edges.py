#!/usr/bin/env python3
"""Golden answers of bitsandbytes 0.50.2 for the map constructors' edge
arguments: for every combination below, either the map bitsandbytes returns
(float32 little-endian bytes, base64) or the exception it raises.

  /path/to/venv-with-bitsandbytes/bin/python tools/gen_fixtures_map_edges.py

writes Tests/golden/map_edges.json (bindings/python/tests/test_map_edges.py
reads it). As tools/gen_fixtures.py, runs torch with ATEN_CPU_CAPABILITY=default:
the scalar torch.linspace, which is qembed's documented definition."""
import base64
import json
import os
import sys

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402


def outcome(fn, args):
    try:
        code = getattr(F, fn)(**args)
    except Exception as e:  # what bitsandbytes raises, by class name
        return {"raises": type(e).__name__, "message": str(e)[:200]}
    a = code.to(torch.float32).numpy()
    return {"length": int(a.size), "code": base64.b64encode(a.astype("<f4").tobytes()).decode(),
            "finite": bool(np.isfinite(a).all())}


def main():
    cases = []
    for signed in (True, False):
        for total in range(1, 10):
            for meb in range(-1, 11):
                cases.append(("create_dynamic_map", dict(signed=signed, max_exponent_bits=meb, total_bits=total)))
        for total in range(0, 10):
            for add_zero in (True, False):
                cases.append(("create_linear_map", dict(signed=signed, total_bits=total, add_zero=add_zero)))
        for total in range(1, 10):
            for e in range(0, 9):
                for p in range(0, 9):
                    if e + p + int(signed) in (total, total + 1):  # the equal ones and a mismatched neighbour
                        cases.append(("create_fp8_map", dict(signed=signed, exponent_bits=e, precision_bits=p, total_bits=total)))
    for offset in (0.5, 0.51, 0.75, 0.9677083, 0.99, 0.9999, 1.0):
        for extra in (True, False):
            cases.append(("create_normal_map", dict(offset=offset, use_extra_value=extra)))
    out = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "cases": []}
    for fn, args in cases:
        out["cases"].append({"fn": fn, "args": args, **outcome(fn, args)})
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "golden", "map_edges.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    acc = sum(1 for c in out["cases"] if "code" in c)
    print(f"{len(out['cases'])} cases, {acc} accepted by bitsandbytes {bitsandbytes.__version__}; wrote {path}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
