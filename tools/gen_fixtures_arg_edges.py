#!/usr/bin/env python3
"""Golden answers of bitsandbytes 0.50.2 (CPU) for the quantization
functions' edge arguments: blocksizes at and past the documented range,
input dtypes, quant_type and quant_storage, the out=/absmax= buffers. For
each call: the outputs (bytes, base64) or the exception bitsandbytes raises.

  /path/to/venv-with-bitsandbytes/bin/python tools/gen_fixtures_arg_edges.py

writes Tests/golden/arg_edges.json (bindings/python/tests/test_arg_edges.py
reads it). The inputs are drawn from a fixed seed and stored with the case."""
import base64
import json
import os
import sys

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402


def b64(t):
    a = t.detach().contiguous()
    if a.dtype == torch.bfloat16:
        a = a.view(torch.int16)
    return base64.b64encode(a.numpy().tobytes()).decode()


DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ST = {"uint8": torch.uint8, "int8": torch.int8, "float16": torch.float16, "bfloat16": torch.bfloat16,
      "float32": torch.float32, "int32": torch.int32, "int64": torch.int64}


def run(case):
    rng = np.random.default_rng(case["seed"])
    x = (rng.standard_normal(case["n"]) * np.exp(rng.uniform(-6, 2, case["n"]))).astype(np.float32)
    A = torch.from_numpy(x).to(DT[case["dtype"]]).reshape(case["shape"])
    out = {"input": b64(A)}
    try:
        if case["fn"] == "dequantize_blockwise":
            q, st = F.quantize_blockwise(A.float(), blocksize=case["blocksize"])
            kw = {}
            form = case["form"]
            if form == "state":
                kw["quant_state"] = st
            elif form == "absmax":
                kw.update(absmax=st.absmax, blocksize=case["blocksize"])
            elif form == "absmax_code":
                kw.update(absmax=st.absmax, code=st.code, blocksize=case["blocksize"])
            elif form == "none":
                pass
            if case.get("out") == "given":
                kw["out"] = torch.zeros(A.shape, dtype=torch.float32)
            elif case.get("out") == "f16":
                kw["out"] = torch.zeros(A.shape, dtype=torch.float16)
            elif case.get("out") == "wrong_shape":
                kw["out"] = torch.zeros(A.numel() + 1, dtype=torch.float32)
            d = F.dequantize_blockwise(q, **kw)
            out.update(q=b64(q), absmax=b64(st.absmax.float()), deq=b64(d), deq_dtype=str(d.dtype)[6:], deq_shape=list(d.shape))
        elif case["fn"] == "dequantize_4bit":
            q, st = F.quantize_4bit(A, blocksize=case["blocksize"], quant_type="nf4")
            kw = {}
            form = case["form"]
            if form == "state":
                kw["quant_state"] = st
            elif form == "absmax_out":
                kw.update(absmax=st.absmax, out=torch.zeros(A.shape, dtype=A.dtype), blocksize=case["blocksize"], quant_type="nf4")
            elif form == "absmax":
                kw.update(absmax=st.absmax, blocksize=case["blocksize"], quant_type="nf4")
            if case.get("out") == "given":
                kw["out"] = torch.zeros(A.shape, dtype=A.dtype)
            elif case.get("out") == "other_dtype":
                kw["out"] = torch.zeros(A.shape, dtype=torch.float32 if A.dtype != torch.float32 else torch.float16)
            d = F.dequantize_4bit(q, **kw)
            out.update(q=b64(q), absmax=b64(st.absmax.float()), deq=b64(d), deq_dtype=str(d.dtype)[6:], deq_shape=list(d.shape))
        elif case["fn"] == "quantize_blockwise":
            kw = {"blocksize": case["blocksize"]}
            if case.get("out") == "given":
                kw["out"] = torch.zeros(A.shape, dtype=torch.uint8)
            if case.get("out") == "wrong_dtype":
                kw["out"] = torch.zeros(A.shape, dtype=torch.int8)
            q, st = F.quantize_blockwise(A, **kw)
            out.update(q=b64(q), absmax=b64(st.absmax.float()), q_dtype=str(q.dtype)[6:], q_shape=list(q.shape))
        else:
            q, st = F.quantize_4bit(A, blocksize=case["blocksize"], quant_type=case["quant_type"],
                                    quant_storage=ST[case["quant_storage"]], compress_statistics=case.get("nested", False))
            out.update(q=b64(q), q_dtype=str(q.dtype)[6:], q_shape=list(q.shape))
            if st.nested:
                out.update(absmax=b64(st.absmax), offset=float(st.offset), nested_absmax=b64(st.state2.absmax))
            else:
                out.update(absmax=b64(st.absmax.float()))
            deq = F.dequantize_4bit(q, st)
            out.update(deq=b64(deq), deq_dtype=str(deq.dtype)[6:])
    except Exception as e:
        return {**case, "raises": type(e).__name__, "message": str(e)[:200], "input": out["input"]}
    return {**case, **out}


def main():
    cases = []
    seed = 0
    for dtype in ("float32", "float16", "bfloat16"):
        for bs in (16, 32, 48, 64, 100, 128, 256, 1000, 2048, 4096, 8192, 16384):
            seed += 1
            cases.append({"fn": "quantize_blockwise", "dtype": dtype, "n": 1000, "shape": [1000], "blocksize": bs, "seed": seed})
    for o in ("given", "wrong_dtype"):
        seed += 1
        cases.append({"fn": "quantize_blockwise", "dtype": "float32", "n": 600, "shape": [20, 30], "blocksize": 64, "seed": seed, "out": o})
    for qt in ("nf4", "fp4", "af4", "int4"):
        for bs in (16, 32, 64, 100, 128, 4096, 8192):
            seed += 1
            cases.append({"fn": "quantize_4bit", "dtype": "float32", "n": 1024, "shape": [16, 64], "blocksize": bs,
                          "quant_type": qt, "quant_storage": "uint8", "seed": seed})
    for stg in ST:
        for dtype in ("float32", "bfloat16"):
            seed += 1
            cases.append({"fn": "quantize_4bit", "dtype": dtype, "n": 1024, "shape": [16, 64], "blocksize": 64,
                          "quant_type": "nf4", "quant_storage": stg, "seed": seed})
    for nested in (False, True):
        seed += 1
        cases.append({"fn": "quantize_4bit", "dtype": "float16", "n": 64 * 300, "shape": [300, 64], "blocksize": 64,
                      "quant_type": "fp4", "quant_storage": "uint8", "nested": nested, "seed": seed})
    for form in ("state", "absmax", "absmax_code", "none"):
        for o in (None, "given", "f16", "wrong_shape"):
            seed += 1
            c = {"fn": "dequantize_blockwise", "dtype": "float32", "n": 600, "shape": [20, 30], "blocksize": 64,
                 "form": form, "seed": seed}
            if o:
                c["out"] = o
            cases.append(c)
    for dtype in ("float32", "bfloat16"):
        for form in ("state", "absmax_out", "absmax"):
            for o in (None, "given", "other_dtype"):
                if form == "absmax_out" and o:
                    continue
                seed += 1
                c = {"fn": "dequantize_4bit", "dtype": dtype, "n": 1024, "shape": [16, 64], "blocksize": 64, "form": form, "seed": seed}
                if o:
                    c["out"] = o
                cases.append(c)
    results = [run(c) for c in cases]
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "golden", "arg_edges.json")
    with open(path, "w") as f:
        json.dump({"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "cases": results}, f,
                  separators=(",", ":"))
        f.write("\n")
    ok = sum(1 for r in results if "raises" not in r)
    print(f"{len(results)} cases, {ok} accepted by bitsandbytes {bitsandbytes.__version__}; wrote {path}", file=sys.stderr)
    for r in results:
        print(r["fn"], r.get("dtype"), r.get("blocksize"), r.get("quant_type", ""), r.get("quant_storage", ""), r.get("form", ""), r.get("out", ""),
              "->", r.get("raises", "ok " + str(r.get("q_dtype")) + str(r.get("q_shape"))), file=sys.stderr)


if __name__ == "__main__":
    main()
