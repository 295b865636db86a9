"""SGD with momentum, 32-bit or blockwise 8-bit state (bitsandbytes.optim.sgd).

As upstream: momentum is required (momentum=0 raises NotImplementedError);
dampening and nesterov are accepted and ignored by the update rule
(state = momentum * state + g, from the first step's state = g)."""

from .optimizer import Optimizer1State, _real

__all__ = ["SGD", "SGD8bit", "SGD32bit"]


def _momentum_required(momentum):
    if _real(momentum, "momentum") == 0:
        raise NotImplementedError("SGD without momentum is not supported!")


class SGD(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096):
        _momentum_required(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args,
                         min_8bit_size)


class SGD8bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _momentum_required(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size)


class SGD32bit(Optimizer1State):
    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _momentum_required(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size)
