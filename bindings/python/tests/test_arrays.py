"""Arrays from other libraries (qembed._arrays): DLPack objects, the buffer
protocol and __array_interface__ without copies, GPU memory refused with a
clear error, torch dtypes wherever a dtype is taken. The torch tests run
where torch is importable (QEMBED_TEST_EXTRA_SITE can point at a venv that
has it) and are skipped otherwise."""

import array

import numpy as np
import pytest

import qembed.functional as F
from qembed import QembedTypeError, io

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def data(n=1000, seed=3):
    return (np.random.default_rng(seed).standard_normal(n) * 10.0 ** np.random.default_rng(seed + 1).uniform(-3, 2, n)).astype(np.float32)


def same_blockwise(x, ref):
    q, s = F.quantize_blockwise(x, blocksize=256)
    qr, sr = F.quantize_blockwise(ref, blocksize=256)
    assert np.array_equal(q, qr) and np.array_equal(s.absmax, sr.absmax)


def test_buffer_protocol_inputs_are_views():
    a = data()
    buf = array.array("f", a.tobytes())
    view = io.to_numpy(buf)
    assert np.shares_memory(view, np.frombuffer(buf, dtype=np.float32))
    same_blockwise(buf, a)
    mv = memoryview(a)
    assert np.shares_memory(io.to_numpy(mv), a)
    same_blockwise(mv, a)


class ArrayInterface:
    def __init__(self, arr):
        self.arr = arr
        self.__array_interface__ = arr.__array_interface__


def test_array_interface_is_a_view():
    a = data(512)
    obj = ArrayInterface(a)
    assert np.shares_memory(io.to_numpy(obj), a)
    same_blockwise(obj, a)


class FakeGpuTensor:
    """Reports CUDA memory through the DLPack protocol."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):  # pragma: no cover - must not be reached
        raise AssertionError("a GPU array must be refused before it is read")


def test_gpu_arrays_are_refused_clearly():
    for call in (lambda: F.quantize_blockwise(FakeGpuTensor()), lambda: io.to_numpy(FakeGpuTensor()),
                 lambda: F.quantize_4bit(FakeGpuTensor())):
        with pytest.raises(QembedTypeError, match="CUDA memory.*CPU"):
            call()


def test_non_contiguous_input_is_copied_and_correct():
    a = data(2048).reshape(64, 32)
    same_blockwise(a.T, np.ascontiguousarray(a.T))


@needs_torch
def test_torch_cpu_tensors_zero_copy_and_equal():
    a = data(4096).reshape(64, 64)
    t = torch.from_numpy(a.copy())
    assert np.shares_memory(io.to_numpy(t), t.numpy())
    same_blockwise(t, a)
    p = torch.nn.Parameter(t.clone())
    same_blockwise(p, a)
    q, s = F.quantize_4bit(t, blocksize=64, quant_type="nf4", quant_storage=torch.uint8)
    qn, sn = F.quantize_4bit(a, blocksize=64, quant_type="nf4")
    assert np.array_equal(q, qn) and np.array_equal(s.absmax, sn.absmax)
    same_blockwise(t.T, np.ascontiguousarray(a.T))  # non-contiguous: copied
    h = torch.from_numpy(a.astype(np.float16))
    same_blockwise(h, a.astype(np.float16))
