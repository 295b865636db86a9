"""Locating and loading libqembed.so.

Search order (the first that exists is loaded):

1. ``QEMBED_LIBRARY``: a path to the library file, or to a directory that
   holds ``libqembed.so``. When set, nothing else is tried.
2. The package directory (``qembed/libqembed.so*``), for installed copies that
   ship the library next to the Python files.
3. ``<repo>/.build/release/libqembed.so`` (the repository root is three levels
   above this file), for a checkout built with ``make build``.
4. ``ctypes.util.find_library("qembed")`` (the system's library path).

If none is found, FileNotFoundError lists every path tried. After loading,
the library's ABI major version (``qembed_version_number() // 10000``) must
equal ``ABI_MAJOR``; otherwise ImportError explains the mismatch.
"""

import ctypes
import ctypes.util
import glob
import os

# The QEMBED_VERSION_MAJOR this binding was written against.
ABI_MAJOR = 0

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
_LIBNAME = "libqembed.so"


def _candidates():
    """Yield (description, path) pairs in search order."""
    env = os.environ.get("QEMBED_LIBRARY")
    if env:
        path = os.path.join(env, _LIBNAME) if os.path.isdir(env) else env
        yield "QEMBED_LIBRARY", path
        return
    in_package = sorted(glob.glob(os.path.join(_HERE, _LIBNAME + "*")), key=len)
    if in_package:
        for path in in_package:
            yield "package directory", path
    else:
        yield "package directory", os.path.join(_HERE, _LIBNAME)
    yield "repository build", os.path.join(_REPO_ROOT, ".build", "release", _LIBNAME)
    found = ctypes.util.find_library("qembed")
    yield "ctypes.util.find_library('qembed')", found


def find_library():
    """Return the path of the library that would be loaded.

    Raises FileNotFoundError, listing the paths tried, when there is none.
    """
    tried = []
    for where, path in _candidates():
        if path is None:
            tried.append(f"{where}: not found")
            continue
        # find_library returns a bare soname ("libqembed.so.0") that the
        # dynamic loader resolves itself.
        if os.path.isfile(path) or (where.startswith("ctypes") and os.sep not in path):
            return path
        tried.append(f"{where}: {path}")
    raise FileNotFoundError(
        "libqembed.so not found; build it with `make build` in the repository or set "
        "QEMBED_LIBRARY to its path. Tried:\n  " + "\n  ".join(tried))


def load_library():
    """Load libqembed and check its ABI major version; returns the ctypes.CDLL."""
    path = find_library()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise OSError(f"could not load {path}: {e}") from e
    lib.qembed_version_number.argtypes = []
    lib.qembed_version_number.restype = ctypes.c_uint
    number = lib.qembed_version_number()
    if number // 10000 != ABI_MAJOR:
        raise ImportError(
            f"{path} has ABI major version {number // 10000} (version number {number}), "
            f"but this qembed binding needs ABI major {ABI_MAJOR}")
    # The x86-64 library picks a CPU tier at load (QEMBED_CPU forces one); a
    # refused tier leaves every call failing, so say why here.
    lib.qembed_cpu_tier.argtypes = []
    lib.qembed_cpu_tier.restype = ctypes.c_char_p
    if lib.qembed_cpu_tier() == b"none":
        lib.qembed_last_error.argtypes = []
        lib.qembed_last_error.restype = ctypes.c_char_p
        raise ImportError(f"{path}: {lib.qembed_last_error().decode()}")
    lib._qembed_path = path
    return lib
