"""qembed.nn.LoraEmbedding against peft (Tests/golden/lora, written by
tools/gen_fixtures_lora.py with peft 0.21 over torch), over float and
quantized bases; peft's adapter files both ways; training with the 8-bit
optimizers."""

import json
import os

import numpy as np
import pytest

import qembed
from qembed.nn import Embedding, EmbeddingNF4, LoraEmbedding

from conftest import GOLDEN_DIR

LORA_DIR = os.path.join(GOLDEN_DIR, "lora")
with open(os.path.join(LORA_DIR, "manifest.json")) as f:
    MANIFEST = json.load(f)["cases"]


def case(name):
    return MANIFEST[name], dict(np.load(os.path.join(LORA_DIR, name + ".npz"), allow_pickle=False))


def build(c, d):
    base = Embedding(c["V"], c["D"], padding_idx=c["padding_idx"], scale_grad_by_freq=c["scale_grad_by_freq"],
                     sparse=c["sparse"], _weight=d["weight"])
    lora = LoraEmbedding(base, r=c["r"], lora_alpha=c["lora_alpha"], use_rslora=c["use_rslora"])
    lora.lora_embedding_A.data = d["A"]
    lora.lora_embedding_B.data = d["B"]
    return lora


def close(a, b, tol=1e-5):
    scale = np.maximum(np.abs(b), 1.0)
    return np.max(np.abs(a - b) / scale) <= tol


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_forward_backward_merge_equal_peft(name):
    c, d = case(name)
    lora = build(c, d)
    assert lora.scaling == pytest.approx(c["lora_alpha"] / (np.sqrt(c["r"]) if c["use_rslora"] else c["r"]))
    np.testing.assert_array_equal(lora.lora_embedding_A.data, d["A"])   # peft's orientation
    assert lora.lora_embedding_A.shape == (c["r"], c["V"]) and lora.lora_embedding_B.shape == (c["D"], c["r"])
    out = lora(d["input"])
    assert close(out, d["out"]), f"{name}: forward"
    lora.backward(d["input"], d["grad_output"])
    ga = lora.lora_embedding_A.grad
    if c["sparse"]:
        assert isinstance(ga, qembed.nn.SparseGrad)
        ga = ga.to_dense().T
    assert close(ga, d["grad_A"]), f"{name}: grad A"
    assert close(lora.lora_embedding_B.grad, d["grad_B"]), f"{name}: grad B"
    if c["padding_idx"] is not None:
        assert not ga[:, c["padding_idx"]].any()
    assert close(lora.merge().weight.data, d["merged"]), f"{name}: merge"
    lora.zero_grad()
    assert not np.asarray(lora.lora_embedding_B.grad).any()


def test_init_is_peft_s():
    base = Embedding(1000, 1024)
    lora = LoraEmbedding(base, r=16, lora_alpha=32, seed=5)
    assert not lora.lora_embedding_A.data.any()
    b = lora.lora_embedding_B.data
    n = b.size   # standard normal: mean and std within 4 standard errors, tails as a normal's
    assert b.shape == (1024, 16) and abs(b.mean()) < 4 / np.sqrt(n) and abs(b.std() - 1) < 4 / np.sqrt(2 * n)
    assert abs((np.abs(b) > 1.959964).mean() - 0.05) < 4 * np.sqrt(0.05 * 0.95 / n)
    np.testing.assert_array_equal(lora(np.arange(1000)), base(np.arange(1000)))   # A = 0: the base exactly
    other = LoraEmbedding(base, r=16, lora_alpha=32, seed=6).lora_embedding_B.data
    assert not np.array_equal(b, other)


def test_loads_peft_adapter_and_peft_format_round_trip(tmp_path):
    c, d = case("basic")
    base = Embedding(c["V"], c["D"], _weight=d["weight"])
    lora = LoraEmbedding.load(base, os.path.join(LORA_DIR, "adapter"))        # written by peft
    assert (lora.r, lora.lora_alpha, lora.use_rslora) == (8, 16, False)
    np.testing.assert_array_equal(lora.lora_embedding_A.data, d["A"])
    assert close(lora(d["input"]), d["out"])
    lora.save(tmp_path / "ad", module="embed")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["target_modules"] == ["embed"]
    with qembed.io.TensorFile(tmp_path / "ad" / "adapter_model.safetensors") as f:
        assert sorted(f.keys()) == ["base_model.model.embed.lora_embedding_A", "base_model.model.embed.lora_embedding_B"]
    again = LoraEmbedding.load(base, tmp_path / "ad")
    np.testing.assert_array_equal(again(d["input"]), lora(d["input"]))
    lora.save(tmp_path / "one.safetensors")           # tensors + metadata
    third = LoraEmbedding.load(base, tmp_path / "one.safetensors")
    assert third.lora_alpha == 16.0
    np.testing.assert_array_equal(third.lora_embedding_B.data, d["B"])
    with pytest.raises(ValueError):
        LoraEmbedding.load(Embedding(c["V"] + 1, c["D"]), tmp_path / "ad")       # shape checked


@pytest.mark.parametrize("kind", ["int8", "nf4", "fp4", "nf4-nested"])
def test_quantized_base_equals_lora_over_the_dequantized_table(kind):
    c, d = case("basic")
    emb = Embedding(c["V"], c["D"], _weight=d["weight"])
    if kind == "int8":
        q = qembed.nn.Embedding8bit.from_embedding(emb)
    else:
        cls = qembed.nn.EmbeddingNF4 if kind.startswith("nf4") else qembed.nn.EmbeddingFP4
        q = cls.from_embedding(emb, blocksize=64, compress_statistics=kind.endswith("nested"))
    deq = q(np.arange(c["V"]))
    ql = LoraEmbedding(q, r=8, lora_alpha=16)
    fl = LoraEmbedding(Embedding(c["V"], c["D"], _weight=deq), r=8, lora_alpha=16)
    for lo in (ql, fl):
        lo.lora_embedding_A.data = d["A"]
        lo.lora_embedding_B.data = d["B"]
    np.testing.assert_array_equal(ql(d["input"]), fl(d["input"]))
    ql.backward(d["input"], d["grad_output"])
    fl.backward(d["input"], d["grad_output"])
    np.testing.assert_array_equal(ql.lora_embedding_A.grad, fl.lora_embedding_A.grad)
    np.testing.assert_array_equal(ql.lora_embedding_B.grad, fl.lora_embedding_B.grad)
    m = ql.merge(quantize=True)
    assert type(m) is type(q)
    np.testing.assert_array_equal(ql.merged_weight(), ql(np.arange(c["V"])))


def test_training_moves_only_the_adapter():
    rng = np.random.default_rng(3)
    V, D = 600, 32
    emb = Embedding(V, D, _weight=rng.standard_normal((V, D)).astype(np.float32))
    base = EmbeddingNF4.from_embedding(emb)
    before = base(np.arange(V))
    # a shift LoRA can represent: rank 4
    shift = rng.standard_normal((V, 4)).astype(np.float32) @ rng.standard_normal((4, D)).astype(np.float32)
    target = before + 0.1 * shift
    lora = LoraEmbedding(base, r=8, lora_alpha=16)
    opt = qembed.optim.AdamW8bit(lora.parameters(), lr=1e-2)
    ids = np.arange(V)
    first = None
    for _ in range(100):
        y = lora(ids)
        diff = y - target
        loss = float((diff ** 2).mean())
        first = loss if first is None else first
        lora.backward(ids, 2 * diff / diff.size)
        opt.step()
        lora.zero_grad()
    assert loss < 0.1 * first, (first, loss)
    np.testing.assert_array_equal(base(np.arange(V)), before)     # frozen
    a, b = lora.parameters()
    assert opt.state_info(a)["bits"] == 8 and opt.state_info(b)["bits"] == 32   # A: 4800 >= min_8bit_size; B: 256


def test_bad_arguments():
    base = Embedding(50, 8)
    with pytest.raises(ValueError):
        LoraEmbedding(base, r=0)
    with pytest.raises(TypeError):
        LoraEmbedding(np.zeros((3, 3)))
    with pytest.raises(TypeError):
        LoraEmbedding(qembed.nn.StableEmbedding(10, 4))
    with pytest.raises(Exception):
        LoraEmbedding(Embedding(10, 4, max_norm=1.0))
    lora = LoraEmbedding(base, r=4)
    with pytest.raises(ValueError):
        lora(np.array([0, 50]))
    with pytest.raises(ValueError):
        lora.backward(np.array([1, 2]), np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError):
        lora.backward(np.array([1, 2]), np.full((2, 8), np.nan, np.float32))
    assert lora.lora_embedding_B.grad is None
    with pytest.raises(ValueError):
        lora.lora_embedding_A.data = np.zeros((50, 4), np.float32)   # peft's shape is (4, 50)


def test_peft_loads_what_qembed_saves(tmp_path):
    """With peft installed: PeftModel.from_pretrained over a torch model
    whose embedding module is "embed" reads qembed's adapter directory and
    computes qembed's forward."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    c, d = case("rslora")
    base = Embedding(c["V"], c["D"], _weight=d["weight"])
    lora = LoraEmbedding(base, r=c["r"], lora_alpha=c["lora_alpha"], use_rslora=True, seed=9)
    lora.lora_embedding_A.data = d["A"]
    lora.save(tmp_path / "adapter", module="embed")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(c["V"], c["D"])
            with torch.no_grad():
                self.embed.weight.copy_(torch.from_numpy(d["weight"]))

    pm = peft.PeftModel.from_pretrained(Model(), str(tmp_path / "adapter"))
    got = pm.base_model.model.embed(torch.from_numpy(d["input"])).detach().numpy()
    assert close(lora(d["input"]), got)
