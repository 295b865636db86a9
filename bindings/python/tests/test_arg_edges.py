"""quantize_blockwise / quantize_4bit at the edges of their arguments,
against what bitsandbytes 0.50.2 does on the CPU with the same calls
(Tests/golden/arg_edges.json, from tools/gen_fixtures_arg_edges.py):
blocksizes at and past the documented ranges, f32/f16/bf16 inputs, every
quant_type and quant_storage, out= buffers. What bitsandbytes accepts,
qembed accepts with the same output dtype and shape and the same statistics
(absmax exactly; codes by qembed's exact rule, which bitsandbytes' CPU kernel
approximates: a few percent of its codes are not the nearest, so no element
may be reconstructed worse than bitsandbytes does); what it refuses, qembed refuses with a ValueError."""
import base64
import json
import os

import numpy as np
import pytest

import qembed.functional as F

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "Tests", "golden", "arg_edges.json")
CASES = json.load(open(GOLDEN))["cases"]
try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:
    BF16 = None
NP = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16, "uint8": np.uint8, "int8": np.int8,
      "int32": np.int32, "int64": np.int64}


def arr(b64, dtype):
    raw = base64.b64decode(b64)
    if dtype == "bfloat16":
        return np.frombuffer(raw, np.uint16).view(BF16)
    return np.frombuffer(raw, NP[dtype])


def case_id(c):
    return "-".join(str(c.get(k)) for k in ("fn", "dtype", "blocksize", "quant_type", "quant_storage", "out", "nested")
                    if c.get(k) is not None)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_arg_edge(case):
    if "bfloat16" in (case["dtype"], case.get("quant_storage")) and BF16 is None:
        pytest.skip("ml_dtypes is not installed")
    A = arr(case["input"], case["dtype"]).reshape(case["shape"])
    if case["fn"] == "quantize_blockwise":
        kw = {"blocksize": case["blocksize"]}
        if case.get("out") == "given":
            kw["out"] = np.zeros(A.shape, np.uint8)
        if case.get("out") == "wrong_dtype":
            kw["out"] = np.zeros(A.shape, np.int8)
        call = lambda: F.quantize_blockwise(A, **kw)  # noqa: E731
    else:
        call = lambda: F.quantize_4bit(A, blocksize=case["blocksize"], quant_type=case["quant_type"],  # noqa: E731
                                       quant_storage=NP[case["quant_storage"]], compress_statistics=case.get("nested", False))
    if "raises" in case:
        with pytest.raises(ValueError):
            call()
        return
    q, st = call()
    assert str(q.dtype) == case["q_dtype"] and list(q.shape) == case["q_shape"]
    if case.get("out"):
        assert q is kw["out"]  # written in place, as bitsandbytes does
    want_q = np.frombuffer(base64.b64decode(case["q"]), np.uint8)
    got_q = np.ascontiguousarray(q).view(np.uint8).reshape(-1)
    assert got_q.size == want_q.size
    if case["fn"] == "quantize_blockwise" or not st.nested:
        want_absmax = arr(case["absmax"], "float32")
        assert np.array_equal(np.asarray(st.absmax, np.float32), want_absmax)
    if case["fn"] == "quantize_blockwise":
        # bitsandbytes' CPU search is approximate (a few percent of its codes are not
        # the nearest); qembed's are: no element is reconstructed worse than by bitsandbytes
        x = A.astype(np.float32).reshape(-1)
        code = np.asarray(F.create_dynamic_map(True), np.float32)
        am = np.repeat(want_absmax, case["blocksize"])[:x.size]
        ours = np.abs(code[got_q] * am - x)
        theirs = np.abs(code[want_q] * am - x)
        assert np.all(ours <= theirs + am * 2.0 ** -20), "a code farther from its value than bitsandbytes'"
        assert np.count_nonzero(got_q != want_q) < got_q.size // 10
    if case["fn"] == "quantize_4bit":
        deq = F.dequantize_4bit(q, st)
        want = arr(case["deq"], case["deq_dtype"]).reshape(deq.shape).astype(np.float32)
        got = np.asarray(deq, np.float32)
        scale = float(np.max(np.abs(want))) or 1.0
        assert str(deq.dtype) == case["deq_dtype"]
        assert np.max(np.abs(got - want)) <= 0.35 * scale  # at most one level step apart where codes differ
