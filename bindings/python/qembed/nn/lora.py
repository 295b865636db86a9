"""qembed.nn.LoraEmbedding: peft's LoRA for embeddings over any qembed table.

    base = qembed.nn.EmbeddingNF4.load("emb.nf4.safetensors")      # frozen, any table
    lora = qembed.nn.LoraEmbedding(base, r=8, lora_alpha=16)
    opt = qembed.optim.AdamW8bit(lora.parameters(), lr=1e-3)
    y = lora(ids)                      # base(ids) + (A^T[ids] @ B^T) * scaling
    lora.backward(ids, dy); opt.step(); lora.zero_grad()
    lora.save("adapter")               # adapter_model.safetensors + adapter_config.json, as peft writes them
    merged = lora.merge()              # a float Embedding (or merge(quantize=True): the base's kind)

The semantics are peft's (peft.tuners.lora.layer.Embedding): lora_embedding_A
(r x num_embeddings) starts at zeros, lora_embedding_B (embedding_dim x r)
at standard normal draws (qembed's generator, from `seed`), scaling is
lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), and A is looked up
with the base's padding_idx, scale_grad_by_freq and sparse. The library
keeps A^T and B^T (the layout peft's forward multiplies); the
``lora_embedding_A`` / ``lora_embedding_B`` parameters present peft's shapes
as transposed views.
"""

import ctypes
import json
import os

import numpy as np

from .. import _arrays
from .. import _capi as C
from .. import io as _io
from .._arrays import out_array, view as _view
from .._handle import Handle, new_struct, out_handle
from .modules import Embedding, _int, _type_error, _value_error
from .quantized import _QuantizedEmbedding
from .parameter import Parameter, _sparse_grad

__all__ = ["LoraEmbedding"]

_ADAPTER_FILE = "adapter_model.safetensors"
_CONFIG_FILE = "adapter_config.json"


class _TransposedParameter(Parameter):
    """A 2-D parameter the library holds transposed: ``shape``, ``data`` and
    a dense ``grad`` are in peft's orientation (transposed views, no copy);
    a sparse gradient (a sparse base) is a SparseGrad of the held rows
    (rows of A^T, one per id)."""

    @classmethod
    def _over(cls, ptr, owner):
        self = cls._borrowed(ptr, owner)
        self._held_shape = self.shape
        self.shape = tuple(reversed(self.shape))
        return self

    @property
    def data(self):
        return _view(self._info().data, self._held_shape, self.dtype, self._owner).T

    @data.setter
    def data(self, value):
        self.copy_(value)

    def copy_(self, value):
        arr, code = _arrays.float_array(value, self.name)
        if arr.shape != self.shape:
            raise _value_error(f"{self.name}: expected shape {self.shape}, got {arr.shape}", C.QEMBED_ERR_SHAPE)
        held = np.ascontiguousarray(arr.T)
        C._check(C.qembed_param_load(self._ptr, held.ctypes.data, code, held.size))
        return self

    @property
    def grad(self):
        info = self._info()
        if info.sparse:
            return _sparse_grad(self._ptr, self._held_shape)
        if not info.grad:
            return None
        return _view(ctypes.cast(info.grad, ctypes.c_void_p).value, self._held_shape, np.float32, self._owner).T

    @grad.setter
    def grad(self, value):
        if value is None:
            C._check(C.qembed_param_clear_grad(self._ptr))
            return
        arr = _arrays.to_numpy(value)
        if tuple(arr.shape) != self.shape:
            raise _value_error(f"{self.name}.grad: expected shape {self.shape}, got {tuple(arr.shape)}", C.QEMBED_ERR_SHAPE)
        held, code = _arrays.float_array(np.ascontiguousarray(arr.T), f"{self.name}.grad")
        C._check(C.qembed_param_set_grad(self._ptr, held.ctypes.data, code, held.size))

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self._dtype_name}, held transposed)"


class LoraEmbedding:
    """LoRA over a frozen qembed table (``Embedding``, ``StableEmbedding``'s
    table lookup excluded, ``Embedding8bit``, ``Embedding4bit``/``FP4``/``NF4``):
    ``LoraEmbedding(base, r=8, lora_alpha=8, use_rslora=False, seed=0)``."""

    def __init__(self, base, r=8, lora_alpha=8, use_rslora=False, seed=0):
        r = _int(r, "r")
        if r <= 0:
            raise _value_error(f"`r` should be a positive integer value but the value passed is {r}")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float, np.integer, np.floating)):
            raise _type_error(f"lora_alpha: expected a number, got {type(lora_alpha).__name__}")
        seed = _int(seed, "seed")
        if not 0 <= seed < 2 ** 64:
            raise _value_error(f"seed must be in [0, 2**64), got {seed}")
        if isinstance(base, Embedding):
            if getattr(base, "norm", None) is not None:
                raise _type_error("base: a StableEmbedding applies a LayerNorm after the lookup; LoRA adapts plain tables")
            fbase, qbase = base._h(), None
        elif isinstance(base, _QuantizedEmbedding):
            fbase, qbase = None, base._h()
        else:
            raise _type_error(f"base: expected a qembed table (qembed.nn.Embedding or a quantized one), got "
                              f"{type(base).__name__}")
        p = new_struct(C.qembed_lora_params)
        C.qembed_lora_params_init(ctypes.byref(p))
        p.r, p.lora_alpha, p.use_rslora, p.seed = r, float(lora_alpha), bool(use_rslora), seed
        out = out_handle()
        C._check(C.qembed_lora_create(ctypes.byref(p), fbase, qbase, ctypes.byref(out)))
        self._handle = Handle(out.value, C.qembed_lora_free, "lora")
        self.base = base
        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = bool(use_rslora)
        self.seed = seed
        scaling = ctypes.c_double()
        C._check(C.qembed_lora_get_params(self._handle.ptr, ctypes.byref(p), ctypes.byref(scaling)))
        self.scaling = scaling.value
        self.num_embeddings = base.num_embeddings
        self.embedding_dim = base.embedding_dim
        self._held = []
        for i in range(2):
            ptr = out_handle()
            C._check(C.qembed_lora_param(self._handle.ptr, i, ctypes.byref(ptr)))
            self._held.append(Parameter._borrowed(ptr.value, self._handle))
        self.lora_embedding_A = _TransposedParameter._over(self._held[0]._ptr, self._handle)
        self.lora_embedding_B = _TransposedParameter._over(self._held[1]._ptr, self._handle)

    # -- parameters

    def parameters(self):
        """The trainable parameters, A then B, for qembed.optim (the library's
        A^T and B^T: the optimizers are elementwise, orientation is moot)."""
        return iter(self._held)

    def named_parameters(self):
        return iter([("lora_embedding_A", self.lora_embedding_A), ("lora_embedding_B", self.lora_embedding_B)])

    # -- forward / backward

    def forward(self, input, out=None):
        """base(input) + (A^T[input] @ B^T) * scaling: shape input.shape +
        (embedding_dim,), in the base's dtype (computed in float32)."""
        idx, code = _arrays.index_array(input)
        dtype = self.base.dtype
        out = out_array(out, idx.shape + (self.embedding_dim,), dtype)
        C._check(C.qembed_lora_forward(self._handle.ptr, idx.ctypes.data, code, idx.size, out.ctypes.data,
                                       _arrays.float_dtype_code(self.base._dtype_name), out.size))
        return out

    __call__ = forward

    def backward(self, input, grad_output):
        """Accumulate the gradients of A and B for d(loss)/d(forward(input))."""
        idx, code = _arrays.index_array(input)
        g, gcode = _arrays.float_array(grad_output, "grad_output")
        expected = idx.shape + (self.embedding_dim,)
        if g.shape != expected:
            raise _value_error(f"grad_output: expected shape {expected}, got {g.shape}", C.QEMBED_ERR_SHAPE)
        C._check(C.qembed_lora_backward(self._handle.ptr, idx.ctypes.data, code, idx.size, g.ctypes.data, gcode,
                                        g.size))

    def zero_grad(self):
        C._check(C.qembed_lora_zero_grad(self._handle.ptr))

    # -- merge

    def merged_weight(self, dtype=np.float32):
        """The adapted table W + (B @ A)^T * scaling as an array."""
        name = _arrays.float_dtype_name(dtype)
        out = _arrays.out_array(None, (self.num_embeddings, self.embedding_dim), _arrays.numpy_float_dtype(name))
        C._check(C.qembed_lora_merge(self._handle.ptr, out.ctypes.data, _arrays.float_dtype_code(name), out.size))
        return out

    def merge(self, quantize=False):
        """peft's merge_and_unload: a float ``Embedding`` holding the adapted
        table (the base's padding_idx and options), or with quantize=True a
        table of the base's kind (same quant_type, blocksize, nested
        statistics) quantized from it."""
        w = self.merged_weight()
        base = self.base
        if isinstance(base, Embedding):
            merged = Embedding(self.num_embeddings, self.embedding_dim, padding_idx=base.padding_idx,
                               max_norm=base.max_norm, norm_type=base.norm_type,
                               scale_grad_by_freq=base.scale_grad_by_freq, sparse=base.sparse, _weight=w,
                               dtype=base._dtype_name)
            if quantize:
                raise _value_error("merge(quantize=True): the base is a float table; merge() gives one")
            return merged
        merged = Embedding(self.num_embeddings, self.embedding_dim, _weight=w)
        if not quantize:
            return merged
        if getattr(base, "_four_bit", False):
            return type(base).from_embedding(merged, quant_type=base.quant_type, blocksize=base.blocksize,
                                             compress_statistics=base.compress_statistics)
        return type(base).from_embedding(merged)

    # -- files (peft's adapter layout)

    def state_dict(self, module="embed_tokens"):
        """peft's adapter state dict: {"base_model.model.<module>.lora_embedding_A":
        A (r x num_embeddings), "...lora_embedding_B": B (embedding_dim x r)}."""
        prefix = f"base_model.model.{module}." if module else ""
        return {prefix + "lora_embedding_A": np.ascontiguousarray(self.lora_embedding_A.data, dtype=np.float32),
                prefix + "lora_embedding_B": np.ascontiguousarray(self.lora_embedding_B.data, dtype=np.float32)}

    def save(self, path, module="embed_tokens"):
        """Save the adapter as peft does: a directory (or a path without
        .safetensors) gets adapter_model.safetensors and adapter_config.json
        (PeftModel.from_pretrained loads it over a model whose embedding
        module is `module`); a .safetensors path gets the tensors alone, with
        r, lora_alpha and use_rslora in its metadata. Written atomically."""
        path = os.fspath(path)
        meta = {"r": str(self.r), "lora_alpha": repr(float(self.lora_alpha)), "use_rslora": str(self.use_rslora).lower(),
                "format": "pt"}
        if path.endswith(".safetensors"):
            _io.save_file(self.state_dict(module), path, metadata=meta)
            return path
        os.makedirs(path, exist_ok=True)
        _io.save_file(self.state_dict(module), os.path.join(path, _ADAPTER_FILE), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "inference_mode": True,
                  "r": self.r, "lora_alpha": self.lora_alpha, "use_rslora": self.use_rslora, "lora_dropout": 0.0,
                  "target_modules": [module.split(".")[-1]] if module else None, "bias": "none",
                  "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None}
        _io.write_json(os.path.join(path, _CONFIG_FILE), config)
        return path

    @classmethod
    def load(cls, base, path, module=None, lora_alpha=None, use_rslora=None):
        """An adapter saved by peft or by save(): a directory with
        adapter_model.safetensors (r, lora_alpha, use_rslora from its
        adapter_config.json) or a .safetensors file (from its metadata, or the
        arguments). `module` picks the embedding when the file adapts several
        (keys "...<module>.lora_embedding_A"); shapes are checked against the
        base."""
        path = os.fspath(path)
        config = {}
        file = path
        if os.path.isdir(path):
            file = os.path.join(path, _ADAPTER_FILE)
            cfg = os.path.join(path, _CONFIG_FILE)
            if os.path.exists(cfg):
                with open(cfg) as f:
                    config = json.load(f)
        with _io.TensorFile(file) as f:
            keys = list(f.keys())
            meta = {k: f.metadata_value(k) for k in ("r", "lora_alpha", "use_rslora")}

            def find(kind):
                hits = [k for k in keys if k.endswith("." + kind) or k == kind or ("." + kind + ".") in k]
                if module is not None:
                    hits = [k for k in hits if (f".{module}." in f".{k}") or k.startswith(f"{module}.")]
                if len(hits) != 1:
                    where = f" for module {module!r}" if module else ""
                    raise _value_error(f"{file}: expected one '{kind}' tensor{where}, found {len(hits)}"
                                       + (f" ({', '.join(hits)}); pass module=" if len(hits) > 1 else ""))
                return f.get(hits[0])
            a, b = find("lora_embedding_A"), find("lora_embedding_B")
        r = a.shape[0] if a.ndim == 2 else 0
        if a.ndim != 2 or b.ndim != 2 or a.shape != (r, base.num_embeddings) or b.shape != (base.embedding_dim, r):
            raise _value_error(f"{file}: lora_embedding_A {a.shape} and lora_embedding_B {b.shape} do not fit a base of "
                               f"({base.num_embeddings}, {base.embedding_dim})", C.QEMBED_ERR_SHAPE)
        if lora_alpha is None:
            lora_alpha = config.get("lora_alpha", float(meta["lora_alpha"]) if meta.get("lora_alpha") else None)
        if lora_alpha is None:
            raise _value_error(f"{file}: no lora_alpha in the file or its adapter_config.json; pass lora_alpha=")
        if use_rslora is None:
            use_rslora = bool(config.get("use_rslora", (meta.get("use_rslora") or "false") == "true"))
        if config.get("r") not in (None, r):
            raise _value_error(f"{path}: adapter_config.json says r = {config['r']}, the tensors r = {r}")
        lora = cls(base, r=r, lora_alpha=lora_alpha, use_rslora=use_rslora)
        lora.lora_embedding_A.copy_(a)
        lora.lora_embedding_B.copy_(b)
        return lora

    def __repr__(self):
        return (f"LoraEmbedding(base={type(self.base).__name__}({self.num_embeddings}, {self.embedding_dim}), "
                f"r={self.r}, lora_alpha={self.lora_alpha}, use_rslora={self.use_rslora}, scaling={self.scaling:g})")
