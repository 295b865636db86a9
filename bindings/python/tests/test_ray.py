"""qembed.distributed under Ray Train's torch backend: TorchTrainer starts the
workers and initializes the gloo process group, and ShardedEmbedding runs
unchanged in them (forward equal bit for bit to the unsharded layer, a
backward + 8-bit Adam step, gather_weight). Skipped without Ray
(pip install "ray[train]") or torch."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.train.torch")

import qembed  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
V, D, WORLD = 700, 16, 2


def _batches(seed):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, V, size=int(rng.integers(1, 50))) for _ in range(WORLD)]
    grads = [rng.standard_normal((i.size, D)).astype(np.float32) for i in ids]
    return ids, grads


def _train_loop(config):
    # runs in each Ray worker: the process group is already initialized (gloo)
    import numpy as np
    import torch.distributed as dist
    import qembed
    from qembed.distributed import ShardedEmbedding
    qembed.set_num_threads(1)
    rank = dist.get_rank()
    W = np.random.default_rng(config["seed"]).standard_normal((V, D)).astype(np.float32)
    emb = ShardedEmbedding(V, D, _weight=W)
    ids, grads = _batches(config["seed"] + 1)
    out = emb(ids[rank])
    emb.backward(ids[rank], grads[rank])
    opt = qembed.optim.Adam(list(emb.parameters()), lr=1e-2)
    opt.step()
    np.savez(os.path.join(config["out"], f"rank-{rank}.npz"), out=out, full=emb.gather_weight(),
             world=np.int64(dist.get_world_size()))


def test_sharded_embedding_under_ray_train(tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    seed = int(np.random.SeedSequence().entropy % 2**31)
    # the workers import qembed and this module (the training function is pickled by reference)
    env = {"PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]),
           "QEMBED_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=WORLD, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        trainer = TorchTrainer(_train_loop, train_loop_config={"seed": seed, "out": str(tmp_path)},
                               torch_config=TorchConfig(backend="gloo"),
                               scaling_config=ScalingConfig(num_workers=WORLD, use_gpu=False),
                               run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="qembed"))
        trainer.fit()
    finally:
        ray.shutdown()
    W = np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32)
    ref = qembed.nn.Embedding.from_pretrained(W, freeze=False)
    ids, grads = _batches(seed + 1)
    all_ids = np.concatenate(ids)
    ref.backward(all_ids, np.concatenate(grads))
    qembed.optim.Adam(ref.parameters(), lr=1e-2).step()
    for r in range(WORLD):
        res = np.load(tmp_path / f"rank-{r}.npz")
        assert int(res["world"]) == WORLD
        np.testing.assert_array_equal(res["out"], W[ids[r]])                 # forward: the rows, bit for bit
        np.testing.assert_array_equal(res["full"], ref.weight.data)        # one step of Adam, bit for bit
