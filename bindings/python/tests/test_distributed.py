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


# -- quantized shards (inference) ------------------------------------------

def _fresh_seed():
    return int(np.random.SeedSequence().entropy % 2**31)


QUANT_CASES = [
    dict(kind="quantized", V=1000, D=24, quant_type="nf4", blocksize=64),     # the float table's ranges
    dict(kind="quantized", V=777, D=24, quant_type="fp4", blocksize=1024),    # rows move to 1024-element bounds
    dict(kind="quantized", V=500, D=7, quant_type="int8", blocksize=64),
]


def _quantized_reference(case):
    whole = qembed.nn.Embedding.from_pretrained(worker.table(case))
    if case["quant_type"] == "int8":
        return qembed.nn.Embedding8bit.from_embedding(whole)
    return qembed.nn.Embedding4bit.from_embedding(whole, quant_type=case["quant_type"], blocksize=case["blocksize"])


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("ci", range(len(QUANT_CASES)))
def test_quantized_shards_equal_the_unsharded_quantized_layer(world, ci, tmp_path):
    case = dict(QUANT_CASES[ci], table_seed=_fresh_seed())
    ranks = run_ranks(world, case, tmp_path)
    ref = _quantized_reference(case)
    ids = worker.quantized_ids(case, world)
    bounds = row_bounds(case["V"], case["D"], world, None if case["quant_type"] == "int8" else case["blocksize"])
    full = ref(np.arange(case["V"]))
    for r, res in enumerate(ranks):
        msg = f"table_seed {case['table_seed']}, rank {r} of {world}"
        assert (int(res["row_offset"]), int(res["rows"])) == (bounds[r], bounds[r + 1] - bounds[r]), msg
        np.testing.assert_array_equal(res["out"], ref(ids[r]), err_msg=msg)         # bit for bit
        np.testing.assert_array_equal(res["full"], full, err_msg=msg)
        assert bool(res["backward_refused"])
        if "nested_refused" in res:
            assert bool(res["nested_refused"])


@pytest.mark.parametrize("saved, loaded", [(2, 1), (2, 3), (3, 2), (1, 2)])
@pytest.mark.parametrize("ci", [1, 2])
def test_quantized_checkpoint_reshards(ci, saved, loaded, tmp_path):
    case = dict(QUANT_CASES[ci], table_seed=_fresh_seed(), save=str(tmp_path / "ckpt"))
    run_ranks(saved, case, tmp_path)
    ref = _quantized_reference(case)
    full = ref(np.arange(case["V"]))
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["quantized"]["quant_type"] == case["quant_type"]
    if loaded == 1:
        back = ShardedEmbedding.load(tmp_path / "ckpt")
        assert back.is_quantized and back.rows == case["V"]
        np.testing.assert_array_equal(back.gather_weight(), full)
        assert back.local.state_dict()["weight"].tobytes() == ref.state_dict()["weight"].tobytes()
        return
    again = run_ranks(loaded, dict(case, save=None, load=str(tmp_path / "ckpt")), tmp_path)
    ids = worker.quantized_ids(case, loaded)
    bounds = row_bounds(case["V"], case["D"], loaded, None if case["quant_type"] == "int8" else case["blocksize"])
    for r, res in enumerate(again):
        assert int(res["row_offset"]) == bounds[r]
        np.testing.assert_array_equal(res["out"], ref(ids[r]), err_msg=f"table_seed {case['table_seed']}")
        np.testing.assert_array_equal(res["full"], full)


def test_nested_quantized_checkpoint_loads_into_a_world_of_one(tmp_path):
    W = np.random.default_rng().standard_normal((600, 16)).astype(np.float32)
    q = ShardedEmbedding(600, 16, _weight=W).quantize("fp4", blocksize=256, compress_statistics=True)
    q.save(tmp_path / "n")
    back = ShardedEmbedding.load(tmp_path / "n")
    np.testing.assert_array_equal(back.gather_weight(), q.gather_weight())
    assert back.compress_statistics and back.local.compress_statistics


def test_row_bounds_keep_4bit_blocks_whole():
    rng = np.random.default_rng()
    for _ in range(200):
        V, D, world = int(rng.integers(1, 5000)), int(rng.integers(1, 300)), int(rng.integers(1, 6))
        bs = int(rng.choice([32, 64, 128, 256, 512, 1024, 2048, 4096]))
        b = row_bounds(V, D, world, bs)
        assert b[0] == 0 and b[-1] == V and all(x <= y for x, y in zip(b, b[1:]))
        assert all((x * D) % bs == 0 and (x * D) % 256 == 0 for x in b[:-1] if x < V), (V, D, world, bs, b)
        if bs <= 256:
            assert b == row_bounds(V, D, world)       # the float table's ranges


def test_quantized_world_of_one_keeps_nested_statistics():
    W = np.random.default_rng().standard_normal((600, 16)).astype(np.float32)
    q = ShardedEmbedding(600, 16, _weight=W).quantize("nf4", blocksize=128, compress_statistics=True)
    ref = qembed.nn.Embedding4bit.from_embedding(qembed.nn.Embedding.from_pretrained(W), quant_type="nf4",
                                                 blocksize=128, compress_statistics=True)
    ids = np.random.default_rng().integers(0, 600, size=(7, 9))
    np.testing.assert_array_equal(q(ids), ref(ids))
    assert list(q.parameters()) == [] and q.weight is None
    with pytest.raises(TypeError, match="inference"):
        q.backward(ids, np.zeros((7, 9, 16), np.float32))
    with pytest.raises(ValueError):
        ShardedEmbedding(600, 16).quantize("nf8")


# -- the bag form ------------------------------------------------------------

BAG_CASES = [
    dict(kind="bag", V=900, D=24, steps=2, mode="sum", psw=True, padding_idx=33, weight=True),
    dict(kind="bag", V=777, D=16, steps=2, mode="mean", include_last_offset=True, seed=5, scale_grad_by_freq=True),
    dict(kind="bag", V=500, D=8, steps=2, mode="max", two_d=True, weight=True),
    dict(kind="bag", V=640, D=8, steps=2, mode="sum", sparse=True, padding_idx=-1, seed=9),
]


def _grad_close(got, ref, msg):
    """The weight gradient up to float32 summation order (see
    ShardedEmbeddingBag): within 1e-5 of the largest gradient element."""
    tol = 1e-5 * max(1e-30, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=tol, err_msg=msg)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("ci", range(len(BAG_CASES)))
def test_sharded_bag_equals_the_unsharded_bag(world, ci, tmp_path):
    case = dict(BAG_CASES[ci], table_seed=_fresh_seed())
    ranks = run_ranks(world, case, tmp_path)
    V, D = case["V"], case["D"]
    kw = {k: case[k] for k in ("mode", "padding_idx", "include_last_offset", "sparse", "scale_grad_by_freq") if k in case}
    ref = qembed.nn.EmbeddingBag(V, D, _weight=worker.table(case) if case.get("weight") else None,
                                 seed=case.get("seed", 0), **kw)
    opt = qembed.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    bounds = row_bounds(V, D, world)
    for k, per in enumerate(worker.bag_batches(case, world)):
        exact = k == 0 or world == 1       # later steps start from weights equal up to summation order
        for r, (ids, offsets, psw, g) in enumerate(per):
            msg = f"table_seed {case['table_seed']}, step {k}, rank {r} of {world}"
            want = ref(ids, offsets, psw)
            if exact:
                np.testing.assert_array_equal(ranks[r][f"out{k}"], want, err_msg=msg)
            else:
                np.testing.assert_allclose(ranks[r][f"out{k}"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(initial=1))
        for r, (ids, offsets, psw, g) in enumerate(per):
            # <grad_output[bag], row>: later steps read rows equal up to summation order
            tol = 1e-5 * D * float(np.abs(g).max(initial=0)) * float(np.abs(ref.weight.data).max())
            pg = ref.backward(ids, g, offsets, psw)
            if pg is not None:
                msg = f"table_seed {case['table_seed']}, step {k}, rank {r}: per-sample weights' gradient"
                if exact:
                    np.testing.assert_array_equal(ranks[r][f"psw_grad{k}"], pg, err_msg=msg)
                else:
                    np.testing.assert_allclose(ranks[r][f"psw_grad{k}"], pg, rtol=1e-5, atol=tol, err_msg=msg)
        if not case.get("sparse"):
            full_grad = (np.zeros((V, D), np.float32) if ref.weight.grad is None   # no index reached a bag
                         else np.asarray(ref.weight.grad))
            for r, res in enumerate(ranks):
                lo, hi = bounds[r], bounds[r + 1]
                if hi > lo:
                    msg = f"table_seed {case['table_seed']}, step {k}, rank {r} of {world}: weight gradient"
                    if world == 1:
                        np.testing.assert_array_equal(res[f"grad{k}"], full_grad[lo:hi], err_msg=msg)
                    else:
                        _grad_close(res[f"grad{k}"], full_grad[lo:hi], msg)
        opt.step()
        opt.zero_grad()
    for r, res in enumerate(ranks):
        _grad_close(res["full"], ref.weight.data, f"rank {r}: the table after the steps")
        assert (int(res["row_offset"]), int(res["rows"])) == (bounds[r], bounds[r + 1] - bounds[r])


@pytest.mark.parametrize("loaded", [1, 3])
def test_bag_checkpoint_reshards(loaded, tmp_path):
    from qembed.distributed import ShardedEmbeddingBag
    case = dict(BAG_CASES[1], table_seed=_fresh_seed(), save=str(tmp_path / "ckpt"))    # mean, include_last_offset
    full = run_ranks(2, case, tmp_path)[0]["full"]
    ref = qembed.nn.EmbeddingBag.from_pretrained(full, mode="mean", include_last_offset=True)
    if loaded == 1:
        back = ShardedEmbeddingBag.load(tmp_path / "ckpt")
        assert (back.mode, back.include_last_offset) == ("mean", True)
        np.testing.assert_array_equal(back.gather_weight(), full)
        ids, offsets, _, _ = worker.bag_batches(case, 1)[0][0]
        np.testing.assert_array_equal(back(ids, offsets), ref(ids, offsets))
        assert ShardedEmbedding.load(tmp_path / "ckpt").gather_weight().tobytes() == full.tobytes()
        return
    again = run_ranks(loaded, dict(case, save=None, load=str(tmp_path / "ckpt")), tmp_path)
    batches = worker.bag_batches(case, loaded)
    for r, res in enumerate(again):
        ids, offsets, _, _ = batches[0][r]
        np.testing.assert_array_equal(res["out0"], ref(ids, offsets))     # before any step: the saved table
        assert int(res["row_offset"]) == row_bounds(case["V"], case["D"], loaded)[r]


def test_bag_world_of_one_draws_the_unsharded_table():
    from qembed.distributed import ShardedEmbeddingBag
    seed = _fresh_seed()
    bag = ShardedEmbeddingBag(300, 8, mode="max", seed=seed, padding_idx=7)
    ref = qembed.nn.EmbeddingBag(300, 8, mode="max", seed=seed, padding_idx=7)
    np.testing.assert_array_equal(bag.gather_weight(), ref.weight.data)
    ids = np.random.default_rng(seed).integers(0, 300, size=(5, 4))
    np.testing.assert_array_equal(bag(ids), ref(ids))
    with pytest.raises(NotImplementedError):   # per-sample weights: mode sum only (torch's rule)
        bag(np.array([1, 2]), np.array([0, 1]), per_sample_weights=np.ones(2, np.float32))
    with pytest.raises(ValueError):
        ShardedEmbeddingBag(300, 8, mode="median")


# -- qembed consolidate ------------------------------------------------------

def _cli():
    """The qembed command: $QEMBED_CLI, else <repo>/.build/release/qembed-cli;
    None when missing or without a `consolidate` subcommand."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
    cli = os.environ.get("QEMBED_CLI") or os.path.join(repo, ".build", "release", "qembed-cli")
    if not os.access(cli, os.X_OK):
        return None
    probe = subprocess.run([cli, "help", "consolidate"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 or "consolidate" not in probe.stdout + probe.stderr:
        return None
    return cli


def test_consolidated_checkpoint_equals_gather_weight(tmp_path):
    cli = _cli()
    if cli is None:
        pytest.skip("no qembed-cli with a consolidate subcommand (build it, or set QEMBED_CLI)")
    case = dict(CASES[0], save=str(tmp_path / "ckpt"), seed=_fresh_seed())
    ranks = run_ranks(2, case, tmp_path)
    out = tmp_path / "one.safetensors"
    run = subprocess.run([cli, "consolidate", str(tmp_path / "ckpt"), "-o", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    tensors = qembed.io.load_file(out)
    assert list(tensors) == ["weight"]
    full = ranks[0]["full"]
    np.testing.assert_array_equal(ranks[1]["full"], full)
    w = tensors["weight"]
    assert w.dtype == full.dtype and w.shape == full.shape
    assert w.tobytes() == full.tobytes()                               # byte for byte
    layer = qembed.nn.Embedding(case["V"], case["D"])
    layer.load_state_dict(tensors)
    assert layer.weight.data.tobytes() == full.tobytes()
    # and it loads back as a one-process ShardedEmbedding's checkpoint would
    back = ShardedEmbedding.load(tmp_path / "ckpt")
    assert back.gather_weight().tobytes() == full.tobytes()


def test_bag_world_of_one_max_norm_and_scale_grad_by_freq():
    """One process: forward with max_norm (rows renormalized in place by their
    owner) and backward with scale_grad_by_freq equal the unsharded bag bit
    for bit (counts are per rank's input, which is the whole input here)."""
    from qembed.distributed import ShardedEmbeddingBag
    seed = _fresh_seed()
    rng = np.random.default_rng(seed)
    kw = dict(mode="mean", max_norm=1.5, scale_grad_by_freq=True, padding_idx=3)
    bag = ShardedEmbeddingBag(400, 12, seed=seed, **kw)
    ref = qembed.nn.EmbeddingBag(400, 12, seed=seed, **kw)
    ids = rng.integers(0, 400, size=80)
    ids[:10] = ids[10:20]
    ids[25] = 3
    offsets = np.sort(rng.integers(0, 80, size=9))
    offsets[0] = 0
    g = rng.standard_normal((9, 12)).astype(np.float32)
    np.testing.assert_array_equal(bag(ids, offsets), ref(ids, offsets), err_msg=f"seed {seed}")
    np.testing.assert_array_equal(bag.gather_weight(), ref.weight.data)     # the same rows renormalized
    bag.backward(ids, g, offsets)
    ref.backward(ids, g, offsets)
    np.testing.assert_array_equal(np.asarray(bag.weight.grad), np.asarray(ref.weight.grad), err_msg=f"seed {seed}")
