"""One rank of tests/test_distributed.py: python distributed_worker.py RANK WORLD INIT_FILE OUT_DIR CASE.

Runs the case's steps on a gloo process group (one thread per process) and
writes what it saw (forward rows, its shard, its optimizer state) to
OUT_DIR/rank-R.npz for the test to compare with a single-process run."""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import qembed
from qembed.distributed import ShardedEmbedding


def batches(case, world):
    """Every rank's ids and gradients for every step (drawn the same on all ranks)."""
    rng = np.random.default_rng(case["seed"])
    V, D = case["V"], case["D"]
    out = []
    for step in range(case["steps"]):
        per = []
        for r in range(world):
            n = 0 if (r == world - 1 and step == 1 and world > 1) else int(rng.integers(5, 40))
            ids = rng.integers(0, V, size=n)
            if n > 4:
                ids[:2] = ids[2:4]  # duplicates
            g = (rng.standard_normal((n, D)) * 10.0 ** rng.uniform(-3, 0, size=(n, 1))).astype(np.float32)
            per.append((ids.astype(np.int64), g))
        out.append(per)
    return out


def main():
    rank, world, init, out_dir, case_json = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    case = json.loads(case_json)
    torch.set_num_threads(1)
    qembed.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    V, D = case["V"], case["D"]
    W = np.random.default_rng(7).standard_normal((V, D)).astype(np.float32)
    if case.get("load"):
        emb = ShardedEmbedding.load(case["load"])
    else:
        emb = ShardedEmbedding(V, D, _weight=W if case["weight"] else None, sparse=case["sparse"],
                               padding_idx=case["padding_idx"], seed=11)
    params = list(emb.parameters())
    if params:
        qembed.optim.GlobalOptimManager.get_instance().override_config(params[0], "optim_bits", 8)
    opt = qembed.optim.Adam8bit(params, lr=1e-2) if params else None
    seen = []
    for per in batches(case, world):
        ids, g = per[rank]
        seen.append(emb(ids))
        emb.backward(ids, g)
        if opt is not None:
            opt.step()
            opt.zero_grad()
    full = emb.gather_weight()
    result = {"full": full, "row_offset": np.int64(emb.row_offset), "rows": np.int64(emb.rows)}
    for k, s in enumerate(seen):
        result[f"out{k}"] = s
    if opt is not None and case["steps"] > 0:
        st = opt.state_dict()["state"][0]
        q = st["__bnb_optimizer_quant_state__"] if "__bnb_optimizer_quant_state__" in st else st
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if key in q:
                result[key] = np.asarray(q[key])
    if case.get("save"):
        emb.save(case["save"])
    np.savez(os.path.join(out_dir, f"rank-{rank}.npz"), **result)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
