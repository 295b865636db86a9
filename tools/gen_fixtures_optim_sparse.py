#!/usr/bin/env python3
"""Generate the row-sparse optimizer fixtures (Tests/golden/optim_sparse/).

Run with the reference venv (bitsandbytes 0.50.2, torch CPU):

    /work/refvenv/bin/python tools/gen_fixtures_optim_sparse.py

For each of the six optimizers and each gradient pattern of
bindings/python/tests/optim_patterns.py (embedding-training gradients: a few
hundred rows per step, zero elsewhere; rows spanning 1e-6 .. 10), run
bitsandbytes' 32-bit and 8-bit classes side by side for STEPS steps on one
(V, D) parameter and record, per step: the distance of the 8-bit trajectory
from the 32-bit one (max and RMS over the table) and how far each moved from
the start (max |W - W0|); and at the last step the 32-bit weights at 512
sampled positions. The tests hold qembed to these: its 32-bit run equals
bitsandbytes' 32-bit run, and its 8-bit run is no further from its 32-bit
run than bitsandbytes' 8-bit run is from bitsandbytes' 32-bit run.
"""

import json
import os
import sys

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import numpy as np
import torch
import bitsandbytes as bnb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python", "tests"))
import optim_patterns as P  # noqa: E402

OUT = os.path.join(ROOT, "Tests", "golden", "optim_sparse", "manifest.json")


def run(cls, args, kwargs, grads, w0):
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = getattr(bnb.optim, cls)([p], *args, **kwargs)
    out = []
    for ids, g in grads:
        p.grad = torch.from_numpy(P.dense(ids, g))
        opt.step()
        out.append(p.detach().numpy().copy())
    return out, opt


def main():
    torch.manual_seed(0)
    w0 = P.initial_table()
    pos = P.sample_positions()
    cases = {}
    for name, (qcls, c32, c8, args, kwargs) in P.OPTIMIZERS.items():
        for pattern in P.PATTERNS:
            grads = P.gradients(pattern)
            w32, _ = run(c32, args, kwargs, grads, w0)
            w8, opt8 = run(c8, args, kwargs, grads, w0)
            st = opt8.state[opt8.param_groups[0]["params"][0]]
            assert st["state1"].dtype == torch.uint8, "the 8-bit class kept 32-bit state"
            per_step = [P.metrics(w0, a, b) for a, b in zip(w8, w32)]
            key = f"{name}__{pattern}"
            cases[key] = {
                "optimizer": name, "pattern": pattern,
                "steps": {k: [m[k] for m in per_step] for k in per_step[0]},
                "w32_last": [float(x) for x in w32[-1].reshape(-1)[pos]],
            }
            last = per_step[-1]
            print(f"{key:24s} bnb 8-vs-32 max {last['d_max']:.3e} rms {last['d_rms']:.3e}  "
                  f"move32 {last['move32']:.3e} move8 {last['move8']:.3e}")
    manifest = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
                "V": P.V, "D": P.D, "rows": P.ROWS, "steps": P.STEPS, "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT + ".tmp", "w") as fh:
        json.dump(manifest, fh, indent=0)
    os.replace(OUT + ".tmp", OUT)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
