#!/usr/bin/env python3
"""word2vec with qembed: the `qembed demo` (Sources/QembedCLI/Demo.swift) in Python.

Skip-gram with negative sampling on a generated corpus with planted clusters
(Zipf frequencies), a StableEmbedding input table (32-bit Adam state, as
bitsandbytes registers it) and a sparse Embedding output table whose weight
is overridden to 8-bit state, trained with Adam8bit. Then the trained table is
quantized to NF4 (plain and nested statistics) and int8, saved, reloaded and
compared: file bytes, table bytes per parameter, error, nearest-neighbour
cluster accuracy and lookup speed.

    python3 examples/word2vec.py --quick      # a few seconds
    python3 examples/word2vec.py              # the full run (about a minute)

Run from bindings/python (or with qembed importable and libqembed built).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import qembed  # noqa: E402
from qembed import nn, optim  # noqa: E402


class Corpus:
    """`vocab` tokens in `clusters` hidden clusters (token t is in cluster
    t % clusters), Zipf frequencies over a random permutation, sentences of
    16 tokens that stay in one cluster 85% of the time."""

    def __init__(self, vocab, clusters, length, seed):
        rng = np.random.default_rng(seed)
        self.vocab, self.clusters = vocab, clusters
        rank = np.empty(vocab, np.int64)
        rank[rng.permutation(vocab)] = np.arange(vocab)
        weight = 1.0 / (rank + 10.0)
        # per-cluster cumulative weights, normalized, laid end to end with an
        # offset of one per cluster so a single searchsorted draws from any cluster
        members = [np.arange(c, vocab, clusters) for c in range(clusters)]
        per = max(len(m) for m in members)
        cum = np.full((clusters, per), np.inf)
        ids = np.full((clusters, per), -1, np.int64)
        for c, m in enumerate(members):
            w = np.cumsum(weight[m])
            cum[c, :len(m)] = w / w[-1] + c
            ids[c, :len(m)] = m
        n_sent = -(-length // 16)
        sent_cluster = np.repeat(rng.integers(0, clusters, n_sent), 16)
        stay = rng.random(n_sent * 16) < 0.85
        cluster = np.where(stay, sent_cluster, rng.integers(0, clusters, n_sent * 16))
        u = rng.random(n_sent * 16) + cluster
        flat = np.searchsorted(cum.reshape(-1), u, side="left")
        flat = np.minimum(flat, cluster * per + np.array([len(members[c]) for c in range(clusters)])[cluster] - 1)
        self.tokens = ids.reshape(-1)[flat][:length]
        self.counts = np.bincount(self.tokens, minlength=vocab)
        p = self.counts.astype(np.float64) ** 0.75
        self.neg_p = p / p.sum()


def neighbour_accuracy(rows, clusters, queries, candidates):
    """Fraction of queries whose nearest other candidate (cosine) is in the
    same hidden cluster. `rows` are the (LayerNorm-ed) vectors of all tokens."""
    x = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    sims = x[queries] @ x[candidates].T
    sims[queries[:, None] == candidates[None, :]] = -np.inf
    best = candidates[np.argmax(sims, axis=1)]
    return float(np.mean(best % clusters == queries % clusters))


def layer_norm(w, weight, bias, eps=1e-5):
    mean = w.mean(axis=1, keepdims=True)
    var = ((w - mean) ** 2).mean(axis=1, keepdims=True)
    return (w - mean) / np.sqrt(var + eps) * weight + bias


def lookup_rate(fn, vocab, n=65536):
    idx = np.random.default_rng(99).integers(0, vocab, n)
    best = np.inf
    for _ in range(4):
        t = time.perf_counter()
        fn(idx)
        best = min(best, time.perf_counter() - t)
    return n / best


def human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds instead of about a minute")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out-dir", default="/tmp")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    vocab, clusters, dim = (2000, 20, 32) if args.quick else (10000, 40, 64)
    steps = 300 if args.quick else 2500
    batch, window, negatives = 1024, 3, 5
    print(f"qembed {qembed.__version__} word2vec: skip-gram with negative sampling, {vocab} tokens in {clusters} "
          f"hidden clusters, dim {dim}, {qembed.get_num_threads()} threads")
    corpus = Corpus(vocab, clusters, 200_000 if args.quick else 2_000_000, args.seed)
    print(f"corpus: {len(corpus.tokens)} tokens, Zipf frequencies (most frequent token {corpus.counts.max()} times, "
          f"{int(np.sum(corpus.counts == 0))} unseen)")

    inp = nn.StableEmbedding(vocab, dim, seed=args.seed)
    out = nn.Embedding(vocab, dim, sparse=True, seed=args.seed + 1)
    mng = optim.GlobalOptimManager.get_instance()
    # The output table registered optim_bits=32 (as upstream's Embedding); give it 8-bit state.
    mng.override_config(out.weight, "optim_bits", 8)
    opt = optim.Adam8bit(inp.parameters() + [out.weight], lr=3e-3)

    rng = np.random.default_rng(args.seed * 31)
    n_tok = len(corpus.tokens)
    pairs = 1 + negatives
    labels = np.zeros((batch, pairs), np.float32)
    labels[:, 0] = 1
    first = avg = None
    t_train = time.perf_counter()
    for step in range(1, steps + 1):
        pos = window + rng.integers(0, n_tok - 2 * window, batch)
        off = (1 + rng.integers(0, window, batch)) * np.where(rng.random(batch) < 0.5, -1, 1)
        centers = corpus.tokens[pos]
        targets = np.empty((batch, pairs), np.int64)
        targets[:, 0] = corpus.tokens[pos + off]
        targets[:, 1:] = rng.choice(vocab, (batch, negatives), p=corpus.neg_p)
        u = inp(centers)  # (B, D)
        v = out(targets)  # (B, 1 + negatives, D)
        s = np.einsum("bd,bpd->bp", u, v)
        sig = 1.0 / (1.0 + np.exp(-s))
        loss = -np.mean(np.sum(np.where(labels == 1, np.log(np.maximum(sig, 1e-7)),
                                        np.log(np.maximum(1 - sig, 1e-7))), axis=1))
        g = ((sig - labels) / batch).astype(np.float32)
        opt.zero_grad()
        inp.backward(centers, np.einsum("bp,bpd->bd", g, v))
        out.backward(targets, g[:, :, None] * u[:, None, :])
        opt.step()
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        first = loss if first is None else first
        if step % max(steps // 10, 1) == 0 or step == steps:
            print(f"  step {step:5d}  loss {avg:.4f}", flush=True)
    train_time = time.perf_counter() - t_train
    print(f"training: {steps} steps of {batch} pairs (+{negatives} negatives each) in {train_time:.2f} s; "
          f"loss {first:.4f} -> {avg:.4f}")
    print("optimizer state (Adam8bit with per-parameter overrides):")
    for label, p in [("input.weight", inp.weight), ("input.norm.weight", inp.norm.weight),
                     ("input.norm.bias", inp.norm.bias), ("output.weight", out.weight)]:
        info = opt.state_info(p)
        extra = ", row-aligned blocks for sparse rows" if info["row_aligned"] else ""
        print(f"  {label}: {info['bits']}-bit state, {human(info['state_bytes'])} for {p.numel()} params "
              f"({info['state_bytes'] / p.numel():.3f} B/param){extra}")

    frequent = np.nonzero(corpus.counts >= 5)[0]
    queries = frequent[:500 if args.quick else 2000]
    all_ids = np.arange(vocab)
    acc = neighbour_accuracy(inp(all_ids), clusters, queries, frequent)
    print(f"nearest-neighbour cluster accuracy (cosine, {len(queries)} tokens): {100 * acc:.2f}% "
          f"(chance {100 / clusters:.2f}%)")

    print(f"\nquantized copies of the trained {vocab} x {dim} table:")
    print("  kind      file bytes   table B/param  max abs err   RMSE        NN accuracy  lookup rows/s")
    weight = inp.weight.data.copy()
    nw, nb = inp.norm.weight.data, inp.norm.bias.data
    path = os.path.join(args.out_dir, "qembed-py-demo-f32.safetensors")
    inp.save(path)
    rate = lookup_rate(inp, vocab)
    print(f"  {'f32':10s}{human(os.path.getsize(path)):13s}{'4':15s}{'0':14s}{'0':12s}{100 * acc:6.2f}%      "
          f"{rate:.3g}  (StableEmbedding: gather + LayerNorm)")
    results = {"f32": acc}
    for name, cls, kw in [("nf4", nn.EmbeddingNF4, {}), ("nf4+nest", nn.EmbeddingNF4, {"compress_statistics": True}),
                          ("int8", nn.Embedding8bit, {})]:
        q = cls.from_embedding(inp, **kw)
        path = os.path.join(args.out_dir, f"qembed-py-demo-{name.replace('+', '-')}.safetensors")
        q.save(path)
        r = cls.load(path)
        deq = r(all_ids)
        assert np.array_equal(deq, q(all_ids)), "the reloaded table differs"
        err = np.abs(deq - weight)
        qacc = neighbour_accuracy(layer_norm(deq, nw, nb), clusters, queries, frequent)
        results[name] = qacc
        rate = lookup_rate(r, vocab)
        print(f"  {name:10s}{human(os.path.getsize(path)):13s}{r.memory_bytes() / weight.size:<15.3f}"
              f"{err.max():<14.3g}{np.sqrt(np.mean(err ** 2)):<12.3g}{100 * qacc:6.2f}%      {rate:.3g}")
        q.close()
        r.close()
    print(f"files in {args.out_dir} (qembed-py-demo-*.safetensors); total {time.perf_counter() - t0:.2f} s")
    ok = avg < first and acc > 3.0 / clusters
    print("result:", "ok" if ok else "FAILED (the loss did not fall or the clusters were not recovered)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
