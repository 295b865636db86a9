"""qembed.nn.EmbeddingBag and the quantized layers' bag() (#18): torch's
nn.EmbeddingBag fixtures (Tests/golden/bags, written by
tools/gen_fixtures_bags.py), fresh random data against a float64 numpy
reference and against the float32 order qembed.h specifies, training with
qembed.optim against torch.optim (skipped without torch), quantized bags
against "dequantize, then reduce", and bad input (exceptions, nothing
changed).

Error bounds. gamma(n) = n u / (1 - n u), u = 2**-24. A float32 sum of m
terms, in any order, is within gamma(m - 1) * sum |term| of the exact sum;
each rounded product or quotient feeding it adds one more u. So against the
float64 reference a bag, gradient row or per-sample-weight gradient of m
terms is held to gamma(m + 2) * sum |term|, and against torch (which is
within the same bound of the exact value) to twice that.
"""

import ctypes
import inspect
import json
import os
import sys

import numpy as np
import pytest

import qembed
from qembed import _capi as C
from qembed._handle import new_struct
from qembed.nn import Embedding8bit, EmbeddingBag, EmbeddingFP4, EmbeddingNF4, SparseGrad

from conftest import REPO_ROOT

BAGS_DIR = os.path.join(REPO_ROOT, "Tests", "golden", "bags")
U = 2.0 ** -24

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None


def _manifest():
    path = os.path.join(BAGS_DIR, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


MANIFEST = _manifest()
needs_fixtures = pytest.mark.skipif(MANIFEST is None, reason="Tests/golden/bags not generated")
CASES = sorted(MANIFEST["cases"]) if MANIFEST else []


def torch_or_skip():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def gamma(n):
    n = np.asarray(n, dtype=np.float64)
    return n * U / (1 - n * U)


def bag_ranges(count, offsets, include_last_offset, shape):
    """[(start, end)] of every bag, as qembed.h defines them."""
    if offsets is None:
        B, Lb = shape
        return [(b * Lb, (b + 1) * Lb) for b in range(B)]
    o = [int(v) for v in offsets]
    if include_last_offset:
        return [(o[b], o[b + 1]) for b in range(len(o) - 1)]
    return [(o[b], o[b + 1] if b + 1 < len(o) else count) for b in range(len(o))]


def normalize_pad(pad, rows):
    if pad is None:
        return None
    return pad + rows if pad < 0 else pad


def members(idx, ranges, pad):
    """Per bag, the positions k of its non-padding indices."""
    return [[k for k in range(s, e) if pad is None or idx[k] != pad] for s, e in ranges]


def reference(rows, idx, ranges, mode, psw=None, pad=None):
    """(out, bound): the exact reduction in float64 and the gamma bound of a
    float32 evaluation (zeros for max, which rounds nothing)."""
    rows = np.asarray(rows, dtype=np.float64)
    dim = rows.shape[1]
    out = np.zeros((len(ranges), dim))
    bound = np.zeros((len(ranges), dim))
    for b, ks in enumerate(members(idx, ranges, pad)):
        if not ks:
            continue
        r = rows[idx[ks]]
        if mode == "max":
            out[b] = r.max(axis=0)
            continue
        if psw is not None:
            r = r * np.asarray(psw, dtype=np.float64).reshape(-1)[ks][:, None]
        out[b] = r.sum(axis=0)
        bound[b] = gamma(len(ks) + 2) * np.abs(r).sum(axis=0)
        if mode == "mean":
            out[b] /= len(ks)
            bound[b] /= len(ks)
    return out, bound


def spec_float32(rows, idx, ranges, mode, pad=None):
    """The float32 evaluation qembed.h specifies without per-sample weights:
    rows added in index order in float32 (mean: the sum divided by the
    count), max elementwise, zeros for a bag without non-padding indices."""
    rows = np.asarray(rows, dtype=np.float32)
    out = np.zeros((len(ranges), rows.shape[1]), dtype=np.float32)
    for b, ks in enumerate(members(idx, ranges, pad)):
        if not ks:
            continue
        acc = rows[idx[ks[0]]].copy()
        for k in ks[1:]:
            acc = np.maximum(acc, rows[idx[k]]) if mode == "max" else acc + rows[idx[k]]
        if mode == "mean":
            acc = acc / np.float32(len(ks))
        out[b] = acc
    return out


def grad_reference(rows, idx, ranges, mode, G, psw=None, pad=None, freq=False):
    """(grad, bound) of the weight in float64: each bag's gradient row sent to
    its indices (times the per-sample weight, over mean's count, over the
    index's count in the whole input with freq); max: to the first index
    holding each element's maximum."""
    rows = np.asarray(rows, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    R, dim = rows.shape
    grad = np.zeros((R, dim))
    absum = np.zeros((R, dim))
    terms = np.zeros((R, dim))
    counts = np.bincount(idx, minlength=R) if freq else None
    if psw is not None:
        psw = np.asarray(psw, dtype=np.float64).reshape(-1)
    for b, ks in enumerate(members(idx, ranges, pad)):
        if not ks:
            continue
        if mode == "max":
            r = rows[idx[ks]]
            first = np.argmax(r == r.max(axis=0), axis=0)  # first index wins ties
            cols = np.arange(dim)
            hit = idx[np.asarray(ks)[first]]
            np.add.at(grad, (hit, cols), G[b])
            np.add.at(absum, (hit, cols), np.abs(G[b]))
            np.add.at(terms, (hit, cols), 1)
            continue
        for k in ks:
            c = G[b].copy()
            if psw is not None:
                c *= float(psw[k])
            if mode == "mean":
                c /= len(ks)
            if freq:
                c /= counts[idx[k]]
            grad[idx[k]] += c
            absum[idx[k]] += np.abs(c)
            terms[idx[k]] += 1
    return grad, gamma(terms + 3) * absum


def psw_grad_reference(rows, idx, ranges, G, pad=None):
    rows = np.asarray(rows, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    out = np.zeros(idx.size)
    bound = np.zeros(idx.size)
    for b, ks in enumerate(members(idx, ranges, pad)):
        for k in ks:
            p = G[b] * rows[idx[k]]
            out[k] = p.sum()
            bound[k] = gamma(rows.shape[1] + 2) * np.abs(p).sum()
    return out, bound


def within(actual, expected, bound, what, factor=1.0):
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = np.abs(actual - expected)
    slack = factor * bound
    bad = err > slack
    w = int(np.argmax(err - slack))
    assert not bad.any(), (f"{what}: {int(bad.sum())} elements outside the bound, worst at "
                           f"{np.unravel_index(w, err.shape)}: |{actual.flat[w]} - {expected.flat[w]}| > {slack.flat[w]}")


def f32_ulps(a, b):
    """Elementwise distance in float32 steps."""
    def ordinal(x):
        i = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordinal(a) - ordinal(b))


def half_bits(x, dtype):
    """uint16 bit patterns of a float16 / bfloat16 array (ml_dtypes or bits)."""
    x = np.asarray(x)
    if x.dtype == np.float16 or (BF16 is not None and x.dtype == BF16):
        return x.view(np.uint16)
    if x.dtype == np.uint16:
        return x
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return x.astype(np.float16).view(np.uint16)
    return qembed.io.round_to_bf16_bits(x)  # nearest even


def half_ulps(a_bits, b_bits):
    def ordinal(bits):
        i = bits.astype(np.int64)
        return np.where(i & 0x8000, -(i & 0x7FFF), i)
    return np.abs(ordinal(a_bits) - ordinal(b_bits))


def half_to_f32(bits, dtype):
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


# --------------------------------------------------------------------------
# Fixtures from torch
# --------------------------------------------------------------------------


def load_case(name):
    c = MANIFEST["cases"][name]
    z = np.load(os.path.join(BAGS_DIR, c["file"]), allow_pickle=False)
    return c["params"], {k: z[k] for k in z.files}


def table_of(arr, dtype):
    """A fixture table (bfloat16 as uint16 bits) as the array qembed takes."""
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("bfloat16 arrays need ml_dtypes")
        return arr.view(BF16)
    return arr


def as_f32(arr, dtype):
    if dtype == "bfloat16":
        return half_to_f32(np.asarray(arr).view(np.uint16), dtype)
    return np.asarray(arr, dtype=np.float32)


def layer_for(p, z):
    W = table_of(z["weight"], p["dtype"])
    return EmbeddingBag.from_pretrained(W, freeze=False, max_norm=p["max_norm"], norm_type=p["norm_type"],
                                        scale_grad_by_freq=p["scale_grad_by_freq"], mode=p["mode"],
                                        sparse=p["sparse"], include_last_offset=p["include_last_offset"],
                                        padding_idx=p["padding_idx"])


def call_args(p, z):
    offsets = z.get("offsets")
    psw = z.get("psw")
    if psw is not None:
        psw = table_of(psw, p["dtype"])
    return z["input"], offsets, psw


def ranges_for(p, z):
    inp = z["input"]
    return bag_ranges(inp.size, z.get("offsets"), p["include_last_offset"], inp.shape)


@needs_fixtures
def test_fixture_manifest_records_torch():
    assert MANIFEST["torch"].startswith("2.")
    assert len(CASES) >= 50
    total = sum(os.path.getsize(os.path.join(BAGS_DIR, f)) for f in os.listdir(BAGS_DIR))
    assert total < 2 * 1024 * 1024
    kinds = {(c["params"]["mode"], c["params"]["dtype"]) for c in MANIFEST["cases"].values()}
    assert kinds == {(m, d) for m in ("sum", "mean", "max") for d in ("float32", "float16", "bfloat16")}


@needs_fixtures
@pytest.mark.parametrize("name", CASES)
def test_fixture_forward(name):
    p, z = load_case(name)
    dtype = p["dtype"]
    e = layer_for(p, z)
    inp, offsets, psw = call_args(p, z)
    W0 = as_f32(z["weight"], dtype)
    out = e(inp, offsets, psw)
    assert out.dtype == e.dtype and out.shape == (len(ranges_for(p, z)), p["dim"])
    # With indices after the last offset (torch defines include_last_offset
    # only for offsets[-1] == len(input)) torch's plain sum leaves them out,
    # but its mean divides by a count including them and its max, and its
    # sum with padding_idx and per_sample_weights, reduce them into the last
    # bag. qembed.h puts them in no bag: torch's run on the truncated input
    # is the reference.
    expected = z["out_trunc"] if p["trailing"] else z["out"]
    if name == "sum_last_offset_trailing":
        assert np.array_equal(z["out"], z["out_trunc"])
    elif p["trailing"] and name != "sum_last_offset_single":
        assert not np.array_equal(z["out"], z["out_trunc"]), "torch now agrees: update the comment"
    pad = normalize_pad(p["padding_idx"], p["rows"])
    idx = inp.reshape(-1).astype(np.int64)
    ranges = ranges_for(p, z)
    if p["max_norm"] is not None:
        # Renormalization (the existing Embedding rule) scales a row by
        # max_norm / (norm + 1e-7) computed a little differently from torch:
        # the rows torch renormalized differ by at most 2 float32 steps; the
        # others, trailing and padding ones included, are untouched.
        after = np.asarray(e.weight.data, dtype=np.float32)
        torch_after = z["weight_after"]
        assert f32_ulps(after, torch_after).max() <= 2
        touched = np.unique(idx)
        untouched = np.setdiff1d(np.arange(p["rows"]), touched)
        assert np.array_equal(after[untouched], W0[untouched])
        assert not np.array_equal(after[touched], W0[touched])
        # the bags reduce the renormalized rows in the specified order
        assert np.array_equal(out, spec_float32(after, idx, ranges, p["mode"], pad))
        # and torch's output (from its renormalized rows) is within the
        # rows' 2 steps plus both sums' rounding
        ref, bound = reference(after, idx, ranges, p["mode"], None, pad)
        absrows, _ = reference(np.abs(after), idx, ranges, p["mode"], None, pad)
        within(expected, ref, 2 * bound + 2 * 2.0 ** -23 * np.abs(absrows), f"{name}: torch out")
        return
    if dtype == "float32" and psw is None:
        # Bit-equal: torch (fbgemm's EmbeddingSpMDM and its max loop) and
        # qembed both add the rows in index order in float32, vectorized
        # over the embedding dimension only, and mean divides the sum by the
        # count (no reciprocal); max rounds nothing.
        assert np.array_equal(out, expected), f"{name}: {int((out != expected).sum())} elements differ from torch"
        return
    if dtype == "float32":
        # per_sample_weights: torch (fbgemm) fuses acc + w * row into one
        # FMA, qembed rounds the product first (as in its scoring), so the
        # two differ by rounding: within twice the gamma bound of the exact
        # value, not bit for bit.
        ref, bound = reference(W0, idx, ranges, "sum", z["psw"], pad)
        within(out, ref, bound, f"{name}: qembed out vs float64")
        within(expected, ref, bound, f"{name}: torch out vs float64")
        return
    # float16 / bfloat16 tables: rows read as float32, reduced in float32,
    # rounded once to the table's dtype (nearest even): bit-equal to
    # torch's float32 run on the same (widened) values, rounded.
    bits = half_bits(out, dtype)
    if psw is None:
        assert np.array_equal(bits, half_bits(z["out_f32"], dtype)), name
    else:
        ref, bound = reference(as_f32(z["weight"], dtype), idx, ranges, "sum", as_f32(z["psw"], dtype), pad)
        # one rounding to the half type: half a step (float16 subnormals: 2**-25 absolute)
        rounding = np.abs(ref) * 2.0 ** (-11 if dtype == "float16" else -8) + (2.0 ** -25 if dtype == "float16" else 0)
        within(half_to_f32(bits, dtype), ref, bound + rounding, f"{name}: qembed out vs float64")
    tbits = np.asarray(expected).view(np.uint16)
    d = half_ulps(bits, tbits)
    if p["mode"] == "max" or (p["mode"] == "sum" and dtype == "float16" and psw is None):
        assert np.array_equal(bits, tbits)
    else:
        # torch differs by at most one step of the half type: its mean rounds
        # the sum to the half type and divides there (two roundings), and its
        # bfloat16 conversion (fbgemm) rounds exact ties away from zero.
        assert d.max() <= 1, f"{name}: {d.max()} steps from torch"
        if p["mode"] == "sum" and dtype == "bfloat16" and psw is None:
            f32 = np.ascontiguousarray(z["out_f32"], dtype=np.float32).view(np.uint32)
            tie = (f32 & 0xFFFF) == 0x8000
            assert np.all(tie[d != 0]), f"{name}: differs from torch other than at exact ties"


@needs_fixtures
@pytest.mark.parametrize("name", [n for n in CASES if MANIFEST["cases"][n]["params"]["backward"]])
def test_fixture_backward(name):
    p, z = load_case(name)
    dtype = p["dtype"]
    e = layer_for(p, z)
    inp, offsets, psw = call_args(p, z)
    G = table_of(z["grad_output"], dtype)
    e(inp, offsets, psw)  # max_norm renormalizes here, as in torch
    W = as_f32(e.weight.data if dtype != "bfloat16" else e.weight.data.view(np.uint16), dtype)
    pg = e.backward(inp, G, offsets, psw)
    idx = inp.reshape(-1).astype(np.int64)
    ranges = ranges_for(p, z)
    pad = normalize_pad(p["padding_idx"], p["rows"])
    G32 = as_f32(z["grad_output"], dtype)
    ref, bound = grad_reference(W, idx, ranges, p["mode"], G32, None if psw is None else as_f32(z["psw"], dtype),
                                pad, p["scale_grad_by_freq"])
    suffix = "_trunc" if p["trailing"] else ("_f32" if dtype != "float32" else "")
    g = e.weight.grad
    if p["sparse"]:
        assert isinstance(g, SparseGrad)
        assert np.array_equal(g.indices, z["grad_indices"])  # coalesced: sorted, distinct rows
        within(g.values, ref[g.indices], bound[g.indices], f"{name}: values vs float64")
        tv = z["grad_values"] if dtype == "float32" else z["grad_values_f32"]
        within(tv, ref[g.indices], bound[g.indices], f"{name}: torch values vs float64")
        dense = g.to_dense()
    else:
        assert g.dtype == np.float32  # torch keeps the half type; qembed accumulates float32
        dense = g
        torch_grad = z["grad" + suffix]
        if p["mode"] == "max":
            # each element's gradient goes to one row (ties: the first index
            # holding the maximum); the same rows and, here, the same bits
            assert np.array_equal(g, torch_grad), name
        else:
            within(torch_grad, ref, bound, f"{name}: torch grad vs float64")
    within(dense, ref, bound, f"{name}: grad vs float64")
    if pad is not None:
        assert np.all(dense[pad] == 0)
    if p["trailing"]:
        trailing_only = np.setdiff1d(idx[ranges[-1][1]:], idx[:ranges[-1][1]])
        assert np.all(dense[trailing_only] == 0)
    if psw is None:
        assert pg is None
        return
    assert pg.dtype == np.float32 and pg.shape == inp.shape
    pref, pbound = psw_grad_reference(W, idx, ranges, G32, pad)
    within(pg.reshape(-1), pref, pbound, f"{name}: per_sample_weights grad vs float64")
    tp = z["psw_grad" + suffix].reshape(-1)
    within(tp, pref, pbound, f"{name}: torch per_sample_weights grad vs float64")
    in_bags = np.zeros(idx.size, dtype=bool)
    for s, t in ranges:
        in_bags[s:t] = True
    zero = ~in_bags | ((idx == pad) if pad is not None else False)
    assert np.all(pg.reshape(-1)[zero] == 0)  # padding and indices in no bag
    if p["trailing"]:
        # torch gives trailing indices' weights the last bag's gradient
        assert np.any(z["psw_grad"].reshape(-1)[~in_bags] != 0)


@needs_fixtures
def test_fixture_zero_bags_backward_gives_nothing():
    # include_last_offset with one offset: zero bags. torch's backward here
    # fills weight.grad from uninitialized memory (so the fixture records no
    # gradient); qembed's adds nothing.
    p, z = load_case("sum_last_offset_single")
    e = layer_for(p, z)
    out = e(z["input"], z["offsets"])
    assert out.shape == (0, p["dim"]) and z["out"].shape == out.shape
    e.backward(z["input"], np.zeros((0, p["dim"]), np.float32), z["offsets"])
    assert e.weight.grad is None or not np.any(e.weight.grad)


@needs_fixtures
def test_fixture_index_dtypes_agree():
    # int32 and int64 inputs (and offsets of the other type) give the same bits
    for name in ("sum_d3", "mean_d17", "max_padding_neg", "sum_2d_psw_int32"):
        p, z = load_case(name)
        inp, offsets, psw = call_args(p, z)
        want = layer_for(p, z)(inp, offsets, psw)
        other = np.int32 if inp.dtype == np.int64 else np.int64
        for off in (offsets, None if offsets is None else offsets.astype(other)):
            got = layer_for(p, z)(inp.astype(other), off, psw)
            assert np.array_equal(got, want), name
        if offsets is not None:
            got = layer_for(p, z)(inp, offsets.tolist(), psw)
            assert np.array_equal(got, want), name


# --------------------------------------------------------------------------
# Fresh data against the float64 reference and the specified float32 order
# --------------------------------------------------------------------------


def spread(rng, shape, lo=-3.0, hi=2.0):
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(lo, hi, shape)).astype(np.float32)


def random_offsets(rng, count, bags):
    o = np.sort(rng.integers(0, count + 1, bags))
    o[0] = 0
    return o


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dim", [1, 5, 8, 33])
@pytest.mark.parametrize("form", ["offsets", "last_offset", "2d"])
def test_fresh_forward_backward(rng, mode, dim, form):
    rows = 37
    W = spread(rng, (rows, dim))
    pad = int(rng.integers(-rows, rows)) if rng.random() < 0.5 else None
    e = EmbeddingBag.from_pretrained(W, freeze=False, mode=mode, padding_idx=pad,
                                     include_last_offset=form == "last_offset")
    idt = np.int32 if rng.random() < 0.5 else np.int64
    if form == "2d":
        inp = rng.integers(0, rows, (9, 7)).astype(idt)
        offsets = None
    else:
        inp = rng.integers(0, rows, 150).astype(idt)
        offsets = random_offsets(rng, inp.size, 14)
        if form == "last_offset":
            offsets = np.minimum(offsets, 140)  # indices 140.. trail after the last offset
    if pad is not None:
        inp.reshape(-1)[rng.random(inp.size) < 0.2] = pad % rows
    idx = inp.reshape(-1).astype(np.int64)
    ranges = bag_ranges(idx.size, offsets, form == "last_offset", inp.shape)
    npad = normalize_pad(pad, rows)
    out = e(inp, offsets)
    ref, bound = reference(W, idx, ranges, mode, None, npad)
    within(out, ref, bound, "out vs float64")
    assert np.array_equal(out, spec_float32(W, idx, ranges, mode, npad))
    for b, ks in enumerate(members(idx, ranges, npad)):
        if not ks:
            assert np.all(out[b] == 0)
    G = spread(rng, out.shape, -2.0, 1.0)
    assert e.backward(inp, G, offsets) is None
    gref, gbound = grad_reference(W, idx, ranges, mode, G, None, npad)
    within(e.weight.grad, gref, gbound, "grad vs float64")
    # accumulates, as torch's .grad does
    e.backward(inp, G, offsets)
    within(e.weight.grad, 2 * gref, 2 * gbound + 2 * U * np.abs(2 * gref), "grad accumulated twice")


@pytest.mark.parametrize("dim", [1, 6, 31])
def test_fresh_per_sample_weights(rng, dim):
    rows = 29
    W = spread(rng, (rows, dim))
    pad = 3 if dim == 6 else None
    for form in ("offsets", "2d"):
        e = EmbeddingBag.from_pretrained(W, freeze=False, mode="sum", padding_idx=pad)
        inp = rng.integers(0, rows, (8, 5) if form == "2d" else 90)
        inp.reshape(-1)[::7] = 3
        offsets = None if form == "2d" else random_offsets(rng, inp.size, 10)
        psw = spread(rng, inp.shape, -2.0, 1.0)
        idx = inp.reshape(-1)
        ranges = bag_ranges(idx.size, offsets, False, inp.shape)
        out = e(inp, offsets, psw)
        ref, bound = reference(W, idx, ranges, "sum", psw.reshape(-1), pad)
        within(out, ref, bound, f"{form} out")
        G = spread(rng, out.shape, -2.0, 1.0)
        pg = e.backward(inp, G, offsets, psw)
        assert pg.shape == inp.shape and pg.dtype == np.float32
        pref, pbound = psw_grad_reference(W, idx, ranges, G, pad)
        within(pg.reshape(-1), pref, pbound, f"{form} per_sample_weights grad")
        gref, gbound = grad_reference(W, idx, ranges, "sum", G, psw.reshape(-1), pad)
        within(e.weight.grad, gref, gbound, f"{form} grad")
        # float16 weights are read as float16 values
        e2 = EmbeddingBag.from_pretrained(W, freeze=False, mode="sum", padding_idx=pad)
        out16 = e2(inp, offsets, psw.astype(np.float16))
        ref16, bound16 = reference(W, idx, ranges, "sum", psw.astype(np.float16).astype(np.float32).reshape(-1), pad)
        within(out16, ref16, bound16, f"{form} float16 weights")


def test_scale_grad_by_freq_counts_the_whole_input(rng):
    W = spread(rng, (16, 9))
    for mode in ("sum", "mean"):
        for sparse in (False, True):
            e = EmbeddingBag.from_pretrained(W, freeze=False, mode=mode, scale_grad_by_freq=True, sparse=sparse,
                                             include_last_offset=True, padding_idx=2)
            inp = rng.integers(0, 8, 60)
            offsets = np.array([0, 9, 9, 30, 51])  # 51..59 trail: counted by scale_grad_by_freq, in no bag
            G = spread(rng, (4, 9), -2.0, 1.0)
            e(inp, offsets)
            e.backward(inp, G, offsets)
            g = e.weight.grad
            g = g.to_dense() if sparse else g
            ranges = bag_ranges(60, offsets, True, inp.shape)
            ref, bound = grad_reference(W, inp, ranges, mode, G, None, 2, freq=True)
            within(g, ref, bound, f"{mode} sparse={sparse}")


def test_max_norm_renormalizes_every_referenced_row(rng):
    for p in (1.0, 2.0, float("inf")):
        W = spread(rng, (25, 11), -2.0, 1.0)
        e = EmbeddingBag.from_pretrained(W, freeze=False, mode="sum", max_norm=0.75, norm_type=p,
                                         include_last_offset=True)
        inp = rng.integers(0, 25, 40)
        offsets = np.array([0, 10, 20, 30])  # 30..39 trail: renormalized all the same, as torch
        e(inp, offsets)
        after = np.asarray(e.weight.data, dtype=np.float64)
        touched = np.unique(inp)
        norms = np.linalg.norm(after[touched], ord=p, axis=1)
        assert np.all(norms <= 0.75 * (1 + 1e-6))
        untouched = np.setdiff1d(np.arange(25), touched)
        assert np.array_equal(after[untouched], W[untouched])
        big = touched[np.linalg.norm(W[touched].astype(np.float64), ord=p, axis=1) > 0.75]
        assert big.size and np.allclose(np.linalg.norm(after[big], ord=p, axis=1), 0.75, rtol=1e-6)


def test_max_ties_first_index_wins():
    W = np.array([[1.0, 5.0, -2.0], [1.0, 7.0, -2.0], [0.5, 7.0, -1.0]], dtype=np.float32)
    e = EmbeddingBag.from_pretrained(W, freeze=False, mode="max")
    inp = np.array([2, 1, 0, 0, 1])
    offsets = np.array([0, 3])
    out = e(inp, offsets)
    assert np.array_equal(out, [[1.0, 7.0, -1.0], [1.0, 7.0, -2.0]])
    e.backward(inp, np.array([[1, 2, 3], [10, 20, 30]], np.float32), offsets)
    # bag 0: col 0 max 1.0 first held by row 1 (k=1), col 1 by row 2 (k=0), col 2 by row 2;
    # bag 1: rows 0 then 1 tie everywhere but col 1: row 0, row 1, row 0
    assert np.array_equal(e.weight.grad, [[10, 0, 30], [1, 20, 0], [0, 2, 3]])


def test_empty_and_padding_bags_are_zero_in_every_mode():
    W = np.arange(1, 13, dtype=np.float32).reshape(4, 3) * np.float32(-1.5)
    for mode in ("sum", "mean", "max"):
        e = EmbeddingBag.from_pretrained(W, mode=mode, padding_idx=1)
        out = e(np.array([1, 1, 2, 1]), np.array([0, 0, 2, 4]))
        assert np.all(out[[0, 1, 3]] == 0) and not np.any(np.signbit(out[[0, 1, 3]]))
        assert np.array_equal(out[2], W[2])  # one non-padding index
        assert e(np.zeros((0, 5), np.int64)).shape == (0, 3)
        assert np.all(e(np.zeros((3, 0), np.int64)) == 0)


# --------------------------------------------------------------------------
# The layer: constructor, state, optimizers
# --------------------------------------------------------------------------


def test_constructor_signature_is_torchs():
    names = list(inspect.signature(EmbeddingBag.__init__).parameters)[1:]
    torch_names = ["num_embeddings", "embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq", "mode",
                   "sparse", "_weight", "include_last_offset", "padding_idx", "device", "dtype"]
    assert names[:len(torch_names)] == torch_names
    fp = list(inspect.signature(EmbeddingBag.from_pretrained).parameters)
    assert fp == ["embeddings", "freeze", "max_norm", "norm_type", "scale_grad_by_freq", "mode", "sparse",
                  "include_last_offset", "padding_idx"]
    assert list(inspect.signature(EmbeddingBag.forward).parameters) == ["self", "input", "offsets",
                                                                        "per_sample_weights"]
    torch = sys.modules.get("torch")
    if torch is not None:
        t = list(inspect.signature(torch.nn.EmbeddingBag.__init__).parameters)[1:]
        assert names[:len(t)] == t


def test_defaults_repr_and_init():
    e = EmbeddingBag(300, 16, padding_idx=-1)
    assert e.mode == "mean" and e.include_last_offset is False and e.padding_idx == 299
    W = e.weight.data
    assert np.all(W[299] == 0)
    # N(0, 1), as torch's reset_parameters
    assert abs(W[:299].mean()) < 0.05 and abs(W[:299].std() - 1) < 0.05
    assert np.array_equal(EmbeddingBag(300, 16, padding_idx=-1).weight.data, W)  # seeded
    assert not np.array_equal(EmbeddingBag(300, 16, seed=1).weight.data, W)
    assert repr(EmbeddingBag(10, 3)) == "EmbeddingBag(10, 3, mode='mean')"
    r = repr(EmbeddingBag(10, 3, max_norm=1.0, norm_type=1.0, scale_grad_by_freq=True, mode="sum", padding_idx=2,
                          include_last_offset=True, sparse=True))
    assert r == "EmbeddingBag(10, 3, max_norm=1.0, norm_type=1.0, scale_grad_by_freq=True, mode='sum', padding_idx=2)"
    h = EmbeddingBag(10, 3, dtype="float16")
    assert h.dtype == np.float16 and h(np.array([[1, 2]])).dtype == np.float16


def test_from_pretrained_freeze_state_dict_and_save(tmp_path, rng):
    W = spread(rng, (12, 5))
    frozen = EmbeddingBag.from_pretrained(W, mode="sum")
    assert not frozen.weight.requires_grad
    frozen.backward(np.array([1, 2]), np.ones((1, 5), np.float32), np.array([0]))
    assert frozen.weight.grad is None
    e = EmbeddingBag.from_pretrained(W, freeze=False, mode="sum")
    assert e.weight.requires_grad and [n for n, _ in e.named_parameters()] == ["weight"]
    sd = e.state_dict()
    assert list(sd) == ["weight"] and np.array_equal(sd["weight"], W)
    e2 = EmbeddingBag(12, 5, mode="sum")
    e2.load_state_dict(sd)
    x, o = np.array([3, 4, 5, 11]), np.array([0, 1])
    assert np.array_equal(e2(x, o), e(x, o))
    path = tmp_path / "bag.safetensors"
    e.save(path)
    assert np.array_equal(qembed.io.load_file(path)["weight"], W)
    # a quantized copy of the bag's table, bagged the same way
    q = Embedding8bit.from_embedding(e)
    rows = q(np.arange(12))
    assert np.array_equal(q.bag(x, o, mode="sum"), spec_float32(rows, x, bag_ranges(4, o, False, x.shape), "sum"))


def test_closed_layer_refuses():
    e = EmbeddingBag(5, 2)
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e(np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="closed"):
        e.score(np.ones(2))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_adam_training_matches_torch(mode):
    torch = torch_or_skip()
    rng = np.random.default_rng(42 + len(mode))
    R, D = 64, 24
    W = rng.standard_normal((R, D)).astype(np.float32)
    q = EmbeddingBag.from_pretrained(W, freeze=False, mode=mode)
    t = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(W.copy()), freeze=False, mode=mode)
    oq = qembed.optim.Adam(q.parameters(), lr=1e-2)
    ot = torch.optim.Adam(t.parameters(), lr=1e-2)
    for _ in range(8):
        idx = rng.integers(0, R, 100)
        offs = np.concatenate([[0], np.sort(rng.integers(0, 100, 9))])
        psw = rng.uniform(0.5, 2, 100).astype(np.float32) if mode == "sum" else None
        Y = rng.standard_normal((10, D)).astype(np.float32)
        out = q(idx, offs, psw)
        q.backward(idx, out - Y, offs, psw)  # d/d out of 0.5 |out - Y|^2
        oq.step()
        oq.zero_grad()
        ot.zero_grad()
        o = t(torch.from_numpy(idx), torch.from_numpy(offs), None if psw is None else torch.from_numpy(psw))
        (0.5 * ((o - torch.from_numpy(Y)) ** 2).sum()).backward()
        ot.step()
    got, want = np.asarray(q.weight.data), t.weight.detach().numpy()
    assert np.abs(want - W).max() > 0.05  # it trained
    # bitsandbytes' Adam (qembed's) folds the bias corrections differently
    # from torch's: 8 steps leave them ~2e-7 apart on weights of size ~1
    assert np.abs(got - want).max() <= 1e-5


def test_8bit_optimizer_state_is_8bit_as_for_torchs_embeddingbag():
    e = EmbeddingBag(512, 16)  # 8192 elements >= min_8bit_size
    opt = qembed.optim.Adam8bit(e.parameters())
    assert opt.state_info(e.weight)["bits"] == 8
    plain = qembed.nn.Embedding(512, 16)
    opt32 = qembed.optim.Adam8bit(plain.parameters())
    assert opt32.state_info(plain.weight)["bits"] == 32  # bitsandbytes' Embedding forces 32-bit state


def test_sparse_training_step():
    e = EmbeddingBag(50, 4, mode="sum", sparse=True)
    opt = qembed.optim.SGD(e.parameters(), lr=0.1, momentum=0.9)
    W0 = np.array(e.weight.data)
    e.backward(np.array([3, 3, 9]), np.ones((2, 4), np.float32), np.array([0, 2]))
    g = e.weight.grad
    assert isinstance(g, SparseGrad) and list(g.indices) == [3, 9]
    assert np.array_equal(g.values, [[2] * 4, [1] * 4])
    opt.step()
    changed = np.where((np.asarray(e.weight.data) != W0).any(axis=1))[0]
    assert list(changed) == [3, 9]


# --------------------------------------------------------------------------
# Quantized tables: bag() = dequantize, then reduce
# --------------------------------------------------------------------------


QUANTIZED = [
    ("int8", lambda n, d, dt: Embedding8bit(n, d, dtype=dt)),
    ("fp4", lambda n, d, dt: EmbeddingFP4(n, d, dtype=dt)),
    ("nf4", lambda n, d, dt: EmbeddingNF4(n, d, dtype=dt)),
    ("nf4_nested_bs128", lambda n, d, dt: EmbeddingNF4(n, d, dtype=dt, blocksize=128, compress_statistics=True)),
    ("fp4_nested_bs64", lambda n, d, dt: EmbeddingFP4(n, d, dtype=dt, compress_statistics=True)),
]


@pytest.mark.parametrize("kind,make", QUANTIZED, ids=[k for k, _ in QUANTIZED])
@pytest.mark.parametrize("dim", [64, 40, 7])
def test_quantized_bag_is_dequantize_then_reduce(rng, kind, make, dim):
    rows = 120
    W = spread(rng, (rows, dim), -2.0, 1.0)
    q = make(rows, dim, None)
    q.load_state_dict({"weight": W})
    deq = q(np.arange(rows))  # float32 rows, as the bags read them
    inp = rng.integers(0, rows, 300)
    inp[::11] = 17
    offsets = random_offsets(rng, inp.size, 25)
    ranges = bag_ranges(inp.size, offsets, False, inp.shape)
    torch = sys.modules.get("torch")
    for mode in ("sum", "mean", "max"):
        for pad in (None, 17, -3):
            out = q.bag(inp, offsets, mode=mode, padding_idx=pad)
            npad = normalize_pad(pad, rows)
            assert out.dtype == np.float32 and out.shape == (len(ranges), dim)
            ref, bound = reference(deq, inp, ranges, mode, None, npad)
            within(out, ref, bound, f"{kind} {mode} pad={pad}")
            assert np.array_equal(out, spec_float32(deq, inp, ranges, mode, npad)), f"{kind} {mode} pad={pad}"
            if torch is not None:
                t = torch.nn.functional.embedding_bag(torch.from_numpy(inp), torch.from_numpy(deq),
                                                      torch.from_numpy(offsets), mode=mode, padding_idx=pad)
                assert np.array_equal(out, t.numpy()), f"{kind} {mode} pad={pad}: torch on the dequantized rows"
    # 2-D input, per-sample weights, include_last_offset with trailing indices
    x2 = inp[:240].reshape(30, 8)
    r2 = bag_ranges(240, None, False, x2.shape)
    assert np.array_equal(q.bag(x2, mode="max"), spec_float32(deq, x2.reshape(-1), r2, "max"))
    psw = spread(rng, inp.shape, -2.0, 1.0)
    ref, bound = reference(deq, inp, ranges, "sum", psw)
    within(q.bag(inp, offsets, psw, mode="sum"), ref, bound, f"{kind} per_sample_weights")
    lo = np.minimum(offsets, 280)  # 280.. trail
    r_lo = bag_ranges(inp.size, lo, True, inp.shape)
    assert np.array_equal(q.bag(inp, lo, mode="mean", include_last_offset=True),
                          spec_float32(deq, inp, r_lo, "mean"))


@pytest.mark.parametrize("kind,make", QUANTIZED[:3], ids=[k for k, _ in QUANTIZED[:3]])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantized_bag_half_layers(rng, kind, make, dtype):
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("bfloat16 arrays need ml_dtypes")
    rows, dim = 50, 64
    W = spread(rng, (rows, dim), -2.0, 1.0)
    q = make(rows, dim, dtype)
    q.load_state_dict({"weight": W})  # held in the half type first, as bitsandbytes
    deq = q(np.arange(rows))  # the rows the bags reduce: forward's, rounded to the layer's dtype
    assert deq.dtype == q.dtype
    deq32 = deq.astype(np.float32)
    inp = rng.integers(0, rows, 200)
    offsets = random_offsets(rng, 200, 20)
    ranges = bag_ranges(200, offsets, False, inp.shape)
    for mode in ("sum", "mean", "max"):
        out = q.bag(inp, offsets, mode=mode)
        assert out.dtype == q.dtype
        # reduced in float32 from forward's values, rounded once
        assert np.array_equal(half_bits(out, dtype), half_bits(spec_float32(deq32, inp, ranges, mode), dtype)), mode


def test_quantized_bag_errors():
    q = EmbeddingNF4(10, 64)
    with pytest.raises(RuntimeError, match="not quantized"):
        q.bag(np.array([1]), np.array([0]))
    q.load_state_dict({"weight": np.ones((10, 64), np.float32)})
    with pytest.raises(ValueError, match="mode"):
        q.bag(np.array([1]), np.array([0]), mode="median")
    with pytest.raises(ValueError, match="padding_idx"):
        q.bag(np.array([1]), np.array([0]), padding_idx=10)
    with pytest.raises(ValueError, match="padding_idx"):
        q.bag(np.array([1]), np.array([0]), padding_idx=-11)
    with pytest.raises(NotImplementedError):
        q.bag(np.array([1]), np.array([0]), np.ones(1), mode="max")
    with pytest.raises(ValueError, match="out of range|index"):
        q.bag(np.array([10]), np.array([0]))
    with pytest.raises(ValueError):
        q.bag(np.array([1, 2]), np.array([0, 3]))


# --------------------------------------------------------------------------
# Bad input: clear exceptions, nothing changed
# --------------------------------------------------------------------------


def snapshot(e):
    g = e.weight.grad
    if isinstance(g, SparseGrad):
        g = g.to_dense()
    return np.array(e.weight.data), None if g is None else np.array(g)


def assert_unchanged(e, snap):
    w, g = snapshot(e)
    assert np.array_equal(w.view(np.uint8), snap[0].view(np.uint8)), "the weight changed"
    if snap[1] is None:
        assert g is None or not np.any(g), "a gradient appeared"
    else:
        assert np.array_equal(g, snap[1]), "the gradient changed"


BAD_CALLS = [
    # (description, mode, args for forward/backward, exception, message)
    ("1-D input without offsets", "sum", (np.array([1, 2]), None, None), ValueError,
     "offsets has to be a 1D Tensor but got None"),
    ("2-D input with offsets", "sum", (np.array([[1, 2]]), np.array([0]), None), ValueError,
     "if input is 2D, then offsets has to be None"),
    ("3-D input", "sum", (np.zeros((1, 1, 1), np.int64), None, None), ValueError, "1D or 2D"),
    ("0-D input", "sum", (np.int64(1), np.array([0]), None), ValueError, "1D or 2D"),
    ("2-D offsets", "sum", (np.array([1, 2]), np.array([[0, 1]]), None), ValueError, "offsets has to be a 1D Tensor"),
    ("offsets[0] != 0", "sum", (np.array([1, 2, 3]), np.array([1, 2]), None), ValueError, "offsets\\[0\\]"),
    ("decreasing offsets", "sum", (np.array([1, 2, 3]), np.array([0, 2, 1]), None), ValueError, "non-decreasing"),
    ("offsets above len", "sum", (np.array([1, 2, 3]), np.array([0, 4]), None), ValueError, "greater"),
    ("negative offsets", "sum", (np.array([1, 2, 3]), np.array([0, -1]), None), ValueError, "offsets"),
    ("index out of range", "sum", (np.array([1, 20, 3]), np.array([0, 1]), None), ValueError, "20"),
    ("negative index", "mean", (np.array([1, -1, 3]), np.array([0, 1]), None), ValueError, "-1"),
    ("last index out of range", "mean", (np.array([1, 2, 99]), np.array([0, 1, 2]), None), ValueError, "99"),
    ("index after the last offset out of range", "sum", (np.array([1, 2, 99]), np.array([0, 1]), None), ValueError,
     "99"),
    ("float indices", "sum", (np.array([1.0, 2.0]), np.array([0]), None), TypeError, "integer"),
    ("float offsets", "sum", (np.array([1, 2]), np.array([0.0]), None), TypeError, "integer"),
    ("NaN per_sample_weights", "sum", (np.array([1, 2]), np.array([0]), np.array([1.0, np.nan], np.float32)),
     ValueError, "per_sample_weights"),
    ("Inf per_sample_weights (f16)", "sum", (np.array([1, 2]), np.array([0]), np.array([np.inf, 1], np.float16)),
     ValueError, "per_sample_weights"),
    ("per_sample_weights shape", "sum", (np.array([1, 2]), np.array([0]), np.ones(3, np.float32)), ValueError,
     "same shape as the input"),
    ("per_sample_weights 2-D shape", "sum", (np.array([[1, 2]]), None, np.ones(2, np.float32)), ValueError,
     "same shape as the input"),
    ("per_sample_weights with mean", "mean", (np.array([1, 2]), np.array([0]), np.ones(2, np.float32)),
     NotImplementedError, "only supported for mode='sum'"),
    ("per_sample_weights with max", "max", (np.array([1, 2]), np.array([0]), np.ones(2, np.float32)),
     NotImplementedError, "only supported for mode='sum'"),
    ("complex per_sample_weights", "sum", (np.array([1, 2]), np.array([0]), np.ones(2, np.complex64)), TypeError,
     "per_sample_weights"),
]


@pytest.mark.parametrize("what,mode,args,exc,msg", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_bad_input_raises_and_changes_nothing(rng, what, mode, args, exc, msg, max_norm):
    W = spread(rng, (10, 4), 0.0, 1.0)  # norms above max_norm: a forward that ran would renormalize
    e = EmbeddingBag.from_pretrained(W, freeze=False, mode=mode, max_norm=max_norm)
    e(np.array([5, 6]), np.array([0]))  # rows 5, 6 renormalized (with max_norm) before the snapshot
    e.backward(np.array([5, 6]), np.ones((1, 4), np.float32), np.array([0]))
    snap = snapshot(e)
    inp, offsets, psw = args
    with pytest.raises(exc, match=msg):
        e(inp, offsets, psw)
    assert_unchanged(e, snap)
    # a grad_output of the right shape, so that the input's own error is the one raised
    if offsets is not None:
        nb = np.size(offsets) if np.ndim(offsets) == 1 else 1
    else:
        nb = np.shape(inp)[0] if np.ndim(inp) == 2 else 1
    with pytest.raises(exc, match=msg):
        e.backward(inp, np.ones((max(nb, 1), 4), np.float32), offsets, psw)
    assert_unchanged(e, snap)


def test_bad_grad_output_changes_nothing(rng):
    for mode in ("sum", "mean", "max"):
        for sparse in ((False, True) if mode != "max" else (False,)):
            e = EmbeddingBag(10, 4, mode=mode, sparse=sparse)
            inp, offsets = np.array([1, 2, 3]), np.array([0, 1])
            e.backward(inp, np.ones((2, 4), np.float32), offsets)
            snap = snapshot(e)
            for g, exc, msg in ((np.full((2, 4), np.nan, np.float32), ValueError, "grad_output"),
                                (np.array([[1, 2, 3, np.inf], [0, 0, 0, 0]], np.float32), ValueError, "grad_output"),
                                (np.ones((3, 4), np.float32), ValueError, "shape"),
                                (np.ones((2, 5), np.float32), ValueError, "shape"),
                                (np.ones(8, np.float32), ValueError, "shape"),
                                (np.ones((2, 4), np.complex64), TypeError, "grad_output")):
                with pytest.raises(exc, match=msg):
                    e.backward(inp, g, offsets)
                assert_unchanged(e, snap)
            psw_ok = np.ones(3, np.float32)
            if mode == "sum":
                with pytest.raises(ValueError, match="grad_output"):
                    e.backward(inp, np.full((2, 4), np.nan, np.float32), offsets, psw_ok)
                assert_unchanged(e, snap)


def test_mode_rules():
    with pytest.raises(ValueError, match="mode has to be one of sum, mean or max"):
        EmbeddingBag(10, 3, mode="median")
    with pytest.raises(ValueError, match="mode has to be one of sum, mean or max"):
        EmbeddingBag(10, 3, mode=None)
    e = EmbeddingBag(10, 3)
    e.mode = "bogus"  # torch raises at forward
    with pytest.raises(ValueError, match="mode has to be one of sum, mean or max"):
        e(np.array([1]), np.array([0]))
    for kw, msg in (({"scale_grad_by_freq": True}, "max mode does not support scaling the gradient by the frequency"),
                    ({"sparse": True}, "max mode does not support sparse weights")):
        e = EmbeddingBag(10, 3, mode="max", **kw)  # accepted, as torch; refused at forward and backward
        snap = snapshot(e)
        with pytest.raises(ValueError, match=msg):
            e(np.array([1]), np.array([0]))
        with pytest.raises(ValueError, match=msg):
            e.backward(np.array([1]), np.ones((1, 3), np.float32), np.array([0]))
        assert_unchanged(e, snap)


def test_constructor_errors():
    with pytest.raises(ValueError):
        EmbeddingBag(10, 3, padding_idx=10)
    with pytest.raises(ValueError):
        EmbeddingBag(10, 3, padding_idx=-11)
    with pytest.raises(ValueError):
        EmbeddingBag(10, 3, _weight=np.zeros((9, 3), np.float32))
    with pytest.raises(ValueError):
        EmbeddingBag(0, 3)
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingBag.from_pretrained(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="CPU"):
        EmbeddingBag(10, 3, device="cuda")


def test_torch_tensors_accepted():
    torch = torch_or_skip()
    W = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    e = EmbeddingBag.from_pretrained(torch.from_numpy(W), freeze=False, mode="sum")
    x, o = torch.tensor([1, 2, 3]), torch.tensor([0, 2])
    t = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(W), mode="sum")
    assert np.array_equal(e(x, o), t(x, o).numpy())
    assert np.array_equal(e(x.int(), o), t(x.int(), o.int()).numpy())


# --------------------------------------------------------------------------
# The C API directly: struct validation, outputs left untouched
# --------------------------------------------------------------------------


def c_bags(idx, offsets=None, num_bags=0, mode=C.QEMBED_BAG_SUM, psw=None, include_last_offset=False):
    b = new_struct(C.qembed_bags)
    C.qembed_bags_init(ctypes.byref(b))
    b.indices = idx.ctypes.data if idx is not None else None
    b.index_dtype = C.QEMBED_DTYPE_I64
    b.count = 0 if idx is None else idx.size
    if offsets is not None:
        b.offsets = offsets.ctypes.data
        b.num_offsets = offsets.size
    b.num_bags = num_bags
    b.include_last_offset = include_last_offset
    b.mode = mode
    if psw is not None:
        b.per_sample_weights = psw.ctypes.data
        b.weights_dtype = C.QEMBED_DTYPE_F32
    return b


def test_c_bags_init_defaults():
    b = C.qembed_bags()
    ctypes.memset(ctypes.byref(b), 0xA5, ctypes.sizeof(b))
    C.qembed_bags_init(ctypes.byref(b))
    assert b.struct_size == ctypes.sizeof(C.qembed_bags)
    assert b.mode == C.QEMBED_BAG_MEAN and b.index_dtype == C.QEMBED_DTYPE_I64
    assert b.weights_dtype == C.QEMBED_DTYPE_F32 and b.padding_idx == C.QEMBED_NO_PADDING
    assert b.count == 0 and not b.offsets and not b.indices and not b.per_sample_weights
    assert b.num_offsets == 0 and b.num_bags == 0 and not b.include_last_offset
    n = ctypes.c_int64(-5)
    assert C.qembed_bags_num_bags(ctypes.byref(b), ctypes.byref(n)) == C.QEMBED_OK and n.value == 0


def test_c_struct_validation_leaves_outputs_untouched():
    e = EmbeddingBag(10, 4, mode="sum")
    h = e._h()
    idx = np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)
    sentinel = np.float32(-1234.5)

    def forward(b, n_out=8):
        out = np.full(n_out, sentinel, np.float32)
        st = C.qembed_embedding_bag_forward(h, ctypes.byref(b), out.ctypes.data, C.QEMBED_DTYPE_F32, out.size)
        return st, out

    cases = [
        ("fixed form: count % num_bags", c_bags(idx, num_bags=4), C.QEMBED_ERR_SHAPE),
        ("fixed form: num_bags 0 with indices", c_bags(idx, num_bags=0), C.QEMBED_ERR_SHAPE),
        ("num_bags with offsets", c_bags(idx, np.array([0, 3], np.int64), num_bags=2), C.QEMBED_ERR_INVALID_ARGUMENT),
        ("negative num_bags", c_bags(idx, num_bags=-2), None),
        ("mode out of range", c_bags(idx, num_bags=2, mode=3), None),
        ("include_last_offset without offsets", c_bags(idx, np.zeros(0, np.int64), include_last_offset=True), None),
    ]
    for what, b, status in cases:
        st, out = forward(b)
        assert st != C.QEMBED_OK, what
        if status is not None:
            assert st == status, f"{what}: {st} ({C.last_error()})"
        assert np.all(out == sentinel), what
    wrong = c_bags(idx, num_bags=2)
    wrong.struct_size = 4
    assert forward(wrong)[0] != C.QEMBED_OK
    small = c_bags(idx, num_bags=2)
    st, out = forward(small, n_out=7)  # 2 x 4 needed
    assert st == C.QEMBED_ERR_BUFFER_TOO_SMALL and np.all(out == sentinel)
    n = ctypes.c_int64()
    assert C.qembed_bags_num_bags(ctypes.byref(c_bags(idx, num_bags=3)), ctypes.byref(n)) == C.QEMBED_OK
    assert n.value == 3
    assert C.qembed_bags_num_bags(None, ctypes.byref(n)) == C.QEMBED_ERR_NULL_POINTER
    assert C.qembed_embedding_bag_forward(h, None, None, C.QEMBED_DTYPE_F32, 0) == C.QEMBED_ERR_NULL_POINTER
    st, out = forward(c_bags(idx, num_bags=2))
    assert st == C.QEMBED_OK and np.array_equal(out.reshape(2, 4), e(idx.reshape(2, 3)))
    # an integer out dtype is refused before anything is written
    out = np.full(8, sentinel, np.float32)
    st = C.qembed_embedding_bag_forward(h, ctypes.byref(c_bags(idx, num_bags=2)), out.ctypes.data,
                                        C.QEMBED_DTYPE_I32, out.size)
    assert st == C.QEMBED_ERR_UNSUPPORTED and np.all(out == sentinel)


def test_c_backward_refusals_write_nothing():
    e = EmbeddingBag(10, 4, mode="sum")
    h = e._h()
    idx = np.array([1, 2, 3, 4], dtype=np.int64)
    G = np.ones(8, np.float32)
    sentinel = np.float32(-1234.5)
    buf = np.full(4, sentinel, np.float32)
    P_f32 = ctypes.POINTER(ctypes.c_float)
    # grad_per_sample_weights without per_sample_weights
    st = C.qembed_embedding_bag_backward(h, ctypes.byref(c_bags(idx, num_bags=2)), G.ctypes.data,
                                         C.QEMBED_DTYPE_F32, G.size, buf.ctypes.data_as(P_f32))
    assert st == C.QEMBED_ERR_INVALID_ARGUMENT and np.all(buf == sentinel)
    assert e.weight.grad is None or not np.any(e.weight.grad)
    psw = np.ones(4, np.float32)
    for what, b, g, glen in (("grad_len too small", c_bags(idx, num_bags=2, psw=psw), G, 7),
                             ("NaN grad", c_bags(idx, num_bags=2, psw=psw), np.full(8, np.nan, np.float32), 8),
                             ("index out of range", c_bags(np.array([1, 2, 3, 10]), num_bags=2, psw=psw), G, 8)):
        st = C.qembed_embedding_bag_backward(h, ctypes.byref(b), g.ctypes.data, C.QEMBED_DTYPE_F32, glen,
                                             buf.ctypes.data_as(P_f32))
        assert st != C.QEMBED_OK, what
        assert np.all(buf == sentinel), what
        assert e.weight.grad is None or not np.any(e.weight.grad), what
    st = C.qembed_embedding_bag_backward(h, ctypes.byref(c_bags(idx, num_bags=2, psw=psw)), G.ctypes.data,
                                         C.QEMBED_DTYPE_F32, 8, buf.ctypes.data_as(P_f32))
    assert st == C.QEMBED_OK
    assert np.allclose(buf, e.weight.data[idx].sum(axis=1), rtol=1e-6)
