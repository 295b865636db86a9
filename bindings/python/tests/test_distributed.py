"""qembed.distributed.ShardedEmbedding on 1-4 gloo processes (one thread
each) against one process fed the ranks' batches concatenated: forward rows,
weights and 8-bit Adam state bit for bit; uneven tables, a rank that gets no
ids, duplicates, padding_idx; checkpoints re-sharded on load. Needs torch
(skipped without it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qembed  # noqa: E402
from qembed.distributed import ShardedEmbedding, row_bounds  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402


def run_ranks(world, case, tmp_path):
    out = tmp_path / f"w{world}-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    init = tmp_path / f"init-{out.name}"
    env = dict(os.environ)
    extra = [os.path.dirname(HERE)] + [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")])
    env["QEMBED_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"), str(r), str(world),
                               str(init), str(out), json.dumps(case)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{logs[r][-3000:]}"
    return [dict(np.load(out / f"rank-{r}.npz")) for r in range(world)]


def single_process(case, world):
    V, D = case["V"], case["D"]
    W = np.random.default_rng(7).standard_normal((V, D)).astype(np.float32)
    emb = qembed.nn.Embedding(V, D, _weight=W if case["weight"] else None, sparse=case["sparse"],
                              padding_idx=case["padding_idx"], seed=11)
    qembed.optim.GlobalOptimManager.get_instance().override_config(emb.weight, "optim_bits", 8)
    opt = qembed.optim.Adam8bit(emb.parameters(), lr=1e-2)
    outs = []
    for per in worker.batches(case, world):
        ids = np.concatenate([i for i, _ in per])
        g = np.concatenate([x for _, x in per]).reshape(-1, D)
        outs.append(emb(ids))
        emb.backward(ids, g)
        opt.step()
        opt.zero_grad()
    st = opt.state_dict()["state"][0]["__bnb_optimizer_quant_state__"]
    return emb, outs, st


CASES = [
    dict(V=1000, D=24, steps=3, sparse=False, padding_idx=None, weight=True, seed=1),
    dict(V=777, D=16, steps=3, sparse=True, padding_idx=500, weight=False, seed=2),
]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("ci", range(len(CASES)))
def test_sharded_equals_single_process(world, ci, tmp_path):
    case = dict(CASES[ci])
    ranks = run_ranks(world, case, tmp_path)
    emb, outs, st = single_process(case, world)
    bounds = row_bounds(case["V"], case["D"], world)
    full = emb.weight.data
    D = case["D"]
    for r, res in enumerate(ranks):
        assert (int(res["row_offset"]), int(res["rows"])) == (bounds[r], bounds[r + 1] - bounds[r])
        np.testing.assert_array_equal(res["full"], full)                 # gather_weight: bit for bit
        # forward rows: rank r's slice of the concatenated batch
        for k, out in enumerate(outs):
            per = worker.batches(case, world)[k]
            start = sum(len(per[q][0]) for q in range(r))
            np.testing.assert_array_equal(res[f"out{k}"], out[start:start + len(per[r][0])])
        if res["rows"] == 0:
            continue
        lo, hi = bounds[r], bounds[r + 1]
        # 8-bit state: rank r's blocks are the single process's blocks of its rows
        # (flat 256-element blocks start on a block at the shard's first row;
        # sparse layers' row-aligned blocks are per row)
        flat = {k: np.asarray(v).reshape(-1) for k, v in st.items() if k in ("state1", "state2", "absmax1", "absmax2")}
        np.testing.assert_array_equal(res["state1"].reshape(-1), flat["state1"][lo * D:hi * D])
        np.testing.assert_array_equal(res["state2"].reshape(-1), flat["state2"][lo * D:hi * D])
        per_row = flat["absmax1"].size / case["V"] if case["sparse"] else D / 256
        a = int(round(lo * per_row))
        nb = res["absmax1"].size
        np.testing.assert_array_equal(res["absmax1"].reshape(-1), flat["absmax1"][a:a + nb])
        np.testing.assert_array_equal(res["absmax2"].reshape(-1), flat["absmax2"][a:a + nb])


@pytest.mark.parametrize("saved, loaded", [(2, 1), (2, 3), (3, 1), (1, 2)])
def test_checkpoint_reshards(saved, loaded, tmp_path):
    case = dict(CASES[0], save=str(tmp_path / "ckpt"))
    ranks = run_ranks(saved, case, tmp_path)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["world_size"] == saved and len(index["shards"]["weight"]) == saved
    with qembed.io.TensorFile(tmp_path / "ckpt" / f"shard-00000-of-{saved:05d}.safetensors") as f:
        assert f.metadata_value("world_size") == str(saved) and f.metadata_value("row_offset") == "0"
    if loaded == 1:       # no process group: a world of one
        back = ShardedEmbedding.load(tmp_path / "ckpt")
        assert back.world_size == 1 and back.rows == case["V"]
        np.testing.assert_array_equal(back.gather_weight(), ranks[0]["full"])
        return
    again = run_ranks(loaded, dict(case, save=None, load=str(tmp_path / "ckpt"), steps=0), tmp_path)
    bounds = row_bounds(case["V"], case["D"], loaded)
    for r, res in enumerate(again):
        assert int(res["row_offset"]) == bounds[r]
        np.testing.assert_array_equal(res["full"], ranks[0]["full"])


def test_bounds_keep_8bit_blocks_whole():
    for V, D, world in [(1000, 24, 3), (10, 1000, 4), (257, 256, 2), (5, 7, 4)]:
        b = row_bounds(V, D, world)
        assert b[0] == 0 and b[-1] == V and all(x <= y for x, y in zip(b, b[1:]))
        assert all((x * D) % 256 == 0 for x in b[:-1] if x < V)


def test_world_of_one_without_a_process_group():
    emb = ShardedEmbedding(300, 8, seed=3)
    ref = qembed.nn.Embedding(300, 8, seed=3)
    ids = np.array([[1, 299], [7, 7]])
    np.testing.assert_array_equal(emb(ids), ref(ids))        # the same Xavier draw as the unsharded layer
    with pytest.raises(ValueError):
        emb(np.array([300]))
