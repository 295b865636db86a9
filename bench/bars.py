#!/usr/bin/env python3
"""The speed bars of the open issues, checked against one run of bench/compare.py.

    PYTHONPATH=bindings/python python3 bench/bars.py              # runs compare.py, then the table
    PYTHONPATH=bindings/python python3 bench/bars.py --only bags  # one compare.py section
    python3 bench/bars.py --from compare.log                      # a saved compare.py output

Each bar is a same-run ratio as the issue states it (issue 14: exact kernels at memory speed;
issue 18: bags and scoring). Issue 14's bars are set for an AVX-512 VBMI machine and issue 18's
anchors were measured on Zen 4; the table says which CPU this run had, so a figure from another
machine is read as what it is. A bar whose row is missing (section not run, optional dependency
not installed) is listed as such. This is a report: the exit status is 0 unless compare.py fails.
"""
import argparse
import os
import re
import subprocess
import sys

ROW = re.compile(r"^\s+(?P<name>\S.*?)\s+(?P<ms>[\d.]+) ms\s+(?P<gbs>[\d.]+) GB/s\s+(?P<pct>\d+)% of memcpy"
                 r"(?:\s+(?P<ratio>[\d.]+)x vs (?P<vs>.+))?\s*$")


def memcpy_share(name):
    return lambda rows: rows[name]["pct"] / 100 if name in rows else None


def ratio(name):
    return lambda rows: rows[name]["ratio"] if name in rows else None


def time_ratio(ref, name):
    """ref's time over name's time: above 1 when name is faster."""
    return lambda rows: rows[ref]["ms"] / rows[name]["ms"] if ref in rows and name in rows else None


BARS = [
    # (issue, bar, measure, at least)
    (14, "quantize_blockwise bs=256, of memcpy (fresh output)", memcpy_share("quantize_blockwise bs=256 (exact)"), 0.8),
    (14, "quantize_blockwise bs=256, of memcpy (out=)", memcpy_share("quantize_blockwise bs=256 (exact, out=)"), 0.8),
    (14, "quantize_blockwise bs=4096, of memcpy (fresh output)", memcpy_share("quantize_blockwise bs=4096 (exact)"), 0.8),
    (14, "quantize_blockwise bs=4096, of memcpy (out=)", memcpy_share("quantize_blockwise bs=4096 (exact, out=)"), 0.8),
    (14, "quantize_4bit nf4, of memcpy", memcpy_share("quantize_4bit nf4 bs=64"), 0.7),
    (14, "quantize_4bit fp4, of memcpy", memcpy_share("quantize_4bit fp4 bs=64"), 0.7),
    (14, "dequantize_blockwise bs=256, of memcpy (out=)", memcpy_share("dequantize_blockwise bs=256 (out=)"), 0.9),
    (14, "dequantize_blockwise bs=256, of memcpy (fresh output)", memcpy_share("dequantize_blockwise bs=256"), 0.7),
    (14, "dequantize_blockwise bs=4096, of memcpy (out=)", memcpy_share("dequantize_blockwise bs=4096 (out=)"), 0.9),
    (14, "dequantize_blockwise bs=4096, of memcpy (fresh output)", memcpy_share("dequantize_blockwise bs=4096"), 0.7),
    (14, "dequantize_4bit nf4, of memcpy (out=)", memcpy_share("dequantize_4bit nf4 bs=64 (out=)"), 0.9),
    (14, "dequantize_4bit nf4, of memcpy (fresh output)", memcpy_share("dequantize_4bit nf4 bs=64"), 0.7),
    (14, "dequantize_4bit fp4, of memcpy (out=)", memcpy_share("dequantize_4bit fp4 bs=64 (out=)"), 0.9),
    (14, "dequantize_4bit fp4, of memcpy (fresh output)", memcpy_share("dequantize_4bit fp4 bs=64"), 0.7),
    (14, "int8_vectorwise_quant, of memcpy", memcpy_share("int8_vectorwise_quant"), 0.8),
    (14, "Adam8bit step vs torch Adam(fused=True)",
     time_ratio("reference Adam (32-bit) (torch)", "qembed Adam8bit"), 1.0),
    (14, "Adam8bit step vs bitsandbytes Adam8bit", ratio("qembed Adam8bit"), 30),
    (14, "Lion8bit step vs torch Adam(fused=True)", time_ratio("reference Adam (32-bit) (torch)", "qembed Lion8bit"), 1.0),
    (14, "Lion8bit step vs bitsandbytes Lion8bit", ratio("qembed Lion8bit"), 30),
    (14, "SGD8bit (momentum) step vs torch Adam(fused=True)",
     time_ratio("reference Adam (32-bit) (torch)", "qembed SGD8bit"), 1.0),
    (14, "SGD8bit (momentum) step vs bitsandbytes SGD8bit", ratio("qembed SGD8bit"), 30),
    (14, "StableEmbedding 30522x384 forward vs bitsandbytes", ratio("qembed StableEmbedding 30522x384"), 8),
    (14, "max_norm lookup vs torch", ratio("qembed Embedding max_norm"), 10),
    (14, "f32 gather 250000x1024 vs torch index_select(out=)", ratio("qembed Embedding 250000x1024 (out=)"), 1.0),
    (18, "f32 EmbeddingBag sum vs torch F.embedding_bag", ratio("qembed f32 bag sum"), 1.0),
    (18, "int8 bag sum vs FBGEMM byte rowwise", ratio("qembed int8 bag sum"), 1.0),
    (18, "NF4 bag sum vs FBGEMM 4-bit rowwise", ratio("qembed nf4 bag sum"), 1.0),
    (18, "NF4 score, 1 query, vs torch f32 W @ q", ratio("qembed nf4 score, 1 query"), 4.0),
    (18, "NF4 score, 64 queries, vs torch f32 W @ q", ratio("qembed nf4 score, 64 queries"), 0.7),
    (18, "int8 top-10, 1 query, vs faiss QT_8bit", ratio("qembed int8 score(k=10), 1 query"), 1.0),
]


def parse(lines):
    rows = {}
    for line in lines:
        m = ROW.match(line)
        if m:
            rows[m["name"]] = {"ms": float(m["ms"]), "pct": int(m["pct"]),
                               "ratio": float(m["ratio"]) if m["ratio"] else None}
    return rows


def cpu():
    model, vbmi, avx512 = "unknown CPU", False, False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split()
                    vbmi, avx512 = "avx512vbmi" in flags, "avx512f" in flags
                    break
    except OSError:
        pass
    return f"{model}; {'AVX-512 VBMI' if vbmi else 'AVX-512 (no VBMI)' if avx512 else 'no AVX-512'}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="log", help="a saved compare.py output instead of a new run")
    ap.add_argument("--only", help="passed to compare.py")
    args = ap.parse_args()
    if args.log:
        with open(args.log) as fh:
            lines = fh.read().splitlines()
    else:
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.py")]
        if args.only:
            cmd += ["--only", args.only]
        run = subprocess.run(cmd, capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        if run.returncode != 0:
            sys.stderr.write(run.stderr)
            return run.returncode
        lines = run.stdout.splitlines()
    rows = parse(lines)
    print(f"\nbars of the open issues ({cpu()}; {lines[0] if lines else ''})")
    print(f"  {'issue':5s}  {'bar':58s} {'measured':>9s} {'at least':>9s}  result")
    for issue, name, measure, least in BARS:
        value = measure(rows)
        if value is None:
            print(f"  #{issue:<4d}  {name:58s} {'-':>9s} {least:9.2f}  missing (section not run or dependency absent)")
        else:
            print(f"  #{issue:<4d}  {name:58s} {value:9.2f} {least:9.2f}  {'met' if value >= least else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
