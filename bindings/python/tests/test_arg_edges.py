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


@pytest.mark.parametrize("case", [c for c in CASES if c["fn"].startswith("quantize")], ids=case_id)
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


DEQ = [c for c in CASES if c["fn"].startswith("dequantize")]


def dequantize_call(case, q, absmax, A):
    """The qembed call of a dequantize case: its form, with bitsandbytes' codes and absmax."""
    out = {"given": lambda: np.zeros(A.shape, np.float32 if case["fn"] == "dequantize_blockwise" else A.dtype),
           "f16": lambda: np.zeros(A.shape, np.float16),
           "wrong_shape": lambda: np.zeros(A.size + 1, np.float32),
           "other_dtype": lambda: np.zeros(A.shape, np.float32 if A.dtype != np.float32 else np.float16)}
    kw = {}
    if case.get("out"):
        kw["out"] = out[case["out"]]()
    if case["fn"] == "dequantize_blockwise":
        code = np.asarray(F.create_dynamic_map(True), np.float32)
        if case["form"] == "state":
            kw["quant_state"] = F.QuantState(absmax=absmax, code=code, blocksize=case["blocksize"], dtype="float32")
        elif case["form"] in ("absmax", "absmax_code"):
            kw.update(absmax=absmax, blocksize=case["blocksize"])
            if case["form"] == "absmax_code":
                kw["code"] = code
        return lambda: F.dequantize_blockwise(q.reshape(A.shape), **kw)
    shape = A.shape
    if case["form"] == "state":
        kw["quant_state"] = F.QuantState(absmax=absmax, shape=shape, code=np.asarray(F.get_4bit_type("nf4"), np.float32),
                                         blocksize=case["blocksize"], quant_type="nf4", dtype=case["dtype"])
    else:
        kw.update(absmax=absmax, blocksize=case["blocksize"], quant_type="nf4")
        if case["form"] == "absmax_out":
            kw["out"] = np.zeros(shape, A.dtype)
    return lambda: F.dequantize_4bit(q.reshape(-1, 1), **kw)


@pytest.mark.parametrize("case", DEQ, ids=lambda c: "-".join(str(c.get(k)) for k in ("fn", "dtype", "form", "out")))
def test_dequantize_edge(case):
    """bitsandbytes' answers: the output for the plain forms (qembed: the same
    bits, from bitsandbytes' own codes and absmax); NotImplementedError for
    every out= on the CPU, where qembed writes into a valid out (the same
    values) and refuses a wrong one; ValueError without statistics."""
    if case["dtype"] == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes is not installed")
    A = arr(case["input"], case["dtype"]).reshape(case["shape"])
    if "q" in case:
        q, absmax = np.frombuffer(base64.b64decode(case["q"]), np.uint8), arr(case["absmax"], "float32")
    else:  # refused upstream before quantizing anything: qembed's own codes and absmax
        if case["fn"] == "dequantize_blockwise":
            q, st = F.quantize_blockwise(A.astype(np.float32), blocksize=case["blocksize"])
        else:
            q, st = F.quantize_4bit(A, blocksize=case["blocksize"], quant_type="nf4")
        q, absmax = q.reshape(-1), np.asarray(st.absmax, np.float32)
    call = dequantize_call(case, q, absmax, A)
    if case.get("raises") == "ValueError":
        with pytest.raises(ValueError):
            call()
        return
    if case.get("raises") == "NotImplementedError":  # out= on the CPU: qembed's extension
        bad = case.get("out") in ("f16", "wrong_shape") or (case.get("out") == "other_dtype" and case["form"] == "state")
        if bad:
            with pytest.raises((ValueError, TypeError)):
                call()
            return
        got = call()
        plain = dict(case)
        plain.pop("out", None)
        if plain["form"] == "absmax_out":
            plain["form"] = "absmax"
        ref = dequantize_call({**plain, "out": None}, q, absmax, A) if plain["form"] != "absmax" or case["fn"] == "dequantize_blockwise" else None
        if ref is not None:
            assert np.array_equal(np.asarray(got, np.float32), np.asarray(ref(), np.float32))
        return
    got = call()
    want = arr(case["deq"], case["deq_dtype"]).reshape(case["deq_shape"])
    assert str(got.dtype) == case["deq_dtype"] and list(got.shape) == case["deq_shape"]
    assert np.array_equal(np.ascontiguousarray(got).view(np.uint8), np.ascontiguousarray(want).view(np.uint8))
