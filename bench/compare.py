#!/usr/bin/env python3
"""Side-by-side timings: qembed (through its Python binding, fresh outputs as a
user gets them in a loop, from qembed's output cache after the warm-up calls;
"out=" rows write into a preallocated array) against bitsandbytes 0.50.2 and PyTorch on the CPU, plus a
memcpy probe measured in the same run. Optional dependencies: torch,
bitsandbytes (skipped with a note when missing).

    PYTHONPATH=bindings/python python3 bench/compare.py [--quick] [--threads N]

Sizes follow the issues: 64M float32 elements for the kernels, embedding
lookups of 65536 random rows, a 16M-element optimizer step.
"""
import argparse
import os
import sys
import time

# torch's OpenMP workers spin after each parallel region; on a 2-core machine
# that steals the cores from whichever library is timed next. Passive waiting
# keeps the comparison fair (set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python"))
import qembed  # noqa: E402
import qembed.functional as QF  # noqa: E402

try:
    import torch
except ImportError:
    torch = None
try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as BF
except Exception:
    bnb = BF = None


def best(fn, reps=3, warmup=3):
    # Untimed calls first: the first large allocations of a process are slowed by
    # the kernel (page zeroing, transparent-huge-page compaction), which would
    # otherwise land on whichever library is timed first.
    for _ in range(warmup):
        fn()
    t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def paired(ref, fn, reps=15, warmup=3):
    """(best ref time, best fn time, median of ref/fn over back-to-back pairs):
    on a shared host both sides of a pair see the same conditions, where two
    best-of-N series taken apart need not."""
    for _ in range(warmup):
        ref()
        fn()
    tr, tf, ratios = float("inf"), float("inf"), []
    for _ in range(reps):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        tr, tf = min(tr, t1 - t0), min(tf, t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    ratios.sort()
    return tr, tf, ratios[len(ratios) // 2]


def row(name, t, nbytes, memcpy, ref=None, vs="bitsandbytes", ratio=None):
    gbs = nbytes / t / 1e9
    if ratio is None and ref:
        ratio = ref / t
    extra = f"   {ratio:6.2f}x vs {vs}" if ratio else ""
    print(f"  {name:52s} {t * 1e3:9.2f} ms {gbs:7.1f} GB/s {100 * gbs / memcpy:5.0f}% of memcpy{extra}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("kernels", "layers", "bags", "optimizer", "offload"), help="run one section")
    args = ap.parse_args()
    qembed.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    n = (1 << 22) if args.quick else (64 << 20)
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    y = np.empty_like(x)
    memcpy = 2 * x.nbytes / best(lambda: np.copyto(y, x)) / 1e9
    print(f"qembed {qembed.__version__}, {args.threads} threads; numpy memcpy probe {memcpy:.1f} GB/s (read + write)")
    print(f"torch {torch.__version__ if torch else 'not installed'}, bitsandbytes {bnb.__version__ if bnb else 'not installed'}")
    tx = torch.from_numpy(x) if torch is not None else None

    want = lambda section: args.only in (None, section)
    if want("kernels"):
        kernels(args, n, x, tx, memcpy)
    if want("layers"):
        layers(args, memcpy)
    if want("bags"):
        bags(args, memcpy)
    if want("optimizer"):
        optimizers(args, memcpy)
    if want("offload"):
        offload(args, memcpy)


def kernels(args, n, x, tx, memcpy):
    print(f"\nkernels, {n >> 20}M float32 elements (qembed calls allocate fresh outputs, as bitsandbytes' do)")
    y = np.empty_like(x)
    for bs in (256, 4096):
        tq = best(lambda: QF.quantize_blockwise(x, blocksize=bs))
        ref = best(lambda: BF.quantize_blockwise(tx, blocksize=bs)) if bnb else None
        row(f"quantize_blockwise bs={bs} (exact)", tq, 5 * n, memcpy, ref)
        if ref:
            row(f"  bitsandbytes quantize_blockwise bs={bs} (approximate)", ref, 5 * n, memcpy)
        q, st = QF.quantize_blockwise(x, blocksize=bs)
        # Into preallocated outputs: fresh numpy arrays are advised for huge pages,
        # and where the kernel compacts memory on such faults that can cost more than
        # the kernel itself (torch.empty, used by bitsandbytes, does not advise).
        am = np.empty_like(st.absmax)
        row(f"quantize_blockwise bs={bs} (exact, out=)", best(lambda: QF.quantize_blockwise(x, out=q, absmax=am, blocksize=bs)),
            5 * n, memcpy, ref)
        tq = best(lambda: QF.dequantize_blockwise(q, st))
        if bnb:
            bq, bst = BF.quantize_blockwise(tx, blocksize=bs)
            ref = best(lambda: BF.dequantize_blockwise(bq, bst))
        row(f"dequantize_blockwise bs={bs}", tq, 5 * n, memcpy, ref)
        row(f"dequantize_blockwise bs={bs} (out=)", best(lambda: QF.dequantize_blockwise(q, st, out=y)), 5 * n, memcpy, ref)
        if bs == 256:
            # Fresh outputs come from qembed's output cache once a dropped one is
            # there (the warm-up calls); this row is a fresh output with new pages.
            cap = qembed.set_output_cache(0)
            row(f"dequantize_blockwise bs={bs} (output cache off)", best(lambda: QF.dequantize_blockwise(q, st)), 5 * n, memcpy, ref)
            qembed.set_output_cache(cap)
    for qt in ("nf4", "fp4"):
        tq = best(lambda: QF.quantize_4bit(x, blocksize=64, quant_type=qt))
        ref = best(lambda: BF.quantize_4bit(tx, blocksize=64, quant_type=qt)) if bnb else None
        row(f"quantize_4bit {qt} bs=64", tq, 4 * n + n // 2 + n // 16, memcpy, ref)
        p, st = QF.quantize_4bit(x, blocksize=64, quant_type=qt)
        tq = best(lambda: QF.dequantize_4bit(p, st))
        if bnb:
            bp, bst = BF.quantize_4bit(tx, blocksize=64, quant_type=qt)
            ref = best(lambda: BF.dequantize_4bit(bp, bst))
        row(f"dequantize_4bit {qt} bs=64", tq, 4 * n + n // 2 + n // 16, memcpy, ref)
        row(f"dequantize_4bit {qt} bs=64 (out=)", best(lambda: QF.dequantize_4bit(p, st, out=y)),
            4 * n + n // 2 + n // 16, memcpy, ref)
    A = x.reshape(-1, 1024)
    tq = best(lambda: QF.int8_vectorwise_quant(A))
    ref = best(lambda: BF.int8_vectorwise_quant(tx.view(-1, 1024).clone())) if bnb else None
    row("int8_vectorwise_quant", tq, 5 * n, memcpy, ref)
    q8, stats, _ = QF.int8_vectorwise_quant(A)
    tq = best(lambda: QF.int8_vectorwise_dequant(q8, stats))
    if bnb:
        bq8, bst8, _ = BF.int8_vectorwise_quant(tx.view(-1, 1024).clone())
        ref = best(lambda: BF.int8_vectorwise_dequant(bq8, bst8))
    row("int8_vectorwise_dequant", tq, 5 * n, memcpy, ref)

def layers(args, memcpy):
    nn = getattr(qembed, "nn", None)
    if nn is None:
        print("\n(qembed.nn not available: layer comparisons skipped)")
        return
    print("\nembedding lookups (65536 random rows unless noted), f32")
    shapes = [(30522, 384)] if args.quick else [(30522, 384), (1_000_000, 128), (250_000, 1024)]
    rng = np.random.default_rng(1)
    for rows, dim in shapes:
        idx = rng.integers(0, rows, 65536)
        emb = nn.Embedding(rows, dim)
        tq = best(lambda: emb(idx))
        ref = None
        if torch is not None:
            w = torch.from_numpy(emb.weight.data.copy())
            ti = torch.from_numpy(idx)
            out = torch.empty(65536, dim)
            ref = best(lambda: torch.index_select(w, 0, ti, out=out))
            row(f"torch index_select(out=) {rows}x{dim}", ref, 2 * 65536 * dim * 4, memcpy)
            tf = best(lambda: torch.nn.functional.embedding(ti, w))
            row(f"torch F.embedding {rows}x{dim}", tf, 2 * 65536 * dim * 4, memcpy)
        row(f"qembed Embedding {rows}x{dim} (fresh output)", tq, 2 * 65536 * dim * 4, memcpy, ref, "torch index_select(out=)")
        qout = np.empty((65536, dim), np.float32)
        tqo = best(lambda: emb(idx, out=qout))
        row(f"qembed Embedding {rows}x{dim} (out=)", tqo, 2 * 65536 * dim * 4, memcpy, ref, "torch index_select(out=)")
    rows, dim = 30522, 384
    idx = rng.integers(0, rows, 65536)
    st = nn.StableEmbedding(rows, dim)
    tq = best(lambda: st(idx))
    ref = None
    if bnb is not None:
        bst = bnb.nn.StableEmbedding(rows, dim)
        ti = torch.from_numpy(idx)
        with torch.no_grad():
            ref = best(lambda: bst(ti))
        row(f"bitsandbytes StableEmbedding {rows}x{dim}", ref, 2 * 65536 * dim * 4, memcpy)
    row(f"qembed StableEmbedding {rows}x{dim}", tq, 2 * 65536 * dim * 4, memcpy, ref)
    if torch is not None:
        emb = nn.Embedding(rows, dim, max_norm=1e-3)
        te = torch.nn.Embedding(rows, dim, max_norm=1e-3)
        ti = torch.from_numpy(idx)
        with torch.no_grad():
            ref = best(lambda: te(ti), reps=2)
        row("torch Embedding max_norm", ref, 2 * 65536 * dim * 4, memcpy)
        row("qembed Embedding max_norm", best(lambda: emb(idx), reps=2), 2 * 65536 * dim * 4, memcpy, ref, "torch")
    if bnb is not None and not args.quick:
        rows, dim = 250_000, 1024
        idx = rng.integers(0, rows, 65536)
        w = rng.standard_normal((rows, dim), dtype=np.float32)
        for cls, bcls in ((nn.EmbeddingNF4, bnb.nn.EmbeddingNF4), (nn.Embedding8bit, bnb.nn.Embedding8bit)):
            q = cls(rows, dim)
            q.load_state_dict({"weight": w})
            tq = best(lambda: q(idx))
            b = bcls(rows, dim)
            b.load_state_dict({"weight": torch.from_numpy(w)})
            b = b.to("cpu")
            ti = torch.from_numpy(idx)
            try:
                with torch.no_grad():
                    ref = best(lambda: b(ti), reps=1)
                row(f"bitsandbytes {bcls.__name__} {rows}x{dim}", ref, 65536 * dim * 4, memcpy)
            except Exception as e:  # upstream may refuse on CPU
                print(f"  bitsandbytes {bcls.__name__}: {type(e).__name__}: {e}")
                ref = None
            row(f"qembed {cls.__name__} {rows}x{dim}", tq, 65536 * dim * 4, memcpy, ref)


def bags(args, memcpy):
    """EmbeddingBag and scoring (issue #18's anchors): torch F.embedding_bag, FBGEMM's row-wise
    int8/4-bit bags, W @ q, and faiss IndexScalarQuantizer (QT_8bit) when installed."""
    nn = qembed.nn
    rng = np.random.default_rng(2)
    rows, dim, nb, per = (50_000, 128, 1024, 40) if args.quick else (250_000, 128, 4096, 40)
    print(f"\nbags: {nb} bags of {per} random rows of {rows}x{dim} (GB/s of rows read)")
    w = rng.standard_normal((rows, dim), dtype=np.float32)
    idx = rng.integers(0, rows, nb * per)
    off = np.arange(nb, dtype=np.int64) * per
    bag = nn.EmbeddingBag.from_pretrained(w, mode="sum")
    anchors = {}  # name -> (label, function of the offsets tensor)
    if torch is not None:
        tw, ti = torch.from_numpy(w), torch.from_numpy(idx)
        anchors["f32"] = ("torch F.embedding_bag", lambda to: torch.nn.functional.embedding_bag(ti, tw, to, mode="sum"))
        try:
            p8 = torch.ops.quantized.embedding_bag_byte_prepack(tw)
            p4 = torch.ops.quantized.embedding_bag_4bit_prepack(tw)
            anchors["int8"] = ("FBGEMM embedding_bag_byte_rowwise_offsets",
                               lambda to: torch.ops.quantized.embedding_bag_byte_rowwise_offsets(p8, ti, to, mode=0))
            anchors["nf4"] = ("FBGEMM embedding_bag_4bit_rowwise_offsets",
                              lambda to: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(p4, ti, to, mode=0))
        except Exception as e:  # torch built without FBGEMM
            print(f"  FBGEMM quantized bags unavailable: {type(e).__name__}: {e}")
    print("  (each qembed row against its reference: best times, and the median ratio of 15 back-to-back pairs)")
    tables = [("f32", bag, dim * 4), ("int8", nn.Embedding8bit.from_embedding(bag), dim + 4),
              ("nf4", nn.EmbeddingNF4.from_embedding(bag), dim // 2 + 4 * (dim // 64))]
    # The bars' layout, then the same indices as bags of 5 (many small bags: the per-bag cost
    # shows; not a bar).
    off5 = np.arange(nb * per // 5, dtype=np.int64) * 5
    for offsets, suffix in ((off, ""), (off5, ", bags of 5")):
        if suffix:
            print(f"  the same {nb * per} indices as {offsets.size} bags of 5:")
        to = torch.from_numpy(offsets) if torch is not None else None
        for name, layer, row_bytes in tables:
            run = ((lambda: layer(idx, offsets)) if name == "f32"
                   else (lambda: layer.bag(idx, offsets, mode="sum")))
            nbytes = nb * per * row_bytes
            if name in anchors:
                label, fn = anchors[name]
                tr, t, ratio = paired(lambda: fn(to), run)
                row(label + suffix, tr, nbytes, memcpy)
                row(f"qembed {name} bag sum{suffix}", t, nbytes, memcpy, vs=label + suffix, ratio=ratio)
            else:
                row(f"qembed {name} bag sum{suffix}", best(run), nbytes, memcpy)

    rows, dim = (8192, 384) if args.quick else (30522, 384)
    print(f"\nscoring: queries against every row of {rows}x{dim} (a tied LM head; GB/s of table)")
    w = rng.standard_normal((rows, dim), dtype=np.float32)
    emb = nn.Embedding.from_pretrained(w)
    nf4 = nn.EmbeddingNF4.from_embedding(emb)
    for nq in (1, 64):
        q = rng.standard_normal((nq, dim), dtype=np.float32)
        ref = None
        if torch is not None:
            tw, tq = torch.from_numpy(w), torch.from_numpy(q[0] if nq == 1 else q.T.copy())
            ref = best(lambda: tw @ tq)
            row(f"torch f32 W @ q, {nq} quer{'y' if nq == 1 else 'ies'}", ref, rows * dim * 4, memcpy)
        for name, layer, nbytes in (("f32", emb, rows * dim * 4), ("nf4", nf4, rows * dim // 2)):
            t = best(lambda: layer.score(q))
            row(f"qembed {name} score, {nq} quer{'y' if nq == 1 else 'ies'}", t, nbytes, memcpy, ref, "torch f32 W @ q")
    rows, dim, nq = (100_000, 128, 16) if args.quick else (1_000_000, 128, 16)
    print(f"\ntop-10 inner-product search over {rows}x{dim} int8 rows")
    w = rng.standard_normal((rows, dim), dtype=np.float32)
    q8 = nn.Embedding8bit.from_embedding(nn.Embedding.from_pretrained(w))
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(w)
        index.add(w)
    except ImportError:
        faiss = index = None
        print("  faiss not installed (pip install faiss-cpu): qembed alone")
    for n in (1, nq):
        q = rng.standard_normal((n, dim), dtype=np.float32)
        ref = None
        if index is not None:
            ref = best(lambda: index.search(q, 10))
            row(f"faiss IndexScalarQuantizer QT_8bit, {n} quer{'y' if n == 1 else 'ies'}", ref, rows * dim, memcpy)
        row(f"qembed int8 score(k=10), {n} quer{'y' if n == 1 else 'ies'}", best(lambda: q8.score(q, k=10)), rows * dim, memcpy,
            ref, "faiss")


def optimizers(args, memcpy):
    rng = np.random.default_rng(1)
    nn = getattr(qembed, "nn", None)
    optim = getattr(qembed, "optim", None)
    if optim is None or torch is None:
        return
    print("\noptimizer step, 16M float32 parameters")
    numel = (1 << 20) if args.quick else (16 << 20)
    layer = nn.Embedding(numel // 1024, 1024)
    optim.GlobalOptimManager.get_instance().override_config(layer.weight, "optim_bits", 8)
    g = rng.standard_normal((numel // 1024, 1024), dtype=np.float32) * 1e-3
    layer.backward(np.arange(numel // 1024), g)
    # A second layer without the override: Embedding weights keep 32-bit state (optim_bits = 32).
    layer32 = nn.Embedding(numel // 1024, 1024)
    layer32.backward(np.arange(numel // 1024), g)
    tp = torch.nn.Parameter(torch.from_numpy(layer.weight.data.copy()))
    tp.grad = torch.from_numpy(g)
    for name, make, bmake in (("Adam8bit", lambda: optim.Adam8bit(layer.parameters()), lambda: bnb.optim.Adam8bit([tp])),
                              ("Adam (32-bit)", lambda: optim.Adam(layer32.parameters()), lambda: torch.optim.Adam([tp], fused=True)),
                              ("Lion8bit", lambda: optim.Lion8bit(layer.parameters()), lambda: bnb.optim.Lion8bit([tp])),
                              ("SGD8bit", lambda: optim.SGD8bit(layer.parameters(), lr=1e-3, momentum=0.9),
                               lambda: bnb.optim.SGD8bit([tp], lr=1e-3, momentum=0.9))):
        o = make()
        # bytes moved per parameter: p r/w, g, each state r/w (4 + 4 bytes 32-bit, 1 + 1 8-bit)
        nbytes = 28 if "32-bit" in name else (16 if "Adam" in name else 14)
        tq = best(lambda: o.step(), reps=5)
        ref = None
        if bnb is not None:
            bo = bmake()
            ref = best(lambda: bo.step(), reps=2)
            row(f"reference {name} ({type(bo).__module__.split('.')[0]})", ref, numel * nbytes, memcpy)
        row(f"qembed {name}", tq, numel * nbytes, memcpy, ref, type(bo).__module__.split('.')[0] if bnb is not None else "")
    # A learning-rate schedule changes lr before every step: set in place
    # (qembed_optimizer_set_params), so this row should equal the Adam8bit one.
    sched = optim.Adam8bit(layer.parameters())

    def scheduled_step():
        sched.param_groups[0]["lr"] *= 0.999
        sched.step()
    row("qembed Adam8bit, lr changed before every step", best(scheduled_step, reps=5), numel * 16, memcpy)
    # max_unorm (32-bit state): the update scaled by min(1, max_unorm * ||p|| / ||u||) needs the
    # norms of the whole tensor first: a read-only pass (p, g, m, v) and then the step (44 bytes).
    unorm = optim.Adam(layer32.parameters(), args=optim.optimizer.MockArgs(
        {"optim_bits": 32, "min_8bit_size": 4096, "max_unorm": 0.5, "skip_zeros": False}))
    row("qembed Adam (32-bit), max_unorm=0.5", best(lambda: unorm.step(), reps=5), numel * 44, memcpy)
    to = torch.optim.Adam([tp], foreach=True)
    row("torch Adam foreach (32-bit)", best(lambda: to.step(), reps=2), numel * 28, memcpy)
    if bnb is not None:
        bo = bnb.optim.Adam([tp])
        row("bitsandbytes Adam (32-bit)", best(lambda: bo.step(), reps=2), numel * 28, memcpy)


def offload(args, memcpy):
    """AdamW8bit stepping a torch model's CPU parameters in place (wrapped,
    no copy of weights or gradients), beside the same step on qembed-owned
    parameters of the same sizes, torch's fused AdamW and bitsandbytes'
    AdamW8bit: 100M parameters as a 12-layer MLP stack with biases."""
    if torch is None:
        return
    width, depth = (512, 4) if args.quick else (2048, 24)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    print(f"\nAdamW8bit on a torch model's CPU parameters: {numel / 1e6:.1f}M parameters in {len(params)} tensors")
    rng = np.random.default_rng(3)
    for p in params:
        p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32) * 1e-3)
    nbytes = numel * 16
    wrapped = qembed.optim.AdamW8bit(model.parameters())
    owned = [qembed.nn.Parameter(p.detach().numpy()) for p in params]
    for q, p in zip(owned, params):
        q.grad = p.grad.numpy().copy()
    oo = qembed.optim.AdamW8bit(owned)
    # alternated, best of 7 each: this machine's step times drift by 15% between runs
    tw = to = float("inf")
    best(lambda: (wrapped.step(), oo.step()), reps=1, warmup=2)
    for _ in range(7):
        tw = min(tw, best(lambda: wrapped.step(), reps=1, warmup=0))
        to = min(to, best(lambda: oo.step(), reps=1, warmup=0))
    row("qembed AdamW8bit, qembed-owned parameters", to, nbytes, memcpy)
    row("qembed AdamW8bit, wrapped torch parameters", tw, nbytes, memcpy)
    print(f"    wrapped / owned step time: {tw / to:.3f}")
    tf = torch.optim.AdamW(params, fused=True)
    ref = best(lambda: tf.step(), reps=3)
    row("torch AdamW fused (32-bit)", ref, numel * 28, memcpy)
    print(f"    qembed wrapped AdamW8bit vs torch fused AdamW: {ref / tw:.2f}x")
    if bnb is not None:
        bo = bnb.optim.AdamW8bit(params)
        tb = best(lambda: bo.step(), reps=1, warmup=1)
        row("bitsandbytes AdamW8bit", tb, nbytes, memcpy)
        print(f"    qembed wrapped AdamW8bit vs bitsandbytes AdamW8bit: {tb / tw:.1f}x")
    state = sum(wrapped.state_info(p)["state_bytes"] for p in wrapped.param_groups[0]["params"])
    print(f"    qembed 8-bit state: {state / numel:.3f} bytes/param (torch AdamW: 8)")


if __name__ == "__main__":
    main()
