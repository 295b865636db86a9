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
