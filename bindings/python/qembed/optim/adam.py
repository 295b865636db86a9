"""Adam with 32-bit or blockwise 8-bit state (bitsandbytes.optim.adam)."""

import warnings

from .optimizer import Optimizer2State, _value_error

__all__ = ["Adam", "Adam8bit", "Adam32bit"]


def _amsgrad_ignored(amsgrad):
    if amsgrad:
        warnings.warn("amsgrad=True is ignored (bitsandbytes' Adam ignores it too)", stacklevel=3)


class Adam(Optimizer2State):
    """Adam. optim_bits=8 gives 8-bit state to parameters with at least
    min_8bit_size elements (and no optim_bits=32 override)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        _amsgrad_ignored(amsgrad)
        super().__init__("adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size,
                         is_paged=is_paged)


class Adam8bit(Optimizer2State):
    """Adam with 8-bit state (optim_bits must stay at its default, as upstream)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        if amsgrad:
            raise _value_error("Adam8bit does not support amsgrad=True")
        if optim_bits != 32:
            raise _value_error("Adam8bit only supports optim_bits=32 (default value for compatibility)")
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=is_paged)


class Adam32bit(Optimizer2State):
    """Adam with 32-bit state."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        _amsgrad_ignored(amsgrad)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=is_paged)
