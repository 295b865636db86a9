"""C objects on the Python side: who owns a handle, how a struct and an
out-pointer are made, how names and paths are passed as ``const char *``.

qembed.io, qembed.nn and qembed.optim create libqembed objects through the
declarations of qembed._capi; this module holds what they share around
those calls, once. Opaque handles are ``c_void_p``.
"""

import ctypes
import os

__all__ = ["Handle", "OwnsHandle", "new_struct", "out_handle", "encode_text", "encode_path"]


def new_struct(cls):
    """An instance of a struct whose first field is struct_size, with it set."""
    s = cls()
    if cls._fields_[0][0] == "struct_size":
        s.struct_size = ctypes.sizeof(cls)
    return s


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


class OwnsHandle:
    """The lifetime of an object that holds a Handle in ``self._handle``:
    close(), ``with`` blocks, and close() when it is garbage collected.
    close() drops the reference (the C object is freed once nothing else
    holds the Handle); subclasses that keep more call super().close()."""

    def close(self):
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def out_handle():
    """A c_void_p for a `qembed_X **out` argument."""
    return ctypes.c_void_p()


def encode_text(text, what="name"):
    """A tensor name, prefix or metadata string as UTF-8 for const char *;
    a NUL inside would make C read a shorter, different string."""
    b = str(text).encode("utf-8")
    if b"\0" in b:
        raise ValueError(f"{what} {text!r} contains a NUL character")
    return b


def encode_path(path):
    """A filesystem path (str, bytes or os.PathLike) as bytes for const char *."""
    p = os.fspath(path)
    b = p if isinstance(p, bytes) else os.fsencode(p)
    if b"\0" in b:  # C would read only the part before it: a different file
        raise ValueError(f"path {p!r} contains a NUL byte")
    return b
