#!/usr/bin/env python3
"""Generate the layer/optimizer golden fixtures (Tests/golden/layers/).

Run with the reference venv (bitsandbytes 0.50.2, torch 2.x CPU, safetensors):

    /work/refvenv/bin/python tools/gen_fixtures_layers.py

Writes Tests/golden/layers/manifest.json and small .npy files (plus two
safetensors files written by bitsandbytes). The Python tests
(bindings/python/tests/test_modules.py, test_optim.py) read them with numpy
alone.

What is recorded
----------------
Layers (bitsandbytes.nn, tables given as ``_weight`` so initialization does
not matter; indices and grad_output stored next to the results):

  lookup            Embedding forward (float32, bit-exact)
  padding_*         padding_idx 3 and -2: forward and the dense weight.grad
  max_norm_p*       max_norm 1.5 with norm_type 1, 2, 3 and repeated
                    indices: forward and the weight after it (rows renormalized
                    in place)
  sgbf*             scale_grad_by_freq dense grads (with and without padding)
  sparse*           sparse=True: the coalesced weight.grad (indices, values)
  stable*           StableEmbedding with non-default LayerNorm weight/bias:
                    forward, weight.grad, norm.weight.grad, norm.bias.grad
  dtype_*           float16 / bfloat16 weights: Embedding lookup (exact),
                    StableEmbedding forward and weight.grad in torch's dtype
                    (bfloat16 stored as uint16 bit patterns)
  q8_*, q4_*        Embedding8bit / Embedding4bit (fp4, nf4; blocksize 64):
                    quantized bytes, SCB / absmax and lookups. Embedding8bit
                    quantizes through float16 upstream, so its tables hold
                    values exact in float16 (multiples of 1/64 in [-4, 4]):
                    the detour then changes nothing and qembed's direct
                    quantization must give the same bytes. 4-bit tables have
                    no short tail block (bitsandbytes' CPU path divides there).
  bnb_files         safetensors files written by bitsandbytes' own
                    QuantState.as_dict(packed=True) / Int8Params (SCB), for
                    qembed.load() to read

Optimizers (bitsandbytes.optim on the CPU): for each rule (adam, adamw,
momentum = SGD(lr 0.01, momentum 0.9), lion, rmsprop = RMSprop(lr 0.01,
alpha 0.9), adagrad, weight-decay variants; max_unorm variants of adam,
momentum and rmsprop, 32-bit only as upstream), 32-bit and 8-bit classes,
50 steps on parameters of 1000 (< min_8bit_size, so 32-bit state even in the
8-bit class), 4196 (a short last 256-block) and 8192 elements. Parameters
and gradients are generated, not stored:

  p0      = (default_rng(seed).standard_normal(n) * 0.1).astype(float32)
  grad_t  = (default_rng(seed * 1000 + t).standard_normal(n) * 0.01).astype(float32)
            for t = 1..50, seed = 1000 + n

At steps 10, 20, 30, 40, 50 the parameter and the states (8-bit states
dequantized with F.dequantize_blockwise(state, absmax, qmap, blocksize=256))
are stored at 256 sampled positions (first 96, middle 64, last 96): one
array per optimizer of shape (sizes, checkpoints, 1 + states, 256).

Training curve: StableEmbedding(512, 32) + a bias-free linear head (128 x 32,
4096 elements: 8-bit state) trained with Adam8bit(lr 3e-3) for 60 steps on a
generated task (see make_batch()); the 60 losses are stored.

ATEN_CPU_CAPABILITY=default pins torch.linspace, hence bitsandbytes'
dynamic maps, to the scalar definition qembed reproduces (see
tools/gen_fixtures.py).
"""

import json
import os
import sys
import tempfile

os.environ["ATEN_CPU_CAPABILITY"] = "default"

import numpy as np
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from bitsandbytes.optim.optimizer import Optimizer1State, Optimizer2State

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "Tests", "golden", "layers")

MANIFEST = {"generator": "tools/gen_fixtures_layers.py", "bitsandbytes": bnb.__version__,
            "torch": torch.__version__, "layers": {}, "optim": {}, "train": {}, "files": {}}


def save(name, arr):
    """Store an array as <name>.npy; bfloat16 tensors as uint16 bits."""
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu()
        if t.dtype == torch.bfloat16:
            arr = t.view(torch.int16).numpy().view(np.uint16)
        else:
            arr = t.numpy()
    arr = np.ascontiguousarray(arr)
    np.save(os.path.join(OUT, name + ".npy"), arr, allow_pickle=False)
    return name + ".npy"


def rng(seed):
    return np.random.default_rng(seed)


def table(seed, rows, cols, scale=1.0):
    return (rng(seed).standard_normal((rows, cols)) * scale).astype(np.float32)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def case(name, params, **arrays):
    entry = {"params": params}
    for k, v in arrays.items():
        entry[k] = save(f"{name}__{k}", v)
    MANIFEST["layers"][name] = entry


def run_embedding(cls, W, idx, G=None, **kw):
    m = cls(W.shape[0], W.shape[1], _weight=torch.from_numpy(W.copy()), **kw)
    out = m(torch.from_numpy(idx))
    res = {"out": out.detach()}
    if G is not None:
        out.backward(torch.from_numpy(G))
        g = m.weight.grad
        if g.is_sparse:
            g = g.coalesce()
            res["grad_indices"] = g.indices()[0].numpy().astype(np.int64)
            res["grad_values"] = g.values().numpy()
        else:
            res["grad"] = g
    res["weight_after"] = m.weight.detach().clone()
    return m, res


def gen_layers():
    W = table(1, 20, 8)
    idx = np.array([[0, 3, 3, 19, 7], [7, 7, 1, 0, 12], [5, 18, 3, 3, 3]], dtype=np.int64)
    G = (rng(2).standard_normal(idx.shape + (8,))).astype(np.float32)

    _, r = run_embedding(bnb.nn.Embedding, W, idx)
    case("lookup", {"cls": "Embedding"}, weight=W, idx=idx, out=r["out"])

    for pad in (3, -2):
        pidx = idx.copy()
        pidx[0, 0] = pad % 20
        _, r = run_embedding(bnb.nn.Embedding, W, pidx, G, padding_idx=pad)
        case(f"padding_{'neg' if pad < 0 else 'pos'}", {"cls": "Embedding", "padding_idx": pad}, weight=W, idx=pidx,
             grad_output=G, out=r["out"], grad=r["grad"])

    Wm = W.copy()
    Wm[[1, 5, 12]] *= 0.05  # rows below max_norm under every p
    for p in (1.0, 2.0, 3.0):
        _, r = run_embedding(bnb.nn.Embedding, Wm, idx, None, max_norm=1.5, norm_type=p)
        case(f"max_norm_p{int(p)}", {"cls": "Embedding", "max_norm": 1.5, "norm_type": p}, weight=Wm, idx=idx,
             out=r["out"], weight_after=r["weight_after"])

    _, r = run_embedding(bnb.nn.Embedding, W, idx, G, scale_grad_by_freq=True)
    case("sgbf", {"cls": "Embedding", "scale_grad_by_freq": True}, weight=W, idx=idx, grad_output=G, grad=r["grad"])
    _, r = run_embedding(bnb.nn.Embedding, W, idx, G, scale_grad_by_freq=True, padding_idx=3)
    case("sgbf_padding", {"cls": "Embedding", "scale_grad_by_freq": True, "padding_idx": 3}, weight=W, idx=idx,
         grad_output=G, grad=r["grad"])

    _, r = run_embedding(bnb.nn.Embedding, W, idx, G, sparse=True)
    case("sparse", {"cls": "Embedding", "sparse": True}, weight=W, idx=idx, grad_output=G,
         out=r["out"], grad_indices=r["grad_indices"], grad_values=r["grad_values"])
    # (torch refuses sparse=True with scale_grad_by_freq, so no such case)
    _, r = run_embedding(bnb.nn.Embedding, W, idx, G, sparse=True, padding_idx=7)
    case("sparse_padding", {"cls": "Embedding", "sparse": True, "padding_idx": 7},
         weight=W, idx=idx, grad_output=G, grad_indices=r["grad_indices"], grad_values=r["grad_values"])

    # StableEmbedding with a non-default LayerNorm
    nw = (1 + 0.3 * rng(3).standard_normal(8)).astype(np.float32)
    nb = (0.2 * rng(4).standard_normal(8)).astype(np.float32)
    for name, kw in (("stable", {}), ("stable_padding", {"padding_idx": 5})):
        sidx = idx.copy()
        if kw:
            sidx[1, 1] = 5
        m = bnb.nn.StableEmbedding(20, 8, _weight=torch.from_numpy(W.copy()), **kw)
        with torch.no_grad():
            m.norm.weight.copy_(torch.from_numpy(nw))
            m.norm.bias.copy_(torch.from_numpy(nb))
        out = m(torch.from_numpy(sidx))
        out.backward(torch.from_numpy(G))
        case(name, dict({"cls": "StableEmbedding"}, **kw), weight=W, norm_weight=nw, norm_bias=nb, idx=sidx,
             grad_output=G, out=out.detach(), grad=m.weight.grad, norm_weight_grad=m.norm.weight.grad,
             norm_bias_grad=m.norm.bias.grad)

    # float16 / bfloat16 weights
    for dname, tdt in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        Wt = torch.from_numpy(W.copy()).to(tdt)
        e = bnb.nn.Embedding(20, 8, _weight=Wt.clone())
        s = bnb.nn.StableEmbedding(20, 8, _weight=Wt.clone())
        with torch.no_grad():
            s.norm.weight.copy_(torch.from_numpy(nw))
            s.norm.bias.copy_(torch.from_numpy(nb))
        sout = s(torch.from_numpy(idx))
        sout.backward(torch.from_numpy(G).to(tdt))
        case(f"dtype_{dname}", {"dtype": dname}, weight=Wt, idx=idx, grad_output=torch.from_numpy(G).to(tdt),
             lookup=e(torch.from_numpy(idx)).detach(), stable_out=sout.detach(), stable_grad=s.weight.grad,
             stable_norm_weight_grad=s.norm.weight.grad, stable_norm_bias_grad=s.norm.bias.grad)

    # Quantized layers
    qidx = np.array([[0, 5, 31], [7, 7, 2]], dtype=np.int64)
    for dim in (64, 40):
        # values exact in float16 (k/64, |k| <= 256), so upstream's float16 detour is lossless
        Wq = (np.round(rng(10 + dim).standard_normal((32, dim)) * 64).clip(-256, 256) / 64).astype(np.float32)
        Wq[3] = 0.0  # an all-zero row
        m = bnb.nn.Embedding8bit(32, dim)
        m.load_state_dict({"weight": torch.from_numpy(Wq)})
        m = m.to("cpu")
        case(f"q8_d{dim}", {"cls": "Embedding8bit", "dim": dim}, weight=Wq, idx=qidx, CB=m.weight.data,
             SCB=m.weight.SCB, out=m(torch.from_numpy(qidx)).detach())
        for qt in ("fp4", "nf4"):
            m = bnb.nn.Embedding4bit(32, dim, quant_type=qt)
            m.load_state_dict({"weight": torch.from_numpy(Wq)})
            m = m.to("cpu")
            qs = m.weight.quant_state
            case(f"q4_{qt}_d{dim}", {"cls": "Embedding4bit", "quant_type": qt, "dim": dim, "blocksize": qs.blocksize},
                 weight=Wq, idx=qidx, packed=m.weight.data.view(torch.uint8).reshape(-1), absmax=qs.absmax,
                 out=m(torch.from_numpy(qidx)).detach())

    # Files written by bitsandbytes' own serialization
    from safetensors.torch import save_file
    Wq = (np.round(rng(77).standard_normal((32, 64)) * 64).clip(-256, 256) / 64).astype(np.float32)
    m = bnb.nn.Embedding4bit(32, 64, quant_type="nf4")
    m.load_state_dict({"weight": torch.from_numpy(Wq)})
    m = m.to("cpu")
    tensors = {"emb.weight": m.weight.data.contiguous()}
    for k, v in m.weight.quant_state.as_dict(packed=True).items():
        tensors["emb.weight." + k] = v.contiguous()
    path = os.path.join(OUT, "bnb_nf4.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    m8 = bnb.nn.Embedding8bit(32, 64)
    m8.load_state_dict({"weight": torch.from_numpy(Wq)})
    m8 = m8.to("cpu")
    path8 = os.path.join(OUT, "bnb_int8.safetensors")
    save_file({"weight": m8.weight.data.contiguous(), "weight.SCB": m8.weight.SCB.contiguous()}, path8)
    idx_all = torch.arange(32)
    MANIFEST["files"] = {
        "nf4": {"file": "bnb_nf4.safetensors", "prefix": "emb.weight", "weight": save("files__weight", Wq),
                "out": save("files__nf4_out", m(idx_all).detach())},
        "int8": {"file": "bnb_int8.safetensors", "prefix": "weight", "out": save("files__int8_out", m8(idx_all).detach())},
    }


# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------

SIZES = {1000: (10, 100), 4196: (1049, 4), 8192: (64, 128)}
CHECKPOINTS = (10, 20, 30, 40, 50)
STEPS = 50

OPTIMIZERS = {
    # name: (32-bit factory, 8-bit factory, number of states, qembed constructor spec)
    "adam": (lambda p: bnb.optim.Adam(p), lambda p: bnb.optim.Adam8bit(p), 2, {"cls": "Adam", "kwargs": {}}),
    "adamw": (lambda p: bnb.optim.AdamW(p), lambda p: bnb.optim.AdamW8bit(p), 2, {"cls": "AdamW", "kwargs": {}}),
    "momentum": (lambda p: bnb.optim.SGD(p, 0.01, 0.9), lambda p: bnb.optim.SGD8bit(p, 0.01, 0.9), 1,
                 {"cls": "SGD", "kwargs": {"lr": 0.01, "momentum": 0.9}}),
    "lion": (lambda p: bnb.optim.Lion(p), lambda p: bnb.optim.Lion8bit(p), 1, {"cls": "Lion", "kwargs": {}}),
    "rmsprop": (lambda p: bnb.optim.RMSprop(p, 0.01, 0.9), lambda p: bnb.optim.RMSprop8bit(p, 0.01, 0.9), 1,
                {"cls": "RMSprop", "kwargs": {"lr": 0.01, "alpha": 0.9}}),
    "adagrad": (lambda p: bnb.optim.Adagrad(p), lambda p: bnb.optim.Adagrad8bit(p), 1,
                {"cls": "Adagrad", "kwargs": {}}),
    "adam_wd": (lambda p: bnb.optim.Adam(p, weight_decay=0.1), lambda p: bnb.optim.Adam8bit(p, weight_decay=0.1), 2,
                {"cls": "Adam", "kwargs": {"weight_decay": 0.1}}),
    "momentum_wd": (lambda p: bnb.optim.SGD(p, 0.01, 0.9, weight_decay=0.1),
                    lambda p: bnb.optim.SGD8bit(p, 0.01, 0.9, weight_decay=0.1), 1,
                    {"cls": "SGD", "kwargs": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1}}),
    "lion_wd": (lambda p: bnb.optim.Lion(p, weight_decay=0.1), lambda p: bnb.optim.Lion8bit(p, weight_decay=0.1), 1,
                {"cls": "Lion", "kwargs": {"weight_decay": 0.1}}),
    "rmsprop_wd": (lambda p: bnb.optim.RMSprop(p, 0.01, 0.9, weight_decay=0.1),
                   lambda p: bnb.optim.RMSprop8bit(p, 0.01, 0.9, weight_decay=0.1), 1,
                   {"cls": "RMSprop", "kwargs": {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.1}}),
    "adagrad_wd": (lambda p: bnb.optim.Adagrad(p, weight_decay=0.1),
                   lambda p: bnb.optim.Adagrad8bit(p, weight_decay=0.1), 1,
                   {"cls": "Adagrad", "kwargs": {"weight_decay": 0.1}}),
    # max_unorm (32-bit only upstream): the update is scaled down to max_unorm * ||p|| when longer
    "adam_maxunorm": (lambda p: Optimizer2State("adam", p, max_unorm=1.0), None, 2,
                      {"cls": "Optimizer2State", "args": ["adam"], "kwargs": {"max_unorm": 1.0}}),
    "momentum_maxunorm": (lambda p: Optimizer1State("momentum", p, lr=0.01, betas=(0.9, 0.0), eps=0.0,
                                                    max_unorm=0.2), None, 1,
                          {"cls": "Optimizer1State", "args": ["momentum"],
                           "kwargs": {"lr": 0.01, "betas": [0.9, 0.0], "eps": 0.0, "max_unorm": 0.2}}),
    "rmsprop_maxunorm": (lambda p: Optimizer1State("rmsprop", p, lr=0.01, betas=(0.9, 0.0), max_unorm=1.0), None, 1,
                         {"cls": "Optimizer1State", "args": ["rmsprop"],
                          "kwargs": {"lr": 0.01, "betas": [0.9, 0.0], "max_unorm": 1.0}}),
}


def sample_positions(n):
    return np.unique(np.concatenate([np.arange(0, 96), np.arange(n // 2 - 32, n // 2 + 32), np.arange(n - 96, n)]))


def init_param(n):
    return (rng(1000 + n).standard_normal(n) * 0.1).astype(np.float32)


def grad_at(n, t):
    return (rng((1000 + n) * 1000 + t).standard_normal(n) * 0.01).astype(np.float32)


def state_arrays(opt, p, nstates):
    st = opt.state[p]
    out = []
    for k in range(1, nstates + 1):
        s = st[f"state{k}"]
        if s.dtype == torch.uint8:
            s = F.dequantize_blockwise(A=s, absmax=st[f"absmax{k}"], code=st[f"qmap{k}"], blocksize=256)
        out.append(s.reshape(-1).float().numpy())
    bits = 8 if st["state1"].dtype == torch.uint8 else 32
    return out, bits


def gen_optim():
    for name, (f32, f8, nstates, spec) in OPTIMIZERS.items():
        for bits, factory in ((32, f32), (8, f8)):
            if factory is None:
                continue
            data = np.zeros((len(SIZES), len(CHECKPOINTS), 1 + nstates, 256), dtype=np.float32)
            state_bits = []
            for si, (n, shape) in enumerate(SIZES.items()):
                pos = sample_positions(n)
                assert len(pos) == 256
                p = torch.nn.Parameter(torch.from_numpy(init_param(n).reshape(shape).copy()))
                opt = factory([p])
                for t in range(1, STEPS + 1):
                    p.grad = torch.from_numpy(grad_at(n, t).reshape(shape).copy())
                    opt.step()
                    if t in CHECKPOINTS:
                        ci = CHECKPOINTS.index(t)
                        states, sb = state_arrays(opt, p, nstates)
                        data[si, ci, 0] = p.detach().reshape(-1).numpy()[pos]
                        for k, s in enumerate(states):
                            data[si, ci, 1 + k] = s[pos]
                state_bits.append(sb)
            MANIFEST["optim"][f"{name}_{bits}"] = {
                "rule": name, "bits": bits, "qembed": {"cls": spec["cls"] + ("8bit" if bits == 8 else ""),
                                                       "args": spec.get("args", []), "kwargs": spec["kwargs"]},
                "sizes": list(SIZES), "shapes": [list(s) for s in SIZES.values()], "checkpoints": list(CHECKPOINTS),
                "num_states": nstates, "state_bits": state_bits, "data": save(f"optim_{name}_{bits}", data)}
    MANIFEST["optim_recipe"] = {
        "p0": "(np.random.default_rng(1000 + n).standard_normal(n) * 0.1).astype(np.float32)",
        "grad_t": "(np.random.default_rng((1000 + n) * 1000 + t).standard_normal(n) * 0.01).astype(np.float32)",
        "positions": "np.unique(np.concatenate([arange(0, 96), arange(n//2 - 32, n//2 + 32), arange(n - 96, n)]))",
        "data": "[size, checkpoint, (param, state1[, state2]), position]; 8-bit states dequantized"}


# ---------------------------------------------------------------------------
# StableEmbedding + Adam8bit training curve
# ---------------------------------------------------------------------------

TRAIN = {"vocab": 512, "dim": 32, "classes": 128, "seq": 8, "batch": 64, "steps": 60, "lr": 3e-3, "noise": 0.2}


def make_batch(step, vocab=512, classes=128, seq=8, batch=64, noise=0.2):
    """Sequences of tokens from one class (token % classes == label), 20%
    replaced by random tokens; the same numpy code runs in the tests."""
    r = np.random.default_rng(5000 + step)
    labels = r.integers(0, classes, batch)
    tokens = labels[:, None] + classes * r.integers(0, vocab // classes, (batch, seq))
    mask = r.random((batch, seq)) < noise
    tokens = np.where(mask, r.integers(0, vocab, (batch, seq)), tokens)
    return tokens.astype(np.int64), labels.astype(np.int64)


def train_init(vocab=512, dim=32, classes=128):
    a = np.sqrt(6.0 / (vocab + dim))
    emb = rng(7).uniform(-a, a, (vocab, dim)).astype(np.float32)
    head = (rng(8).standard_normal((classes, dim)) * 0.1).astype(np.float32)
    return emb, head


def gen_train():
    c = TRAIN
    emb0, head0 = train_init(c["vocab"], c["dim"], c["classes"])
    emb = bnb.nn.StableEmbedding(c["vocab"], c["dim"], _weight=torch.from_numpy(emb0.copy()))
    head = torch.nn.Linear(c["dim"], c["classes"], bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(head0))
    opt = bnb.optim.Adam8bit(list(emb.parameters()) + list(head.parameters()), lr=c["lr"])
    losses = []
    for step in range(c["steps"]):
        tokens, labels = make_batch(step, c["vocab"], c["classes"], c["seq"], c["batch"], c["noise"])
        h = emb(torch.from_numpy(tokens)).mean(dim=1)
        loss = torch.nn.functional.cross_entropy(head(h), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    bits = {n: ("8" if opt.state[p]["state1"].dtype == torch.uint8 else "32")
            for n, p in [("emb.weight", emb.weight), ("emb.norm.weight", emb.norm.weight),
                         ("emb.norm.bias", emb.norm.bias), ("head.weight", head.weight)]}
    MANIFEST["train"] = dict(c, losses=save("train_losses", np.array(losses, dtype=np.float64)), state_bits=bits,
                             init="train_init() in this file: xavier-uniform rng(7) embedding, 0.1*normal rng(8) head",
                             batch_fn="make_batch(step) in this file")
    print(f"train: loss {losses[0]:.4f} -> {losses[-1]:.4f}; state bits {bits}")


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    torch.manual_seed(0)
    gen_layers()
    gen_optim()
    gen_train()
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(MANIFEST, fh, indent=1, sort_keys=True)
        fh.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(os.listdir(OUT))} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
