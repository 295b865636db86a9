"""qembed: bitsandbytes' quantization kernels on the CPU, through libqembed's C API.

    import qembed.functional as F
    q, state = F.quantize_4bit(x, quant_type="nf4")
    y = F.dequantize_4bit(q, state)

The library is located as described in qembed._lib (QEMBED_LIBRARY, the
package directory, the repository's .build/release, the system path).
"""

from . import _capi
from ._capi import (QembedError, QembedInternalError, QembedMemoryError, QembedOSError, QembedTypeError,
                    QembedValueError)
from . import functional

__version__ = _capi.version()

__all__ = ["functional", "QembedError", "QembedValueError", "QembedTypeError", "QembedMemoryError",
           "QembedOSError", "QembedInternalError", "get_num_threads", "set_num_threads", "library_path",
           "cpu_tier", "__version__"]

#: Path of the loaded libqembed.
library_path = _capi.lib._qembed_path


def cpu_tier():
    """The instruction-set tier the library runs: "baseline" (x86-64-v2),
    "avx2" (x86-64-v3), "avx512" (x86-64-v4) or "native" (a build for one
    machine). Picked once per process (the best the CPU supports);
    QEMBED_CPU=baseline|avx2|avx512 in the environment forces a lower one."""
    return _capi.qembed_cpu_tier().decode("ascii")


def get_num_threads():
    """The number of worker threads qembed's kernels use (>= 1)."""
    return int(_capi.qembed_get_num_threads())


def set_num_threads(n):
    """Set the worker-thread count for later calls: 1..1024, or 0 to restore
    the default (QEMBED_NUM_THREADS, else the number of online cores)."""
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import operator
            n = operator.index(n)
        except TypeError:
            raise QembedTypeError(_capi.QEMBED_ERR_INVALID_ARGUMENT,
                                  f"n: expected an integer, got {type(n).__name__}") from None
    if not -2 ** 31 <= n < 2 ** 31:
        raise QembedValueError(_capi.QEMBED_ERR_INVALID_ARGUMENT, f"n must be in 0..1024, got {n}")
    _capi._check(_capi.qembed_set_num_threads(n))

# Layers, optimizers and tensor files: qembed.nn, qembed.optim, qembed.io.
from . import io, nn, optim  # noqa: E402
from .io import load_file, save_file  # noqa: E402

__all__ += ["nn", "optim", "io", "save_file", "load_file"]
