"""Loading qembed's files into bitsandbytes (and the other way round).

qembed writes quantized embeddings in the layout transformers and
bitsandbytes use (``NAME``, ``NAME.absmax``, ``NAME.quant_map``,
``NAME.quant_state.bitsandbytes__nf4`` ...; ``NAME`` int8 + ``NAME.SCB``), but
a bitsandbytes layer is not built from a file by itself: the quant-state
tensors have to be handed to ``Params4bit.from_prequantized`` (4-bit), or the
int8 table and its ``SCB`` set on an ``Embedding8bit`` (8-bit). This module
does that; it needs torch, bitsandbytes and safetensors, imported on first use.

    from qembed.interop import to_bitsandbytes
    emb = to_bitsandbytes("emb.nf4.safetensors")   # a bitsandbytes.nn.Embedding4bit
    rows = emb(torch.tensor([0, 17, 42]))

The other direction needs no glue: ``qembed.nn.EmbeddingNF4.load(path)`` reads
a file saved from a bitsandbytes layer's state_dict (see the README).
"""

import json

from . import io as _io


def layer_prefixes(path):
    """The prefixes of the quantized layers in a safetensors file, in order."""
    out = []
    with _io.TensorFile(path) as f:
        for name in f.keys():
            p = None
            if ".quant_state.bitsandbytes__" in name:
                p = name.split(".quant_state.bitsandbytes__")[0]
            elif name.endswith(".SCB"):
                p = name[:-4]
            if p is not None and p not in out:
                out.append(p)
    return out


def _choose(path, prefix):
    if prefix is not None:
        return prefix
    found = layer_prefixes(path)
    if "weight" in found:
        return "weight"
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{path} holds no quantized embedding")
    raise ValueError(f"{path} holds {len(found)} quantized layers; name one: {', '.join(found)}")


def to_bitsandbytes(path, prefix=None, device="cpu"):
    """The quantized layer under `prefix` of a safetensors file (default: the
    file's only one, or "weight") as a bitsandbytes ``Embedding4bit`` (NF4/FP4,
    with or without nested statistics) or ``Embedding8bit`` on `device`."""
    import torch
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    prefix = _choose(path, prefix)
    tensors = load_file(str(path))
    state_key = next((k for k in tensors if k.startswith(prefix + ".quant_state.bitsandbytes__")), None)
    if state_key is not None:
        stats = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".") and k != prefix}
        qs = json.loads(bytes(tensors[state_key].tolist()).decode())
        rows, dim = (int(v) for v in qs["shape"])
        dtype = getattr(torch, qs.get("dtype", "float32"))
        layer = bnb.nn.Embedding4bit(rows, dim, dtype=dtype, quant_type=qs["quant_type"], device=device)
        layer.weight = bnb.nn.Params4bit.from_prequantized(tensors[prefix], stats, requires_grad=False,
                                                           device=device, module=layer)
        return layer
    if prefix + ".SCB" in tensors:
        w = tensors[prefix]
        layer = bnb.nn.Embedding8bit(w.shape[0], w.shape[1], device=device)
        layer.weight.data = w.to(device)
        layer.weight.SCB = tensors[prefix + ".SCB"].to(device)
        return layer
    raise ValueError(f"{path}: no quantized embedding under '{prefix}'")
