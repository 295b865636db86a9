"""Working with torch and bitsandbytes: qembed's files as bitsandbytes
layers, and torch parameters stepped by qembed's optimizers.

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

``torch_parameters(model.parameters())`` wraps a torch model's CPU tensors
as qembed Parameters (no copy), so that ``qembed.optim.AdamW8bit`` steps them
in place; the optimizers do this by themselves when handed torch tensors.
"""

import json

import numpy as np

from . import _arrays
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


# --------------------------------------------------------------------------
# torch parameters stepped by qembed's optimizers (CPU offload)
# --------------------------------------------------------------------------


def _tensor_view(t):
    """A writeable numpy view of a contiguous CPU tensor's memory (no copy);
    bfloat16 as ml_dtypes.bfloat16 (uint16 bits without ml_dtypes). The
    view's base holds the tensor."""
    name = _arrays.dtype_name(t.dtype)
    if name not in _arrays.FLOAT_CODES:
        raise TypeError(f"only float32, float16 and bfloat16 tensors can be wrapped, got {t.dtype}")
    v = _arrays.view(t.data_ptr(), tuple(t.shape), _arrays.numpy_float_dtype(name), t)
    return v.view(_arrays.Bf16Bits) if name == "bfloat16" and v.dtype == np.uint16 else v


def _check_tensor(t, what):
    if t.device.type != "cpu":
        raise ValueError(f"{what}: the tensor is on {t.device}; qembed steps CPU memory (offload it first)")
    if not t.is_contiguous():
        raise ValueError(f"{what}: the tensor is not contiguous; wrapping needs contiguous memory")
    if t.numel() == 0:
        raise ValueError(f"{what}: the tensor is empty")


def _make_torch_parameter():
    from .nn.parameter import Parameter

    class TorchParameter(Parameter):
        """A qembed Parameter over a torch CPU tensor's memory (no copy). Before
        every optimizer step it takes the tensor's current ``.grad``: a
        float32 contiguous gradient is wrapped (no copy; torch may give a new
        tensor after each ``zero_grad(set_to_none=True)``), any other (float16,
        bfloat16, strided, sparse) is converted into a copy; None means no
        update. ``zero_grad()`` of the optimizer sets the tensors' ``.grad``
        to None (or zeros them with set_to_none=False), as torch's does."""

        def __init__(self, tensor, name=None):
            what = name or "tensor"
            _check_tensor(tensor, what)
            data = tensor.detach()
            super().__init__(_tensor_view(data), copy=False, name=name)
            self._source = (tensor, self._source)
            self.tensor = tensor
            self._grad_tensor = None

        def _before_step(self):
            g = self.tensor.grad
            if g is None:
                self._grad_tensor = None
                if self._grad_source is not None or self._info().grad:
                    self.grad = None
                return
            if g is self._grad_tensor and self._grad_source is not None and self._grad_source[1] == g.data_ptr():
                return  # the gradient tensor of the last step, where it was
            if g.device.type != "cpu":
                raise ValueError(f"{self.name}.grad is on {g.device}; qembed steps CPU memory")
            if str(g.dtype) == "torch.float32" and not g.is_sparse and g.is_contiguous() and g.numel() == self.numel():
                self._wrap_grad_unchecked(_tensor_view(g.detach()))
                self._grad_tensor = g
            else:
                self.grad = (g.to_dense() if g.is_sparse else g).detach().float().contiguous().reshape(self.shape)
                self._grad_tensor = None

        def _zero_grad(self, set_to_none):
            if set_to_none:
                self.tensor.grad = None
                self.grad = None
            elif self.tensor.grad is not None:
                self.tensor.grad.detach().zero_()

        def __repr__(self):
            return f"TorchParameter(name={self.name!r}, shape={self.shape}, dtype={self._dtype_name})"

    return TorchParameter


_TORCH_PARAMETER = None


def TorchParameter(tensor, name=None):  # noqa: N802 (a class, made on first use so torch stays optional)
    """qembed.nn.Parameter over a torch CPU tensor (see torch_parameters)."""
    global _TORCH_PARAMETER
    if _TORCH_PARAMETER is None:
        _TORCH_PARAMETER = _make_torch_parameter()
    return _TORCH_PARAMETER(tensor, name=name)


def is_torch_tensor(x):
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr") and hasattr(x, "grad")


def torch_parameters(params):
    """qembed Parameters over torch tensors, for qembed's optimizers to step
    a torch model's CPU parameters in place (an 8-bit optimizer offloaded to
    the CPU: 2 bytes of state per parameter instead of torch Adam's 8):

        model = MyModel()                       # CPU parameters
        opt = qembed.optim.AdamW8bit(model.parameters(), lr=1e-3)   # wraps them (this function)
        loss = model(x).sum(); loss.backward()
        opt.step(); opt.zero_grad()

    `params` is an iterable of tensors, of (name, tensor) pairs
    (``model.named_parameters()``), or of param-group dicts; tensors that do
    not require grad are skipped. Neither weights nor gradients are copied
    per step (a float32 contiguous gradient is wrapped where it lies)."""
    out = []
    for item in params:
        if isinstance(item, dict):
            group = dict(item)
            group["params"] = torch_parameters(group["params"])
            out.append(group)
            continue
        name, t = item if isinstance(item, tuple) else (None, item)
        if getattr(t, "requires_grad", True):
            out.append(TorchParameter(t, name=name))
    return out
