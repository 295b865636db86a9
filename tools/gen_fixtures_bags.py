#!/usr/bin/env python3
"""Generate the EmbeddingBag golden fixtures (Tests/golden/bags/) from torch (#18).

Run with the reference venv (torch CPU):

    /work/refvenv/bin/python tools/gen_fixtures_bags.py

Writes Tests/golden/bags/manifest.json and one compressed .npz per case
(numeric arrays only: np.load(allow_pickle=False) reads them). The Python
tests (bindings/python/tests/test_embedding_bag.py) need numpy alone.

Each case is one torch.nn.EmbeddingBag built with ``_weight`` (so
initialization does not matter; the padding row is kept as given, as torch
does with _weight), one forward and, unless noted, one backward:

  weight          the table (bfloat16 stored as uint16 bit patterns)
  input, offsets  the indices (int32 or int64; 2-D cases have no offsets)
  psw             per_sample_weights (mode sum only), in the weight's dtype
  grad_output     d loss / d out, in the weight's dtype
  out             torch's output (the weight's dtype)
  weight_after    the weight after forward (max_norm cases: rows renormalized)
  grad            dense weight.grad (torch keeps it in the weight's dtype)
  grad_indices,   sparse=True: weight.grad.coalesce() (sorted distinct rows
  grad_values     and their summed values)
  psw_grad        per_sample_weights.grad
  out_f32,        half cases: the same run on the table converted to float32
  grad_f32,       (and float32 grad_output / psw). Rows are read as float32 in
  psw_grad_f32    both libraries, so this is the exact float32 result the half
                  output is a rounding of.

Values are drawn fresh (seeded) as standard normals times 10**U(-3, 2), so a
table spans five orders of magnitude and no value is round. Bags include
empty ones (first, middle and last), bags of padding only, repeated indices,
trailing indices after the last offset (include_last_offset), and duplicate
rows (ties in mode max).
"""

import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "Tests", "golden", "bags")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MANIFEST = {"generator": "tools/gen_fixtures_bags.py", "torch": torch.__version__, "numpy": np.__version__,
            "bfloat16_storage": "uint16 bit patterns", "cases": {}}


def to_numpy(t):
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def spread(rng, shape, lo=-3.0, hi=2.0):
    """Standard normals times 10**U(lo, hi): five orders of magnitude, nothing round."""
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(lo, hi, shape)).astype(np.float32)


def offsets_with_empty_bags(rng, count, bags):
    """Sorted offsets starting at 0 with empty bags at the start, in the middle and at the end."""
    inner = np.sort(rng.integers(0, count + 1, bags - 4))
    return np.concatenate([[0, 0], inner[: len(inner) // 2], [inner[len(inner) // 2]] * 2,
                           inner[len(inner) // 2 + 1:], [count]]).astype(np.int64)


def run(name, W, inp, offsets=None, psw=None, mode="mean", include_last_offset=False, padding_idx=None,
        max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False, dtype="float32", backward=True,
        seed=0, note=None):
    tdt = DTYPES[dtype]
    params = {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx,
              "max_norm": max_norm, "norm_type": norm_type, "scale_grad_by_freq": scale_grad_by_freq,
              "sparse": sparse, "dtype": dtype, "index_dtype": str(inp.dtype), "input_ndim": inp.ndim,
              "rows": int(W.shape[0]), "dim": int(W.shape[1]), "per_sample_weights": psw is not None,
              "backward": backward}
    if note:
        params["note"] = note

    def once(table_dtype, inp=inp, psw_values=None):
        m = torch.nn.EmbeddingBag(W.shape[0], W.shape[1], max_norm=max_norm, norm_type=norm_type,
                                  scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse,
                                  _weight=torch.from_numpy(W.copy()).to(table_dtype),
                                  include_last_offset=include_last_offset, padding_idx=padding_idx)
        args = [torch.from_numpy(inp)]
        args.append(None if offsets is None else torch.from_numpy(offsets))
        p = None
        if psw is not None:
            p = torch.from_numpy(psw[: inp.size] if psw_values is None else psw_values).to(table_dtype)
            p.requires_grad_(True)
        out = m(args[0], args[1], p)
        res = {"out": out, "weight_after": m.weight.detach().clone()}
        if backward:
            G = torch.from_numpy(grad_output).to(table_dtype)
            out.backward(G)
            g = m.weight.grad
            if g.is_sparse:
                g = g.coalesce()
                res["grad_indices"] = g.indices()[0].to(torch.int64)
                res["grad_values"] = g.values()
            else:
                res["grad"] = g
            if p is not None:
                res["psw_grad"] = p.grad
        return out, res

    rng = np.random.default_rng(seed + 7919)
    nbags = (offsets.size - (1 if include_last_offset else 0)) if offsets is not None else inp.shape[0]
    grad_output = spread(rng, (nbags, W.shape[1]), -2.0, 1.0)
    out, res = once(tdt)
    assert out.dtype == tdt and tuple(out.shape) == (nbags, W.shape[1])
    arrays = {"weight": torch.from_numpy(W).to(tdt), "input": inp}
    if offsets is not None:
        arrays["offsets"] = offsets
    if psw is not None:
        arrays["psw"] = torch.from_numpy(psw).to(tdt)
    if backward:
        arrays["grad_output"] = torch.from_numpy(grad_output).to(tdt)
    arrays.update(res)
    if max_norm is None:
        del arrays["weight_after"]  # unchanged by forward
    trailing = offsets is not None and include_last_offset and offsets.size and int(offsets[-1]) < inp.size
    params["trailing"] = bool(trailing)
    if trailing:
        # torch defines include_last_offset only for offsets[-1] == len(input)
        # (CSR). With indices after the last offset its sum forward excludes
        # them, but mode mean divides by a count that includes them, mode max
        # takes them into the maximum, and backward gives them (and their
        # per-sample weights) the last bag's gradient. The header defines them
        # as in no bag: the run on input[:offsets[-1]] is that definition.
        _, rt = once(tdt, inp=inp[: int(offsets[-1])])
        for k in ("out", "grad", "psw_grad", "grad_indices", "grad_values"):
            if k in rt:
                v = to_numpy(rt[k])
                if k == "psw_grad":
                    v = np.concatenate([v, np.zeros(inp.size - v.size, v.dtype)])
                arrays[k + "_trunc"] = v
    if dtype != "float32":
        # the same half-precision values, read as float32
        Wh = torch.from_numpy(W).to(tdt).float().numpy()
        saved_W, W = W, Wh
        if psw is not None:
            saved_psw, psw = psw, torch.from_numpy(psw).to(tdt).float().numpy()
        saved_g, grad_output = grad_output, torch.from_numpy(grad_output).to(tdt).float().numpy()
        _, r32 = once(torch.float32)
        for k in ("out", "grad", "psw_grad", "grad_values"):
            if k in r32:
                arrays[k + "_f32"] = r32[k]
        W, grad_output = saved_W, saved_g
        if psw is not None:
            psw = saved_psw
    arrays = {k: to_numpy(v) if isinstance(v, torch.Tensor) else np.ascontiguousarray(v) for k, v in arrays.items()}
    path = os.path.join(OUT, name + ".npz")
    np.savez_compressed(path, **arrays)
    MANIFEST["cases"][name] = {"params": params, "file": name + ".npz", "arrays": sorted(arrays)}


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".npz"):
            os.remove(os.path.join(OUT, f))
    seed = 100

    # Every mode, a handful of dims (odd ones included), offsets with empty bags;
    # int64 and int32 indices alternate.
    for mode in ("sum", "mean", "max"):
        for k, dim in enumerate((1, 3, 17, 64, 130)):
            seed += 1
            rng = np.random.default_rng(seed)
            rows = 40 if dim < 100 else 24
            W = spread(rng, (rows, dim))
            count = int(rng.integers(60, 120))
            idt = np.int64 if k % 2 == 0 else np.int32
            inp = rng.integers(0, rows, count).astype(idt)
            offs = offsets_with_empty_bags(rng, count, 12).astype(idt)
            run(f"{mode}_d{dim}", W, inp, offs, mode=mode, seed=seed)

    # include_last_offset: indices after the last offset belong to no bag (no
    # output, no gradient); also the plain case where the last offset == count.
    for mode in ("sum", "mean", "max"):
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (30, 17))
        inp = rng.integers(0, 30, 50).astype(np.int64)
        offs = np.array([0, 4, 4, 11, 20, 33, 41], dtype=np.int64)  # indices 41..49 trail
        run(f"{mode}_last_offset_trailing", W, inp, offs, mode=mode, include_last_offset=True, seed=seed)
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (30, 17))
    inp = rng.integers(0, 30, 40).astype(np.int32)
    run("mean_last_offset_full", W, inp, np.array([0, 0, 9, 25, 40], dtype=np.int32), mode="mean",
        include_last_offset=True, seed=seed)
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (30, 17))
    run("sum_last_offset_single", W, rng.integers(0, 30, 6).astype(np.int64), np.array([0], dtype=np.int64),
        mode="sum", include_last_offset=True, seed=seed, backward=False,
        note="one offset: zero bags (torch's backward here reads uninitialized memory: no grad recorded)")

    # 2-D input: fixed-length bags.
    for mode in ("sum", "mean", "max"):
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (40, 64))
        run(f"{mode}_2d", W, rng.integers(0, 40, (7, 5)).astype(np.int64), mode=mode, seed=seed)
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (40, 3))
    run("sum_2d_psw_int32", W, rng.integers(0, 40, (6, 4)).astype(np.int32), psw=spread(rng, (6, 4), -2.0, 1.0),
        mode="sum", seed=seed)

    # per_sample_weights (sum only): weight.grad and the weights' gradient.
    for dim in (3, 130):
        seed += 1
        rng = np.random.default_rng(seed)
        rows = 40 if dim < 100 else 24
        W = spread(rng, (rows, dim))
        count = 90
        inp = rng.integers(0, rows, count).astype(np.int64)
        run(f"sum_psw_d{dim}", W, inp, offsets_with_empty_bags(rng, count, 10), psw=spread(rng, count, -2.0, 1.0),
            mode="sum", seed=seed)
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (30, 17))
    inp = rng.integers(0, 30, 50).astype(np.int64)
    inp[[3, 7, 44]] = 4
    run("sum_psw_padding_trailing", W, inp, np.array([0, 4, 4, 11, 20, 41], dtype=np.int64),
        psw=spread(rng, 50, -2.0, 1.0), mode="sum", include_last_offset=True, padding_idx=4, seed=seed)

    # padding_idx: skipped in every reduction and in mean's count; bags of
    # padding only give zeros; negative padding_idx counts from the end.
    for mode in ("sum", "mean", "max"):
        for pad in (5, -3):
            seed += 1
            rng = np.random.default_rng(seed)
            rows = 30
            W = spread(rng, (rows, 17))
            count = 60
            inp = rng.integers(0, rows, count).astype(np.int64 if pad > 0 else np.int32)
            p = pad % rows
            inp[rng.random(count) < 0.25] = p
            inp[10:14] = p  # a bag of padding only
            offs = np.array([0, 3, 3, 10, 14, 22, 22, 35, 47, 60], dtype=inp.dtype)
            run(f"{mode}_padding{'_neg' if pad < 0 else ''}", W, inp, offs, mode=mode, padding_idx=pad, seed=seed)
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (30, 17))
    inp = rng.integers(0, 30, (5, 6)).astype(np.int64)
    inp[1, :] = 29
    inp[3, ::2] = 29
    run("mean_2d_padding_neg", W, inp, mode="mean", padding_idx=-1, seed=seed)

    # max_norm: every referenced row (trailing and padding ones too) is
    # renormalized in place before the reduction; weight_after records it.
    for mode, p in (("sum", 2.0), ("mean", 2.0), ("max", 2.0), ("mean", 1.0), ("sum", 1.0)):
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (30, 17), -2.0, 1.0)
        W[[2, 9, 17]] *= 1e-3  # below max_norm under both norms
        inp = rng.integers(0, 30, 40).astype(np.int64)
        inp[[0, 5, 39]] = 9
        inp[38] = 6
        run(f"{mode}_max_norm_p{int(p)}", W, inp, np.array([0, 6, 6, 15, 30, 37], dtype=np.int64), mode=mode,
            include_last_offset=True, padding_idx=6, max_norm=1.25, norm_type=p, seed=seed)

    # scale_grad_by_freq: each index's gradient divided by its count in the
    # input (no trailing indices: torch's backward mishandles those, see run()).
    for mode in ("sum", "mean"):
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (30, 17))
        inp = rng.integers(0, 12, 48).astype(np.int64)
        run(f"{mode}_sgbf", W, inp, np.array([0, 5, 5, 19, 33, 48], dtype=np.int64), mode=mode,
            include_last_offset=True, scale_grad_by_freq=True, padding_idx=3, seed=seed)

    # sparse gradients (coalesced)
    # (torch refuses sparse=True with scale_grad_by_freq in backward: no such case)
    for mode, extra in (("sum", {}), ("mean", {"padding_idx": 7}), ("sum", {"psw": True})):
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (40, 64))
        inp = rng.integers(0, 20, 70).astype(np.int64)
        inp[::9] = 7
        kw = dict(extra)
        if kw.pop("psw", False):
            kw["psw"] = spread(rng, 70, -2.0, 1.0)
        name = f"{mode}_sparse" + "".join(f"_{k}" for k in extra)
        run(name, W, inp, offsets_with_empty_bags(rng, 70, 9), mode=mode, sparse=True, seed=seed, **kw)

    # ties in mode max: duplicate rows; the first index holding the maximum gets the gradient
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (20, 17))
    W[11] = W[4]
    W[13, :8] = W[4, :8]
    inp = np.array([11, 4, 13, 2, 4, 11, 13, 13, 4, 11, 0, 19], dtype=np.int64)
    run("max_ties", W, inp, np.array([0, 3, 6, 9], dtype=np.int64), mode="max", seed=seed)

    # float16 / bfloat16 tables: output in the table's dtype (out_f32 is the
    # same run in float32: what the half output rounds).
    for dtype in ("float16", "bfloat16"):
        for mode in ("sum", "mean", "max"):
            for dim in (17, 64):
                seed += 1
                rng = np.random.default_rng(seed)
                W = spread(rng, (40, dim), -3.0, 1.0)
                count = 80
                inp = rng.integers(0, 40, count).astype(np.int64 if dim == 17 else np.int32)
                run(f"{dtype}_{mode}_d{dim}", W, inp, offsets_with_empty_bags(rng, count, 12).astype(inp.dtype),
                    mode=mode, dtype=dtype, padding_idx=0 if mode == "mean" else None, seed=seed)
        seed += 1
        rng = np.random.default_rng(seed)
        W = spread(rng, (40, 17), -3.0, 1.0)
        run(f"{dtype}_sum_psw", W, rng.integers(0, 40, 60).astype(np.int64),
            offsets_with_empty_bags(rng, 60, 8), psw=spread(rng, 60, -2.0, 1.0), mode="sum", dtype=dtype, seed=seed)

    # A larger sum case: long bags (float32 sums in index order are exact in both).
    seed += 1
    rng = np.random.default_rng(seed)
    W = spread(rng, (200, 64))
    inp = rng.integers(0, 200, 3000).astype(np.int64)
    run("sum_long_bags", W, inp, np.sort(np.concatenate([[0], rng.integers(0, 3000, 15)])).astype(np.int64),
        mode="sum", seed=seed, backward=False)

    with open(os.path.join(OUT, "manifest.json.tmp"), "w") as fh:
        json.dump(MANIFEST, fh, indent=1, sort_keys=True)
    os.replace(os.path.join(OUT, "manifest.json.tmp"), os.path.join(OUT, "manifest.json"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(MANIFEST['cases'])} cases to {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
