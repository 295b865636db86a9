"""qembed.functional against the golden fixtures (Tests/golden), fresh random
data, bad input, and (when importable) torch / bitsandbytes interop.

Golden outputs are checked bit for bit: quantized bytes, absmax, row_stats,
dequantized float32/float16/bfloat16. Nested statistics allow the offset
(a mean; qembed accumulates in double, bitsandbytes in float32) to differ by
one ulp, and then compare against a recomputation with qembed's own offset.
"""

import copy
import math
import os

import numpy as np
import pytest

import qembed
import qembed.functional as F
from conftest import GOLDEN_DIR, load_manifest, report

try:
    import ml_dtypes  # noqa: F401
    HAVE_BF16 = True
except ImportError:
    HAVE_BF16 = False

try:
    import torch
except ImportError:
    torch = None

try:
    import bitsandbytes
    import bitsandbytes.functional as bnbF
except Exception:  # ImportError, or a broken CUDA setup
    bitsandbytes = None
    bnbF = None

needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason="bfloat16 needs ml_dtypes (pip install ml_dtypes)")
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not importable")
needs_bnb = pytest.mark.skipif(bitsandbytes is None, reason="bitsandbytes is not importable")

MANIFEST = load_manifest()
CASES = MANIFEST["cases"] if MANIFEST else []
DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def np_dtype(short):
    if short == "f32":
        return np.dtype(np.float32)
    if short == "f16":
        return np.dtype(np.float16)
    if short == "bf16":
        if not HAVE_BF16:
            pytest.skip("bfloat16 needs ml_dtypes")
        return F.BFLOAT16
    raise KeyError(short)


def load(case, key):
    return np.load(os.path.join(GOLDEN_DIR, case["files"][key]), allow_pickle=False)


def load_input(case, key="A"):
    """The golden input in its own dtype (bf16 bits viewed as ml_dtypes.bfloat16)."""
    a = load(case, key)
    if case["params"]["dtype"] == "bf16":
        if not HAVE_BF16:
            pytest.skip("bfloat16 needs ml_dtypes")
        a = a.view(F.BFLOAT16)
    return a


def bits(a):
    """Raw bits of an array as unsigned integers of the same width."""
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def as_float(a):
    """A float64 view of float32/float16/bfloat16 values, or bf16 bits (uint16)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def assert_bits_equal(got, expected, what, case=None):
    """Bit-exact comparison with a precise message on the first mismatch."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != expected {expected.shape}"
    assert got.dtype.itemsize == expected.dtype.itemsize, f"{what}: dtype {got.dtype} vs {expected.dtype}"
    gb, eb = bits(got).reshape(-1), bits(expected).reshape(-1)
    bad = np.nonzero(gb != eb)[0]
    if bad.size:
        i = int(bad[0])
        g, e = got.reshape(-1)[i], expected.reshape(-1)[i]
        if expected.dtype == np.uint16 and got.dtype == np.uint16:
            g, e = as_float(g), as_float(e)
        name = f"{case['name']}: " if case else ""
        pytest.fail(f"{name}{what}: {bad.size} of {gb.size} elements differ; first at flat index {i}: "
                    f"expected {e!r} (bits {int(eb[i]):#x}), got {g!r} (bits {int(gb[i]):#x})")


def ulp_distance(a, b):
    """Distance in float32 ulps (sign-aware ordering)."""
    def key(x):
        i = int(np.float32(x).view(np.int32))
        return i if i >= 0 else -(i & 0x7FFFFFFF)
    return abs(key(a) - key(b))


def cases_of(kind):
    return [pytest.param(c, id=c["name"]) for c in CASES if c["kind"] == kind]


def out_dtype_bits(arr, short):
    """qembed's output as bits comparable with the golden file (bf16 -> uint16)."""
    return arr.view(np.uint16) if short == "bf16" else arr


# Exact-rule reference in numpy (the spec, written independently of the C code).

def ref_scale(x, blocksize):
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    nb = -(-n // blocksize)
    scaled = np.zeros(n, dtype=np.float32)
    absmax = np.zeros(nb, dtype=np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        for b in range(nb):
            blk = x[b * blocksize:(b + 1) * blocksize]
            am = np.float32(np.max(np.abs(blk)))
            absmax[b] = am
            if am == 0:
                continue
            r = np.float32(1) / am
            s = blk / am if np.isinf(r) else blk * r
            scaled[b * blocksize:(b + 1) * blocksize] = np.clip(s, np.float32(-1), np.float32(1))
    return scaled, absmax


def ref_blockwise(x, code, blocksize):
    scaled, absmax = ref_scale(x, blocksize)
    mids = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    return np.searchsorted(mids, scaled, side="left").astype(np.uint8), absmax


def ref_4bit(x, blocksize, quant_type):
    levels = F.get_4bit_type(quant_type)
    order = np.argsort(levels, kind="stable")
    mids = ((levels[order[:-1]] + levels[order[1:]]) / np.float32(2)).astype(np.float32)
    scaled, absmax = ref_scale(x, blocksize)
    if scaled.size % 2:
        scaled = np.concatenate([scaled, np.zeros(1, np.float32)])
    q = order[np.searchsorted(mids, scaled, side="left")].astype(np.uint8)
    return ((q[0::2] << 4) | q[1::2]).astype(np.uint8), absmax


def to_f32(a):
    return np.asarray(a).astype(np.float32)


# --------------------------------------------------------------------------
# Golden: maps
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("map"))
def test_golden_map(case):
    p = case["params"]
    if p["fn"] == "get_4bit_type":
        got = F.get_4bit_type(p["args"]["typename"])
    else:
        got = getattr(F, p["fn"])(**p["args"])
    assert got.dtype == np.float32
    assert_bits_equal(got, load(case, "code"), "code", case)


# --------------------------------------------------------------------------
# Golden: blockwise 8-bit
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("blockwise"))
def test_golden_blockwise(case):
    p = case["params"]
    bs = p["blocksize"]
    A = load_input(case)
    code = load(case, "code")
    expected_out, expected_absmax = load(case, "out"), load(case, "absmax")
    report("blockwise 8-bit (quantize_blockwise, CPU)", np.sum(load(case, "bnb_out") != expected_out),
           expected_out.size)
    if p["code"] == "dynamic":
        q, st = F.quantize_blockwise(A, blocksize=bs)
    else:
        q, st = F.quantize_blockwise(A, code=code, blocksize=bs)
    assert q.dtype == np.uint8 and q.shape == A.shape
    assert_bits_equal(q, expected_out, "quantized bytes", case)
    assert_bits_equal(st.absmax, expected_absmax, "absmax", case)
    assert_bits_equal(st.code, code, "quant_state.code", case)
    assert st.dtype == DTYPE_NAMES[p["dtype"]] and st.blocksize == bs and not st.nested
    # Dequantize the golden state into every stored output dtype.
    for short in ("f32", "f16", "bf16"):
        key = "deq_" + short
        if key not in case["files"] or (short == "bf16" and not HAVE_BF16):
            continue
        dt = np_dtype(short)
        qs = F.QuantState(absmax=expected_absmax, code=code, blocksize=bs, dtype=dt)
        got = F.dequantize_blockwise(expected_out, qs)
        assert got.dtype == dt and got.shape == expected_out.shape
        assert_bits_equal(out_dtype_bits(got, short), load(case, key), key, case)
    # The state returned by quantize dequantizes to A's dtype.
    got = F.dequantize_blockwise(q, st)
    assert_bits_equal(out_dtype_bits(got, p["dtype"]), load(case, "deq_" + p["dtype"]), "round trip", case)


@pytest.mark.parametrize("case", cases_of("blockwise")[:12])
def test_golden_blockwise_absmax_code_arguments(case):
    """dequantize_blockwise(A, absmax=..., code=..., blocksize=...) without a state."""
    p = case["params"]
    got = F.dequantize_blockwise(load(case, "out"), absmax=load(case, "absmax"), code=load(case, "code"),
                                 blocksize=p["blocksize"])
    assert_bits_equal(got, load(case, "deq_f32"), "deq_f32", case)


# --------------------------------------------------------------------------
# Golden: nested blockwise 8-bit
# --------------------------------------------------------------------------


def check_nested_statistics(case, st, absmax, expected_offset, qabsmax_key, nested_key, nested_blocksize,
                            absmax_deq_key):
    """offset within 1 ulp; statistics bit-exact for the same offset, else
    equal to qembed's exact quantization of (absmax - its own offset)."""
    assert ulp_distance(st.offset, expected_offset) <= 1, \
        f"{case['name']}: offset {st.offset!r} vs golden {expected_offset!r}"
    if np.float32(st.offset).view(np.uint32) == np.float32(expected_offset).view(np.uint32):
        assert_bits_equal(st.absmax, load(case, qabsmax_key), "qabsmax", case)
        assert_bits_equal(st.state2.absmax, load(case, nested_key), "nested_absmax", case)
    else:
        q2, s2 = F.quantize_blockwise((absmax - st.offset).astype(np.float32), blocksize=nested_blocksize)
        assert_bits_equal(st.absmax, q2, "qabsmax (recomputed with qembed's offset)", case)
        assert_bits_equal(st.state2.absmax, s2.absmax, "nested_absmax (recomputed)", case)
    assert st.state2.blocksize == nested_blocksize and st.state2.dtype == "float32"
    # Dequantized absmax within 1e-6 relative of the golden one.
    got = F._dequantize_statistics(st)
    want = load(case, absmax_deq_key)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"{case['name']}: dequantized absmax")


@pytest.mark.parametrize("case", cases_of("blockwise_nested"))
def test_golden_blockwise_nested(case):
    p = case["params"]
    bs = p["blocksize"]
    A = load_input(case)
    report("blockwise 8-bit nested: data (CPU)", np.sum(load(case, "bnb_out") != load(case, "out")),
           load(case, "out").size)
    report("blockwise 8-bit nested: statistics (CPU)",
           np.sum(load(case, "qabsmax") != load(case, "qabsmax_exact")), load(case, "qabsmax").size)
    q, st = F.quantize_blockwise(A, blocksize=bs, nested=True)
    assert st.nested and st.state2 is not None
    assert_bits_equal(q, load(case, "out"), "quantized bytes", case)
    check_nested_statistics(case, st, load(case, "absmax"), load(case, "offset")[0], "qabsmax_exact",
                            "nested_absmax_exact", bs, "absmax_deq_exact")

    code = F.create_dynamic_map()
    offset = load(case, "offset")[0]

    def state(qabs, nabs, dtype):
        return F.QuantState(absmax=qabs, code=code, blocksize=bs, dtype=dtype, offset=offset,
                            state2=F.QuantState(absmax=nabs, code=code, blocksize=bs, dtype="float32"))

    # The exact golden state dequantizes bit-exactly (offset added in float32).
    for short in ("f32", "f16", "bf16"):
        key = f"deq_{short}_exact"
        if key in case["files"] and (short != "bf16" or HAVE_BF16):
            st_g = state(load(case, "qabsmax_exact"), load(case, "nested_absmax_exact"), np_dtype(short))
            got = F.dequantize_blockwise(load(case, "out"), st_g)
            assert_bits_equal(out_dtype_bits(got, short), load(case, key), key, case)
    # bitsandbytes' own (CPU-kernel) state dequantizes as bitsandbytes does.
    st_b = state(load(case, "qabsmax"), load(case, "nested_absmax"), "float32")
    got = F.dequantize_blockwise(load(case, "bnb_out"), st_b)
    assert_bits_equal(got, load(case, "deq_f32"), "deq_f32 of bitsandbytes' state", case)


# --------------------------------------------------------------------------
# Golden: 4-bit
# --------------------------------------------------------------------------


def golden_4bit_state(case, dtype=None):
    p = case["params"]
    code = F.get_4bit_type(p["quant_type"])
    dtype = dtype or DTYPE_NAMES[p["dtype"]]
    if p["compress_statistics"]:
        state2 = F.QuantState(absmax=load(case, "nested_absmax"), code=load(case, "nested_code"),
                              blocksize=p["nested_blocksize"], dtype="float32")
        return F.QuantState(absmax=load(case, "qabsmax"), shape=tuple(p["shape"]), code=code,
                            blocksize=p["blocksize"], quant_type=p["quant_type"], dtype=dtype,
                            offset=load(case, "offset")[0], state2=state2)
    return F.QuantState(absmax=load(case, "absmax"), shape=tuple(p["shape"]), code=code, blocksize=p["blocksize"],
                        quant_type=p["quant_type"], dtype=dtype)


def qs_golden_dict(case):
    out = {}
    for key in case["params"]["qs_keys"]:
        out[key] = load(case, "qs_json" if key.startswith("quant_state.") else "qs_" + key)
    return out


@pytest.mark.parametrize("case", cases_of("4bit"))
def test_golden_4bit(case):
    p = case["params"]
    n, bs, qt = p["n"], p["blocksize"], p["quant_type"]
    A = load_input(case).reshape(p["shape"])
    expected = load(case, "packed")
    report(f"4-bit quantize_4bit (default backend, {'edge' if '_edge_' in case['name'] else 'random'} data)",
           np.sum(load(case, "bnb_packed") != expected), expected.size)
    packed, st = F.quantize_4bit(A, blocksize=bs, compress_statistics=p["compress_statistics"], quant_type=qt)
    assert packed.shape == ((n + 1) // 2, 1) and packed.dtype == np.uint8
    assert_bits_equal(packed.reshape(-1), expected, "packed", case)
    assert st.shape == tuple(p["shape"]) and st.quant_type == qt and st.blocksize == bs
    assert st.dtype == DTYPE_NAMES[p["dtype"]]
    assert_bits_equal(st.code, F.get_4bit_type(qt), "quant_state.code", case)
    if p["compress_statistics"]:
        _, raw = F.quantize_4bit(A, blocksize=bs, quant_type=qt)
        assert_bits_equal(raw.absmax, load(case, "absmax"), "absmax", case)
        check_nested_statistics(case, st, load(case, "absmax"), load(case, "offset")[0], "qabsmax",
                                "nested_absmax", 256, "absmax_deq")
    else:
        assert_bits_equal(st.absmax, load(case, "absmax"), "absmax", case)

    # Dequantize the golden state into every stored dtype.
    for short in ("f32", "f16", "bf16"):
        key = "deq_" + short
        if key not in case["files"] or (short == "bf16" and not HAVE_BF16):
            continue
        got = F.dequantize_4bit(expected.reshape(-1, 1), golden_4bit_state(case, DTYPE_NAMES[short]))
        assert got.shape == tuple(p["shape"])
        assert_bits_equal(out_dtype_bits(got, short), load(case, key), key, case)


@pytest.mark.parametrize("case", cases_of("4bit"))
def test_golden_4bit_quant_state_dict(case):
    """as_dict(packed=True) reproduces bitsandbytes' serialized state byte for
    byte, and from_dict reads it back."""
    p = case["params"]
    st = golden_4bit_state(case)
    d = st.as_dict(packed=True)
    assert list(d.keys()) == p["qs_keys"]
    golden = qs_golden_dict(case)
    for key in p["qs_keys"]:
        assert_bits_equal(np.asarray(d[key]).reshape(-1), golden[key].reshape(-1), f"as_dict()[{key!r}]", case)
    st2 = F.QuantState.from_dict(golden)
    assert st2 == st
    assert st2.shape == tuple(p["shape"]) and st2.dtype == DTYPE_NAMES[p["dtype"]]
    assert st2.nested == p["compress_statistics"]
    if st2.nested:
        assert np.float32(st2.offset).view(np.uint32) == np.float32(st.offset).view(np.uint32)
    # The restored state dequantizes like the golden one.
    short = p["dtype"] if (p["dtype"] != "bf16" or HAVE_BF16) else "f32"
    st2.dtype = DTYPE_NAMES[short]
    got = F.dequantize_4bit(load(case, "packed").reshape(-1, 1), st2)
    assert_bits_equal(out_dtype_bits(got, short), load(case, "deq_" + short), "deq via from_dict", case)
    # Prefixed keys, as in a checkpoint's state_dict.
    prefixed = {"weight." + k: v for k, v in golden.items()}
    assert F.QuantState.from_dict(prefixed) == st


# --------------------------------------------------------------------------
# Golden: int8 row-wise
# --------------------------------------------------------------------------

class Int8TrueDivision(AssertionError):
    """qembed's int8 result equals the true-division variant of the golden."""


INT8_TRUE_DIV_XFAIL = (
    "library bug: qembed scales by 127/row_stats (one float32 division), but bitsandbytes' "
    "int8_vectorwise_quant computes `127.0 / row_stats` in torch, which evaluates a Python-scalar "
    "numerator as row_stats.reciprocal() * 127 (two float32 roundings); the scales differ by 1 ulp "
    "for some row maxima, which flips products that land on .5 (qembed's output equals the case's "
    "out_true_div file)")

# Known C-library bugs, by golden case name: (reason, exception the failure raises).
INT8_LIBRARY_BUGS = {
    "int8_edge_subnormal_rows_f32": (
        "library bug: in a row whose 127/row_stats overflows to +inf (row_stats below ~3.7e-37, e.g. "
        "all-subnormal rows), an element equal to 0 quantizes to 127 instead of 0: 0 * inf = NaN and the "
        "clamp to [-127, 127] (Swift min/max) turns NaN into 127 (Int8Rowwise.quantize); golden "
        "int8_edge_subnormal_rows_f32, flat index 12 (row 1, col 4, A = 0.0): expected 0, got 127",
        pytest.fail.Exception),
}


def int8_cases():
    out = []
    for c in CASES:
        if c["kind"] != "int8":
            continue
        marks = []
        # The two library differences once marked xfail here (subnormal rows, and
        # 127 / row_stats rounded once instead of torch's reciprocal * 127) are fixed.
        out.append(pytest.param(c, id=c["name"], marks=marks))
    return out


@pytest.mark.parametrize("case", int8_cases())
def test_golden_int8(case):
    p = case["params"]
    A = load_input(case).reshape(p["rows"], p["cols"])
    expected = load(case, "out")
    report("int8 int8_vectorwise_quant (pure torch)", np.sum(load(case, "bnb_out") != expected), expected.size)
    deq = F.int8_vectorwise_dequant(expected, load(case, "row_stats"))
    assert_bits_equal(deq, load(case, "deq"), "deq", case)
    out, rs, cols = F.int8_vectorwise_quant(A, threshold=p["threshold"])
    assert out.dtype == np.int8 and out.shape == A.shape
    assert_bits_equal(rs, load(case, "row_stats"), "row_stats", case)
    if p["outliers_none"]:
        assert cols is None
    else:
        assert cols is not None and cols.dtype == np.int64
        np.testing.assert_array_equal(cols, load(case, "outlier_cols"))
    if p.get("true_div_mismatch") and np.array_equal(out, load(case, "out_true_div")) \
            and not np.array_equal(out, expected):
        bad = np.argwhere(out != expected)
        r, c = (int(v) for v in bad[0])
        raise Int8TrueDivision(
            f"{case['name']}: {len(bad)} elements differ; first at [{r}, {c}] (A = {float(A[r, c])!r}, "
            f"row_stats = {float(rs[r])!r}): expected {int(expected[r, c])}, got {int(out[r, c])}")
    with np.errstate(divide="ignore", over="ignore"):  # zero and subnormal rows are the point here
        recip_overflows = (rs > 0) & ~np.isfinite(np.float32(1) / rs.astype(np.float32))
    if recip_overflows.any():
        # Rows whose 1/row_stats overflows (subnormal rows): upstream's scale is
        # inf and its output saturates; qembed quantizes them correctly as
        # round_half_even(A / row_stats * 127) (documented in qembed.h).
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            exact = np.rint(A.astype(np.float32) / rs[:, None] * np.float32(127)).astype(np.int8)
        expected = np.where(recip_overflows[:, None], exact, expected)
    assert_bits_equal(out, expected, "int8 out", case)


def test_golden_manifest_is_complete():
    assert MANIFEST is not None, f"no manifest in {GOLDEN_DIR}"
    kinds = {c["kind"] for c in CASES}
    assert kinds == {"map", "blockwise", "blockwise_nested", "4bit", "int8"}
    for c in CASES:
        for rel in c["files"].values():
            assert os.path.exists(os.path.join(GOLDEN_DIR, rel)), rel


# --------------------------------------------------------------------------
# Fresh random data
# --------------------------------------------------------------------------

DTYPES = ["f32", "f16", pytest.param("bf16", marks=needs_bf16)]


def random_input(rng, n, short, scale=None, shape=None):
    scale = scale if scale is not None else float(rng.choice([1e-3, 1.0, 50.0]))
    if rng.random() < 0.5:
        x = rng.standard_normal(n) * scale
    else:
        x = rng.uniform(-scale, scale, n)
    x = x.astype(np.float32).astype(np_dtype(short))
    return x.reshape(shape) if shape is not None else x


def half_gap(levels):
    s = np.sort(np.asarray(levels, dtype=np.float64))
    return float(np.max(np.diff(s)) / 2)


def output_rounding(short, x):
    eps = {"f32": 2.0 ** -24, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}[short]
    tiny = {"f32": 0.0, "f16": 2.0 ** -24, "bf16": 0.0}[short]
    return eps * np.abs(x) + tiny


@pytest.mark.parametrize("short", DTYPES)
@pytest.mark.parametrize("blocksize", [64, 100, 128, 256, 333, 512, 1000, 1024, 2048, 4096])
def test_random_blockwise_round_trip(rng, short, blocksize):
    code = F.create_dynamic_map()
    for n in (1, 7, blocksize - 1, blocksize + 1, 2 * blocksize + 37):
        if n < 1:
            continue
        x = random_input(rng, n, short)
        q, st = F.quantize_blockwise(x, blocksize=blocksize)
        ref_q, ref_absmax = ref_blockwise(to_f32(x), code, blocksize)
        assert_bits_equal(q, ref_q, f"quantized bytes (n={n})")
        assert_bits_equal(st.absmax, ref_absmax, f"absmax (n={n})")
        y = F.dequantize_blockwise(q, st)
        assert y.dtype == x.dtype and y.shape == x.shape
        xf, yf = to_f32(x).astype(np.float64), to_f32(y).astype(np.float64)
        am = np.repeat(ref_absmax.astype(np.float64), blocksize)[:n]
        # Nearest code entry: error <= half the largest code gap times absmax
        # (+ the output dtype's rounding).
        bound = half_gap(code) * am + output_rounding(short, yf) + 1e-30
        assert np.all(np.abs(xf - yf) <= bound * (1 + 1e-6)), f"n={n}: max error {np.max(np.abs(xf - yf))}"


@pytest.mark.parametrize("short", DTYPES)
def test_random_blockwise_custom_codes(rng, short):
    for code in (F.create_dynamic_map(signed=False), F.create_linear_map(), F.create_fp8_map(True, 4, 3, 8),
                 F.create_normal_map()):
        x = random_input(rng, 1001, short)
        if code[0] >= 0:
            x = np.abs(x)
        q, st = F.quantize_blockwise(x, code=code, blocksize=128)
        ref_q, ref_absmax = ref_blockwise(to_f32(x), code, 128)
        assert_bits_equal(q, ref_q, "quantized bytes")
        assert_bits_equal(st.absmax, ref_absmax, "absmax")
        y = F.dequantize_blockwise(q, st)
        want = (code[q.astype(np.int64)] * np.repeat(ref_absmax, 128)[:x.size]).astype(x.dtype)
        assert_bits_equal(y, want, "dequantized")


@pytest.mark.parametrize("short", DTYPES)
@pytest.mark.parametrize("blocksize", [64, 256, 1000])
def test_random_blockwise_nested_round_trip(rng, short, blocksize):
    x = random_input(rng, blocksize * 70 + 13, short)
    q, st = F.quantize_blockwise(x, blocksize=blocksize, nested=True)
    q0, st0 = F.quantize_blockwise(x, blocksize=blocksize)
    assert_bits_equal(q, q0, "nested data bytes equal the plain ones")
    absmax = st0.absmax
    mean = np.float32(np.mean(absmax.astype(np.float64)))
    assert ulp_distance(st.offset, mean) <= 1
    y = F.dequantize_blockwise(q, st)
    # absmax error from the nested 8-bit quantization of (absmax - offset).
    absmax_deq = F._dequantize_statistics(st)
    nested_err = np.abs(absmax_deq.astype(np.float64) - absmax)
    max_dev = np.repeat(st.state2.absmax.astype(np.float64), blocksize)[:absmax.size]
    assert np.all(nested_err <= half_gap(F.create_dynamic_map()) * max_dev * (1 + 1e-5) + 1e-7 * absmax)
    xf, yf = to_f32(x).astype(np.float64), to_f32(y).astype(np.float64)
    am = np.repeat(np.maximum(absmax, absmax_deq).astype(np.float64), blocksize)[:x.size]
    err_absmax = np.repeat(nested_err, blocksize)[:x.size]
    bound = half_gap(F.create_dynamic_map()) * am + err_absmax + output_rounding(short, yf)
    assert np.all(np.abs(xf - yf) <= bound * (1 + 1e-5))


@pytest.mark.parametrize("short", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 512, 1024, 2048, 4096])
def test_random_4bit_round_trip(rng, short, quant_type, blocksize):
    levels = F.get_4bit_type(quant_type)
    for n in (1, 2, 3, blocksize - 1, blocksize + 1, 3 * blocksize + 5):
        x = random_input(rng, n, short)
        packed, st = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        ref_p, ref_absmax = ref_4bit(to_f32(x), blocksize, quant_type)
        assert_bits_equal(packed.reshape(-1), ref_p, f"packed (n={n})")
        assert_bits_equal(st.absmax, ref_absmax, f"absmax (n={n})")
        y = F.dequantize_4bit(packed, st)
        assert y.shape == x.shape and y.dtype == x.dtype
        xf, yf = to_f32(x).astype(np.float64), to_f32(y).astype(np.float64)
        am = np.repeat(ref_absmax.astype(np.float64), blocksize)[:n]
        bound = half_gap(levels) * am + output_rounding(short, yf)
        assert np.all(np.abs(xf - yf) <= bound * (1 + 1e-6))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("short", DTYPES)
def test_random_4bit_compressed_and_shapes(rng, short, quant_type):
    x = random_input(rng, 64 * 300 + 11, short).reshape(-1)
    x2 = x[: 24 * 40].reshape(24, 40)
    for arr, bs in ((x, 64), (x2, 128)):
        packed, st = F.quantize_4bit(arr, blocksize=bs, compress_statistics=True, quant_type=quant_type)
        assert st.nested and st.state2.blocksize == 256 and st.shape == arr.shape
        _, plain = F.quantize_4bit(arr, blocksize=bs, quant_type=quant_type)
        packed_plain, _ = F.quantize_4bit(arr, blocksize=bs, quant_type=quant_type)
        assert_bits_equal(packed, packed_plain, "packed data does not depend on compress_statistics")
        y = F.dequantize_4bit(packed, st)
        y_plain = F.dequantize_4bit(packed, plain)
        assert y.shape == arr.shape
        rel = np.abs(to_f32(y).astype(np.float64) - to_f32(y_plain)) / (np.abs(to_f32(y_plain)) + 1e-3)
        assert np.max(rel) < 0.05
        # The nf4/fp4 wrappers.
        q2, st2 = (F.quantize_nf4 if quant_type == "nf4" else F.quantize_fp4)(arr, blocksize=bs)
        y2 = (F.dequantize_nf4 if quant_type == "nf4" else F.dequantize_fp4)(q2, st2)
        assert_bits_equal(y2, y_plain, "quantize_/dequantize_<type> wrappers")


def test_random_4bit_quant_storage(rng):
    x = random_input(rng, 64 * 4, "f32")
    packed, st = F.quantize_4bit(x, quant_type="nf4")
    for storage in (np.float16, np.float32, np.int32):
        p2, _ = F.quantize_4bit(x, quant_type="nf4", quant_storage=storage)
        assert p2.dtype == storage and p2.shape == (packed.size // np.dtype(storage).itemsize, 1)
        assert p2.tobytes() == packed.tobytes()
        assert_bits_equal(F.dequantize_4bit(p2, st), F.dequantize_4bit(packed, st), f"storage {storage}")
    with pytest.raises(ValueError):
        F.quantize_4bit(random_input(rng, 6, "f32"), quant_storage=np.float32)  # 3 bytes


@pytest.mark.parametrize("short", DTYPES)
@pytest.mark.parametrize("shape", [(1, 513), (300, 1), (17, 33), (4, 5, 6), (64,)])
def test_random_int8_round_trip(rng, short, shape):
    x = random_input(rng, int(np.prod(shape)), short, shape=shape)
    out, rs, cols = F.int8_vectorwise_quant(x)
    assert cols is None and out.shape == x.shape and out.dtype == np.int8
    rows = int(np.prod(shape[:-1]))
    xf = to_f32(x).reshape(rows, -1).astype(np.float64)
    np.testing.assert_array_equal(rs, np.max(np.abs(to_f32(x).reshape(rows, -1)), axis=1))
    y = F.int8_vectorwise_dequant(out, rs)
    assert y.dtype == np.float32 and y.shape == x.shape
    err = np.abs(y.reshape(rows, -1) - xf)
    assert np.all(err <= (rs[:, None].astype(np.float64) / 127) * (0.5 + 1e-5))
    # Within one step of the ideal rounding (ties may go either way by an ulp).
    ideal = xf * (127.0 / np.where(rs == 0, 1, rs)[:, None])
    assert np.all(np.abs(out.reshape(rows, -1) - ideal) <= 0.5 + 1e-4)


def test_random_int8_outliers(rng):
    x = rng.standard_normal((40, 90)).astype(np.float32)
    x[3, 7] = 8.5
    x[30, 7] = -12.0
    x[11, 50] = 6.0
    out, rs, cols = F.int8_vectorwise_quant(x, threshold=6.0)
    np.testing.assert_array_equal(cols, [7, 50])
    assert cols.dtype == np.int64
    assert np.all(out[:, [7, 50]] == 0)
    masked = np.where(np.abs(x) >= 6.0, 0, x)
    np.testing.assert_array_equal(rs, np.max(np.abs(masked), axis=1))
    out2, rs2, cols2 = F.int8_vectorwise_quant(np.clip(x, -5, 5), threshold=6.0)
    assert cols2 is not None and cols2.size == 0 and cols2.dtype == np.int64


def test_inputs_keep_shape_and_are_not_modified(rng):
    x = random_input(rng, 6 * 7 * 8, "f32").reshape(6, 7, 8)
    keep = x.copy()
    q, st = F.quantize_blockwise(x, blocksize=64)
    assert q.shape == x.shape and F.dequantize_blockwise(q, st).shape == x.shape
    p, st4 = F.quantize_4bit(x, blocksize=64)
    assert F.dequantize_4bit(p, st4).shape == x.shape
    F.int8_vectorwise_quant(x, threshold=1.0)
    np.testing.assert_array_equal(x, keep)


def test_non_contiguous_and_list_inputs(rng):
    x = random_input(rng, 40 * 30, "f32").reshape(40, 30)
    xt = x.T  # Fortran order view
    q, st = F.quantize_blockwise(xt, blocksize=64)
    q2, st2 = F.quantize_blockwise(np.ascontiguousarray(xt), blocksize=64)
    assert_bits_equal(q, q2, "non-contiguous input")
    q3, _ = F.quantize_blockwise(x[:, ::3], blocksize=64)
    q4, _ = F.quantize_blockwise(np.ascontiguousarray(x[:, ::3]), blocksize=64)
    assert_bits_equal(q3, q4, "strided input")
    q5, st5 = F.quantize_blockwise([0.5, -0.25, 1.0], blocksize=64)  # lists become float32
    assert st5.dtype == "float32" and q5.shape == (3,)


def test_out_and_absmax_arguments(rng):
    x = random_input(rng, 1000, "f32")
    out = np.full(1000, 7, dtype=np.uint8)
    am = np.zeros(4, dtype=np.float32)
    q, st = F.quantize_blockwise(x, absmax=am, out=out, blocksize=256)
    assert q is out and st.absmax is am
    q2, st2 = F.quantize_blockwise(x, blocksize=256)
    assert_bits_equal(out, q2, "out")
    assert_bits_equal(am, st2.absmax, "absmax")
    y = np.empty(1000, dtype=np.float32)
    assert F.dequantize_blockwise(q, st, out=y) is y
    packed_out = np.empty((500, 1), dtype=np.uint8)
    p, st4 = F.quantize_4bit(x, out=packed_out)
    assert p is packed_out
    y4 = np.empty(1000, dtype=np.float32)
    assert F.dequantize_4bit(p, st4, out=y4) is y4
    # Without a quant_state, dequantize_4bit takes absmax and out.
    y5 = np.empty(1000, dtype=np.float32)
    got = F.dequantize_4bit(p, absmax=st4.absmax, out=y5, blocksize=64, quant_type="fp4")
    assert_bits_equal(got, y4, "dequantize_4bit(absmax=, out=)")


def test_quant_state_basics(rng):
    x = random_input(rng, 500, "f32")
    _, st = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    assert st[0] is st.absmax and st[2] == "float32" and st[5] == "nf4"
    assert st[4][0] == st.offset and st[4][1] is st.state2
    blob = st.bitsandbytes__nf4
    assert blob.dtype == np.uint8
    with pytest.raises(AttributeError):
        st.no_such_attribute
    st_copy = copy.deepcopy(st)
    assert st_copy == st
    st_copy.offset = np.float32(st.offset + 1)
    assert st_copy != st
    unpacked = st.as_dict()
    assert unpacked["dtype"] == "float32" and unpacked["shape"] == (500,)
    assert F.QuantState.from_dict(unpacked) == st
    _, st8 = F.quantize_blockwise(x, blocksize=128)
    assert "quant_state.bitsandbytes__" not in str(st8.as_dict(packed=True).keys())  # quant_type None: unpacked
    with pytest.raises(ValueError):
        F.QuantState.from_dict({"absmax": st.absmax})
    with pytest.raises(ValueError):
        F.QuantState.from_dict({**st.as_dict(packed=True), "quant_state.bitsandbytes__fp4": blob})


def test_threads_do_not_change_results(rng):
    x = random_input(rng, 100_000, "f32")
    old = qembed.get_num_threads()
    try:
        qembed.set_num_threads(1)
        a = F.quantize_blockwise(x, blocksize=256)[0], F.quantize_4bit(x)[0]
        qembed.set_num_threads(4)
        b = F.quantize_blockwise(x, blocksize=256)[0], F.quantize_4bit(x)[0]
    finally:
        qembed.set_num_threads(0)
    assert qembed.get_num_threads() == old or os.environ.get("QEMBED_NUM_THREADS")
    assert_bits_equal(a[0], b[0], "8-bit, 1 vs 4 threads")
    assert_bits_equal(a[1], b[1], "4-bit, 1 vs 4 threads")


def test_concurrent_python_threads(rng):
    import threading
    x = random_input(rng, 50_000, "f32")
    want = F.quantize_4bit(x, quant_type="nf4")[0]
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(F.quantize_4bit(x, quant_type="nf4")[0])
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        assert_bits_equal(r, want, "concurrent result")


# --------------------------------------------------------------------------
# Bad input from Python
# --------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda a: F.quantize_blockwise(a, blocksize=64),
    lambda a: F.quantize_4bit(a),
    lambda a: F.int8_vectorwise_quant(a.reshape(4, -1)),
])
@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.uint8, np.complex64])
def test_wrong_dtype_is_type_error(call, dtype):
    a = np.arange(64).astype(dtype)
    with pytest.raises(TypeError) as e:
        call(a)
    assert isinstance(e.value, qembed.QembedError) and isinstance(e.value, ValueError)
    assert "dtype" in str(e.value)


def test_wrong_dtype_of_quantized_input():
    with pytest.raises(TypeError):
        F.dequantize_blockwise(np.zeros(10, np.int8), absmax=np.ones(1, np.float32))
    with pytest.raises(TypeError):
        F.int8_vectorwise_dequant(np.zeros((2, 3), np.uint8), np.ones(2, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("short", DTYPES)
def test_non_finite_input_names_the_element(bad, short):
    x = np.linspace(-1, 1, 300).astype(np.float32)
    x[123] = bad
    x = x.astype(np_dtype(short))
    for call in (lambda: F.quantize_blockwise(x, blocksize=64), lambda: F.quantize_4bit(x),
                 lambda: F.int8_vectorwise_quant(x.reshape(3, 100)),
                 lambda: F.quantize_blockwise(x, blocksize=64, nested=True)):
        with pytest.raises(ValueError) as e:
            call()
        assert e.value.status == 5  # QEMBED_ERR_NON_FINITE
        assert "123" in str(e.value), str(e.value)


def test_non_finite_is_named_and_argument_errors_leave_out_alone():
    # NaN/Inf is found while the kernel streams the input: the error names
    # the first one, and out= is unspecified afterwards (qembed.h). Argument
    # errors are found before anything is written.
    x = np.ones(1000, dtype=np.float32)
    x[640] = np.inf
    x[999] = np.nan
    out = np.full(1000, 0xAB, dtype=np.uint8)
    am = np.full(16, 3.25, dtype=np.float32)
    with pytest.raises(ValueError, match=r"A\[640\]"):
        F.quantize_blockwise(x, out=out, absmax=am, blocksize=64)
    out[:] = 0xAB
    am[:] = 3.25
    with pytest.raises(ValueError):
        F.quantize_blockwise(x, out=out, absmax=am, blocksize=0)
    assert np.all(out == 0xAB) and np.all(am == 3.25)


@pytest.mark.parametrize("blocksize", [0, 16, 100, 8192, -64])
def test_unsupported_4bit_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_4bit(np.ones(64, np.float32), blocksize=blocksize)
    with pytest.raises(ValueError, match="blocksize"):
        F.dequantize_4bit(np.zeros((32, 1), np.uint8),
                          F.QuantState(absmax=np.ones(1, np.float32), shape=(64,), blocksize=blocksize,
                                       quant_type="nf4", dtype="float32"))


@pytest.mark.parametrize("blocksize", [0, -1])
def test_bad_8bit_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        F.quantize_blockwise(np.ones(64, np.float32), blocksize=blocksize)


@pytest.mark.parametrize("quant_type", ["nf5", "int4", "", None, "NF4"])
def test_unknown_quant_type(quant_type):
    with pytest.raises(ValueError, match="quant_type"):
        F.quantize_4bit(np.ones(64, np.float32), quant_type=quant_type)
    with pytest.raises(NotImplementedError):
        F.get_4bit_type(quant_type)


def test_bad_codes():
    x = np.linspace(-1, 1, 100).astype(np.float32)
    with pytest.raises(ValueError, match="256"):
        F.quantize_blockwise(x, code=np.linspace(-1, 1, 255).astype(np.float32))
    with pytest.raises(ValueError, match="256"):
        F.dequantize_blockwise(np.zeros(10, np.uint8), absmax=np.ones(1, np.float32), code=np.ones(16, np.float32))
    with pytest.raises(ValueError, match="sorted"):
        F.quantize_blockwise(x, code=F.create_dynamic_map()[::-1].copy())
    nan_code = F.create_dynamic_map()
    nan_code[5] = np.nan
    with pytest.raises(ValueError, match=r"code\[5\]"):
        F.quantize_blockwise(x, code=nan_code)
    # bitsandbytes' signed 4-bit linear map is not sorted (zero padding after
    # a tiny negative level): quantize_blockwise refuses it.
    lin4 = F.create_linear_map(signed=True, total_bits=4)
    if np.any(np.diff(lin4) < 0):
        with pytest.raises(ValueError, match="sorted"):
            F.quantize_blockwise(x, code=lin4)
    with pytest.raises(TypeError):
        F.quantize_blockwise(x, code=np.arange(256, dtype=np.int32))


def test_bad_out_arrays():
    x = np.linspace(-1, 1, 100).astype(np.float32)
    with pytest.raises(ValueError, match="shape"):
        F.quantize_blockwise(x, out=np.empty(99, np.uint8))
    with pytest.raises(TypeError):
        F.quantize_blockwise(x, out=np.empty(100, np.int16))
    # an int8 out= takes the code bytes, as in bitsandbytes (test_arg_edges.py)
    q8, _ = F.quantize_blockwise(x, out=np.empty(100, np.int8))
    assert q8.dtype == np.int8 and np.array_equal(q8.view(np.uint8), F.quantize_blockwise(x)[0])
    with pytest.raises(ValueError, match="contiguous"):
        F.quantize_blockwise(x, out=np.empty(200, np.uint8)[::2])
    ro = np.empty(100, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.quantize_blockwise(x, out=ro)
    with pytest.raises(ValueError, match="shape"):
        F.quantize_blockwise(x, absmax=np.empty(3, np.float32), blocksize=64)
    with pytest.raises(ValueError):
        F.quantize_blockwise(x, absmax=np.empty(2, np.float32), blocksize=64, nested=True)
    q, st = F.quantize_blockwise(x, blocksize=64)
    with pytest.raises(ValueError, match="shape"):
        F.dequantize_blockwise(q, st, out=np.empty(101, np.float32))
    with pytest.raises(TypeError):
        F.dequantize_blockwise(q, st, out=np.empty(100, np.float16))
    with pytest.raises(ValueError, match="shape"):
        F.quantize_4bit(x, out=np.empty((49, 1), np.uint8))
    p, st4 = F.quantize_4bit(x)
    with pytest.raises(ValueError, match="shape"):
        F.dequantize_4bit(p, st4, out=np.empty((10, 10), np.float32))


def test_inconsistent_states():
    x = np.linspace(-1, 1, 1000).astype(np.float32)
    q, st = F.quantize_blockwise(x, blocksize=64)
    short = F.QuantState(absmax=st.absmax[:-1], code=st.code, blocksize=64, dtype="float32")
    with pytest.raises(ValueError, match="absmax"):
        F.dequantize_blockwise(q, short)
    with pytest.raises(ValueError):
        F.dequantize_blockwise(q)
    p, st4 = F.quantize_4bit(x, blocksize=64)
    st4.absmax = st4.absmax[:3]
    with pytest.raises(ValueError, match="absmax"):
        F.dequantize_4bit(p, st4)
    _, st4 = F.quantize_4bit(x, blocksize=64)
    with pytest.raises(ValueError, match="packed"):
        F.dequantize_4bit(p[:100], st4)
    with pytest.raises(ValueError):
        F.dequantize_4bit(p)
    with pytest.raises(ValueError, match="stats"):
        F.int8_vectorwise_dequant(np.zeros((4, 5), np.int8), np.ones(3, np.float32))
    with pytest.raises(TypeError):
        F.dequantize_4bit(p, F.QuantState(absmax=st4.absmax, shape=(1000,), blocksize=64, quant_type="nf4",
                                          dtype="float64"))


def test_empty_input_is_value_error():
    with pytest.raises(ValueError, match="n must be"):
        F.quantize_blockwise(np.zeros(0, np.float32))
    with pytest.raises(ValueError):
        F.quantize_4bit(np.zeros(0, np.float32))


def test_threshold_must_be_finite_and_non_negative():
    x = np.ones((2, 3), np.float32)
    for t in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold"):
            F.int8_vectorwise_quant(x, threshold=t)


# --------------------------------------------------------------------------
# bfloat16 without ml_dtypes specifics, torch and bitsandbytes interop
# --------------------------------------------------------------------------


@needs_bf16
def test_bf16_output_dtype(rng):
    x = random_input(rng, 300, "bf16")
    q, st = F.quantize_blockwise(x, blocksize=64)
    assert st.dtype == "bfloat16"
    y = F.dequantize_blockwise(q, st)
    assert y.dtype == F.BFLOAT16


@needs_torch
@pytest.mark.parametrize("short", ["f32", "f16", "bf16"])
def test_torch_tensors_via_dlpack(rng, short):
    tdt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[short]
    t = torch.from_numpy(rng.standard_normal(1000).astype(np.float32)).to(tdt)
    ref = t.float().numpy()
    q, st = F.quantize_blockwise(t, blocksize=128)
    assert st.dtype == DTYPE_NAMES[short]
    q_ref, _ = ref_blockwise(ref, F.create_dynamic_map(), 128)
    assert_bits_equal(q, q_ref, "torch input, 8-bit")
    p, st4 = F.quantize_4bit(t.reshape(20, 50), quant_type="nf4")
    p_ref, _ = ref_4bit(ref, 64, "nf4")
    assert_bits_equal(p.reshape(-1), p_ref, "torch input, 4-bit")
    tg = t.clone().requires_grad_(True) if short != "f16" else t
    out, rs, _ = F.int8_vectorwise_quant(tg.reshape(10, 100))
    assert out.shape == (10, 100)
    if short == "bf16" and HAVE_BF16:
        y = F.dequantize_4bit(p, st4)
        assert y.dtype == F.BFLOAT16


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("short", ["f32", "f16", "bf16"])
def test_bitsandbytes_quant_state_round_trip(rng, quant_type, compress, short):
    """qembed state -> as_dict(packed) -> bitsandbytes QuantState.from_dict ->
    bnb dequantize, and bitsandbytes state -> qembed QuantState.from_dict ->
    qembed dequantize, with the same values both ways."""
    if short == "bf16" and not HAVE_BF16:
        pytest.skip("bfloat16 needs ml_dtypes")
    tdt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[short]
    t = torch.from_numpy(rng.standard_normal(64 * 300 + 5).astype(np.float32)).to(tdt)

    def to_torch(d):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}

    # qembed -> bitsandbytes
    packed, st = F.quantize_4bit(t, quant_type=quant_type, compress_statistics=compress)
    bst = bnbF.QuantState.from_dict(to_torch(st.as_dict(packed=True)), device="cpu")
    assert bst.quant_type == quant_type and bst.dtype == tdt and tuple(bst.shape) == st.shape
    assert bst.nested == compress
    y_bnb = bnbF.dequantize_4bit(torch.from_numpy(packed), bst).reshape(-1)
    y_q = F.dequantize_4bit(packed, st)
    a = y_bnb.float().numpy()
    b = to_f32(y_q).reshape(-1)
    np.testing.assert_array_equal(a, b)  # values equal (bitsandbytes' native FP4 kernel may give -0.0)

    # bitsandbytes -> qembed
    bpacked, bst2 = bnbF.quantize_4bit(t, quant_type=quant_type, compress_statistics=compress)
    d = {k: v for k, v in bst2.as_dict(packed=True).items()}
    st2 = F.QuantState.from_dict(d)
    assert st2.dtype == DTYPE_NAMES[short] and st2.nested == compress and st2.shape == tuple(t.shape)
    y2 = F.dequantize_4bit(bpacked, st2)
    y2_bnb = bnbF.dequantize_4bit(bpacked, bst2).reshape(-1)
    np.testing.assert_array_equal(to_f32(y2).reshape(-1), y2_bnb.float().numpy())
    # Serialized bytes agree both ways.
    back = st2.as_dict(packed=True)
    for k, v in d.items():
        assert np.asarray(back[k]).tobytes() == v.numpy().tobytes(), k
    # A bitsandbytes QuantState object is accepted as it is (torch tensors, torch dtype).
    y3 = F.dequantize_4bit(bpacked, bst2)
    assert_bits_equal(y3, y2, "dequantize_4bit with a bitsandbytes QuantState")


@needs_bnb
def test_bitsandbytes_blockwise_compare(rng):
    """Exact agreement with bitsandbytes' pure-torch rule; its CPU kernel's
    table approximation differs on a few elements (reported)."""
    x = rng.standard_normal(100_000).astype(np.float32)
    q, st = F.quantize_blockwise(x, blocksize=256)
    bq, bst = bnbF.quantize_blockwise(torch.from_numpy(x), blocksize=256)
    np.testing.assert_array_equal(st.absmax, bst.absmax.numpy())
    report("blockwise 8-bit (live bitsandbytes, 100k normal)", np.sum(q != bq.numpy()), q.size)
    assert np.mean(q != bq.numpy()) < 0.01
    y = F.dequantize_blockwise(q, st)
    # bitsandbytes' own state (nested too) works with qembed's dequantize.
    bq2, bst2 = bnbF.quantize_blockwise(torch.from_numpy(x), blocksize=256, nested=True)
    assert_bits_equal(F.dequantize_blockwise(bq2, bst2), bnbF.dequantize_blockwise(bq2, bst2).numpy(),
                      "nested bitsandbytes state")
    by = bnbF.dequantize_blockwise(torch.from_numpy(q), bnbF.QuantState(
        absmax=torch.from_numpy(st.absmax), code=torch.from_numpy(st.code), blocksize=256, dtype=torch.float32))
    assert_bits_equal(y, by.numpy(), "dequantize vs bitsandbytes")
