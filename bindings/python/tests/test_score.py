"""score() on every table (#18): Embedding, StableEmbedding, EmbeddingBag,
Embedding8bit, Embedding4bit/FP4/NF4; dot and cosine, full matrix and top-k.

qembed.h fixes the float32 evaluation of a dot score exactly (products
rounded to float32, eight lanes, lane l adding j = l, l + 8, ... in order,
then ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))), so the tests check
the scores bit for bit against that order emulated in numpy, and against the
exact value (float64) within the header's bound gamma(dim / 8 + 3) *
sum_j |q_j w_j|, gamma(n) = n u / (1 - n u), u = 2**-24. Top-k must equal
np.argsort(-scores, kind="stable")[:k] of the layer's own score matrix
(ties to the lower row index; duplicate rows force them), with the same
score bits.
"""

import ctypes

import numpy as np
import pytest

import qembed
from qembed import _capi as C
from qembed.nn import (Embedding, Embedding4bit, Embedding8bit, EmbeddingBag, EmbeddingFP4, EmbeddingNF4,
                       StableEmbedding)

U = 2.0 ** -24

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None


def gamma(n):
    return n * U / (1 - n * U)


def spread(rng, shape, lo=-3.0, hi=2.0):
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(lo, hi, shape)).astype(np.float32)


def dot_spec(Q, W):
    """qembed.h's float32 dot product of every query with every row."""
    Q = np.asarray(Q, dtype=np.float32)
    W = np.asarray(W, dtype=np.float32)
    n, d = Q.shape
    lanes = np.zeros((n, W.shape[0], 8), dtype=np.float32)
    for j in range(0, d, 8):
        w = min(8, d - j)
        lanes[:, :, :w] += Q[:, None, j:j + w] * W[None, :, j:j + w]  # rounded products, float32 adds
    l = [lanes[:, :, i] for i in range(8)]
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))


def dot_exact(Q, W):
    """(exact dot in float64, the header's bound)."""
    Q = np.asarray(Q, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    d = Q.shape[1]
    return Q @ W.T, gamma(d // 8 + 3) * (np.abs(Q) @ np.abs(W).T)


def cosine_exact(Q, W):
    """(exact cosine in float64, a bound for the float32 evaluation: the dot's
    bound over the norms, plus the norms' own error (each the square root of
    a sum with the same bound) and a few roundings (product, quotient))."""
    dot, bound = dot_exact(Q, W)
    nq = np.maximum(np.linalg.norm(np.asarray(Q, np.float64), axis=1), 1e-8)
    nr = np.maximum(np.linalg.norm(np.asarray(W, np.float64), axis=1), 1e-8)
    denom = nq[:, None] * nr[None, :]
    cos = dot / denom
    g = gamma(Q.shape[1] // 8 + 3)
    return cos, 1.01 * bound / denom + (g + 8 * U) * np.abs(cos)


def within(actual, expected, bound, what):
    err = np.abs(np.asarray(actual, dtype=np.float64) - expected)
    bad = err > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} scores outside the bound; worst "
                           f"{np.max(err / np.maximum(bound, 1e-300)):.3g} x the bound")


def half_values(arr, dtype):
    if dtype == "float16":
        return arr.astype(np.float16)
    if BF16 is None:
        pytest.skip("bfloat16 arrays need ml_dtypes")
    return arr.astype(BF16)


def check_topk(layer, Q, scores, metric):
    """top-k of every k that matters equals the stable argsort of the layer's own matrix."""
    rows = scores.shape[-1]
    for k in sorted({1, 2, min(5, rows), rows // 2 or 1, rows}):
        idx, top = layer.score(Q, k=k, metric=metric)
        assert idx.dtype == np.int64 and top.dtype == np.float32
        want = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
        assert idx.shape == want.shape == top.shape
        assert np.array_equal(idx, want), f"k={k}: {idx} vs {want}"
        got_bits = np.take_along_axis(scores, idx, axis=-1).view(np.uint32)
        assert np.array_equal(top.view(np.uint32), got_bits), f"k={k}: top-k scores are not the matrix's bits"


# --------------------------------------------------------------------------
# Float tables
# --------------------------------------------------------------------------


FLOAT_LAYERS = {
    "Embedding": lambda W: Embedding(W.shape[0], W.shape[1], _weight=W),
    "StableEmbedding": lambda W: StableEmbedding(W.shape[0], W.shape[1], _weight=W),
    "EmbeddingBag": lambda W: EmbeddingBag.from_pretrained(W, mode="sum"),
}


@pytest.mark.parametrize("kind", sorted(FLOAT_LAYERS))
@pytest.mark.parametrize("dim", [1, 7, 8, 9, 64, 130])
def test_dot_scores_are_the_specified_float32_sums(rng, kind, dim):
    rows = 41
    W = spread(rng, (rows, dim))
    W[7] = W[3]  # duplicate rows: exact ties
    W[20] = W[3]
    W[11] = 0
    layer = FLOAT_LAYERS[kind](W)
    Q = spread(rng, (6, dim))
    Q[2] = W[3]
    S = layer.score(Q)
    assert S.dtype == np.float32 and S.shape == (6, rows)
    exact, bound = dot_exact(Q, W)
    within(S, exact, bound, f"{kind} dim {dim}")
    spec = dot_spec(Q, W)
    assert np.array_equal(S, spec), f"{int((S != spec).sum())} scores differ from the specified order"
    assert np.array_equal(S.view(np.uint32), spec.view(np.uint32))  # zeros' signs too
    # one query at a time gives the same bits, 1-D queries give 1-D results
    for i in range(Q.shape[0]):
        s1 = layer.score(Q[i])
        assert s1.shape == (rows,) and np.array_equal(s1.view(np.uint32), S[i].view(np.uint32))
        i1, t1 = layer.score(Q[i], k=3)
        assert i1.shape == t1.shape == (3,)
        assert np.array_equal(i1, np.argsort(-S[i], kind="stable")[:3])
    assert np.all(S[:, 7] == S[:, 3]) and np.all(S[:, 11] == 0)
    check_topk(layer, Q, S, "dot")


@pytest.mark.parametrize("dim", [1, 5, 16, 33, 130])
def test_cosine_scores(rng, dim):
    rows = 30
    W = spread(rng, (rows, dim))
    W[4] = W[9] * np.float32(3)  # parallel rows: equal cosines up to rounding
    W[13] = 0  # |row| < 1e-8: divided by 1e-8, so the cosine is 0
    W[14] = W[12]
    e = Embedding(rows, dim, _weight=W)
    Q = spread(rng, (5, dim))
    Q[1] = 0
    S = e.score(Q, metric="cosine")
    cos, bound = cosine_exact(Q, W)
    within(S, cos, bound, f"cosine dim {dim}")
    assert np.all(np.abs(S) <= 1 + 4 * gamma(dim // 8 + 3) + 1e-6)
    assert np.all(S[:, 13] == 0) and np.all(S[1] == 0)
    assert np.array_equal(S[:, 14], S[:, 12])
    check_topk(e, Q, S, "cosine")
    s1 = e.score(Q[3], metric="cosine")
    assert np.array_equal(s1.view(np.uint32), S[3].view(np.uint32))


def test_ties_go_to_the_lower_index():
    W = np.array([[1, 0], [2, 0], [1, 0], [2, 0], [0, 0], [2, 0], [-1, 0]], dtype=np.float32)
    e = Embedding(7, 2, _weight=W)
    q = np.array([1.0, 5.0], dtype=np.float32)
    assert np.array_equal(e.score(q), [1, 2, 1, 2, 0, 2, -1])
    idx, s = e.score(q, k=7)
    assert list(idx) == [1, 3, 5, 0, 2, 4, 6] and list(s) == [2, 2, 2, 1, 1, 0, -1]
    idx, _ = e.score(-q, k=4)
    assert list(idx) == [6, 4, 0, 2]


def test_nan_rows_rank_last(rng):
    W = spread(rng, (12, 9))
    e = Embedding(12, 9, _weight=W)
    view = e.weight.data  # writes through to the table
    view[2, 4] = np.nan
    view[7, 0] = np.inf  # inf * q and inf - inf: a NaN or +-inf score
    Q = spread(rng, (3, 9))
    S = e.score(Q)
    assert np.all(np.isnan(S[:, 2]))
    idx, top = e.score(Q, k=12)
    assert np.array_equal(idx, np.argsort(-S, axis=1, kind="stable"))  # numpy puts NaN last too
    assert np.all(idx[:, -1] == 2) and np.all(np.isnan(top[:, -1]))
    assert np.array_equal(top.view(np.uint32), np.take_along_axis(S, idx, 1).view(np.uint32))
    i3, _ = e.score(Q, k=3)
    assert not np.any(i3 == 2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("qdtype", ["float32", "float16", "bfloat16"])
def test_half_tables_and_queries(rng, dtype, qdtype):
    rows, dim = 33, 20
    Wh = half_values(spread(rng, (rows, dim), -3.0, 1.0), dtype)
    Wh[5] = Wh[30]
    e = Embedding(rows, dim, _weight=Wh)
    assert e.dtype == Wh.dtype
    W32 = Wh.astype(np.float32)
    Q = spread(rng, (4, dim), -2.0, 1.0)
    if qdtype != "float32":
        Q = half_values(Q, qdtype)
    Q32 = np.asarray(Q, dtype=np.float32)
    S = e.score(Q)
    assert S.dtype == np.float32
    assert np.array_equal(S, dot_spec(Q32, W32))  # rows and queries read as float32 values
    exact, bound = dot_exact(Q32, W32)
    within(S, exact, bound, f"{dtype} table, {qdtype} queries")
    check_topk(e, Q, S, "dot")
    cos, cbound = cosine_exact(Q32, W32)
    within(e.score(Q, metric="cosine"), cos, cbound, f"{dtype} cosine")
    # the same values in a float32 table give the same bits
    assert np.array_equal(Embedding(rows, dim, _weight=W32).score(Q32).view(np.uint32), S.view(np.uint32))


def test_scores_do_not_depend_on_threads_or_batch(rng):
    W = spread(rng, (3000, 48))
    e = EmbeddingBag.from_pretrained(W)
    Q = spread(rng, (37, 48))
    S = e.score(Q)
    idx, top = e.score(Q, k=25)
    before = qembed.get_num_threads()
    try:
        for n in (1, 2, 3):
            qembed.set_num_threads(n)
            assert np.array_equal(e.score(Q).view(np.uint32), S.view(np.uint32))
            i2, t2 = e.score(Q, k=25)
            assert np.array_equal(i2, idx) and np.array_equal(t2.view(np.uint32), top.view(np.uint32))
            assert np.array_equal(e.score(Q[5:6]).view(np.uint32), S[5:6].view(np.uint32))
    finally:
        qembed.set_num_threads(0)
    assert qembed.get_num_threads() == before
    assert np.array_equal(S, dot_spec(Q, W))
    check_topk(e, Q, S, "dot")


def test_stable_embedding_scores_the_raw_rows(rng):
    W = spread(rng, (10, 6))
    s = StableEmbedding(10, 6, _weight=W)
    q = spread(rng, 6)
    assert np.array_equal(s.score(q), Embedding(10, 6, _weight=W).score(q))
    assert not np.allclose(s(np.arange(10)), W)  # its forward is normalized, its scores are not


def test_score_accepts_lists_and_torch(rng):
    W = spread(rng, (8, 3))
    e = Embedding(8, 3, _weight=W)
    q = [0.5, -1.25, 3.0]
    want = e.score(np.array(q, dtype=np.float32))
    assert np.array_equal(e.score(q), want)
    assert np.array_equal(e.score(np.array(q, dtype=np.float64)), want)  # float64 is converted to float32
    torch = pytest.importorskip("torch")
    assert np.array_equal(e.score(torch.tensor(q)), want)
    t = torch.from_numpy(W) @ torch.tensor(q)
    assert np.allclose(want, t.numpy(), rtol=1e-5, atol=1e-5 * np.abs(W).sum())


def test_empty_query_batch():
    e = Embedding(6, 4)
    assert e.score(np.zeros((0, 4), np.float32)).shape == (0, 6)
    idx, s = e.score(np.zeros((0, 4), np.float32), k=2)
    assert idx.shape == s.shape == (0, 2)
    with pytest.raises(ValueError, match="k"):
        e.score(np.zeros((0, 4), np.float32), k=7)
    q = Embedding8bit.from_embedding(e)
    assert q.score(np.zeros((0, 4), np.float16), metric="cosine").shape == (0, 6)


# --------------------------------------------------------------------------
# Quantized tables: the dequantized float32 rows
# --------------------------------------------------------------------------


QUANTIZED = {
    "int8": lambda n, d, dt=None: Embedding8bit(n, d, dtype=dt),
    "fp4": lambda n, d, dt=None: EmbeddingFP4(n, d, dtype=dt),
    "nf4": lambda n, d, dt=None: EmbeddingNF4(n, d, dtype=dt),
    "nf4_nested_bs256": lambda n, d, dt=None: EmbeddingNF4(n, d, dtype=dt, blocksize=256, compress_statistics=True),
    "fp4_bs32": lambda n, d, dt=None: Embedding4bit(n, d, dtype=dt, quant_type="fp4", blocksize=32),
}


@pytest.mark.parametrize("kind", sorted(QUANTIZED))
@pytest.mark.parametrize("dim", [64, 24, 9])
def test_quantized_scores(rng, kind, dim):
    rows = 150
    W = spread(rng, (rows, dim), -2.0, 1.0)
    W[40] = W[10]  # the same row quantizes the same way (int8 per row; 4-bit when blocks align)
    q = QUANTIZED[kind](rows, dim)
    q.load_state_dict({"weight": W})
    deq = q(np.arange(rows))
    Q = spread(rng, (7, dim), -2.0, 1.0)
    S = q.score(Q)
    assert np.array_equal(S, dot_spec(Q, deq)), f"{kind}: not the specified sums of the dequantized rows"
    exact, bound = dot_exact(Q, deq)
    within(S, exact, bound, kind)
    check_topk(q, Q, S, "dot")
    cos, cbound = cosine_exact(Q, deq)
    Sc = q.score(Q, metric="cosine")
    within(Sc, cos, cbound, f"{kind} cosine")
    check_topk(q, Q, Sc, "cosine")
    # the float table of the dequantized rows scores the same
    assert np.array_equal(Embedding(rows, dim, _weight=deq).score(Q).view(np.uint32), S.view(np.uint32))
    i1, t1 = q.score(Q[0], k=4)
    assert i1.shape == (4,) and np.array_equal(i1, np.argsort(-S[0], kind="stable")[:4])


@pytest.mark.parametrize("kind", ["int8", "nf4"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantized_half_layers_score_their_forward_rows(rng, kind, dtype):
    rows, dim = 60, 64
    W = spread(rng, (rows, dim), -2.0, 1.0)
    q = QUANTIZED[kind](rows, dim, dtype)
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("bfloat16 arrays need ml_dtypes")
    q.load_state_dict({"weight": W})
    deq = q(np.arange(rows))  # in the layer's dtype
    assert deq.dtype == q.dtype
    Q = spread(rng, (3, dim), -2.0, 1.0)
    S = q.score(Q)
    assert np.array_equal(S, dot_spec(Q, deq.astype(np.float32)))
    check_topk(q, Q, S, "dot")


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def layers_for_errors():
    W = np.random.default_rng(3).standard_normal((10, 8)).astype(np.float32)
    q = EmbeddingNF4(10, 8, blocksize=32)
    q.load_state_dict({"weight": W})
    return [Embedding(10, 8, _weight=W), EmbeddingBag.from_pretrained(W), q]


@pytest.mark.parametrize("layer", layers_for_errors(), ids=["Embedding", "EmbeddingBag", "EmbeddingNF4"])
def test_bad_score_arguments(layer):
    good = np.ones(8, np.float32)
    bad = [
        ((np.array([1, 2, np.nan, 0, 0, 0, 0, 0], np.float32),), {}, ValueError, "queries"),
        ((np.full((2, 8), np.inf, np.float32),), {}, ValueError, "queries"),
        ((np.array([np.inf] + [0] * 7, np.float16),), {"k": 2}, ValueError, "queries"),
        ((np.ones(7, np.float32),), {}, ValueError, "shape"),
        ((np.ones((2, 9), np.float32),), {}, ValueError, "shape"),
        ((np.ones((2, 2, 8), np.float32),), {}, ValueError, "shape"),
        ((np.float32(1),), {}, ValueError, "shape"),
        ((np.ones(8, np.complex64),), {}, TypeError, "queries"),
        ((good,), {"k": 0}, ValueError, "k"),
        ((good,), {"k": -1}, ValueError, "k"),
        ((good,), {"k": 11}, ValueError, "k"),
        ((good,), {"k": 2 ** 62}, ValueError, "k"),
        ((good,), {"k": 2.0}, TypeError, "k"),
        ((good,), {"k": True}, TypeError, "k"),
        ((good,), {"metric": "l2"}, ValueError, "metric"),
        ((good,), {"metric": None}, ValueError, "metric"),
        ((good,), {"metric": "cosine", "k": 0}, ValueError, "k"),
    ]
    if BF16 is not None:
        bad.append(((np.array([np.nan] * 8, dtype=BF16),), {}, ValueError, "queries"))
    for args, kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            layer.score(*args, **kw)
    assert layer.score(good, k=10)[0].shape == (10,)


def test_unquantized_layer_and_closed_layer_refuse():
    with pytest.raises(RuntimeError, match="not quantized"):
        Embedding8bit(4, 4).score(np.ones(4))
    e = Embedding(4, 4)
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e.score(np.ones(4))


def test_c_api_refusals_leave_outputs_untouched():
    W = np.random.default_rng(9).standard_normal((5, 8)).astype(np.float32)
    e = Embedding(5, 8, _weight=W)
    q = Embedding8bit.from_embedding(e)
    Q = np.ones((2, 8), np.float32)
    sentinel = np.float32(-1234.5)
    P_f32, P_i64 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int64)
    for h, score, topk in ((e._h(), C.qembed_embedding_score, C.qembed_embedding_topk),
                           (q._h(), C.qembed_qembedding_score, C.qembed_qembedding_topk)):
        def run_score(queries, qdtype, n, metric, cap):
            out = np.full(max(cap, 1), sentinel, np.float32)
            st = score(h, queries.ctypes.data, qdtype, n, metric, out.ctypes.data_as(P_f32), cap)
            return st, out

        def run_topk(queries, qdtype, n, metric, k, cap):
            idx = np.full(max(cap, 1), -7, np.int64)
            out = np.full(max(cap, 1), sentinel, np.float32)
            st = topk(h, queries.ctypes.data, qdtype, n, metric, k, idx.ctypes.data_as(P_i64),
                      out.ctypes.data_as(P_f32), cap)
            return st, idx, out

        nanQ = Q.copy()
        nanQ[1, 7] = np.nan
        for args, status in (((Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 9), C.QEMBED_ERR_BUFFER_TOO_SMALL),
                             ((nanQ, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 10), C.QEMBED_ERR_NON_FINITE),
                             ((Q, C.QEMBED_DTYPE_I32, 2, C.QEMBED_SCORE_DOT, 10), C.QEMBED_ERR_UNSUPPORTED),
                             ((Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_METRIC_COUNT, 10), None),
                             ((Q, C.QEMBED_DTYPE_F32, -1, C.QEMBED_SCORE_DOT, 10), None)):
            st, out = run_score(*args)
            assert st != C.QEMBED_OK, args
            if status is not None:
                assert st == status, (args, st, C.last_error())
            assert np.all(out == sentinel)
        for args, status in (((Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 3, 5), C.QEMBED_ERR_BUFFER_TOO_SMALL),
                             ((Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 0, 10), None),
                             ((Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 6, 12), None),
                             ((nanQ, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_COSINE, 2, 4), C.QEMBED_ERR_NON_FINITE),
                             ((Q, C.QEMBED_DTYPE_F32, 2, 7, 2, 4), None)):
            st, idx, out = run_topk(*args)
            assert st != C.QEMBED_OK, args
            if status is not None:
                assert st == status, (args, st, C.last_error())
            assert np.all(out == sentinel) and np.all(idx == -7)
        assert score(h, None, C.QEMBED_DTYPE_F32, 1, 0, None, 0) == C.QEMBED_ERR_NULL_POINTER
        st, out = run_score(Q, C.QEMBED_DTYPE_F32, 2, C.QEMBED_SCORE_DOT, 10)
        rows = W if h == e._h() else q(np.arange(5))
        assert st == C.QEMBED_OK and np.array_equal(out.reshape(2, 5), dot_spec(Q, rows))
    assert C.qembed_embedding_score(None, Q.ctypes.data, C.QEMBED_DTYPE_F32, 2, 0, None, 0) == C.QEMBED_ERR_NULL_POINTER
