"""AdamW (decoupled weight decay, default 1e-2) with 32-bit or blockwise
8-bit state (bitsandbytes.optim.adamw)."""

from .adam import _amsgrad_ignored
from .optimizer import Optimizer2State, _value_error

__all__ = ["AdamW", "AdamW8bit", "AdamW32bit"]


class AdamW(Optimizer2State):
    """AdamW: p *= 1 - lr * weight_decay, then the Adam update."""

    _kind_name = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _amsgrad_ignored(amsgrad)
        super().__init__("adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size,
                         is_paged=is_paged)


class AdamW8bit(Optimizer2State):
    """AdamW with 8-bit state (optim_bits must stay at its default, as upstream)."""

    _kind_name = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        if amsgrad:
            raise _value_error("AdamW8bit does not support amsgrad=True")
        if optim_bits != 32:
            raise _value_error("AdamW8bit only supports optim_bits=32 (default value for compatibility)")
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=is_paged)


class AdamW32bit(Optimizer2State):
    """AdamW with 32-bit state."""

    _kind_name = "adamw"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, is_paged=False):
        _amsgrad_ignored(amsgrad)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=is_paged)
