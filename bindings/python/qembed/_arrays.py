"""Arrays from other libraries, without copying where the layout allows.

Every input array of the binding goes through numpy: an ndarray as it is;
an object with ``__dlpack__`` (torch CPU tensors and Parameters, JAX CPU
arrays, CuPy/torch GPU tensors are refused) through ``np.from_dlpack``, a
zero-copy view; anything with the buffer protocol or
``__array_interface__`` (array.array, memoryview, bytes-likes) through
``np.asarray``, also a view. Only a non-contiguous input is copied, by the
caller's ``np.ascontiguousarray``. torch dtypes are accepted wherever a
dtype is (``quant_storage=torch.uint8``).
"""

import numpy as np

# DLPack device types whose memory the CPU can read: kDLCPU, kDLCUDAHost
# (pinned host memory), kDLCUDAManaged, kDLROCMHost.
_CPU_DEVICES = {1: "CPU", 3: "CUDA host", 13: "CUDA managed", 11: "ROCm host"}
_DEVICE_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm", 12: "ext_dev", 14: "oneAPI"}


def check_cpu(obj, what=None):
    """TypeError unless obj's memory is on the CPU (DLPack objects only)."""
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None:
        return
    kind = int(dev()[0])
    if kind not in _CPU_DEVICES:
        name = _DEVICE_NAMES.get(kind, f"device type {kind}")
        from ._capi import QEMBED_ERR_INVALID_ARGUMENT, QembedTypeError
        raise QembedTypeError(QEMBED_ERR_INVALID_ARGUMENT,
                              f"{what or type(obj).__name__}: the array is in {name} memory; qembed runs on the "
                              f"CPU: move it first (e.g. tensor.cpu())")


def from_dlpack(obj):
    """A zero-copy numpy view of a CPU DLPack object."""
    check_cpu(obj)
    if hasattr(obj, "detach"):
        obj = obj.detach()
    return np.from_dlpack(obj)


def storage_dtype(d):
    """np.dtype of a numpy dtype, a dtype name or a torch dtype (torch.uint8)."""
    text = str(d)
    if text.startswith("torch."):
        d = text[len("torch."):]
    return np.dtype(d)
