"""The output cache (qembed._pool): large fresh outputs reuse the memory of
dropped ones, never while an array or view of it is alive, within the cap,
from any thread."""

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import qembed
import qembed.functional as F
from qembed import QembedTypeError, QembedValueError

N = 3 << 20  # 12 MiB of float32 output, above the 4 MiB lease threshold


@pytest.fixture(autouse=True)
def fresh_cache():
    previous = qembed.set_output_cache(1 << 30)
    qembed.empty_cache()
    yield
    qembed.set_output_cache(previous)
    qembed.empty_cache()


def encoded(seed, n=N):
    x = (np.random.default_rng(seed).standard_normal(n) * 10.0 ** np.random.default_rng(seed + 1).uniform(-3, 3, n)).astype(np.float32)
    q, st = F.quantize_blockwise(x, blocksize=256)
    return q, st, F.dequantize_blockwise(q, st).copy()


def test_a_dropped_output_is_reused_with_the_right_values():
    q1, s1, want1 = encoded(1)
    q2, s2, want2 = encoded(2)
    a = F.dequantize_blockwise(q1, s1)
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and a.flags.writeable
    where = a.ctypes.data
    del a
    before = qembed.output_cache_info()
    b = F.dequantize_blockwise(q2, s2)
    after = qembed.output_cache_info()
    assert after["hits"] == before["hits"] + 1
    assert b.ctypes.data == where
    assert np.array_equal(b, want2)


def test_memory_stays_with_a_live_view():
    q1, s1, want1 = encoded(3)
    a = F.dequantize_blockwise(q1, s1)
    view = a[1::7]
    kept = view.copy()
    del a
    gc.collect()
    others = []
    for seed in (4, 5, 6):
        q, s, want = encoded(seed)
        out = F.dequantize_blockwise(q, s)
        assert np.array_equal(out, want)
        assert not np.shares_memory(out, view)
        others.append(out)
    assert np.array_equal(view, kept)
    del view
    gc.collect()
    others.clear()
    assert qembed.output_cache_info()["cached_bytes"] > 0


def test_small_outputs_and_a_zero_cap_are_not_leased():
    q, s, _ = encoded(7, n=4096)
    assert F.dequantize_blockwise(q, s).flags.owndata
    qembed.set_output_cache(0)
    q, s, want = encoded(8)
    out = F.dequantize_blockwise(q, s)
    assert out.flags.owndata and np.array_equal(out, want)
    del out
    assert qembed.output_cache_info()["cached_bytes"] == 0


def test_the_cap_evicts_the_oldest():
    qembed.set_output_cache(20 << 20)
    q, s, _ = encoded(9)
    outs = [F.dequantize_blockwise(q, s) for _ in range(4)]  # 4 x 12 MiB live
    del outs
    info = qembed.output_cache_info()
    assert 0 < info["cached_bytes"] <= 20 << 20
    qembed.empty_cache()
    assert qembed.output_cache_info()["cached_bytes"] == 0


def test_outputs_of_every_kind_use_it():
    rng = np.random.default_rng(10)
    emb = qembed.nn.Embedding(20000, 128)
    idx = rng.integers(0, 20000, 16384)
    first = emb(idx)
    where = first.ctypes.data
    want = emb.weight.data[idx]
    assert np.array_equal(first, want)
    del first
    again = emb(idx)
    assert again.ctypes.data == where and np.array_equal(again, want)
    A = rng.standard_normal((4096, 1024)).astype(np.float32)
    q8, stats, _ = F.int8_vectorwise_quant(A)
    assert not q8.flags.owndata
    deq = F.int8_vectorwise_dequant(q8, stats)
    assert np.allclose(deq, A, atol=float(np.abs(A).max()) / 127)


def test_threads_share_it_safely():
    cases = [encoded(20 + i) for i in range(4)]
    errors = []

    def work(k):
        q, s, want = cases[k % len(cases)]
        for _ in range(12):
            out = F.dequantize_blockwise(q, s)
            if not np.array_equal(out, want):
                errors.append(k)
            del out

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert qembed.output_cache_info()["hits"] > 0


def test_arguments_and_environment():
    with pytest.raises(QembedValueError):
        qembed.set_output_cache(-1)
    with pytest.raises(QembedTypeError):
        qembed.set_output_cache("1G")
    code = "import qembed; print(qembed.output_cache_info()['max_bytes'])"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(qembed.__file__)), QEMBED_OUTPUT_CACHE="512M")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(512 << 20)
    env["QEMBED_OUTPUT_CACHE"] = "lots"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "QEMBED_OUTPUT_CACHE" in out.stderr
