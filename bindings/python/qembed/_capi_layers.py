"""qembed's layer APIs (include/qembed.h sections "Parameters", "Embedding
and StableEmbedding", "Optimizers", "Tensor files" and "Quantized
embeddings") as qembed.nn, qembed.optim and qembed.io use them: constants,
handle helpers, and the ctypes declarations re-exported from qembed._capi
(where each C prototype is bound once).

The error helpers (``_check``, the QembedError classes) come from
``qembed._capi`` too, so errors raised here are the same classes as
everywhere else in the package. Opaque handles are ``c_void_p``.
"""

import ctypes
from ctypes import (POINTER, Structure, c_bool, c_char_p, c_double, c_float, c_int, c_int64, c_uint32,
                    c_uint64, c_void_p)

from ._capi import QembedError, _check, last_error, lib  # noqa: F401  (re-exported helpers)

# --------------------------------------------------------------------------
# Constants (the C enums and macros these sections use, defined in qembed._capi)
# --------------------------------------------------------------------------

from ._capi import (  # noqa: E402,F401  (one home: qembed._capi, checked against the header)
    QEMBED_OK, QEMBED_ERR_INVALID_ARGUMENT, QEMBED_ERR_OUT_OF_RANGE, QEMBED_ERR_UNSUPPORTED,
    QEMBED_ERR_NON_FINITE, QEMBED_ERR_SHAPE, QEMBED_ERR_FORMAT, QEMBED_DTYPE_F32, QEMBED_DTYPE_F16,
    QEMBED_DTYPE_BF16, QEMBED_DTYPE_U8, QEMBED_DTYPE_I8, QEMBED_DTYPE_I32, QEMBED_DTYPE_I64,
    QEMBED_OVERRIDE_OPTIM_BITS, QEMBED_OVERRIDE_LR, QEMBED_OVERRIDE_BETA1, QEMBED_OVERRIDE_BETA2,
    QEMBED_OVERRIDE_EPS, QEMBED_OVERRIDE_WEIGHT_DECAY, QEMBED_OPTIM_ADAM, QEMBED_OPTIM_ADAMW,
    QEMBED_OPTIM_MOMENTUM, QEMBED_OPTIM_LION, QEMBED_OPTIM_RMSPROP, QEMBED_OPTIM_ADAGRAD, QEMBED_MAX_DIMS,
    QEMBED_QEMB_INT8, QEMBED_QEMB_FP4, QEMBED_QEMB_NF4, QEMBED_OPEN_MMAP, QEMBED_NO_PADDING,
    QEMBED_ERR_NULL_POINTER, QEMBED_BAG_SUM, QEMBED_BAG_MEAN, QEMBED_BAG_MAX, QEMBED_SCORE_DOT, QEMBED_SCORE_COSINE
)

# --------------------------------------------------------------------------
# Structs and functions: declared once, in qembed._capi (one binding per C
# prototype, each with its prototype above it); re-exported here under the
# names qembed.nn, qembed.optim and qembed.io use.
# --------------------------------------------------------------------------

from ._capi import (  # noqa: E402,F401
    qembed_embedding_params, qembed_optimizer_params, qembed_optimizer_state_info, qembed_param_info,
    qembed_qembedding_info, qembed_tensor_desc, qembed_tensor_info,
    qembed_param_info_get, qembed_param_sparse_grad, qembed_param_set_override, qembed_param_get_override,
    qembed_param_clear_override, qembed_param_load, qembed_param_create, qembed_param_wrap, qembed_param_free,
    qembed_param_set_grad, qembed_param_wrap_grad, qembed_param_clear_grad,
    qembed_embedding_params_init, qembed_embedding_create, qembed_stable_embedding_create, qembed_embedding_free,
    qembed_embedding_get_params, qembed_embedding_forward, qembed_embedding_backward, qembed_embedding_zero_grad,
    qembed_embedding_reset_parameters, qembed_embedding_num_params, qembed_embedding_param,
    qembed_embedding_create_shard, qembed_embedding_get_shard,
    qembed_optimizer_params_init, qembed_optimizer_create, qembed_optimizer_set_params, qembed_optimizer_free, qembed_optimizer_step, qembed_optimizer_step_all,
    qembed_optimizer_zero_grad, qembed_optimizer_state_info_get, qembed_optimizer_state_export,
    qembed_optimizer_state_import,
    qembed_tensor_file_open, qembed_tensor_file_open_ex, qembed_tensor_file_close, qembed_tensor_file_count, qembed_tensor_file_info,
    qembed_tensor_file_find, qembed_tensor_file_metadata, qembed_save_safetensors, qembed_save_npy,
    qembed_embedding_save,
    qembed_qembedding_quantize, qembed_qembedding_from_embedding, qembed_qembedding_free,
    qembed_qembedding_info_get, qembed_qembedding_forward, qembed_qembedding_save, qembed_qembedding_load, qembed_qembedding_load_ex,
    qembed_bags, qembed_bags_init, qembed_bags_num_bags, qembed_embedding_bag_forward, qembed_embedding_bag_backward,
    qembed_qembedding_bag_forward, qembed_embedding_score, qembed_qembedding_score, qembed_embedding_topk,
    qembed_qembedding_topk,
    qembed_lora_params, qembed_lora_params_init, qembed_lora_create, qembed_lora_free, qembed_lora_get_params,
    qembed_lora_forward, qembed_lora_backward, qembed_lora_zero_grad, qembed_lora_param, qembed_lora_merge,
)

handle = c_void_p  # opaque pointers
P_f32, P_i64 = POINTER(c_float), POINTER(c_int64)

def new_struct(cls):
    """An instance of a struct whose first field is struct_size, with it set."""
    s = cls()
    if cls._fields_[0][0] == "struct_size":
        s.struct_size = ctypes.sizeof(cls)
    return s



# --------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------


class Handle:
    """Owns one C object and frees it exactly once: on release(), or when the
    last Python reference goes away. Layers, numpy views of their memory and
    optimizers all hold a reference to the Handle they depend on, so memory a
    view points into is never freed under it: closing a layer drops the
    layer's reference, and the C object is freed when the last view or
    optimizer using it is gone too."""

    __slots__ = ("ptr", "_free", "kind", "__weakref__")

    def __init__(self, ptr, free, kind):
        self.ptr = ptr
        self._free = free
        self.kind = kind

    def release(self):
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._free(ptr)

    def __del__(self):
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __bool__(self):
        return bool(self.ptr)


def out_handle():
    """A c_void_p for a `qembed_X **out` argument."""
    return c_void_p()


def encode_text(text, what="name"):
    """A tensor name, prefix or metadata string as UTF-8 for const char *;
    a NUL inside would make C read a shorter, different string."""
    b = str(text).encode("utf-8")
    if b"\0" in b:
        raise ValueError(f"{what} {text!r} contains a NUL character")
    return b


def encode_path(path):
    """A filesystem path (str, bytes or os.PathLike) as bytes for const char *."""
    import os
    p = os.fspath(path)
    b = p if isinstance(p, bytes) else os.fsencode(p)
    if b"\0" in b:  # C would read only the part before it: a different file
        raise ValueError(f"path {p!r} contains a NUL byte")
    return b
