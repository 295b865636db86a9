"""Row shards of a table through the binding (qembed_embedding_create_shard):
the shards of a seed tile the unsharded table, padding_idx is a global row,
the state width follows the whole table, bad ranges are refused. No torch
needed (qembed.distributed's collectives are tested in test_distributed.py)."""

import numpy as np
import pytest

import qembed
from qembed.nn import Embedding


def test_shards_tile_the_table_and_report_their_rows():
    full = Embedding(1000, 24, seed=5, padding_idx=500)
    parts = []
    for lo, hi in [(0, 320), (320, 640), (640, 1000)]:
        s = Embedding(hi - lo, 24, seed=5, padding_idx=500, _shard=(lo, 1000))
        assert (s.row_offset, s.total_rows) == (lo, 1000)
        assert s.padding_idx == (500 - lo if lo <= 500 < hi else None)
        parts.append(s.weight.data)
    np.testing.assert_array_equal(np.concatenate(parts), full.weight.data)
    assert (full.row_offset, full.total_rows) == (0, 1000)


def test_a_small_shard_gets_the_whole_table_s_8bit_state():
    s = Embedding(100, 16, _shard=(0, 1000))          # 1600 elements of a 16000-element table
    qembed.optim.GlobalOptimManager.get_instance().override_config(s.weight, "optim_bits", 8)
    opt = qembed.optim.Adam8bit(s.parameters())
    assert opt.state_info(s.weight)["bits"] == 8       # min_8bit_size 4096 is judged on 16000
    alone = Embedding(100, 16)
    qembed.optim.GlobalOptimManager.get_instance().override_config(alone.weight, "optim_bits", 8)
    assert qembed.optim.Adam8bit(alone.parameters()).state_info(alone.weight)["bits"] == 32


@pytest.mark.parametrize("shard", [(900, 1000), (-1, 1000), (0, 0), (0, 99)])
def test_bad_ranges_are_refused(shard):
    with pytest.raises(ValueError):
        Embedding(200 if shard[0] == 900 else 100, 8, _shard=shard)


def test_padding_outside_the_whole_table_is_refused():
    with pytest.raises(ValueError):
        Embedding(100, 8, padding_idx=1000, _shard=(0, 1000))
    with pytest.raises(ValueError):
        Embedding(100, 8, padding_idx=-1001, _shard=(0, 1000))


# -- quantized shards (qembed_qembedding_quantize_shard)

def _table(rng, rows, dim):
    """Fresh random rows spanning six orders of magnitude."""
    return (rng.standard_normal((rows, dim)) * 10.0 ** rng.uniform(-3, 3, size=(rows, 1))).astype(np.float32)


def _cuts(rng, total, step):
    """[0, ..., total]: random multiples of `step` rows, the last piece ending the table."""
    b = [0]
    while b[-1] < total:
        nxt = b[-1] + step * int(rng.integers(1, 5))
        b.append(total if nxt > total or rng.random() < 0.15 else nxt)
    return b


@pytest.mark.parametrize("quant_type, blocksize, dim", [("int8", 0, 24), ("int8", 0, 7), ("fp4", 64, 24),
                                                        ("nf4", 64, 100), ("nf4", 256, 24), ("fp4", 1024, 7),
                                                        ("nf4", 32, 5)])
def test_quantized_shards_tile_the_quantized_table(quant_type, blocksize, dim):
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    step = 1 if quant_type == "int8" else blocksize // np.gcd(dim, blocksize)
    V = int(step * rng.integers(6, 12) + rng.integers(0, step + 1))
    W = _table(rng, V, dim)
    whole = Embedding.from_pretrained(W)
    if quant_type == "int8":
        ref = qembed.nn.Embedding8bit.from_embedding(whole)
    else:
        ref = qembed.nn.Embedding4bit.from_embedding(whole, quant_type=quant_type, blocksize=blocksize)
    expected = ref(np.arange(V))
    bounds = _cuts(rng, V, step)
    got = []
    for lo, hi in zip(bounds, bounds[1:]):
        s = Embedding(hi - lo, dim, _weight=W[lo:hi], _shard=(lo, V))
        if quant_type == "int8":
            q = qembed.nn.Embedding8bit.from_embedding(s)
        else:
            q = qembed.nn.Embedding4bit.from_embedding(s, quant_type=quant_type, blocksize=blocksize)
        assert (q.row_offset, q.total_rows, q.num_embeddings) == (lo, V, hi - lo)
        got.append(q(np.arange(hi - lo)))
    np.testing.assert_array_equal(np.concatenate(got), expected, err_msg=f"seed {seed}, bounds {bounds}")
    assert (ref.row_offset, ref.total_rows) == (0, V)   # a whole table


def test_quantized_shard_refusals():
    rng = np.random.default_rng()
    W = _table(rng, 300, 24)
    off = Embedding(32, 24, _weight=W[8:40], _shard=(8, 300))       # 8 x 24 = 192: not on a 256 block
    with pytest.raises(ValueError, match="blocksize"):
        qembed.nn.Embedding4bit.from_embedding(off, quant_type="nf4", blocksize=256)
    qembed.nn.Embedding4bit.from_embedding(off, quant_type="nf4", blocksize=64)   # 192 = 3 x 64
    qembed.nn.Embedding8bit.from_embedding(off)                                 # int8: any offset
    end = Embedding(8, 24, _weight=W[32:40], _shard=(32, 300))      # starts on a block, ends inside one
    with pytest.raises(ValueError, match="blocksize"):
        qembed.nn.Embedding4bit.from_embedding(end, quant_type="fp4", blocksize=256)
    part = Embedding(32, 24, _weight=W[:32], _shard=(0, 300))
    with pytest.raises(ValueError, match="compress_statistics"):
        qembed.nn.Embedding4bit.from_embedding(part, quant_type="nf4", blocksize=64, compress_statistics=True)
    # the whole table as its own shard keeps nested statistics and equals the unsharded layer
    alone = Embedding(300, 24, _weight=W, _shard=(0, 300))
    a = qembed.nn.Embedding4bit.from_embedding(alone, quant_type="nf4", blocksize=64, compress_statistics=True)
    b = qembed.nn.Embedding4bit.from_embedding(Embedding.from_pretrained(W), quant_type="nf4", blocksize=64,
                                               compress_statistics=True)
    ids = rng.integers(0, 300, size=50)
    np.testing.assert_array_equal(a(ids), b(ids))


def test_quantize_shard_binding_checks_its_arguments():
    from qembed import _capi as C
    import ctypes
    w = np.ones((4, 8), np.float32)
    out = ctypes.c_void_p(123)
    st = C.qembed_qembedding_quantize_shard(w.ctypes.data, C.QEMBED_DTYPE_F32, 4, 8, C.QEMBED_QEMB_INT8, 0, False, 2, 5,
                                            ctypes.byref(out))
    assert st == C.QEMBED_ERR_OUT_OF_RANGE and not out.value
    st = C.qembed_qembedding_quantize_shard(w.ctypes.data, C.QEMBED_DTYPE_F32, 4, 8, C.QEMBED_QEMB_INT8, 0, False, 1, 5,
                                            ctypes.byref(out))
    assert st == C.QEMBED_OK and out.value
    o, t = ctypes.c_int64(), ctypes.c_int64()
    assert C.qembed_qembedding_get_shard(out.value, ctypes.byref(o), ctypes.byref(t)) == C.QEMBED_OK
    assert (o.value, t.value) == (1, 5)
    C.qembed_qembedding_free(out.value)
