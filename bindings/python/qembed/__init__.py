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
from . import _pool

__version__ = _capi.version()

__all__ = ["functional", "QembedError", "QembedValueError", "QembedTypeError", "QembedMemoryError",
           "QembedOSError", "QembedInternalError", "get_num_threads", "set_num_threads", "library_path",
           "cpu_tier", "set_output_cache", "empty_cache", "output_cache_info", "__version__"]

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

def set_output_cache(max_bytes):
    """Cap the memory qembed keeps from dropped outputs for reuse (bytes;
    0 turns the cache off and frees it). Returns the previous cap.

    Fresh outputs of 4 MiB or more (dequantize, lookups, bags, scores...)
    are leased from this cache, so that a call repeated with the same output
    size does not page in new memory each time: paging in a 256 MB output
    costs about as much as filling it. The memory goes back to the cache
    when the last array or view of it is gone. Default: 1 GiB or an eighth
    of physical memory, whichever is less; QEMBED_OUTPUT_CACHE (bytes, or
    with a K/M/G suffix) sets it at import."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise QembedTypeError(_capi.QEMBED_ERR_INVALID_ARGUMENT,
                              f"max_bytes: expected an integer, got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise QembedValueError(_capi.QEMBED_ERR_INVALID_ARGUMENT, f"max_bytes must be >= 0, got {max_bytes}")
    return _pool.set_max_bytes(max_bytes)


def empty_cache():
    """Return the memory of the output cache to the system (arrays still in
    use are untouched)."""
    _pool.empty_cache()


def output_cache_info():
    """{"max_bytes", "cached_bytes", "hits", "misses"} of the output cache."""
    return _pool.info()


# Layers, optimizers and tensor files: qembed.nn, qembed.optim, qembed.io.
from . import io, nn, optim  # noqa: E402
from .io import load_file, save_file  # noqa: E402

__all__ += ["nn", "optim", "io", "save_file", "load_file"]
