"""qembed.save_file / load_file (qembed.io): safetensors and .npy round trips
of every dtype, multi-tensor files, metadata, malformed files, atomic saves,
and interop with the safetensors package when it is importable."""

import os
import warnings

import numpy as np
import pytest

import qembed.io as qio

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    ml_dtypes = None
    BF16 = None

WRITABLE = [np.float32, np.float16, np.uint8, np.int8, np.int32, np.int64]


def sample(dtype, shape, rng):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype == BF16:
        return rng.standard_normal(shape).astype(np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4), (2, 1, 3, 1, 2, 1, 2, 1)], ids=str)
@pytest.mark.parametrize("dtype", WRITABLE, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype(dtype, shape, tmp_path, rng):
    a = sample(dtype, shape, rng)
    path = tmp_path / "t.safetensors"
    qio.save_file({"x": a}, path)
    b = qio.load_file(path)["x"]
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b)
    assert b.flags.writeable and b.flags.c_contiguous


def test_round_trip_bfloat16(tmp_path, rng):
    if BF16 is None:
        pytest.skip("needs ml_dtypes")
    a = sample(BF16, (4, 6), rng)
    qio.save_file({"w": a}, tmp_path / "b.safetensors")
    b = qio.load_file(tmp_path / "b.safetensors")["w"]
    assert b.dtype == BF16 and np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_bfloat16_without_ml_dtypes_is_uint16(tmp_path, monkeypatch, rng):
    a = rng.integers(0, 2 ** 16, (3, 3), dtype=np.uint16)
    path = tmp_path / "b.safetensors"
    with open(path, "wb") as fh:  # a BF16 tensor written by hand
        import json
        header = json.dumps({"w": {"dtype": "BF16", "shape": [3, 3], "data_offsets": [0, 18]}}).encode()
        header += b" " * (-len(header) % 8)
        fh.write(len(header).to_bytes(8, "little") + header + a.tobytes())
    monkeypatch.delitem(qio._READ_DTYPES, "BF16", raising=False)
    with pytest.warns(UserWarning, match="uint16"):
        b = qio.load_file(path)["w"]
    assert b.dtype == np.uint16 and np.array_equal(a, b)


def test_multi_tensor_file_keeps_order_and_metadata(tmp_path, rng):
    tensors = {"b.weight": sample(np.float32, (10, 4), rng), "a.ids": sample(np.int64, (5,), rng),
               "c.q": sample(np.uint8, (33,), rng), "d.scale": sample(np.float16, (2, 2), rng)}
    meta = {"format": "np", "note": "ünïcode ✓", "empty": ""}
    path = tmp_path / "m.safetensors"
    qio.save_file(tensors, path, metadata=meta)
    back = qio.load_file(path)
    assert set(back) == set(tensors)
    for k in tensors:
        assert np.array_equal(back[k], tensors[k])
    assert qio.load_metadata(path) == meta
    qio.save_file(tensors, path)
    assert qio.load_metadata(path) is None
    with qio.TensorFile(path) as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert np.array_equal(f.get("c.q"), tensors["c.q"])
        with pytest.raises(ValueError, match="nope"):
            f.get("nope")
    qio.save_file({}, tmp_path / "empty.safetensors")
    assert qio.load_file(tmp_path / "empty.safetensors") == {}


def test_non_contiguous_and_big_endian_inputs(tmp_path, rng):
    a = sample(np.float32, (6, 8), rng)
    qio.save_file({"t": a.T, "s": a[::2, 1::3], "be": a.astype(">f4")}, tmp_path / "x.safetensors")
    back = qio.load_file(tmp_path / "x.safetensors")
    assert np.array_equal(back["t"], a.T) and np.array_equal(back["s"], a[::2, 1::3])
    assert back["be"].dtype == np.float32 and np.array_equal(back["be"], a)


@pytest.mark.parametrize("dtype", WRITABLE + [np.float64, np.int16, np.uint16, np.bool_],
                         ids=lambda d: np.dtype(d).name)
def test_npy_files(dtype, tmp_path, rng):
    a = sample(dtype, (3, 4), rng) if dtype is not np.bool_ else rng.random((3, 4)) > 0.5
    np.save(tmp_path / "a.npy", a)  # written by numpy, read by qembed
    back = qio.load_file(tmp_path / "a.npy")
    assert list(back) == ["array"] and back["array"].dtype == a.dtype and np.array_equal(back["array"], a)
    assert qio.load_metadata(tmp_path / "a.npy") is None
    if np.dtype(dtype) in [np.dtype(d) for d in WRITABLE]:
        qio.save_npy(a, tmp_path / "b.npy")  # written by qembed, read by numpy
        assert np.array_equal(np.load(tmp_path / "b.npy"), a)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64], ids=lambda d: np.dtype(d).name)
def test_npy_wide_unsigned(dtype, tmp_path, rng):
    """The library's .npy reader does not list '<u4'/'<u8' (safetensors U32/
    U64 files are read): either it reads them, or it refuses with a
    ValueError naming the descr, never garbage."""
    a = sample(dtype, (3, 4), rng)
    np.save(tmp_path / "a.npy", a)
    try:
        back = qio.load_file(tmp_path / "a.npy")["array"]
    except ValueError as e:
        assert np.dtype(dtype).str in str(e)
    else:
        assert back.dtype == a.dtype and np.array_equal(back, a)


def test_unsupported_dtypes_and_arguments(tmp_path):
    with pytest.raises(TypeError, match="float64"):
        qio.save_file({"x": np.zeros(3)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        qio.save_file({"x": np.zeros(3, np.complex64)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        qio.save_file([np.zeros(3, np.float32)], tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        qio.save_file({1: np.zeros(3, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError):
        qio.save_file({"x": np.zeros(3, np.float32)}, tmp_path / "x.safetensors", metadata={"a": 1})
    with pytest.raises(ValueError):
        qio.save_file({"x": np.zeros((1,) * 9, np.float32)}, tmp_path / "x.safetensors")
    assert not os.path.exists(tmp_path / "x.safetensors")
    # the library refuses bf16 in .npy (numpy's format has no such type)
    if BF16 is not None:
        with pytest.raises(ValueError, match="npy|bf16|BF16"):
            qio.save_npy(np.zeros(3, BF16), tmp_path / "x.npy")


def _header_file(path, header, data=b""):
    body = header.encode() if isinstance(header, str) else header
    with open(path, "wb") as fh:
        fh.write(len(body).to_bytes(8, "little") + body + data)


MALFORMED = {
    "short": lambda p: open(p, "wb").write(b"\x01\x02"),
    "huge_header_len": lambda p: open(p, "wb").write((10 ** 12).to_bytes(8, "little") + b"{}"),
    "not_json": lambda p: _header_file(p, "{not json}"),
    "not_object": lambda p: _header_file(p, "[1, 2]"),
    "bad_dtype": lambda p: _header_file(p, '{"x": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "size_mismatch": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', b"\0" * 4),
    "offset_past_end": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'),
    "negative_shape": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "overlap": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                         '"y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "npy_garbage": lambda p: open(p, "wb").write(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'   "),
    # the safetensors layout rule (its reference reader refuses these too)
    "hole": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                      '"y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}', b"\0" * 12),
    "bytes_after_last": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                               b"\0" * 5),
    "bytes_before_first": lambda p: _header_file(p, '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                                                 b"\0" * 8),
    "empty_header_with_data": lambda p: _header_file(p, '{}', b"\0" * 16),
    "nul_in_name": lambda p: _header_file(p, '{"w\\u0000x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                          b"\0" * 4),
    "nul_in_metadata": lambda p: _header_file(p, '{"__metadata__": {"k": "a\\u0000b"}, '
                                              '"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "not_safetensors": lambda p: open(p, "wb").write(b"PK\x03\x04" + b"\x00" * 300),
    # .npy headers must be the dict numpy writes
    "npy_no_braces": lambda p: _npy_file(p, "'descr': '<f4', 'fortran_order': False, 'shape': (2,), "),
    "npy_no_fortran_order": lambda p: _npy_file(p, "{'descr': '<f4', 'shape': (2,), }"),
    "npy_extra_key": lambda p: _npy_file(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1, }"),
    "npy_shape_not_int": lambda p: _npy_file(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }"),
    "npy_bytes_after_dict": lambda p: _npy_file(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x"),
}


def _npy_file(path, header, data=b"\0" * 8):
    h = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as fh:
        fh.write(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode() + data)


def test_npy_header_forms_numpy_writes_are_read(tmp_path):
    # any key order, double quotes, no trailing comma, a 0-d shape
    for header, shape in [("{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}", (2,)),
                          ('{"descr": "<f4", "fortran_order": False, "shape": (1, 2)}', (1, 2)),
                          ("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", ())]:
        p = tmp_path / "h.npy"
        _npy_file(str(p), header, b"\0" * (4 * int(np.prod(shape))))
        assert qio.load_file(p)["array"].shape == shape
    np.save(tmp_path / "n.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(qio.load_file(tmp_path / "n.npy")["array"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        qio.load_file(fifo)  # before the fix this open() waited for a writer forever


def test_a_path_or_name_with_a_nul_is_refused(tmp_path):
    qio.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="NUL"):
        qio.load_file(str(tmp_path / "a.safetensors") + "\0.bak")
    with pytest.raises(ValueError, match="NUL"):
        qio.save_file({"x\0y": np.zeros(2, np.float32)}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="NUL"):
        qio.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "c.safetensors", metadata={"k": "v\0w"})
    with qio.TensorFile(tmp_path / "a.safetensors") as f:
        with pytest.raises(ValueError, match="NUL"):
            f.get("x\0y")


@pytest.mark.parametrize("what", ["tensors", "metadata"])
def test_headers_with_100k_entries_open_in_linear_time(what, tmp_path):
    import json
    import time
    n = 100_000
    if what == "tensors":
        header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n)}
        data = b"\0" * (4 * n)
    else:
        header = {"__metadata__": {f"k{i}": "v" for i in range(n)},
                  "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
        data = b"\0" * 4
    p = tmp_path / "many.safetensors"
    _header_file(str(p), json.dumps(header), data)
    t = time.perf_counter()
    with qio.TensorFile(p) as f:
        if what == "tensors":
            assert len(f) == n and f.get(f"t{n - 1}").shape == (1,)
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0, f"{n} {what}: {elapsed:.1f} s (was 16 s with a quadratic duplicate-key check)"


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_files_raise_value_error_with_message(kind, tmp_path):
    path = tmp_path / ("bad.npy" if kind.startswith("npy") else "bad.safetensors")
    MALFORMED[kind](str(path))
    with pytest.raises(ValueError) as exc:
        qio.load_file(path)
    assert str(exc.value) and "format" in str(exc.value).lower() or str(path) in str(exc.value)


def test_missing_file_raises_os_error(tmp_path):
    with pytest.raises(OSError):
        qio.load_file(tmp_path / "nope.safetensors")
    with pytest.raises(OSError):
        qio.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "no" / "dir" / "x.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.safetensors"
    old = {"w": np.arange(6, dtype=np.float32)}
    qio.save_file(old, path, metadata={"version": "old"})
    before = path.read_bytes()
    # refused by the library (bf16 in .npy; a directory in the way), refused in Python (dtype)
    if BF16 is not None:
        npy = tmp_path / "keep.npy"
        qio.save_npy(np.arange(3, dtype=np.float32), npy)
        npy_before = npy.read_bytes()
        with pytest.raises(ValueError):
            qio.save_npy(np.zeros(3, BF16), npy)
        assert npy.read_bytes() == npy_before
    with pytest.raises(TypeError):
        qio.save_file({"w": np.zeros(3)}, path)
    assert path.read_bytes() == before
    os.mkdir(tmp_path / "adir")
    with pytest.raises((OSError, ValueError)):
        qio.save_file(old, tmp_path / "adir")
    assert os.path.isdir(tmp_path / "adir")
    # no temporary files left behind
    assert sorted(os.listdir(tmp_path)) == sorted(["keep.safetensors", "adir"] + (["keep.npy"] if BF16 is not None else []))
    assert qio.load_metadata(path) == {"version": "old"}
    # an open file keeps its bytes while a save replaces the path
    with qio.TensorFile(path) as f:
        qio.save_file({"w": np.zeros(6, np.float32)}, path)
        assert np.array_equal(f.get("w"), old["w"])
    assert np.array_equal(qio.load_file(path)["w"], np.zeros(6, np.float32))


def test_interop_with_the_safetensors_package(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"a": sample(np.float32, (3, 4), rng), "b": sample(np.int8, (5,), rng),
               "c": sample(np.float16, (2, 2), rng)}
    qio.save_file(tensors, tmp_path / "q.safetensors", metadata={"k": "v"})
    back = st.load_file(str(tmp_path / "q.safetensors"))
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())
    more = dict(tensors, d=sample(np.float64, (2,), rng), e=np.array(3.5, np.float32))
    st.save_file(more, str(tmp_path / "s.safetensors"), metadata={"x": "y"})
    got = qio.load_file(tmp_path / "s.safetensors")
    assert all(np.array_equal(got[k], v) and got[k].shape == v.shape for k, v in more.items())
    assert qio.load_metadata(tmp_path / "s.safetensors") == {"x": "y"}


def test_top_level_names():
    import qembed
    assert qembed.save_file is qio.save_file and qembed.load_file is qio.load_file
