"""qembed.optim: bitsandbytes.optim's optimizers (Adam, AdamW, SGD with
momentum, Lion, RMSprop, Adagrad; 32-bit or blockwise 8-bit state) and
GlobalOptimManager, over qembed parameters (``layer.parameters()``)."""

from .adagrad import Adagrad, Adagrad8bit, Adagrad32bit
from .adam import Adam, Adam8bit, Adam32bit
from .adamw import AdamW, AdamW8bit, AdamW32bit
from .lion import Lion, Lion8bit, Lion32bit
from .optimizer import GlobalOptimManager, Optimizer1State, Optimizer2State, Optimizer8bit
from .rmsprop import RMSprop, RMSprop8bit, RMSprop32bit
from .sgd import SGD, SGD8bit, SGD32bit

__all__ = ["Adam", "Adam8bit", "Adam32bit", "AdamW", "AdamW8bit", "AdamW32bit", "SGD", "SGD8bit", "SGD32bit",
           "Lion", "Lion8bit", "Lion32bit", "RMSprop", "RMSprop8bit", "RMSprop32bit", "Adagrad", "Adagrad8bit",
           "Adagrad32bit", "GlobalOptimManager", "Optimizer8bit", "Optimizer1State", "Optimizer2State"]
