"""RMSprop with 32-bit or blockwise 8-bit state (bitsandbytes.optim.rmsprop).

alpha is the state's decay (beta1). As upstream, alpha=0 and centered=True
raise NotImplementedError, and momentum is accepted but unused by the rule."""

from .optimizer import Optimizer1State, _real

__all__ = ["RMSprop", "RMSprop8bit", "RMSprop32bit"]


def _check(alpha, centered):
    if _real(alpha, "alpha") == 0:
        raise NotImplementedError("RMSprop with alpha==0.0 is not supported!")
    if centered:
        raise NotImplementedError("Centered RMSprop is not supported!")


class RMSprop(Optimizer1State):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 optim_bits=32, args=None, min_8bit_size=4096):
        _check(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, optim_bits, args, min_8bit_size)


class RMSprop8bit(Optimizer1State):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, args=None,
                 min_8bit_size=4096):
        _check(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 8, args, min_8bit_size)


class RMSprop32bit(Optimizer1State):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, args=None,
                 min_8bit_size=4096):
        _check(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 32, args, min_8bit_size)
