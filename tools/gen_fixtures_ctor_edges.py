#!/usr/bin/env python3
"""Golden answers of bitsandbytes 0.50.2 for the layers' and optimizers'
constructor arguments at their edges: for every call, whether bitsandbytes
builds the object or which exception it raises.

  /path/to/venv-with-bitsandbytes/bin/python tools/gen_fixtures_ctor_edges.py

writes Tests/golden/ctor_edges.json (bindings/python/tests/test_ctor_edges.py
reads it). Each case is (class name, keyword arguments as JSON); layers get
(num_embeddings, embedding_dim) first, optimizers one 10x4 float32 parameter."""
import json
import math
import os
import sys

import torch
import bitsandbytes
import bitsandbytes as bnb


def layer_cases():
    out = []
    for cls in ("Embedding", "StableEmbedding"):
        for p in (None, 0, 9, 10, -1, -10, -11):
            out.append((cls, [10, 4], {"padding_idx": p}))
        for m in (0.0, -1.0, 1.0):
            out.append((cls, [10, 4], {"max_norm": m}))
        for n in (1.0, 0.5, 3.0):
            out.append((cls, [10, 4], {"max_norm": 1.0, "norm_type": n}))
        for shape in ([0, 4], [10, 0], [-1, 4], [10, -4]):
            out.append((cls, shape, {}))
        out.append((cls, [10, 4], {"sparse": True}))
        out.append((cls, [10, 4], {"scale_grad_by_freq": True}))
    for qt in ("nf4", "fp4", "af4"):
        for bs in (32, 64, 100, 8192):
            out.append(("Embedding4bit", [10, 64], {"quant_type": qt, "blocksize": bs}))
    for cls in ("EmbeddingNF4", "EmbeddingFP4"):
        out.append((cls, [10, 64], {}))
        out.append((cls, [10, 64], {"compress_statistics": True}))
    out.append(("Embedding8bit", [10, 4], {}))
    return out


def optim_cases():
    out = []
    for cls in ("Adam", "Adam8bit", "AdamW8bit", "Lion8bit", "SGD8bit", "RMSprop8bit", "Adagrad8bit"):
        kw_lr = {"lr": 0.01} if cls == "SGD8bit" else {}
        mom = {"momentum": 0.9} if cls == "SGD8bit" else {}
        for lr in (0.0, -1.0, 1e-3):
            out.append((cls, {**mom, "lr": lr}))
        if cls not in ("SGD8bit", "RMSprop8bit", "Adagrad8bit"):
            for betas in ([1.0, 0.9], [0.9, 1.0], [-0.1, 0.9], [0.0, 0.0]):
                out.append((cls, {**kw_lr, "betas": betas}))
        for eps in (-1e-8, 0.0):
            if cls not in ("Lion8bit", "SGD8bit"):
                out.append((cls, {**kw_lr, **mom, "eps": eps}))
        for wd in (-0.1, 0.0, 0.5):
            out.append((cls, {**kw_lr, **mom, "weight_decay": wd}))
        for mb in (-1, 0):
            out.append((cls, {**kw_lr, **mom, "min_8bit_size": mb}))
        out.append((cls, {**kw_lr, **mom, "optim_bits": 16}))
        out.append((cls, {**kw_lr, **mom, "optim_bits": 32}))
    out.append(("SGD8bit", {"lr": 0.1, "momentum": 0}))
    out.append(("SGD8bit", {"lr": 0.1, "momentum": -0.5}))
    out.append(("SGD8bit", {"lr": 0.1, "momentum": 0.9, "nesterov": True}))
    out.append(("SGD8bit", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}))
    out.append(("RMSprop8bit", {"alpha": 0.0}))
    out.append(("RMSprop8bit", {"alpha": 1.0}))
    out.append(("RMSprop8bit", {"centered": True}))
    out.append(("RMSprop8bit", {"momentum": 0.5}))
    out.append(("Adagrad8bit", {"lr_decay": 0.1}))
    out.append(("Adagrad8bit", {"initial_accumulator_value": 1.0}))
    out.append(("Adam8bit", {"amsgrad": True}))
    return out


def outcome(build):
    try:
        build()
    except Exception as e:
        return {"raises": type(e).__name__, "message": str(e)[:200]}
    return {"builds": True}


def main():
    cases = []
    for cls, shape, kw in layer_cases():
        cases.append({"kind": "nn", "cls": cls, "shape": shape, "kwargs": kw,
                      **outcome(lambda: getattr(bnb.nn, cls)(*shape, **kw))})
    for cls, kw in optim_cases():
        def build():
            p = torch.nn.Parameter(torch.zeros(10, 4))
            getattr(bnb.optim, cls)([p], **kw)
        cases.append({"kind": "optim", "cls": cls, "kwargs": kw, **outcome(build)})
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "golden", "ctor_edges.json")
    with open(path, "w") as f:
        json.dump({"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__, "cases": cases}, f, indent=0)
        f.write("\n")
    print(f"{len(cases)} cases, {sum('builds' in c for c in cases)} built by bitsandbytes; wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
