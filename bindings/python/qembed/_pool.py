"""Recycled memory for large fresh outputs.

A fresh output array of 256 MB (dequantizing 64M values) costs the kernel
about as much to page in (zeroing every page on first touch) as the
dequantize itself costs to fill, so a call that allocates its output ran at
half the speed of the same call into ``out=``. qembed therefore keeps the
memory of large outputs the caller has dropped and hands it out again to the
next output of the same size class, with its pages already mapped, as
PyTorch's GPU caching allocator does for device memory.

- Only outputs of ``MIN_BYTES`` (4 MiB) or more are leased; smaller ones are
  plain ``np.empty`` arrays (malloc already reuses those).
- A leased array is an ordinary ndarray whose ``base`` chain ends at a lease
  object; the memory goes back to the cache only when the last array or
  view of it is gone. Such arrays do not own their data, so
  ``ndarray.resize`` refuses them (copy first).
- Blocks are 2 MiB aligned and advised for transparent huge pages (unless
  ``QEMBED_NO_HUGEPAGES`` is set), as the library's own buffers are.
- The cache holds at most ``max_bytes`` of dropped outputs, least recently
  returned evicted first: by default 1 GiB or an eighth of physical memory,
  whichever is less; ``QEMBED_OUTPUT_CACHE`` (bytes, with an optional K, M
  or G suffix; 0 turns leasing off) sets it at import, and
  ``qembed.set_output_cache`` at run time. ``qembed.empty_cache()``
  returns the cached memory to the system.
- Thread-safe: any thread may allocate or drop outputs. A dropped lease is
  queued without taking the lock (its finalizer may run inside a garbage
  collection triggered anywhere) and filed on the next call.
"""

import collections
import ctypes
import mmap
import os
import threading

import numpy as np

MIN_BYTES = 4 << 20
_ALIGN = 2 << 20
_HUGE = os.environ.get("QEMBED_NO_HUGEPAGES") is None and hasattr(mmap, "MADV_HUGEPAGE")


def _parse_bytes(text):
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit():
        raise ValueError(f"QEMBED_OUTPUT_CACHE must be a byte count such as 0, 268435456 or 512M, got {text!r}")
    return int(digits) * scale


def _default_max():
    env = os.environ.get("QEMBED_OUTPUT_CACHE")
    if env is not None:
        return _parse_bytes(env)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        physical = 8 << 30
    return min(1 << 30, physical // 8)


_lock = threading.Lock()
_free = []                      # (size class, mmap), oldest first
_returned = collections.deque()  # filled by finalizers without the lock
_types = {}                     # size class -> lease type
_stats = {"max_bytes": _default_max(), "cached_bytes": 0, "hits": 0, "misses": 0}


def _lease_type(size):
    t = _types.get(size)
    if t is None:
        def __del__(self):
            try:
                _returned.append((size, self.block))
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
        t = type("OutputLease", (ctypes.c_ubyte * size,), {"__slots__": ("block",), "__del__": __del__})
        _types[size] = t
    return t


def _file_returns():
    """Move finalized leases into the cache, then evict down to max_bytes.
    Called with the lock held."""
    while _returned:
        size, block = _returned.popleft()
        _free.append((size, block))
        _stats["cached_bytes"] += size
    while _free and _stats["cached_bytes"] > _stats["max_bytes"]:
        size, _ = _free.pop(0)  # unmapped when its last reference goes
        _stats["cached_bytes"] -= size


def _new_block(size):
    block = mmap.mmap(-1, size + _ALIGN)
    address = ctypes.addressof(ctypes.c_char.from_buffer(block))
    offset = -address % _ALIGN
    if _HUGE:
        try:
            block.madvise(mmap.MADV_HUGEPAGE, offset, size)
        except OSError:  # pragma: no cover - kernels without THP
            pass
    return block, offset


def empty(shape, dtype):
    """An uninitialized C-contiguous array, as np.empty, from the cache when
    it is large enough to lease."""
    dtype = np.dtype(dtype)
    count = 1
    for s in shape:
        count *= s
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes > _stats["max_bytes"]:
        return np.empty(shape, dtype=dtype)
    size = -(-nbytes // _ALIGN) * _ALIGN
    with _lock:
        _file_returns()
        for i in range(len(_free) - 1, -1, -1):
            if _free[i][0] == size:
                block = _free.pop(i)[1]
                _stats["cached_bytes"] -= size
                _stats["hits"] += 1
                break
        else:
            block = None
            _stats["misses"] += 1
    if block is None:
        block, offset = _new_block(size)
    else:
        offset = -ctypes.addressof(ctypes.c_char.from_buffer(block)) % _ALIGN
    lease = _lease_type(size).from_buffer(block, offset)
    lease.block = block
    return np.frombuffer(lease, dtype=dtype, count=count).reshape(shape)


def set_max_bytes(max_bytes):
    """Set the cap on cached bytes (0 turns leasing off and frees the cache);
    returns the previous cap."""
    with _lock:
        previous = _stats["max_bytes"]
        _stats["max_bytes"] = max_bytes
        _file_returns()
    return previous


def empty_cache():
    """Unmap every cached block (arrays still alive are untouched)."""
    with _lock:
        _file_returns()
        _free.clear()  # each block is unmapped when its last reference goes
        _stats["cached_bytes"] = 0


def info():
    with _lock:
        _file_returns()
        return dict(_stats)
