#!/usr/bin/env python3
"""Generate qembed's golden fixtures (Tests/golden/manifest.json + data/*.npy).

Run with the reference venv (bitsandbytes 0.50.2, torch 2.x CPU):

    /work/refvenv/bin/python tools/gen_fixtures.py

The project's own tests only read the .npy files with numpy; neither torch nor
bitsandbytes is needed to check them.

What the goldens are
--------------------
"out"/"absmax"/"packed" hold the EXACT rule of the reference semantics
(Tests/golden follows /work/shared/reference/semantics.md and include/qembed.h),
computed here with torch and cross-checked with an independent numpy version:

  absmax[b] = max |x| over block b (float32, x converted to float32 first)
  scaled    = clamp(x * (1/absmax[b]), -1, 1) in float32
              (an all-zero block scales to 0; when 1/absmax overflows, i.e.
              absmax < 2**-128, x / absmax is used, as qembed.h documents)
  q         = number of code midpoints m[i] = (code[i] + code[i+1]) / 2
              (float32) strictly below `scaled` (torch.bucketize, right=False)

bitsandbytes' own CPU kernels are recorded next to them as "bnb_*" for
information only, and the generator prints how many elements they differ:

  * 8-bit quantize_blockwise on the CPU goes through the native
    cquantize_blockwise_cpu_* kernels, which search a 65536-entry lookup table
    instead of the exact midpoints; a small fraction of elements differ.
  * 4-bit quantize_4bit on the CPU uses the pure-torch default backend. It is
    the exact bucketize rule for full blocks, but (a) the short tail block is
    scaled with a division x / absmax instead of x * (1/absmax), and (b) it
    clamps the divisor to >= 1e-38, so an all-zero tail block stores absmax
    1e-38 instead of 0 and a block whose absmax is below 1e-38 (subnormal data)
    is scaled by 1e38 instead of 1/absmax. The count of differing elements is
    printed for every case (0 for ordinary data).
  * FP4 ties: the FP4 levels hold +0.0 twice (nibble 0 and nibble 8; the "-0"
    of get_4bit_type's list is the Python int -0 == 0, so both are +0.0).
    bitsandbytes sorts the levels with torch.argsort; on the CPU, for this
    16-element tensor, torch.argsort returns the same permutation with and
    without stable=True: [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, ...], i.e. the
    tie keeps index order (0 before 8). With the midpoint between the two
    zeros equal to 0, a scaled value <= 0 that rounds to zero takes nibble 0
    and a small positive value takes nibble 8. The generator asserts this
    permutation; the exact rule here uses the stable order.

Dequantized goldens ("deq_*") are bitsandbytes' own F.dequantize_blockwise /
F.dequantize_4bit / F.int8_vectorwise_dequant applied to the exact-rule state,
and each is asserted equal to the plain torch formula code[q] * absmax (float32,
then cast with round-to-nearest-even). One exception, counted and printed:
bitsandbytes' native CPU FP4 dequantize kernel decodes nibble 8 as -0.0, while
get_4bit_type (and bitsandbytes' pure-torch backend) hold +0.0 there; the
golden keeps the formula (+0.0). The native 4-bit kernel also returns a 1-D
input as shape (1, n) (or (n, 1) for n <= 2); the golden keeps the input shape.

int8 ("int8" cases) follows bitsandbytes' int8_vectorwise_quant itself (its
CPU path is pure torch): the scale is `127.0 / row_stats`, which torch
evaluates as row_stats.reciprocal() * 127 (two float32 roundings), not as a
true division; "out_true_div" holds the true-division variant and the count of
elements where the two differ is printed. See exact_int8() for zero rows and
subnormal row maxima.

bf16 arrays are stored as their uint16 bit patterns (params "dtype": "bf16").
"""

import json
import os
import subprocess
import sys

# torch.linspace (which create_dynamic_map and create_linear_map use) rounds
# differently under each ATen CPU capability: the vectorized kernels build
# chunks as base + k*step, the scalar one as start + i*step. So bitsandbytes'
# maps differ by one ulp in some entries between DEFAULT, AVX2 and AVX512
# machines (42 of 256 entries of the default dynamic map). The goldens pin the
# scalar definition, which is machine-independent; the AVX2/AVX512 variants
# are stored next to the map goldens as code_avx2 / code_avx512.
os.environ["ATEN_CPU_CAPABILITY"] = "default"

import numpy as np
import torch

import bitsandbytes
import bitsandbytes.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "Tests", "golden")
DATA = os.path.join(GOLDEN, "data")

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

CASES = []
MISMATCH = {}  # kind -> [elements differing, elements total, absmax differing]


# ----------------------------------------------------------------------------
# Storage helpers
# ----------------------------------------------------------------------------

def to_numpy(t):
    """A torch tensor (or numpy array) as a numpy array; bf16 as uint16 bits."""
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def add_case(name, kind, params, arrays):
    assert all(c["name"] != name for c in CASES), name
    files = {}
    for key, value in arrays.items():
        arr = np.ascontiguousarray(to_numpy(value))
        fname = f"{name}__{key}.npy"
        np.save(os.path.join(DATA, fname), arr, allow_pickle=False)
        files[key] = "data/" + fname
    CASES.append({"name": name, "kind": kind, "params": params, "files": files})


def count(kind, differing, total, absmax_differing=0):
    m = MISMATCH.setdefault(kind, [0, 0, 0])
    m[0] += int(differing)
    m[1] += int(total)
    m[2] += int(absmax_differing)


def random_data(rng, n, dist, scale, nonneg=False):
    """Fresh random float32 data: normal or uniform, at a given scale."""
    if dist == "normal":
        x = rng.standard_normal(n) * scale
    else:
        x = rng.uniform(-1.0, 1.0, n) * scale
    if nonneg:
        x = np.abs(x)
    return torch.from_numpy(x.astype(np.float32))


def bits_equal(a, b):
    """Bit-exact equality of two tensors of the same dtype (so -0 != +0)."""
    a, b = to_numpy(a), to_numpy(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------
# The exact rule (torch), with a numpy cross-check
# ----------------------------------------------------------------------------

def exact_scale(x, blocksize):
    """(scaled values, absmax) of a flat float32 tensor by the exact rule."""
    n = x.numel()
    nb = -(-n // blocksize)
    xp = torch.nn.functional.pad(x, (0, nb * blocksize - n)).view(nb, blocksize)
    absmax = xp.abs().amax(dim=1)
    recip = torch.ones((), dtype=torch.float32) / absmax
    use_div = torch.isinf(recip) & (absmax > 0)
    scaled = torch.where(use_div[:, None], xp / absmax[:, None], xp * recip[:, None])
    scaled = torch.where((absmax == 0)[:, None], torch.zeros_like(xp), scaled)
    scaled = torch.clamp(scaled, -1.0, 1.0).reshape(-1)[:n]
    return scaled, absmax


def exact_scale_numpy(x, blocksize):
    x = np.asarray(x, dtype=np.float32)
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


def exact_blockwise(A, code, blocksize):
    """Exact-rule 8-bit blockwise quantization: (q uint8 flat, absmax f32)."""
    x = A.reshape(-1).to(torch.float32)
    scaled, absmax = exact_scale(x, blocksize)
    mids = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, mids, right=False).to(torch.uint8)
    # Independent check with numpy: searchsorted(side="left") counts the
    # midpoints strictly below each value.
    s_np, a_np = exact_scale_numpy(x.numpy(), blocksize)
    mids_np = ((code.numpy()[:-1] + code.numpy()[1:]) / np.float32(2)).astype(np.float32)
    q_np = np.searchsorted(mids_np, s_np, side="left").astype(np.uint8)
    assert np.array_equal(a_np.view(np.uint32), absmax.numpy().view(np.uint32))
    assert np.array_equal(q_np, q.numpy()), "torch and numpy exact rules disagree"
    return q, absmax


def exact_blockwise_deq(q, absmax, code, blocksize, dtype):
    n = q.numel()
    blk = torch.arange(n) // blocksize
    return (code[q.long()] * absmax[blk]).to(dtype)


FP4_STABLE_ORDER = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]


def four_bit_levels(quant_type):
    levels = F.get_4bit_type(quant_type, device="cpu")
    order = torch.argsort(levels, stable=True)
    if quant_type == "fp4":
        # Documented in the module docstring: torch's default (unstable) CPU
        # argsort gives the same permutation as the stable one here.
        assert order.tolist() == FP4_STABLE_ORDER
        assert torch.argsort(levels).tolist() == FP4_STABLE_ORDER
        assert not torch.signbit(levels[8]).item()
    else:
        assert order.tolist() == list(range(16))
    mids = (levels[order[:-1]] + levels[order[1:]]) / 2
    return levels, order, mids


def exact_4bit(A, blocksize, quant_type):
    """Exact-rule 4-bit: (packed uint8 flat, absmax f32)."""
    levels, order, mids = four_bit_levels(quant_type)
    x = A.reshape(-1).to(torch.float32)
    scaled, absmax = exact_scale(x, blocksize)
    s_np, a_np = exact_scale_numpy(x.numpy(), blocksize)
    assert np.array_equal(s_np.view(np.uint32), scaled.numpy().view(np.uint32))
    assert np.array_equal(a_np.view(np.uint32), absmax.numpy().view(np.uint32))
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = order[torch.bucketize(scaled, mids, right=False)].to(torch.uint8)
    packed = (q[0::2] << 4) | q[1::2]
    return packed, absmax


def exact_4bit_deq(packed, absmax, n, blocksize, quant_type, dtype):
    levels = F.get_4bit_type(quant_type, device="cpu")
    nib = torch.empty(packed.numel() * 2, dtype=torch.long)
    nib[0::2] = (packed >> 4).long()
    nib[1::2] = (packed & 15).long()
    nib = nib[:n]
    blk = torch.arange(n) // blocksize
    return (levels[nib] * absmax[blk]).to(dtype)


def nibbles(packed, n):
    p = to_numpy(packed).reshape(-1)
    out = np.empty(p.size * 2, dtype=np.uint8)
    out[0::2] = p >> 4
    out[1::2] = p & 15
    return out[:n]


def dynamic_code():
    return F.create_dynamic_map(signed=True).to(torch.float32)


# ----------------------------------------------------------------------------
# Maps
# ----------------------------------------------------------------------------

VARIANT_SCRIPT = r"""
import json, sys, torch, bitsandbytes.functional as F
specs = json.loads(sys.argv[1])
out = []
for fn, args in specs:
    code = F.get_4bit_type(args["typename"], device="cpu") if fn == "get_4bit_type" else getattr(F, fn)(**args)
    out.append(code.to(torch.float32).tolist())
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "codes": out}))
"""


def map_variants(specs, capability):
    """The maps as bitsandbytes builds them under another ATen CPU capability
    (None when this machine does not support it)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    res = subprocess.run([sys.executable, "-c", VARIANT_SCRIPT, json.dumps(specs)], env=env,
                         capture_output=True, text=True, check=True)
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if data["capability"].lower() != capability:
        return None
    return [torch.tensor(c, dtype=torch.float32) for c in data["codes"]]


def gen_maps():
    specs = [
        ("create_dynamic_map", dict(signed=True, max_exponent_bits=7, total_bits=8)),
        ("create_dynamic_map", dict(signed=False, max_exponent_bits=7, total_bits=8)),
        ("create_dynamic_map", dict(signed=True, max_exponent_bits=4, total_bits=8)),
        ("create_dynamic_map", dict(signed=True, max_exponent_bits=5, total_bits=6)),
        ("create_dynamic_map", dict(signed=True, max_exponent_bits=3, total_bits=4)),
        ("create_dynamic_map", dict(signed=False, max_exponent_bits=4, total_bits=5)),
        ("create_dynamic_map", dict(signed=True, max_exponent_bits=1, total_bits=8)),
        ("create_linear_map", dict(signed=True, total_bits=8, add_zero=True)),
        ("create_linear_map", dict(signed=False, total_bits=8, add_zero=True)),
        ("create_linear_map", dict(signed=True, total_bits=8, add_zero=False)),
        ("create_linear_map", dict(signed=True, total_bits=4, add_zero=True)),
        ("create_linear_map", dict(signed=False, total_bits=4, add_zero=True)),
        ("create_fp8_map", dict(signed=True, exponent_bits=5, precision_bits=2, total_bits=8)),
        ("create_fp8_map", dict(signed=True, exponent_bits=4, precision_bits=3, total_bits=8)),
        ("create_fp8_map", dict(signed=True, exponent_bits=2, precision_bits=1, total_bits=4)),
        ("create_fp8_map", dict(signed=False, exponent_bits=4, precision_bits=4, total_bits=8)),
        ("create_normal_map", dict(offset=0.9677083, use_extra_value=True)),
        ("create_normal_map", dict(offset=0.9677083, use_extra_value=False)),
        ("create_normal_map", dict(offset=0.99, use_extra_value=True)),
        ("create_normal_map", dict(offset=0.95, use_extra_value=False)),
        ("get_4bit_type", dict(typename="nf4")),
        ("get_4bit_type", dict(typename="fp4")),
    ]
    variants = {cap: map_variants(specs, cap) for cap in ("avx2", "avx512")}
    for idx, (fn, args) in enumerate(specs):
        if fn == "get_4bit_type":
            code = F.get_4bit_type(args["typename"], device="cpu")
            name = f"map_4bit_{args['typename']}"
        else:
            code = getattr(F, fn)(**args)
            name = "map_" + fn[len("create_"):] + "_" + "_".join(
                f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in args.items())
        code = code.to(torch.float32)
        arrays = {"code": code}
        params = {"fn": fn, "args": args}
        for cap, codes in variants.items():
            if codes is None:
                continue
            differing = int((codes[idx].view(torch.int32) != code.view(torch.int32)).sum())
            params[f"{cap}_entries_differ"] = differing
            count(f"maps: {cap} torch.linspace vs scalar", differing, 256)
            if differing:
                arrays["code_" + cap] = codes[idx]
        add_case(name, "map", params, arrays)


# ----------------------------------------------------------------------------
# Blockwise 8-bit
# ----------------------------------------------------------------------------

CODES = {
    "dynamic": lambda: F.create_dynamic_map(signed=True),
    "dynamic_unsigned": lambda: F.create_dynamic_map(signed=False),
    "linear": lambda: F.create_linear_map(signed=True, total_bits=8),
    "fp8_e4m3": lambda: F.create_fp8_map(True, 4, 3, 8),
}


def blockwise_case(name, A, blocksize, code_name="dynamic", note=None):
    dname = {v: k for k, v in TORCH_DTYPES.items()}[A.dtype]
    code = CODES[code_name]().to(torch.float32)
    assert bool((code[1:] >= code[:-1]).all())
    n = A.numel()
    q, absmax = exact_blockwise(A, code, blocksize)

    # bitsandbytes' own CPU kernel (65536-bin table): informative only.
    bnb_out, bnb_state = F.quantize_blockwise(A.clone(), code=code.clone(), blocksize=blocksize)
    bnb_out = bnb_out.reshape(-1)
    diff = int((bnb_out != q).sum())
    absdiff = int((bnb_state.absmax != absmax).sum())
    count("blockwise" + (" (edge)" if "_edge_" in name else ""), diff, n, absdiff)

    arrays = {"A": A, "code": code, "out": q, "absmax": absmax}
    for dk, dt in TORCH_DTYPES.items():
        if n > 5000 and dk not in ("f32", dname):
            continue  # keep the fixtures small: big cases store f32 + their own dtype
        qs = F.QuantState(absmax=absmax.clone(), code=code.clone(), blocksize=blocksize, dtype=dt)
        deq = F.dequantize_blockwise(q.clone(), qs)
        ref = exact_blockwise_deq(q, absmax, code, blocksize, dt)
        assert bits_equal(deq, ref), f"{name}: bitsandbytes dequantize {dk} != code[q]*absmax"
        arrays["deq_" + dk] = deq
    arrays["bnb_out"] = bnb_out
    params = {"dtype": dname, "n": n, "blocksize": blocksize, "code": code_name,
              "bnb_mismatch": diff}
    if note:
        params["note"] = note
    add_case(name, "blockwise", params, arrays)
    return diff


def gen_blockwise():
    dists = [("normal", 1.0), ("uniform", 50.0), ("normal", 1e-3), ("uniform", 1.0),
             ("normal", 50.0), ("uniform", 1e-3)]
    dtypes = ["f32", "f16", "bf16"]
    seed = 1000
    for bi, bs in enumerate([64, 128, 256, 1000, 4096]):
        rng = np.random.default_rng(seed + bi)
        odd = int(rng.integers(bs // 2, 2 * bs)) | 1
        lengths = [1, bs - 1, bs, bs + 1, odd, 3 * bs + 17]
        for li, n in enumerate(lengths):
            dk = dtypes[(li + bi) % 3]
            dist, scale = dists[(li + 2 * bi) % len(dists)]
            A = random_data(rng, n, dist, scale).to(TORCH_DTYPES[dk])
            blockwise_case(f"blockwise_{dk}_bs{bs}_n{n}", A, bs)
    # The two 16-bit dtypes at the awkward sizes of one small blocksize too.
    rng = np.random.default_rng(seed + 50)
    for dk in dtypes:
        for n in (3 * 64 + 17, 129):
            name = f"blockwise_{dk}_bs64_n{n}_all_dtypes"
            A = random_data(rng, n, "normal", 1.0).to(TORCH_DTYPES[dk])
            blockwise_case(name, A, 64)

    # Caller-given codes.
    rng = np.random.default_rng(seed + 60)
    A = random_data(rng, 777, "normal", 1.0, nonneg=True)
    blockwise_case("blockwise_f32_bs256_n777_unsigned", A, 256, "dynamic_unsigned")
    A = random_data(rng, 611, "uniform", 50.0, nonneg=True).to(torch.float16)
    blockwise_case("blockwise_f16_bs128_n611_unsigned", A, 128, "dynamic_unsigned")
    A = random_data(rng, 2049, "normal", 1e-3).to(torch.bfloat16)
    blockwise_case("blockwise_bf16_bs1000_n2049_linear", A, 1000, "linear")
    A = random_data(rng, 1031, "uniform", 1.0)
    blockwise_case("blockwise_f32_bs200_n1031_linear", A, 200, "linear")
    A = random_data(rng, 517, "normal", 50.0).to(torch.float16)
    blockwise_case("blockwise_f16_bs64_n517_fp8e4m3", A, 64, "fp8_e4m3")

    gen_blockwise_edges(rng)


def midpoint_block(code, absmax, rng, size):
    """A block of `size` holding absmax (first) and exact scaled midpoints."""
    mids = ((code[:-1] + code[1:]) / 2).numpy().astype(np.float32)
    mids = np.unique(mids)
    mids = mids[(mids > -1) & (mids < 1)]
    vals = (mids * np.float32(absmax)).astype(np.float32)
    # Keep only values that are exact scaled midpoints: x * (1/absmax) == m.
    recip = np.float32(1) / np.float32(absmax)
    exact = (vals * recip).astype(np.float32) == mids
    vals = vals[exact]
    vals = rng.permutation(vals)[: size - 1]
    block = np.concatenate([[np.float32(absmax)], vals]).astype(np.float32)
    if block.size < size:
        block = np.concatenate([block, np.resize(vals, size - block.size)])
    return block


def gen_blockwise_edges(rng):
    # An all-zero block between random ones, every dtype.
    for dk, bs in (("f32", 64), ("f16", 128), ("bf16", 256)):
        x = random_data(rng, 3 * bs + 5, "normal", 1.0)
        x[bs:2 * bs] = 0.0
        blockwise_case(f"blockwise_edge_zero_block_{dk}_bs{bs}", x.to(TORCH_DTYPES[dk]), bs,
                       note="block 1 is all zeros: absmax 0, dequantizes to 0")
    # An all-zero tail block and an all-zero input.
    x = random_data(rng, 2 * 64 + 9, "uniform", 1.0)
    x[128:] = 0.0
    blockwise_case("blockwise_edge_zero_tail_f32_bs64", x, 64)
    blockwise_case("blockwise_edge_all_zero_f32_bs64", torch.zeros(100, dtype=torch.float32), 64)

    # Values exactly on midpoints: absmax 1 (scaled == x), 2 and 0.5
    # (power-of-two scales keep x * (1/absmax) exact), and -1 as the absmax
    # element. They must take the LOWER index.
    code = CODES["dynamic"]().to(torch.float32)
    blocks = [midpoint_block(code, 1.0, rng, 256), midpoint_block(code, 2.0, rng, 256),
              midpoint_block(code, 0.5, rng, 256)]
    neg = midpoint_block(code, 1.0, rng, 256)
    neg[0] = -1.0
    blocks.append(neg)
    x = torch.from_numpy(np.concatenate(blocks))
    blockwise_case("blockwise_edge_midpoints_dynamic_f32_bs256", x, 256,
                   note="every block holds +-absmax and exact float32 code midpoints (scaled)")
    code_u = CODES["dynamic_unsigned"]().to(torch.float32)
    x = torch.from_numpy(np.concatenate([midpoint_block(code_u, 1.0, rng, 256),
                                         midpoint_block(code_u, 4.0, rng, 256)]))
    blockwise_case("blockwise_edge_midpoints_unsigned_f32_bs256", x, 256, "dynamic_unsigned")
    code_l = CODES["linear"]().to(torch.float32)
    x = torch.from_numpy(midpoint_block(code_l, 1.0, rng, 256))
    blockwise_case("blockwise_edge_midpoints_linear_f32_bs256", x, 256, "linear")
    # bf16 and f16 midpoints: the code midpoints that the 16-bit type holds exactly.
    for dk, npdt in (("f16", np.float16),):
        mids = ((code[:-1] + code[1:]) / 2).numpy().astype(np.float32)
        rep = mids[(mids.astype(npdt).astype(np.float32) == mids) & (np.abs(mids) < 1)]
        vals = np.concatenate([[np.float32(1.0)], rng.permutation(rep)])[:128]
        A = torch.from_numpy(vals.astype(np.float32)).to(TORCH_DTYPES[dk])
        assert bits_equal(A.float(), torch.from_numpy(vals.astype(np.float32)))
        blockwise_case(f"blockwise_edge_midpoints_{dk}_bs128", A, 128)
    mids = ((code[:-1] + code[1:]) / 2)
    rep = mids[(mids.to(torch.bfloat16).float() == mids) & (mids.abs() < 1)]
    vals = torch.cat([torch.tensor([1.0]), rep[torch.from_numpy(rng.permutation(rep.numel()))]])
    blockwise_case("blockwise_edge_midpoints_bf16_bs128", vals.to(torch.bfloat16), 128)

    # +-absmax: several elements equal to +absmax and -absmax.
    x = random_data(rng, 300, "normal", 3.0)
    am = float(np.float32(7.3127))
    for i in (0, 17, 64, 65, 130, 299):
        x[i] = am if i % 2 else -am
    x[200] = -am  # a block whose absmax only appears negative
    blockwise_case("blockwise_edge_pm_absmax_f32_bs64", x, 64)
    blockwise_case("blockwise_edge_pm_absmax_bf16_bs64", x.to(torch.bfloat16), 64)
    blockwise_case("blockwise_edge_pm_absmax_f16_bs64", x.to(torch.float16), 64)

    # Subnormals (float32): a block whose values are all subnormal with absmax
    # above 2**-128 (1/absmax finite), a block all subnormal below 2**-128
    # (1/absmax overflows: divide), subnormals mixed with normal values, and
    # the smallest subnormal alone.
    tiny = np.float32(2.0 ** -149)
    b1 = (rng.uniform(-1, 1, 64) * 5.5e-39).astype(np.float32)
    b2 = (rng.uniform(-1, 1, 64) * 2.0e-39).astype(np.float32)
    b3 = (rng.uniform(-1, 1, 64) * 1e-40).astype(np.float32)
    b4 = random_data(rng, 64, "normal", 1.0).numpy()
    b4[::3] = (rng.uniform(-1, 1, b4[::3].size) * 1e-39).astype(np.float32)
    b5 = np.zeros(64, dtype=np.float32)
    b5[5] = tiny
    b5[9] = -tiny
    b5[33] = 3 * tiny
    x = torch.from_numpy(np.concatenate([b1, b2, b3, b4, b5]))
    assert torch.all(torch.abs(x[:192]) < 1.1754944e-38)
    blockwise_case("blockwise_edge_subnormal_f32_bs64", x, 64,
                   note="blocks: subnormal (absmax > 2^-128), subnormal (absmax < 2^-128), "
                        "subnormal (absmax < 2^-128 tiny), mixed, three smallest subnormals")
    blockwise_case("blockwise_edge_subnormal_bf16_bs64", x.to(torch.bfloat16), 64)
    # float16 subnormals (6e-8 .. 6.1e-5): normal float32 after conversion.
    h1 = (rng.uniform(-1, 1, 64) * 6e-5).astype(np.float16)
    h2 = random_data(rng, 64, "uniform", 1.0).numpy().astype(np.float16)
    h2[1::2] = (rng.uniform(-1, 1, 32) * 3e-6).astype(np.float16)
    h = np.concatenate([h1, h2])
    assert np.all(np.abs(h1) < np.float16(6.104e-05))
    blockwise_case("blockwise_edge_subnormal_f16_bs64", torch.from_numpy(h), 64)
    # Large magnitudes near the float16 and float32 limits.
    x = random_data(rng, 128, "uniform", 3.0e38)
    blockwise_case("blockwise_edge_huge_f32_bs64", x, 64)
    x = random_data(rng, 128, "uniform", 65000.0).to(torch.float16)
    blockwise_case("blockwise_edge_huge_f16_bs64", x, 64)


# ----------------------------------------------------------------------------
# Nested blockwise 8-bit
# ----------------------------------------------------------------------------

def gen_blockwise_nested():
    code = dynamic_code()
    rng = np.random.default_rng(2000)
    # f32 bs32 n2249: 71 absmax values -> 3 nested blocks of 32.
    specs = [("f32", 32, 2249, "normal", 1.0), ("f16", 128, 3001, "uniform", 50.0),
             ("bf16", 256, 5001, "normal", 1e-3), ("f32", 1000, 3007, "uniform", 1.0),
             ("f32", 64, 130, "normal", 3.0), ("bf16", 32, 2085, "uniform", 1.0)]
    for dk, bs, n, dist, scale in specs:
        A = random_data(rng, n, dist, scale).to(TORCH_DTYPES[dk])
        name = f"nested_{dk}_bs{bs}_n{n}"
        out, st = F.quantize_blockwise(A.clone(), blocksize=bs, nested=True)
        deq = F.dequantize_blockwise(out, st)
        st_f32 = F.QuantState(absmax=st.absmax, code=st.code, blocksize=bs, dtype=torch.float32,
                              offset=st.offset, state2=st.state2)
        deq_f32 = F.dequantize_blockwise(out, st_f32)
        assert bits_equal(deq_f32.to(A.dtype), deq) or A.dtype != torch.float32

        q_exact, absmax_exact = exact_blockwise(A, code, bs)
        offset = st.offset.reshape(1).to(torch.float32)
        # bitsandbytes' offset is torch's float32 mean of the absmax.
        assert bits_equal(absmax_exact.mean().reshape(1), offset)
        qabs_exact, nabs_exact = exact_blockwise(absmax_exact - offset, code, bs)
        count("blockwise_nested(data)", int((out.reshape(-1) != q_exact).sum()), n)
        count("blockwise_nested(absmax)", int((st.absmax != qabs_exact).sum()), qabs_exact.numel(),
              int((st.state2.absmax != nabs_exact).sum()))
        absmax_deq = code[qabs_exact.long()] * nabs_exact[torch.arange(qabs_exact.numel()) // bs] + offset
        st_exact = F.QuantState(absmax=qabs_exact, code=code, blocksize=bs, dtype=torch.float32,
                                offset=offset.reshape(()),
                                state2=F.QuantState(absmax=nabs_exact, code=code, blocksize=bs,
                                                    dtype=torch.float32))
        arrays = {"A": A, "out": q_exact, "bnb_out": out.reshape(-1), "qabsmax": st.absmax,
                  "nested_absmax": st.state2.absmax, "offset": offset, "deq_f32": deq_f32,
                  "absmax": absmax_exact, "qabsmax_exact": qabs_exact,
                  "nested_absmax_exact": nabs_exact, "absmax_deq_exact": absmax_deq}
        for dk2, dt in TORCH_DTYPES.items():
            if dk2 not in ("f32", dk):
                continue
            st_exact.dtype = dt
            d = F.dequantize_blockwise(q_exact.clone(), st_exact)
            ref = exact_blockwise_deq(q_exact, absmax_deq, code, bs, dt)
            assert bits_equal(d, ref), name
            arrays[f"deq_{dk2}_exact"] = d
        add_case(name, "blockwise_nested",
                 {"dtype": dk, "n": n, "blocksize": bs, "nested_blocksize": bs}, arrays)


# ----------------------------------------------------------------------------
# 4-bit
# ----------------------------------------------------------------------------

def fourbit_case(name, A, blocksize, quant_type, compress, note=None):
    dname = {v: k for k, v in TORCH_DTYPES.items()}[A.dtype]
    n = A.numel()
    packed, absmax = exact_4bit(A, blocksize, quant_type)
    bnb_packed, st = F.quantize_4bit(A.clone(), blocksize=blocksize, quant_type=quant_type,
                                     compress_statistics=compress)
    assert tuple(bnb_packed.shape) == ((n + 1) // 2, 1)
    diff = int((nibbles(bnb_packed, n) != nibbles(packed, n)).sum())
    code = F.get_4bit_type(quant_type, device="cpu")
    arrays = {"A": A, "packed": packed}
    params = {"dtype": dname, "n": n, "shape": list(A.shape), "blocksize": blocksize,
              "quant_type": quant_type, "compress_statistics": compress, "bnb_mismatch": diff}
    if note:
        params["note"] = note

    if compress:
        dyn = dynamic_code()
        offset = absmax.mean().reshape(1)
        qabs, nabs = exact_blockwise(absmax - offset, dyn, 256)
        count("4bit" + (" (edge)" if "_edge_" in name else ""), diff, n,
              int((st.state2.absmax != nabs).sum()) + int((st.absmax != qabs).sum()))
        # Replace bitsandbytes' (table-approximated) statistics by the exact ones.
        st.absmax = qabs
        st.offset = offset.reshape(())
        st.state2.absmax = nabs
        absmax_used = dyn[qabs.long()] * nabs[torch.arange(qabs.numel()) // 256] + offset
        arrays.update({"absmax": absmax, "qabsmax": qabs, "nested_absmax": nabs, "offset": offset,
                       "nested_code": dyn, "absmax_deq": absmax_used})
        params["nested_blocksize"] = 256
    else:
        count("4bit" + (" (edge)" if "_edge_" in name else ""), diff, n, int((st.absmax != absmax).sum()))
        st.absmax = absmax
        absmax_used = absmax
        arrays["absmax"] = absmax

    for dk, dt in TORCH_DTYPES.items():
        if n > 5000 and dk not in ("f32", dname):
            continue  # keep the fixtures small: big cases store f32 + their own dtype
        st.dtype = dt
        deq = F.dequantize_4bit(packed.reshape(-1, 1).clone(), st)
        if tuple(deq.shape) != tuple(A.shape):
            # bitsandbytes' native CPU kernel returns a 1-D input as (1, n)
            # (and as (n, 1) for n <= 2 through the transposed-input shim);
            # the values are the same. The golden keeps the input's shape.
            params["bnb_deq_shape"] = list(deq.shape)
            deq = deq.reshape(A.shape)
        ref = exact_4bit_deq(packed, absmax_used, n, blocksize, quant_type, dt).reshape(A.shape)
        if not bits_equal(deq, ref):
            a, b = to_numpy(deq).reshape(-1), to_numpy(ref).reshape(-1)
            if dt == torch.bfloat16:
                a = (a.astype(np.uint32) << 16).view(np.float32)
                b = (b.astype(np.uint32) << 16).view(np.float32)
            if not np.array_equal(a, b):
                bad = np.nonzero(a != b)[0]
                raise AssertionError(f"{name}: F.dequantize_4bit {dk} differs from level*absmax "
                                     f"at {bad[:8]}: {a[bad[:4]]} vs {b[bad[:4]]}")
            # Only the sign of zero differs: bitsandbytes' native CPU FP4
            # kernel decodes nibble 8 as -0.0 while get_4bit_type (and the
            # pure-torch backend) hold +0.0 there. The golden is the formula.
            nz = int(np.sum(np.signbit(a) != np.signbit(b)))
            params[f"bnb_deq_{dk}_signed_zero_mismatch"] = nz
            deq = ref
        else:
            nz = 0
        count("4bit dequantize (sign of 0)", nz, n)
        arrays["deq_" + dk] = deq
    st.dtype = A.dtype

    qs = st.as_dict(packed=True)
    keys = list(qs.keys())
    for k in keys:
        short = "qs_json" if k.startswith("quant_state.") else "qs_" + k
        arrays[short] = qs[k]
    params["qs_keys"] = keys
    arrays["bnb_packed"] = bnb_packed.reshape(-1)
    add_case(name, "4bit", params, arrays)
    assert bits_equal(code, qs["quant_map"])


def gen_4bit():
    rng = np.random.default_rng(3000)
    dists = [("normal", 1.0), ("uniform", 50.0), ("normal", 1e-3), ("uniform", 1.0), ("normal", 50.0)]
    dtypes = ["f32", "f16", "bf16"]
    k = 0
    for bs in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        odd = int(rng.integers(bs // 2, 3 * bs // 2)) | 1
        lengths = [bs - 1, bs + 1, odd]
        if bs <= 256 or bs == 1024:
            lengths.append(5 * bs + 3)
        if bs == 64:
            lengths = [1, 2, 3] + lengths
        for n in lengths:
            qt = ("nf4", "fp4")[k % 2]
            dk = dtypes[(k // 2) % 3]
            compress = (k % 4) == 3 or (bs == 64 and n == 5 * bs + 3)
            dist, scale = dists[k % len(dists)]
            A = random_data(rng, n, dist, scale).to(TORCH_DTYPES[dk])
            fourbit_case(f"4bit_{qt}_{dk}_bs{bs}_n{n}{'_c' if compress else ''}", A, bs, qt, compress)
            k += 1
    # Both quant types and every dtype at one awkward size.
    for qt in ("nf4", "fp4"):
        for dk in dtypes:
            for compress in (False, True):
                A = random_data(rng, 199, "normal", 1.0).to(TORCH_DTYPES[dk])
                fourbit_case(f"4bit_{qt}_{dk}_bs64_n199{'_c' if compress else ''}_grid", A, 64, qt, compress)
    # More than 256 blocks: several nested blocks of statistics.
    A = random_data(rng, 32 * 300 + 5, "normal", 1.0).to(torch.bfloat16)
    fourbit_case("4bit_nf4_bf16_bs32_n9605_c_multinested", A, 32, "nf4", True)
    A = random_data(rng, 32 * 270 + 3, "uniform", 1.0).to(torch.float16)
    fourbit_case("4bit_fp4_f16_bs32_n8643_c_multinested", A, 32, "fp4", True)
    # 2-D shapes (the state keeps the shape).
    A = random_data(rng, 7 * 33, "normal", 1.0).reshape(7, 33)
    fourbit_case("4bit_nf4_f32_bs64_shape7x33", A, 64, "nf4", False)
    A = random_data(rng, 16 * 64, "uniform", 2.0).reshape(16, 64).to(torch.bfloat16)
    fourbit_case("4bit_fp4_bf16_bs128_shape16x64_c", A, 128, "fp4", True)
    A = random_data(rng, 3 * 5 * 6, "normal", 1.0).reshape(3, 5, 6).to(torch.float16)
    fourbit_case("4bit_nf4_f16_bs32_shape3x5x6", A, 32, "nf4", False)

    # Edge cases.
    for qt in ("nf4", "fp4"):
        levels, order, mids = four_bit_levels(qt)
        m = mids.numpy()
        # Exact midpoints (absmax 1 and 4): must take the lower sorted level.
        blk = np.concatenate([[1.0], m, -m[::-1], m * 0.5, [0.0, -0.0]]).astype(np.float32)
        blk = np.resize(blk, 64).astype(np.float32)
        blk[0] = 1.0
        blk4 = (blk * 4).astype(np.float32)
        x = torch.from_numpy(np.concatenate([blk, blk4, rng.permutation(blk)[:33]]).astype(np.float32))
        x[128] = -1.0
        fourbit_case(f"4bit_edge_midpoints_{qt}_f32_bs64", x, 64, qt, False,
                     note="blocks hold +-absmax and exact midpoints of the sorted levels")
        # Zero block in the middle and a zero tail block (bitsandbytes stores
        # 1e-38 as the tail absmax: counted as a mismatch).
        x = random_data(rng, 64 * 3 + 20, "normal", 1.0)
        x[64:128] = 0.0
        x[192:] = 0.0
        fourbit_case(f"4bit_edge_zero_blocks_{qt}_f32_bs64", x, 64, qt, False)
        x = random_data(rng, 64 * 3, "normal", 1.0).to(torch.bfloat16)
        x[64:128] = 0.0
        fourbit_case(f"4bit_edge_zero_block_{qt}_bf16_bs64_c", x, 64, qt, True)
        # Subnormals: absmax above and below 2**-128, mixed, and tiny values
        # around the FP4 zero pair (+ and - just below the first midpoint).
        b1 = (rng.uniform(-1, 1, 32) * 5.5e-39).astype(np.float32)
        b2 = (rng.uniform(-1, 1, 32) * 1e-40).astype(np.float32)
        b3 = random_data(rng, 32, "uniform", 1.0).numpy()
        b3[1::2] = (rng.uniform(-1, 1, 16) * 1e-39).astype(np.float32)
        b4 = random_data(rng, 32, "normal", 1.0).numpy()
        b4[0] = 1.0
        b4[1:9] = np.array([1e-4, -1e-4, 2e-3, -2e-3, 0.0, -0.0, 1e-30, -1e-30], dtype=np.float32)
        x = torch.from_numpy(np.concatenate([b1, b2, b3, b4]).astype(np.float32))
        fourbit_case(f"4bit_edge_subnormal_{qt}_f32_bs32", x, 32, qt, False,
                     note="subnormal blocks (absmax > and < 2^-128), mixed, zero-pair values")
        h = (rng.uniform(-1, 1, 64) * 6e-5).astype(np.float16)
        fourbit_case(f"4bit_edge_subnormal_{qt}_f16_bs64", torch.from_numpy(h), 64, qt, False)


# ----------------------------------------------------------------------------
# int8 row-wise
# ----------------------------------------------------------------------------

def exact_int8(A, threshold):
    """bitsandbytes' int8_vectorwise_quant rule, written out.

    The scale is 127 * (1 / row_stats) rounded twice in float32: upstream
    writes `127.0 / row_stats`, and torch evaluates a Python-scalar numerator
    as `row_stats.reciprocal() * 127.0` (Tensor.__rdiv__). A true float32
    division 127 / row_stats differs from it by one ulp for some row_stats,
    which flips exact-.5 products (returned as the second value for comparison).
    A zero row quantizes to 0 (upstream: 0 * inf = NaN cast to int8, which is
    0 on x86). When the scale overflows to inf (a subnormal row_stats, below
    ~2**-126), upstream's float -> int8 cast of +-inf is undefined (0 here);
    the golden saturates: +-127 for nonzero x, 0 for x == 0.
    """
    x = A.to(torch.float32)
    cols = None
    if threshold > 0:
        outl = x.abs() >= threshold
        cols = torch.argwhere(outl.any(dim=0)).view(-1)
        x = x.masked_fill(outl, 0.0)
    rs = x.abs().amax(dim=1)
    results = []
    for scale in (torch.reciprocal(rs) * torch.tensor(127.0, dtype=torch.float32),
                  torch.tensor(127.0, dtype=torch.float32) / rs):
        q = torch.round(x * scale[:, None])
        inf = torch.isinf(scale)[:, None] & (rs > 0)[:, None]
        q = torch.where(inf, torch.sign(x) * 127.0, q)
        q = torch.where((rs == 0)[:, None], torch.zeros_like(q), q)
        q = q.clamp(-127, 127).to(torch.int8)
        if cols is not None and cols.numel():
            q[:, cols] = 0
        results.append(q)
    return results[0], rs, cols, results[1]


def int8_case(name, A, threshold, note=None):
    dname = {v: k for k, v in TORCH_DTYPES.items()}[A.dtype]
    q, rs, cols, q_div = exact_int8(A, threshold)
    Ac = A.clone()
    bq, brs, bcols = F.int8_vectorwise_quant(Ac, threshold=threshold)
    assert bits_equal(Ac, A), "int8_vectorwise_quant must restore its input"
    diff = int((bq != q).sum())
    count("int8" + (" (edge)" if "_edge_" in name else ""), diff, q.numel(), int((brs != rs).sum()))
    div_diff = int((q_div != q).sum())
    count("int8: 127/rs vs 127*(1/rs)", div_diff, q.numel())
    if threshold == 0:
        assert bcols is None
    else:
        assert torch.equal(bcols.to(torch.int64), cols.to(torch.int64))
    deq = F.int8_vectorwise_dequant(q, rs)
    ref = q.to(torch.float32) * rs.view(-1, 1) * torch.tensor(7.874015718698502e-3, dtype=torch.float32)
    assert bits_equal(deq, ref)
    arrays = {"A": A, "out": q, "row_stats": rs,
              "outlier_cols": (cols if cols is not None else torch.empty(0, dtype=torch.int64)).to(torch.int64),
              "deq": deq, "bnb_out": bq, "out_true_div": q_div}
    params = {"dtype": dname, "rows": A.shape[0], "cols": A.shape[1], "threshold": threshold,
              "outliers_none": cols is None, "bnb_mismatch": diff, "true_div_mismatch": div_diff}
    if note:
        params["note"] = note
    add_case(name, "int8", params, arrays)


def gen_int8():
    rng = np.random.default_rng(4000)
    shapes = [(1, 301), (257, 1), (29, 67), (48, 60), (2, 1100)]
    dists = [("normal", 1.0), ("uniform", 50.0), ("normal", 1e-3), ("uniform", 1.0), ("normal", 2.0)]
    for i, (r, c) in enumerate(shapes):
        for j, dk in enumerate(("f32", "f16", "bf16")):
            if (r * c > 5000) and j != i % 3:
                continue
            dist, scale = dists[(i + j) % len(dists)]
            A = random_data(rng, r * c, dist, scale).reshape(r, c).to(TORCH_DTYPES[dk])
            int8_case(f"int8_{dk}_{r}x{c}_t0", A, 0.0)
    # Planted outliers with threshold 6.0 (|x| >= 6 exactly at 6.0 too).
    for dk in ("f32", "f16", "bf16"):
        A = random_data(rng, 33 * 70, "normal", 1.0).reshape(33, 70)
        A.clamp_(-5.5, 5.5)
        A[3, 10] = 9.75
        A[20, 10] = -7.5
        A[7, 41] = 6.0
        A[30, 69] = -123.25
        A[0, 0] = 5.99
        A = A.to(TORCH_DTYPES[dk])
        int8_case(f"int8_{dk}_33x70_t6_outliers", A, 6.0)
    A = random_data(rng, 1 * 50, "uniform", 4.0).reshape(1, 50)
    A[0, 13] = 8.0
    int8_case("int8_f32_1x50_t6_outlier_single_row", A, 6.0)
    A = random_data(rng, 9 * 20, "uniform", 4.0).reshape(9, 20)
    int8_case("int8_f32_9x20_t6_no_outliers", A, 6.0)
    # Ties: row absmax 127 so the scale is exactly 1 -> round half to even.
    ties = np.array([127.0, 2.5, -3.5, 0.5, -0.5, 1.5, -2.5, 126.5, -125.5, 3.5, 4.5, -0.0, 0.0,
                     7.5, -8.5, 64.5], dtype=np.float32)
    other = random_data(rng, 16, "normal", 1.0).numpy()
    zero = np.zeros(16, dtype=np.float32)
    A = torch.from_numpy(np.stack([ties, other, zero, -ties]))
    for dk in ("f32", "f16", "bf16"):
        int8_case(f"int8_edge_ties_zero_row_{dk}", A.to(TORCH_DTYPES[dk]), 0.0,
                  note="rows: exact .5 ties (scale 1), random, all zero, negated ties")
    A = torch.zeros(3, 8, dtype=torch.float32)
    int8_case("int8_edge_all_zero_f32", A, 0.0)
    # Subnormal row (row_stats subnormal: 127/row_stats may overflow to inf).
    A = torch.from_numpy(np.stack([(rng.uniform(-1, 1, 8) * 1e-39).astype(np.float32),
                                   (rng.uniform(-1, 1, 8) * 1e-44).astype(np.float32)]))
    int8_case("int8_edge_subnormal_rows_f32", A, 0.0)


def main():
    os.makedirs(DATA, exist_ok=True)
    for f in os.listdir(DATA):
        if f.endswith(".npy"):
            os.remove(os.path.join(DATA, f))
    assert torch.backends.cpu.get_cpu_capability() == "DEFAULT", torch.backends.cpu.get_cpu_capability()
    torch.manual_seed(0)
    gen_maps()
    gen_blockwise()
    gen_blockwise_nested()
    gen_4bit()
    gen_int8()
    manifest = {
        "generator": "tools/gen_fixtures.py",
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "rule": "exact: absmax=max|x| per block; scaled=clamp(x*(1/absmax),-1,1) f32 "
                "(zero block -> 0; x/absmax when 1/absmax overflows); q=#midpoints < scaled",
        "bnb_cpu_mismatch": {k: {"elements": v[0], "of": v[1], "absmax_or_stats": v[2]}
                             for k, v in MISMATCH.items()},
        "cases": CASES,
    }
    # One case per line: small, and diffs stay readable.
    cases = manifest.pop("cases")
    with open(os.path.join(GOLDEN, "manifest.json"), "w") as fh:
        head = json.dumps(manifest, indent=1)
        fh.write(head[:-2] + ',\n "cases": [\n')
        fh.write(",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cases))
        fh.write("\n ]\n}\n")
    manifest["cases"] = cases
    with open(os.path.join(GOLDEN, "manifest.json")) as fh:
        assert json.load(fh) == json.loads(json.dumps(manifest))
    total = sum(os.path.getsize(os.path.join(DATA, f)) for f in os.listdir(DATA))
    total += os.path.getsize(os.path.join(GOLDEN, "manifest.json"))
    print(f"{len(CASES)} cases, {total / 1e6:.2f} MB")
    print("bitsandbytes (its CPU kernels, and maps under AVX2/AVX512 torch) vs the goldens:")
    for k, (d, t, a) in MISMATCH.items():
        print(f"  {k:28s} {d:7d} of {t:8d} elements differ ({100.0 * d / max(t, 1):.3f}%),"
              f" {a} absmax/stat entries differ")
    for c in CASES:
        if c["params"].get("bnb_mismatch"):
            print(f"    {c['name']}: {c['params']['bnb_mismatch']}")


if __name__ == "__main__":
    sys.exit(main())
