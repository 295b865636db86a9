"""Row-sharded tables (qembed.distributed.ShardedEmbedding) on 1, 2 and 4 gloo
processes of this machine, the same total table and the same global batch:
lookups/s of the collective forward, time of backward + Adam8bit step, and
the bytes each rank holds (its rows + its 8-bit state). --table nf4: the
quantized table (emb.quantize("nf4")), forward only; --table bag: a
ShardedEmbeddingBag (mode sum, bags of --bag ids), forward and backward + step.

    PYTHONPATH=bindings/python /work/refvenv/bin/python bench/distributed.py [--rows N] [--dim D] [--batch B]
        [--table float|nf4|bag] [--bag 16]

Each process runs one qembed thread and one torch thread; with more processes
than cores the figures measure oversubscription, not scaling (say so when
reporting). Needs torch.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def rank_main(rank, world, init, args):
    import torch
    import torch.distributed as dist

    import qembed
    from qembed.distributed import ShardedEmbedding
    torch.set_num_threads(1)
    qembed.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    if args.table == "bag":
        from qembed.distributed import ShardedEmbeddingBag
        emb = ShardedEmbeddingBag(args.rows, args.dim, mode="sum", sparse=True, seed=1)
    else:
        emb = ShardedEmbedding(args.rows, args.dim, sparse=True, seed=1)
    if args.table == "nf4":
        emb = emb.quantize("nf4", blocksize=64)
    params = list(emb.parameters())
    if not params:
        return _forward_only(emb, rank, world, args, dist)
    qembed.optim.GlobalOptimManager.get_instance().override_config(params[0], "optim_bits", 8)
    opt = qembed.optim.Adam8bit(params, lr=1e-3)
    rng = np.random.default_rng(100 + rank)
    per = args.batch // world
    fwd = bwd = float("inf")
    for step in range(args.steps):
        ids = rng.integers(0, args.rows, size=per)
        bag = args.table == "bag"
        offsets = np.arange(0, per, args.bag) if bag else None
        n_out = offsets.size if bag else per
        g = rng.standard_normal((n_out, args.dim)).astype(np.float32) * 1e-3
        dist.barrier()
        t0 = time.perf_counter()
        emb(ids, offsets) if bag else emb(ids)
        dist.barrier()
        t1 = time.perf_counter()
        emb.backward(ids, g, offsets) if bag else emb.backward(ids, g)
        opt.step()
        opt.zero_grad()
        dist.barrier()
        t2 = time.perf_counter()
        if step >= 2:
            fwd, bwd = min(fwd, t1 - t0), min(bwd, t2 - t1)
    held = emb.rows * args.dim * 4 + sum(opt.state_info(p)["state_bytes"] for p in params)
    held_all = [None] * world
    dist.all_gather_object(held_all, held)
    if rank == 0:
        print(f"  {world} process(es): forward {args.batch / fwd / 1e6:6.2f} M lookups/s ({fwd * 1e3:7.2f} ms), "
              f"backward + Adam8bit step {bwd * 1e3:7.2f} ms, per rank {max(held_all) / 2**20:7.1f} MiB "
              f"(rows + 8-bit state)", flush=True)
    dist.destroy_process_group()


def _forward_only(emb, rank, world, args, dist):
    rng = np.random.default_rng(100 + rank)
    per = args.batch // world
    fwd = float("inf")
    for step in range(args.steps):
        ids = rng.integers(0, args.rows, size=per)
        dist.barrier()
        t0 = time.perf_counter()
        emb(ids)
        dist.barrier()
        if step >= 2:
            fwd = min(fwd, time.perf_counter() - t0)
    held_all = [None] * world
    dist.all_gather_object(held_all, emb.local.memory_bytes() if emb.local is not None else 0)
    if rank == 0:
        print(f"  {world} process(es): forward {args.batch / fwd / 1e6:6.2f} M lookups/s ({fwd * 1e3:7.2f} ms), "
              f"per rank {max(held_all) / 2**20:7.1f} MiB (quantized rows)", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--table", choices=["float", "nf4", "bag"], default="float")
    ap.add_argument("--bag", type=int, default=16)
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--world", type=int, default=None)
    ap.add_argument("--init", default=None)
    args = ap.parse_args()
    if args.rank is not None:
        return rank_main(args.rank, args.world, args.init, args)
    kind = {"float": "ShardedEmbedding float32", "nf4": "ShardedEmbedding NF4 (blocksize 64)",
            "bag": f"ShardedEmbeddingBag float32, mode sum, bags of {args.bag}"}[args.table]
    print(f"{kind} {args.rows} x {args.dim}, sparse, global batch {args.batch} ids, "
          f"{os.cpu_count()} cores, gloo, 1 thread per process")
    for world in [int(w) for w in args.worlds.split(",")]:
        init = os.path.join(tempfile.mkdtemp(), "init")
        base = [sys.executable, os.path.abspath(__file__), "--rows", str(args.rows), "--dim", str(args.dim),
                "--batch", str(args.batch), "--steps", str(args.steps), "--world", str(world), "--init", init,
                "--table", args.table, "--bag", str(args.bag)]
        procs = [subprocess.Popen(base + ["--rank", str(r)]) for r in range(world)]
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
