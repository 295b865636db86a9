"""Optimizer8bit and GlobalOptimManager, as bitsandbytes.optim.optimizer.

An optimizer steps qembed parameters (``layer.parameters()``) with libqembed's
32-bit or blockwise 8-bit update rules. Each parameter group is one C
optimizer; changing a group's hyperparameters (``opt.param_groups[0]["lr"]
= ...``, as learning-rate schedulers do) takes effect at the next step (the
C optimizer is rebuilt around the existing state).

Per-parameter overrides (``GlobalOptimManager.get_instance().override_config``)
are stored on the parameter itself, so they apply in every optimizer that
holds the parameter and never leak to another parameter (bitsandbytes also
keys them by (group, index), which can hit an unrelated parameter of another
optimizer). Embedding and StableEmbedding weights carry ``optim_bits = 32``
from birth, as upstream's register_module_override.

State (``state_dict()``) uses bitsandbytes' per-parameter keys: ``step``,
``state1``, ``state2`` (float32 shaped like the parameter, or uint8 for 8-bit
state), ``absmax1``, ``absmax2`` (one float32 per 256-element block) and
``qmap1``, ``qmap2`` (the signed and unsigned dynamic maps), wrapped like
bitsandbytes 0.50.2 under "__bnb_optimizer_quant_state__".
"""

import ctypes
import math
import numbers
import operator
import warnings

import numpy as np

from .. import _capi as C
from .. import interop as _interop
from .._capi import QembedTypeError, QembedValueError  # noqa: F401 (QembedValueError: a name this module had)
from .._capi import value_error as _value_error
from .._handle import Handle, new_struct, out_handle
from ..nn.modules import Parameter

__all__ = ["GlobalOptimManager", "Optimizer8bit", "Optimizer1State", "Optimizer2State", "MockArgs"]

_FSDP_KEY = "__bnb_optimizer_quant_state__"
_STATE_KEYS = {"qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2", "state1", "state2", "gnorm_vec",
               "absmax1", "absmax2", "unorm_vec"}
_KINDS = {"adam": C.QEMBED_OPTIM_ADAM, "adamw": C.QEMBED_OPTIM_ADAMW, "momentum": C.QEMBED_OPTIM_MOMENTUM,
          "lion": C.QEMBED_OPTIM_LION, "rmsprop": C.QEMBED_OPTIM_RMSPROP, "adagrad": C.QEMBED_OPTIM_ADAGRAD}


def _real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QembedTypeError(C.QEMBED_ERR_INVALID_ARGUMENT, f"{name}: expected a number, got {value!r}")
    return float(value)


def _check_hyper(lr, eps, betas, weight_decay):
    """The checks every optimizer and param group makes (bitsandbytes'
    messages): lr, eps, weight_decay >= 0 and each beta in [0, 1). Returns
    them as floats (betas as a tuple)."""
    lr = _real(lr, "lr")
    if not 0.0 <= lr:
        raise _value_error(f"Invalid learning rate: {lr}")
    eps = _real(eps, "eps")
    if not 0.0 <= eps:
        raise _value_error(f"Invalid epsilon value: {eps}")
    out = []
    for i, b in enumerate(betas):
        b = _real(b, f"betas[{i}]")
        if not 0.0 <= b < 1.0:
            raise _value_error(f"Invalid beta parameter at index {i}: {b}")
        out.append(b)
    weight_decay = _real(weight_decay, "weight_decay")
    if not 0.0 <= weight_decay:
        raise _value_error(f"Invalid weight_decay value: {weight_decay}")
    return lr, eps, tuple(out), weight_decay


class MockArgs:
    def __init__(self, initial_data):
        for key in initial_data:
            setattr(self, key, initial_data[key])


# --------------------------------------------------------------------------
# GlobalOptimManager
# --------------------------------------------------------------------------


def _check_override(key, value):
    """(C key, value) pairs for one override, validated before any is set."""
    if key == "optim_bits":
        bits = operator.index(value) if not isinstance(value, bool) else None
        if bits not in (8, 32):
            raise _value_error(f"override optim_bits must be 8 or 32, got {value!r}")
        return [("optim_bits", bits)]
    if key == "betas":
        betas = tuple(value)
        if len(betas) != 2:
            raise _value_error(f"override betas must be a pair (beta1, beta2), got {value!r}")
        out = []
        for i, b in enumerate(betas):
            b = _real(b, f"betas[{i}]")
            if not 0.0 <= b < 1.0:
                raise _value_error(f"Invalid beta parameter at index {i}: {b}")
            out.append((f"beta{i + 1}", b))
        return out
    if key in ("beta1", "beta2"):
        b = _real(value, key)
        if not 0.0 <= b < 1.0:
            raise _value_error(f"Invalid {key}: {b}")
        return [(key, b)]
    if key in ("lr", "eps", "weight_decay"):
        v = _real(value, key)
        if not (math.isfinite(v) and v >= 0.0):
            raise _value_error(f"Invalid {key} value: {v}")
        return [(key, v)]
    raise _value_error(f"override_config: '{key}' cannot be overridden per parameter "
                       f"(supported: optim_bits, lr, betas, eps, weight_decay)")


class GlobalOptimManager:
    """bitsandbytes' override registry. override_config() writes the
    override onto each qembed Parameter (qembed_param_set_override); it is
    read by every optimizer at every step."""

    _instance = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self):
        self.uses_config_override = False

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def register_parameters(self, params):
        """Accepted for compatibility; nothing to do, as overrides live on the
        parameters themselves."""
        for _ in params:
            pass

    def override_config(self, parameters, key=None, value=None, key_value_dict=None):
        """Override optimizer settings for these parameters (a Parameter or
        an iterable of them): override_config(p, "optim_bits", 8) or
        override_config(ps, key_value_dict={"lr": 1e-4, "betas": (0.9, 0.99)}).
        Keys: optim_bits (8 or 32), lr, betas, eps, weight_decay. Every
        value is validated before any is set."""
        self.uses_config_override = True
        if isinstance(parameters, Parameter):
            parameters = [parameters]
        parameters = list(parameters)
        for p in parameters:
            if not isinstance(p, Parameter):
                raise QembedTypeError(C.QEMBED_ERR_INVALID_ARGUMENT,
                                      f"override_config: expected qembed Parameters, got {type(p).__name__}")
        if key is not None and value is not None:
            if key_value_dict is not None:
                raise _value_error("override_config: give key/value or key_value_dict, not both")
            key_value_dict = {key: value}
        if key_value_dict is None:
            return
        pairs = []
        for k, v in key_value_dict.items():
            pairs += _check_override(k, v)
        for p in parameters:
            for k, v in pairs:
                p._set_override(k, v)

    def clear_config(self, parameters, key=None):
        """Remove overrides (all of them, or one key) from parameters. A
        qembed addition; Embedding weights' optim_bits=32 is an override too."""
        if isinstance(parameters, Parameter):
            parameters = [parameters]
        keys = ["optim_bits", "lr", "beta1", "beta2", "eps", "weight_decay"] if key is None else (
            ["beta1", "beta2"] if key == "betas" else [key])
        for p in parameters:
            for k in keys:
                p._clear_override(k)

    def register_module_override(self, module, param_name, config):
        """Apply `config` to getattr(module, param_name) now."""
        self.override_config(getattr(module, param_name), key_value_dict=config)


# --------------------------------------------------------------------------
# Optimizer8bit
# --------------------------------------------------------------------------


def _as_parameter(p):
    """A qembed Parameter as it is; a torch tensor wrapped (no copy) as a
    qembed.interop.TorchParameter; anything else refused."""
    if isinstance(p, Parameter):
        return p
    if _interop.is_torch_tensor(p):
        return _interop.TorchParameter(p)
    raise QembedTypeError(C.QEMBED_ERR_INVALID_ARGUMENT,
                          f"optimizer can only optimize qembed Parameters (layer.parameters(), "
                          f"qembed.nn.Parameter(array)) or torch CPU tensors, got {type(p).__name__}")


class _Backend:
    """One C optimizer for one parameter group."""

    def __init__(self, config, params):
        self.config = config
        self.params = list(params)
        p = self._struct(config)
        ptrs = (ctypes.c_void_p * len(self.params))(*[q._ptr for q in self.params])
        out = out_handle()
        C._check(C.qembed_optimizer_create(ctypes.byref(p), ptrs, len(self.params), ctypes.byref(out)))
        # The Parameters (and through them their layers' Handles) stay
        # referenced by self.params for as long as this optimizer lives.
        self.handle = Handle(out.value, C.qembed_optimizer_free, "optimizer")

    @staticmethod
    def _struct(config):
        """The C qembed_optimizer_params of a config dict (the one conversion)."""
        p = new_struct(C.qembed_optimizer_params)
        C._check(C.qembed_optimizer_params_init(ctypes.byref(p), config["kind"], config["optim_bits"]))
        for key in ("lr", "beta1", "beta2", "eps", "weight_decay", "min_8bit_size", "max_unorm", "skip_zeros"):
            setattr(p, key, config[key])
        return p

    def set_config(self, config):
        """New hyperparameters in place (states kept); all or nothing."""
        p = self._struct(config)
        C._check(C.qembed_optimizer_set_params(self.handle.ptr, ctypes.byref(p)))
        self.config = config

    def info(self, i):
        info = new_struct(C.qembed_optimizer_state_info)
        C._check(C.qembed_optimizer_state_info_get(self.handle.ptr, i, ctypes.byref(info)))
        return info

    def export(self, i):
        """Parameter i's state as a flat dict (None before its first step)."""
        info = self.info(i)
        if not info.initialized:
            return None
        p = self.params[i]
        n = info.numel
        if info.bits == 32:
            s1 = np.empty(p.shape, dtype=np.float32)
            s2 = np.empty(p.shape, dtype=np.float32) if info.num_states == 2 else None
        else:
            s1 = np.empty(p.shape, dtype=np.uint8)
            s2 = np.empty(p.shape, dtype=np.uint8) if info.num_states == 2 else None
        a1 = np.empty(info.num_blocks, dtype=np.float32) if info.bits == 8 else None
        a2 = np.empty(info.num_blocks, dtype=np.float32) if info.bits == 8 and info.num_states == 2 else None
        C._check(C.qembed_optimizer_state_export(
            self.handle.ptr, i, s1.ctypes.data, s1.nbytes,
            None if s2 is None else s2.ctypes.data, 0 if s2 is None else s2.nbytes,
            None if a1 is None else a1.ctypes.data_as(C.P_f32), 0 if a1 is None else a1.size,
            None if a2 is None else a2.ctypes.data_as(C.P_f32), 0 if a2 is None else a2.size))
        state = {"step": int(info.step), "state1": s1}
        if info.bits == 8:
            state["qmap1"] = _dynamic_map(True)
            state["absmax1"] = a1
        if s2 is not None:
            state["state2"] = s2
            if info.bits == 8:
                state["qmap2"] = _dynamic_map(False)
                state["absmax2"] = a2
        assert s1.size == n
        return state

    def import_(self, i, state):
        """Replace parameter i's state with a flat dict (validated first)."""
        s1 = np.asarray(state["state1"])
        bits = 8 if s1.dtype == np.uint8 else 32
        arrays = {}
        for key in ("state1", "state2"):
            if key in state and state[key] is not None:
                a = np.asarray(state[key])
                a = np.ascontiguousarray(a, dtype=np.uint8 if bits == 8 else np.float32)
                arrays[key] = a
        for key in ("absmax1", "absmax2"):
            if bits == 8 and key in state and state[key] is not None:
                arrays[key] = np.ascontiguousarray(np.asarray(state[key]), dtype=np.float32).reshape(-1)
        for key, signed in (("qmap1", True), ("qmap2", False)):
            if bits == 8 and key in state and state[key] is not None:
                q = np.asarray(state[key], dtype=np.float32).reshape(-1)
                if q.shape != (256,) or np.max(np.abs(q - _dynamic_map(signed))) > 1e-6:
                    raise _value_error(f"{key} of {self.params[i].name} is not the {'signed' if signed else 'unsigned'}"
                                       f" dynamic map qembed's 8-bit state uses")
        step = operator.index(state.get("step", 0))

        def ptr(key, ctype=None):
            a = arrays.get(key)
            if a is None:
                return None, 0
            if ctype is not None:
                return a.ctypes.data_as(ctype), a.size
            return a.ctypes.data, a.nbytes

        s1p, s1n = ptr("state1")
        s2p, s2n = ptr("state2")
        a1p, a1n = ptr("absmax1", C.P_f32)
        a2p, a2n = ptr("absmax2", C.P_f32)
        C._check(C.qembed_optimizer_state_import(self.handle.ptr, i, step, bits, s1p, s1n, s2p, s2n,
                                                 a1p, a1n, a2p, a2n))


_MAPS = {}


def _dynamic_map(signed):
    if signed not in _MAPS:
        from .. import functional
        _MAPS[signed] = np.asarray(functional.create_dynamic_map(signed=signed), dtype=np.float32)
    return _MAPS[signed].copy()


class Optimizer8bit:
    """Base class: parameter groups, step(), zero_grad(), state_dict() and
    load_state_dict() over libqembed optimizers."""

    _kind_name = None  # set by subclasses ("adam", "momentum", ...)

    def __init__(self, params, defaults, optim_bits=32, is_paged=False):
        self.defaults = dict(defaults)
        self.is_paged = is_paged
        self.mng = GlobalOptimManager.get_instance()
        self.param_groups = []
        self._backends = []
        groups = list(params)
        if len(groups) == 0:
            raise _value_error("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)
        if is_paged:
            warnings.warn("Paged optimizers are not supported on CPU. Falling back to non-paged optimizer behavior.",
                          stacklevel=3)

    # -- groups

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise QembedTypeError(C.QEMBED_ERR_INVALID_ARGUMENT, "param_group must be a dict")
        params = param_group["params"]
        params = [params] if isinstance(params, Parameter) or _interop.is_torch_tensor(params) else list(params)
        params = [_as_parameter(p) for p in params]
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise _value_error("some parameters appear in more than one parameter group")
        group = dict(self.defaults)
        group.update({k: v for k, v in param_group.items() if k != "params"})
        group["params"] = params
        self._validate_group(group)
        self.param_groups.append(group)
        self._backends.append(self._build(group) if params else None)

    def _validate_group(self, group):
        _check_hyper(group["lr"], group["eps"], group["betas"], group["weight_decay"])

    def _config(self, group):
        betas = tuple(group["betas"])
        return {"kind": _KINDS[self._kind_name], "lr": float(group["lr"]), "beta1": float(betas[0]),
                "beta2": float(betas[1]) if len(betas) > 1 else 0.0, "eps": float(group["eps"]),
                "weight_decay": float(group["weight_decay"]), "optim_bits": int(self.args.optim_bits),
                "min_8bit_size": max(0, int(self.args.min_8bit_size)), "max_unorm": float(self.args.max_unorm),
                "skip_zeros": bool(self.args.skip_zeros)}

    def _build(self, group):
        return _Backend(self._config(group), group["params"])

    def _sync(self):
        """Bring every group's C optimizer up to date: changed hyperparameters
        (a learning-rate schedule) are set in place; a changed parameter list
        rebuilds it, carrying the states over."""
        for gi, group in enumerate(self.param_groups):
            backend = self._backends[gi]
            if backend is None:
                continue
            config = self._config(group)
            same_params = [id(p) for p in group["params"]] == [id(p) for p in backend.params]
            if config == backend.config and same_params:
                continue
            self._validate_group(group)
            if same_params:
                backend.set_config(config)
                continue
            old = {id(p): backend.export(i) for i, p in enumerate(backend.params)}
            new = _Backend(config, group["params"])
            for i, p in enumerate(new.params):
                if old.get(id(p)) is not None:
                    new.import_(i, old[id(p)])
            self._backends[gi] = new

    def _locate(self):
        """[(group index, backend, local index, parameter)] in state_dict order."""
        out = []
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                out.append((gi, self._backends[gi], i, p))
        return out

    # -- stepping

    def step(self, closure=None):
        """One update of every parameter that has a gradient, all parameter
        groups as one update (qembed_optimizer_step_all): a NaN/Inf gradient,
        or an update that would overflow float32 (say a gradient of 1e30,
        whose square overflows Adam's second moment), raises ValueError and
        changes nothing in any group."""
        loss = None
        if closure is not None:
            loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                hook = getattr(p, "_before_step", None)
                if hook is not None:
                    hook()
        self._sync()
        live = [b for b in self._backends if b is not None]
        if len(live) == 1:
            C._check(C.qembed_optimizer_step(live[0].handle.ptr))
        elif live:
            handles = (C.handle * len(live))(*[b.handle.ptr for b in live])
            C._check(C.qembed_optimizer_step_all(handles, len(live)))
        return loss

    def zero_grad(self, set_to_none=True):
        """Zero every parameter's gradient (dense gradients keep their
        buffer filled with zeros; sparse gradients are emptied). The tensors
        of a torch model being stepped (qembed.interop.TorchParameter) get
        ``.grad = None`` when set_to_none, as torch's zero_grad does."""
        for b in self._backends:
            if b is not None:
                C._check(C.qembed_optimizer_zero_grad(b.handle.ptr))
        for g in self.param_groups:
            for p in g["params"]:
                hook = getattr(p, "_zero_grad", None)
                if hook is not None:
                    hook(set_to_none)

    # -- state

    @property
    def state(self):
        """{Parameter: {"step", "state1", ...}} for parameters that have
        state (copies)."""
        out = {}
        for _, b, i, p in self._locate():
            if b is not None:
                s = b.export(i)
                if s is not None:
                    out[p] = s
        return out

    def state_info(self, param):
        """{"bits", "state_bytes", "num_blocks", "row_aligned", "step",
        "initialized"} of one parameter's state (bits is what it has, or
        will get at its first step)."""
        self._sync()
        for _, b, i, p in self._locate():
            if p is param:
                info = b.info(i)
                return {"bits": info.bits, "state_bytes": int(info.state_bytes), "num_blocks": int(info.num_blocks),
                        "row_aligned": bool(info.row_aligned), "step": int(info.step),
                        "initialized": bool(info.initialized), "num_states": info.num_states}
        raise _value_error("state_info: the parameter is not in this optimizer")

    def state_dict(self):
        """{"state": {index: {"step": n, "__bnb_optimizer_quant_state__":
        {"state1": ..., ...}}}, "param_groups": [{hyperparameters,
        "params": [indices]}]}, like bitsandbytes 0.50.2 (arrays are copies)."""
        state = {}
        groups = []
        index = 0
        for gi, group in enumerate(self.param_groups):
            b = self._backends[gi]
            ids = []
            for i, p in enumerate(group["params"]):
                s = b.export(i) if b is not None else None
                if s is not None:
                    wrapped = {k: v for k, v in s.items() if k not in _STATE_KEYS}
                    wrapped[_FSDP_KEY] = {k: v for k, v in s.items() if k in _STATE_KEYS}
                    state[index] = wrapped
                ids.append(index)
                index += 1
            g = {k: (tuple(v) if k == "betas" else v) for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict, move_to_device=True):
        """Load a state_dict() (this optimizer's, or bitsandbytes' with its
        tensors converted to numpy). Hyperparameters of the saved groups
        replace the current ones; every state is checked against its
        parameter before any is loaded."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise _value_error("loaded state dict has a different number of parameter groups")
        for g, sg in zip(self.param_groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                raise _value_error("loaded state dict contains a parameter group that doesn't match the size of "
                                   "optimizer's group")
        id_map = {}
        for g, sg in zip(self.param_groups, saved_groups):
            for p, old in zip(g["params"], sg["params"]):
                id_map[old] = p
        flat = {}
        for k, v in state_dict["state"].items():
            if k not in id_map:
                continue
            v = dict(v)
            v.update(v.pop(_FSDP_KEY, {}))
            v = {kk: (_tensor_to_numpy(vv) if kk in _STATE_KEYS else vv) for kk, vv in v.items()}
            if "step" in v:
                v["step"] = int(_tensor_to_numpy(v["step"])) if not isinstance(v["step"], int) else v["step"]
            flat[id(id_map[k])] = v
        # validate every state against its parameter before loading anything
        for p_id, v in flat.items():
            p = next(p for p in id_map.values() if id(p) == p_id)
            s1 = v.get("state1")
            if s1 is None:
                raise _value_error(f"state of {p.name} has no state1")
            for key in ("state1", "state2"):
                a = v.get(key)
                if a is not None and a.size != p.numel():
                    raise _value_error(f"{key} of {p.name} holds {a.size} elements, the parameter {p.numel()}",
                                       C.QEMBED_ERR_SHAPE)
                if a is not None and a.dtype != np.uint8 and not np.all(np.isfinite(a)):
                    raise _value_error(f"{key} of {p.name} holds NaN or Inf", C.QEMBED_ERR_NON_FINITE)
            # 8-bit state is uint8 codes with float32 absmax; 32-bit state is float32
            eight = s1.dtype == np.uint8
            s2 = v.get("state2")
            if s2 is not None and (s2.dtype == np.uint8) != eight:
                raise _value_error(f"state2 of {p.name} is {s2.dtype} but state1 is {s1.dtype}: "
                                   f"{'8-bit state is uint8 codes' if eight else '32-bit state is float32'}")
            for key in ("absmax1", "absmax2"):
                a = v.get(key)
                if eight and a is not None and not np.all(np.isfinite(np.asarray(a, dtype=np.float64))):
                    raise _value_error(f"{key} of {p.name} holds NaN or Inf", C.QEMBED_ERR_NON_FINITE)
        saved_hypers = []
        for g, sg in zip(self.param_groups, saved_groups):
            hyper = {k: v for k, v in sg.items() if k != "params"}
            merged = dict(g)
            merged.update(hyper)
            self._validate_group(merged)
            saved_hypers.append(hyper)
        # all or nothing: a refusal from the library (say a size it checks)
        # puts back the hyperparameters and every state loaded so far
        backup_groups = [dict(g) for g in self.param_groups]
        backup = {}
        for _, b, i, p in self._locate():
            s = b.export(i) if b is not None else None
            if s is not None:
                backup[id(p)] = s
        try:
            for g, hyper in zip(self.param_groups, saved_hypers):
                g.update(hyper)
            self._sync()
            for _, b, i, p in self._locate():
                if b is not None and id(p) in flat:
                    b.import_(i, flat[id(p)])
        except Exception:
            # fresh C optimizers with the old hyperparameters and states
            # (a parameter that had no state gets none back)
            for g, old in zip(self.param_groups, backup_groups):
                g.clear()
                g.update(old)
            self._backends = [self._build(g) if g["params"] else None for g in self.param_groups]
            for _, b, i, p in self._locate():
                if b is not None and id(p) in backup:
                    b.import_(i, backup[id(p)])
            raise

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _tensor_to_numpy(v):
    if v is None or isinstance(v, (int, float, np.ndarray)):
        return v
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _make_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros):
    if args is None:
        return MockArgs({"optim_bits": optim_bits, "min_8bit_size": min_8bit_size, "max_unorm": max_unorm,
                         "skip_zeros": skip_zeros})
    if isinstance(args, dict):
        args = MockArgs(args)
    for name, default in (("optim_bits", optim_bits), ("min_8bit_size", min_8bit_size), ("max_unorm", max_unorm),
                          ("skip_zeros", skip_zeros)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def _check_common(optim_bits, min_8bit_size, max_unorm):
    if optim_bits not in (8, 32):
        raise _value_error(f"Amount of optimizer bits not supported: {optim_bits}")
    operator.index(min_8bit_size)  # an integer; a negative one means 0, as in bitsandbytes (every size qualifies)
    if not (math.isfinite(float(max_unorm)) and float(max_unorm) >= 0.0):
        raise _value_error(f"max_unorm must be finite and >= 0, got {max_unorm}")


class Optimizer2State(Optimizer8bit):
    """Two-state optimizers (adam)."""

    def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 optim_bits=32, args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False,
                 alpha=0.0, t_alpha=None, t_beta3=None):
        if isinstance(betas, str):
            betas = [float(b) for b in betas.replace("(", "").replace(")", "").strip().split(",")]
        lr, eps, betas, weight_decay = _check_hyper(lr, eps, betas, weight_decay)
        if len(betas) != 2:
            raise _value_error(f"betas must be a pair (beta1, beta2), got {tuple(betas)}")
        if alpha != 0.0 or t_alpha is not None or t_beta3 is not None:
            raise _value_error("alpha, t_alpha and t_beta3 (AdEMAMix) are not supported by qembed")
        self.args = _make_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros)
        _check_common(self.args.optim_bits, self.args.min_8bit_size, self.args.max_unorm)
        self.optimizer_name = optimizer_name
        self._kind_name = getattr(self, "_kind_name", None) or optimizer_name
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha,
                        t_beta3=t_beta3)
        super().__init__(params, defaults, self.args.optim_bits, is_paged)


class Optimizer1State(Optimizer8bit):
    """One-state optimizers (momentum, lion, rmsprop, adagrad)."""

    def __init__(self, optimizer_name, params, lr=1e-3, betas=(0.9, 0.0), eps=1e-8, weight_decay=0.0, optim_bits=32,
                 args=None, min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, is_paged=False):
        lr, eps, betas, weight_decay = _check_hyper(lr, eps, betas, weight_decay)
        self.args = _make_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros)
        _check_common(self.args.optim_bits, self.args.min_8bit_size, self.args.max_unorm)
        self.optimizer_name = optimizer_name
        self._kind_name = optimizer_name
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, self.args.optim_bits, is_paged)
