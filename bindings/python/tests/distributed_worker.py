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


def table(case):
    """The case's full table: fresh per test run (case["table_seed"]), rows
    spanning six orders of magnitude."""
    rng = np.random.default_rng(case["table_seed"])
    V, D = case["V"], case["D"]
    return (rng.standard_normal((V, D)) * 10.0 ** rng.uniform(-3, 3, size=(V, 1))).astype(np.float32)


def quantized_ids(case, world):
    """Every rank's ids (a rank may get none)."""
    rng = np.random.default_rng(case["table_seed"] + 1)
    return [rng.integers(0, case["V"], size=0 if (r == 1 and world > 2) else int(rng.integers(1, 300)))
            for r in range(world)]


def bag_batches(case, world):
    """Every rank's bag arguments for every step: (ids, offsets or None,
    per_sample_weights or None, grad_output)."""
    rng = np.random.default_rng(case["table_seed"] + 2)
    V, D = case["V"], case["D"]
    out = []
    for step in range(case["steps"]):
        per = []
        hot = rng.integers(0, V, size=4)       # ids every rank asks for: owners get them from several ranks
        for r in range(world):
            if case.get("two_d"):
                nb, width = int(rng.integers(0, 12)), int(rng.integers(1, 6))
                ids = rng.integers(0, V, size=(nb, width))
                offsets = None
            else:
                n = int(rng.integers(0, 60)) if not (r == world - 1 and step == 1 and world > 1) else 0
                ids = rng.integers(0, V, size=n)
                cuts = np.sort(rng.integers(0, n + 1, size=int(rng.integers(1, 10))))
                cuts[0] = 0
                offsets = cuts
                nb = cuts.size - (1 if case.get("include_last_offset") else 0)
            ids.reshape(-1)[1::2] = np.resize(hot, ids.reshape(-1)[1::2].size)
            if ids.size > 4:
                ids.reshape(-1)[:2] = ids.reshape(-1)[2:4]       # duplicates
                if case.get("padding_idx") is not None:
                    ids.reshape(-1)[5 % ids.size] = case["padding_idx"] % V
            psw = rng.standard_normal(ids.shape).astype(np.float32) if case.get("psw") else None
            g = (rng.standard_normal((nb, D)) * 10.0 ** rng.uniform(-2, 1, size=(nb, 1))).astype(np.float32)
            per.append((ids.astype(np.int64), offsets, psw, g))
        out.append(per)
    return out


def quantized_main(rank, world, case, out_dir):
    from qembed.distributed import ShardedEmbedding
    if case.get("load"):
        q = ShardedEmbedding.load(case["load"])
    else:
        emb = ShardedEmbedding(case["V"], case["D"], _weight=table(case))
        q = emb.quantize(case["quant_type"], blocksize=case["blocksize"])
    if case.get("save"):
        q.save(case["save"])
    result = {"out": q(quantized_ids(case, world)[rank]), "full": q.gather_weight(),
              "row_offset": np.int64(q.row_offset), "rows": np.int64(q.rows)}
    try:
        q.backward(np.array([0]), np.zeros((1, case["D"]), np.float32))
        result["backward_refused"] = np.bool_(False)
    except TypeError:
        result["backward_refused"] = np.bool_(True)
    if case["quant_type"] != "int8" and world > 1 and not case.get("load"):
        try:
            emb.quantize(case["quant_type"], blocksize=case["blocksize"], compress_statistics=True)
            result["nested_refused"] = np.bool_(False)
        except ValueError:
            result["nested_refused"] = np.bool_(True)
    np.savez(os.path.join(out_dir, f"rank-{rank}.npz"), **result)


def bag_main(rank, world, case, out_dir):
    from qembed.distributed import ShardedEmbeddingBag
    kw = {k: case[k] for k in ("mode", "padding_idx", "include_last_offset", "max_norm", "sparse", "scale_grad_by_freq") if k in case}
    if case.get("load"):
        bag = ShardedEmbeddingBag.load(case["load"])
    else:
        bag = ShardedEmbeddingBag(case["V"], case["D"], _weight=table(case) if case.get("weight") else None,
                                  seed=case.get("seed", 0), **kw)
    params = list(bag.parameters())
    opt = qembed.optim.SGD(params, lr=0.1, momentum=0.9) if params else None
    result = {"row_offset": np.int64(bag.row_offset), "rows": np.int64(bag.rows)}
    for k, per in enumerate(bag_batches(case, world)):
        ids, offsets, psw, g = per[rank]
        result[f"out{k}"] = bag(ids, offsets, psw)
        pg = bag.backward(ids, g, offsets, psw)
        if pg is not None:
            result[f"psw_grad{k}"] = pg
        if params and not case.get("sparse"):
            result[f"grad{k}"] = np.array(params[0].grad) if params[0].grad is not None else \
                np.zeros((bag.rows, case["D"]), np.float32)
        if opt is not None:
            opt.step()
            opt.zero_grad()
    result["full"] = bag.gather_weight()
    if case.get("save"):
        bag.save(case["save"])
    np.savez(os.path.join(out_dir, f"rank-{rank}.npz"), **result)


def main():
    rank, world, init, out_dir, case_json = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    case = json.loads(case_json)
    torch.set_num_threads(1)
    qembed.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    if case.get("kind") in ("quantized", "bag"):
        (quantized_main if case["kind"] == "quantized" else bag_main)(rank, world, case, out_dir)
        dist.destroy_process_group()
        return
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
