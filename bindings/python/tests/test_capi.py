"""The C API through ctypes: declarations against the header, status codes and
messages for bad arguments (with output buffers left untouched), threads,
error objects, and how the package finds the library."""

import ctypes
import glob
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from ctypes import POINTER, byref, c_bool, c_char_p, c_double, c_float, c_int, c_int8, c_int32, c_int64, \
    c_size_t, c_uint, c_uint8, c_uint32, c_uint64, c_void_p

import numpy as np
import pytest

import qembed
from qembed import _capi as C
from conftest import PYTHON_DIR, REPO_ROOT

HEADER = os.path.join(REPO_ROOT, "include", "qembed.h")

OK, INVALID, NULL, OUT_OF_RANGE, UNSUPPORTED, NON_FINITE, SHAPE, TOO_SMALL = 0, 1, 2, 3, 4, 5, 6, 7
SENTINEL_BYTE = 0xAB
SENTINEL_FLOAT = np.float32(-1234.5)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def fptr(a):
    return a.ctypes.data_as(POINTER(c_float))


def u8ptr(a):
    return a.ctypes.data_as(POINTER(c_uint8))


def i8ptr(a):
    return a.ctypes.data_as(POINTER(c_int8))


def sentinel_u8(n):
    return np.full(n, SENTINEL_BYTE, dtype=np.uint8)


def sentinel_f32(n):
    return np.full(n, SENTINEL_FLOAT, dtype=np.float32)


def expect(status, code, *names):
    """The call returned `code` and the thread's message names every `names`."""
    msg = C.last_error()
    assert status == code, f"status {status} ({C.status_string(status)}), expected {code}; message: {msg!r}"
    for name in names:
        assert name in msg, f"message {msg!r} does not name {name!r}"
    return msg


def unchanged(*arrays):
    for a in arrays:
        if a.dtype == np.float32:
            assert np.all(a.view(np.uint32) == np.float32(SENTINEL_FLOAT).view(np.uint32)), "float output was written"
        else:
            assert np.all(a.view(np.uint8) == SENTINEL_BYTE), "output was written"


def header_prototypes():
    """{name: normalized prototype} of every QEMBED_API function in qembed.h."""
    text = open(HEADER).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    protos = {}
    for m in re.finditer(r"QEMBED_API\s+([^;]*?\))\s*;", text, flags=re.S):
        proto = " ".join(m.group(1).split())
        name = re.search(r"(\w+)\s*\(", proto).group(1)
        protos[name] = normalize(proto + ";")
    return protos


def normalize(proto):
    proto = " ".join(proto.split())
    proto = re.sub(r"\s*\*\s*", " *", proto)
    proto = re.sub(r"\(\s*", "(", proto)
    proto = re.sub(r"\s*\)", ")", proto)
    proto = re.sub(r"\s*,\s*", ", ", proto)
    return proto


def binding_comments():
    """{name: normalized prototype comment} from _capi.py."""
    src = open(C.__file__).read().splitlines()
    out = {}
    for i, line in enumerate(src):
        m = re.match(r'\s*\w+\s*=\s*_fn\("(\w+)"', line)
        if m:
            comment = src[i - 1].strip()
            assert comment.startswith("# "), f"no prototype comment above {m.group(1)}"
            out[m.group(1)] = normalize(comment[2:])
    return out


HANDLE_TYPES = {"qembed_param", "qembed_embedding", "qembed_optimizer", "qembed_tensor_file", "qembed_qembedding", "qembed_lora"}
STRUCT_TYPES = {s.__name__: s for s in C.STRUCTS}
SCALARS = {"int": c_int, "bool": c_bool, "int64_t": c_int64, "uint64_t": c_uint64, "float": c_float,
           "double": c_double, "unsigned": c_uint, "size_t": c_size_t, "uint32_t": c_uint32}
POINTEES = {"void": None, "float": c_float, "uint8_t": c_uint8, "int8_t": c_int8, "int32_t": c_int32,
            "int64_t": c_int64, "double": c_double, "bool": c_bool}


def ctype_of(ctext):
    """The ctypes type a C parameter/return type must be bound as."""
    t = " ".join(ctext.replace("const", " ").split())
    stars = t.count("*")
    base = t.replace("*", "").strip()
    if stars == 0:
        if base == "void":
            return None
        if base == "qembed_status":
            return c_int
        return SCALARS[base]
    if base == "char":
        return c_char_p if stars == 1 else POINTER(c_char_p)
    if base in HANDLE_TYPES:
        return c_void_p if stars == 1 else POINTER(c_void_p)
    if base in STRUCT_TYPES:
        assert stars == 1
        return POINTER(STRUCT_TYPES[base])
    assert stars == 1, ctext
    pointee = POINTEES[base]
    return c_void_p if pointee is None else POINTER(pointee)


def split_proto(proto):
    m = re.match(r"(.*?)\b(\w+)\((.*)\);$", proto)
    ret, name, params = m.group(1).strip(), m.group(2), m.group(3).strip()
    types = []
    if params != "void":
        for p in params.split(","):
            p = p.strip()
            pm = re.match(r"(.*?)(\w+)$", p)
            types.append(pm.group(1).strip())
    return ret, name, types


# --------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------


def test_every_binding_matches_its_header_prototype():
    header = header_prototypes()
    comments = binding_comments()
    assert comments, "no bindings found"
    for name, comment in comments.items():
        assert name in header, f"{name} is bound but not declared in qembed.h"
        assert comment == header[name], f"{name}: comment {comment!r} != header {header[name]!r}"
        ret, _, params = split_proto(header[name])
        f = C.BOUND[name]
        assert f.restype == ctype_of(ret), f"{name}: restype {f.restype} for {ret!r}"
        assert len(f.argtypes) == len(params), f"{name}: {len(f.argtypes)} argtypes for {len(params)} parameters"
        for i, (have, ctext) in enumerate(zip(f.argtypes, params)):
            want = ctype_of(ctext)
            assert have == want, f"{name}: parameter {i} ({ctext!r}) bound as {have}, expected {want}"


def test_every_header_function_is_bound():
    missing = sorted(set(header_prototypes()) - set(binding_comments()))
    if missing:
        pytest.fail(f"qembed.h declares functions that bindings/python/qembed/_capi.py does not bind: {missing}")


def test_every_bound_function_is_exported():
    assert C.MISSING == [], f"declared in qembed.h but not exported by {qembed.library_path}: {C.MISSING}"


def header_constants():
    """({name: value} of every QEMBED_ constant qembed.h defines, {enum member
    names}): enum members (an explicit value, or one more than the member
    before) and the #defines with an integer value (1u, INT64_MIN)."""
    text = re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)
    values, members = {}, set()
    for body in re.findall(r"typedef enum \w+ \{(.*?)\}", text, flags=re.S):
        value = -1
        for item in body.split(","):
            m = re.fullmatch(r"\s*(QEMBED_\w+)\s*(?:=\s*(\d+))?\s*", item)
            assert m or not item.strip(), f"enum member {item.strip()!r} not understood"
            if m:
                value = int(m.group(2)) if m.group(2) else value + 1
                values[m.group(1)] = value
                members.add(m.group(1))
    for name, text_value in re.findall(r"^\s*#define (QEMBED_\w+)[ \t]+(\S+)", text, flags=re.M):
        m = re.fullmatch(r"(\d+)[uU]?", text_value)
        if m:
            values[name] = int(m.group(1))
        elif text_value == "INT64_MIN":
            values[name] = -2 ** 63
    return values, members


def package_modules():
    """Every module of the qembed package that imports here (qembed.distributed
    needs torch)."""
    out = [qembed]
    for info in pkgutil.walk_packages(qembed.__path__, "qembed."):
        try:
            out.append(importlib.import_module(info.name))
        except ImportError:
            assert info.name == "qembed.distributed", info.name
    return out


def test_constants_match_header():
    values, members = header_constants()
    # every enum member of the header is bound, in qembed._capi
    missing = sorted(n for n in members if not hasattr(C, n))
    assert not missing, f"qembed.h enum members missing from qembed/_capi.py: {missing}"
    # every QEMBED_ constant the binding defines, in any module, is the header's
    checked = 0
    for mod in package_modules():
        for name, value in vars(mod).items():
            if re.fullmatch(r"QEMBED_[A-Z0-9_]+", name) and isinstance(value, int):
                assert name in values, f"{mod.__name__}.{name} is not a constant of qembed.h"
                assert value == values[name], f"{mod.__name__}.{name} = {value}, qembed.h says {values[name]}"
                assert value == getattr(C, name), f"{mod.__name__}.{name}: a second definition besides qembed._capi"
                checked += 1
    assert checked >= len(members)
    for name in ("QEMBED_CODE_SIZE", "QEMBED_MAX_DIMS", "QEMBED_OPEN_MMAP", "QEMBED_NO_PADDING"):
        assert getattr(C, name) == values[name], name


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_match_the_c_compiler():
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "qembed.h"', "int main(void) {"]
    for s in C.STRUCTS:
        lines.append(f'printf("{s.__name__} size %zu\\n", sizeof({s.__name__}));')
        for field, _ in s._fields_:
            lines.append(f'printf("{s.__name__} {field} %zu\\n", offsetof({s.__name__}, {field}));')
    lines.append("return 0; }")
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "layout.c"), os.path.join(d, "layout")
        with open(src, "w") as fh:
            fh.write("\n".join(lines))
        subprocess.run(["cc", "-std=c11", "-I", os.path.dirname(HEADER), src, "-o", exe], check=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        sname, field, value = line.split()
        got[(sname, field)] = int(value)
    for s in C.STRUCTS:
        assert ctypes.sizeof(s) == got[(s.__name__, "size")], s.__name__
        for field, _ in s._fields_:
            assert getattr(s, field).offset == got[(s.__name__, field)], f"{s.__name__}.{field}"


# --------------------------------------------------------------------------
# Version, status strings, dtypes, errors
# --------------------------------------------------------------------------


def test_version():
    text = open(HEADER).read()
    major, minor, patch = (int(re.search(rf"#define QEMBED_VERSION_{k} (\d+)", text).group(1))
                           for k in ("MAJOR", "MINOR", "PATCH"))
    assert C.qembed_version_number() == major * 10000 + minor * 100 + patch
    assert qembed.__version__ == f"{major}.{minor}.{patch}" == C.version()
    assert C.qembed_version_number() // 10000 == qembed._lib.ABI_MAJOR


def test_status_strings():
    for code in range(0, 12):
        s = C.status_string(code)
        assert s and s != "unknown status", code
    assert C.status_string(0) == "ok"
    assert C.status_string(12) == "unknown status"
    assert C.status_string(-1) == "unknown status"


def test_dtype_traits():
    sizes = [4, 2, 2, 1, 1, 4, 8]
    names = ["f32", "f16", "bf16", "u8", "i8", "i32", "i64"]
    for d in range(C.QEMBED_DTYPE_COUNT):
        assert C.qembed_dtype_size(d) == sizes[d]
        assert C.qembed_dtype_name(d).decode() == names[d]
    for d in (C.QEMBED_DTYPE_COUNT, 99, -1):
        assert C.qembed_dtype_size(d) == 0
        assert C.qembed_dtype_name(d).decode() == "unknown"


def test_error_classes():
    for code, cls in [(INVALID, ValueError), (NULL, ValueError), (OUT_OF_RANGE, ValueError),
                      (NON_FINITE, ValueError), (SHAPE, ValueError), (TOO_SMALL, ValueError),
                      (C.QEMBED_ERR_FORMAT, ValueError), (C.QEMBED_ERR_OUT_OF_MEMORY, MemoryError),
                      (C.QEMBED_ERR_IO, OSError), (C.QEMBED_ERR_INTERNAL, RuntimeError)]:
        e = C.error_for(code, "x")
        assert isinstance(e, cls) and isinstance(e, qembed.QembedError) and e.status == code
    # the type follows the status alone, never the message's words
    for message in ("dtype: unknown dtype value 9", "blocksize: 100 is not one of", "a dtype-free message"):
        e = C.error_for(UNSUPPORTED, message)
        assert isinstance(e, TypeError) and isinstance(e, ValueError) and e.status == UNSUPPORTED
    e = C.error_for(INVALID, "n must be >= 1, got 0")
    assert e.message == "n must be >= 1, got 0" and "invalid argument" in str(e)


def test_check_raises_with_the_library_message():
    code = np.zeros(256, np.float32)
    with pytest.raises(ValueError) as e:
        C._check(C.qembed_create_dynamic_map(True, 0, 8, fptr(code)))
    assert e.value.status == INVALID and "max_exponent_bits" in e.value.message
    assert C._check(OK) is None


def test_last_error_is_per_thread_and_clearable():
    C.qembed_clear_error()
    assert C.last_error() == ""
    C.qembed_set_num_threads(-5)
    main_msg = C.last_error()
    assert "-5" in main_msg
    seen = {}

    def other():
        seen["before"] = C.last_error()
        C.qembed_blockwise_absmax_count(-3, 64, None)
        seen["after"] = C.last_error()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["before"] == ""
    assert seen["after"] and seen["after"] != main_msg
    assert C.last_error() == main_msg
    C.qembed_clear_error()
    assert C.last_error() == ""


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------


def test_thread_count_get_set():
    default = qembed.get_num_threads()
    assert default >= 1
    try:
        for n in (1, 3, 1024):
            qembed.set_num_threads(n)
            assert qembed.get_num_threads() == n
        with pytest.raises(ValueError) as e:
            qembed.set_num_threads(-1)
        assert e.value.status == INVALID and "-1" in str(e.value)
        with pytest.raises(ValueError):
            qembed.set_num_threads(1025)
        with pytest.raises(ValueError):
            qembed.set_num_threads(2 ** 40)
        with pytest.raises(TypeError):
            qembed.set_num_threads(2.5)
        assert qembed.get_num_threads() == 1024  # failures changed nothing
        expect(C.qembed_set_num_threads(-1), INVALID, "n")
        expect(C.qembed_set_num_threads(1025), INVALID)
        qembed.set_num_threads(np.int64(2))
        assert qembed.get_num_threads() == 2
    finally:
        qembed.set_num_threads(0)
    assert qembed.get_num_threads() == default


def test_thread_count_default_from_environment():
    code = "import qembed; print(qembed.get_num_threads())"
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, QEMBED_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


# --------------------------------------------------------------------------
# Maps and sizes
# --------------------------------------------------------------------------


def test_maps_bad_arguments():
    code = sentinel_f32(256)
    expect(C.qembed_create_dynamic_map(True, 7, 8, None), NULL, "code")
    expect(C.qembed_create_dynamic_map(False, 8, 8, fptr(code)), INVALID, "max_exponent_bits")
    expect(C.qembed_create_dynamic_map(True, 7, 9, fptr(code)), INVALID, "total_bits")
    expect(C.qembed_create_dynamic_map(True, 0, 8, fptr(code)), INVALID, "max_exponent_bits")
    expect(C.qembed_create_linear_map(True, 9, True, fptr(code)), INVALID, "total_bits")
    expect(C.qembed_create_linear_map(True, -1, True, fptr(code)), INVALID, "total_bits")
    expect(C.qembed_create_linear_map(True, 8, True, None), NULL, "code")
    expect(C.qembed_create_fp8_map(True, 5, 3, 8, fptr(code)), INVALID)
    expect(C.qembed_create_fp8_map(True, 0, 7, 8, fptr(code)), INVALID)
    expect(C.qembed_create_fp8_map(True, 5, 2, 8, None), NULL, "code")
    for off in (0.5, 1.0, 0.2, float("nan"), float("inf")):
        expect(C.qembed_create_normal_map(off, True, fptr(code)), INVALID, "offset")
    expect(C.qembed_create_normal_map(0.9677083, True, None), NULL, "code")
    expect(C.qembed_get_4bit_code(2, fptr(code)), UNSUPPORTED, "quant_type")
    expect(C.qembed_get_4bit_code(-1, fptr(code)), UNSUPPORTED, "quant_type")
    expect(C.qembed_get_4bit_code(C.QEMBED_QUANT_NF4, None), NULL, "code")
    unchanged(code)


def test_size_queries():
    count = c_int64(-7)
    assert C.qembed_blockwise_absmax_count(1000, 64, byref(count)) == OK and count.value == 16
    assert C.qembed_blockwise_absmax_count(0, 64, byref(count)) == OK and count.value == 0
    count.value = -7
    expect(C.qembed_blockwise_absmax_count(-1, 64, byref(count)), INVALID, "n")
    expect(C.qembed_blockwise_absmax_count(10, 0, byref(count)), INVALID, "blocksize")
    expect(C.qembed_blockwise_absmax_count(2 ** 62, 64, byref(count)), SHAPE, "n")
    expect(C.qembed_blockwise_absmax_count(10, 64, None), NULL, "count")
    assert count.value == -7
    assert C.qembed_4bit_packed_bytes(7, byref(count)) == OK and count.value == 4
    assert C.qembed_4bit_packed_bytes(0, byref(count)) == OK and count.value == 0
    count.value = -7
    expect(C.qembed_4bit_packed_bytes(-2, byref(count)), INVALID, "n")
    expect(C.qembed_4bit_packed_bytes(5, None), NULL, "bytes")
    assert count.value == -7


# --------------------------------------------------------------------------
# Blockwise 8-bit
# --------------------------------------------------------------------------


@pytest.fixture
def data():
    x = np.random.default_rng(7).standard_normal(300).astype(np.float32)
    return x


def test_quantize_blockwise_bad_arguments(data):
    n, bs = data.size, 64
    out, am = sentinel_u8(n), sentinel_f32(5)
    A = data.ctypes.data
    q = C.qembed_quantize_blockwise
    F32 = C.QEMBED_DTYPE_F32
    expect(q(None, F32, n, None, bs, u8ptr(out), fptr(am), 5), NULL, "A")
    expect(q(A, F32, n, None, bs, None, fptr(am), 5), NULL, "out")
    expect(q(A, F32, n, None, bs, u8ptr(out), None, 5), NULL, "absmax")
    expect(q(A, F32, 0, None, bs, u8ptr(out), fptr(am), 5), INVALID, "n")
    expect(q(A, F32, -3, None, bs, u8ptr(out), fptr(am), 5), INVALID, "n")
    expect(q(A, F32, 2 ** 62, None, bs, u8ptr(out), fptr(am), 5), SHAPE, "n")
    expect(q(A, F32, 2 ** 59, None, bs, u8ptr(out), fptr(am), 5), SHAPE)  # n * 4 bytes overflows
    expect(q(A, F32, n, None, 0, u8ptr(out), fptr(am), 5), INVALID, "blocksize")
    expect(q(A, F32, n, None, -64, u8ptr(out), fptr(am), 5), INVALID, "blocksize")
    expect(q(A, F32, n, None, bs, u8ptr(out), fptr(am), 4), TOO_SMALL, "absmax")
    expect(q(A, F32, n, None, bs, u8ptr(out), fptr(am), -1), TOO_SMALL, "absmax")
    expect(q(A, 99, n, None, bs, u8ptr(out), fptr(am), 5), UNSUPPORTED, "dtype")
    expect(q(A, -1, n, None, bs, u8ptr(out), fptr(am), 5), UNSUPPORTED, "dtype")
    expect(q(A, C.QEMBED_DTYPE_U8, n, None, bs, u8ptr(out), fptr(am), 5), UNSUPPORTED, "dtype")
    expect(q(A, C.QEMBED_DTYPE_I32, n, None, bs, u8ptr(out), fptr(am), 5), UNSUPPORTED, "dtype")
    bad_code = np.linspace(1, -1, 256).astype(np.float32)
    expect(q(A, F32, n, fptr(bad_code), bs, u8ptr(out), fptr(am), 5), INVALID, "code", "sorted")
    inf_code = np.linspace(-1, 1, 256).astype(np.float32)
    inf_code[200] = np.inf
    expect(q(A, F32, n, fptr(inf_code), bs, u8ptr(out), fptr(am), 5), INVALID, "code[200]")
    unchanged(out, am)
    # NaN/Inf is found while streaming: named, but out/absmax are unspecified (qembed.h).
    for bad in (np.nan, np.inf, -np.inf):
        x = data.copy()
        x[211] = bad
        msg = expect(q(x.ctypes.data, F32, n, None, bs, u8ptr(out), fptr(am), 5), NON_FINITE, "A[211]")
        assert "finite" in msg
    x16 = data.astype(np.float16)
    x16[17] = np.float16(np.inf)
    expect(q(x16.ctypes.data, C.QEMBED_DTYPE_F16, n, None, bs, u8ptr(out), fptr(am), 5), NON_FINITE, "A[17]")
    bf = (data.view(np.uint32) >> 16).astype(np.uint16)
    bf[250] = 0x7FC0  # bf16 NaN
    expect(q(bf.ctypes.data, C.QEMBED_DTYPE_BF16, n, None, bs, u8ptr(out), fptr(am), 5), NON_FINITE, "A[250]")
    # And it works with the same buffers.
    assert q(A, F32, n, None, bs, u8ptr(out), fptr(am), 5) == OK


def test_dequantize_blockwise_bad_arguments(data):
    n, bs = data.size, 64
    qv = np.random.default_rng(3).integers(0, 256, n).astype(np.uint8)
    am = np.abs(data[:5]) + 1
    out = sentinel_f32(n)
    d = C.qembed_dequantize_blockwise
    F32 = C.QEMBED_DTYPE_F32
    o = out.ctypes.data
    expect(d(None, n, fptr(am), 5, None, bs, F32, o), NULL, "A")
    expect(d(u8ptr(qv), n, None, 5, None, bs, F32, o), NULL, "absmax")
    expect(d(u8ptr(qv), n, fptr(am), 5, None, bs, F32, None), NULL, "out")
    expect(d(u8ptr(qv), 0, fptr(am), 5, None, bs, F32, o), INVALID, "n")
    expect(d(u8ptr(qv), -1, fptr(am), 5, None, bs, F32, o), INVALID, "n")
    expect(d(u8ptr(qv), 2 ** 62, fptr(am), 5, None, bs, F32, o), SHAPE, "n")
    expect(d(u8ptr(qv), 2 ** 59, fptr(am), 5, None, bs, F32, o), SHAPE)
    expect(d(u8ptr(qv), n, fptr(am), 4, None, bs, F32, o), TOO_SMALL, "absmax")
    expect(d(u8ptr(qv), n, fptr(am), 5, None, 0, F32, o), INVALID, "blocksize")
    expect(d(u8ptr(qv), n, fptr(am), 5, None, bs, 99, o), UNSUPPORTED, "dtype")
    expect(d(u8ptr(qv), n, fptr(am), 5, None, bs, C.QEMBED_DTYPE_I8, o), UNSUPPORTED, "dtype")
    bad_code = np.linspace(1, -1, 256).astype(np.float32)
    expect(d(u8ptr(qv), n, fptr(am), 5, fptr(bad_code), bs, F32, o), INVALID, "code")
    unchanged(out)
    assert d(u8ptr(qv), n, fptr(am), 5, None, bs, F32, o) == OK


def test_statistics_bad_arguments():
    absmax = np.abs(np.random.default_rng(1).standard_normal(100)).astype(np.float32) + 0.1
    q, nested, off = sentinel_u8(100), sentinel_f32(2), sentinel_f32(1)
    s = C.qembed_quantize_statistics
    expect(s(None, 100, 64, u8ptr(q), fptr(nested), 2, fptr(off)), NULL, "absmax")
    expect(s(fptr(absmax), 100, 64, None, fptr(nested), 2, fptr(off)), NULL, "qabsmax")
    expect(s(fptr(absmax), 100, 64, u8ptr(q), None, 2, fptr(off)), NULL, "nested_absmax")
    expect(s(fptr(absmax), 100, 64, u8ptr(q), fptr(nested), 2, None), NULL, "offset")
    expect(s(fptr(absmax), 0, 64, u8ptr(q), fptr(nested), 2, fptr(off)), INVALID, "count")
    expect(s(fptr(absmax), -4, 64, u8ptr(q), fptr(nested), 2, fptr(off)), INVALID, "count")
    expect(s(fptr(absmax), 2 ** 62, 64, u8ptr(q), fptr(nested), 2, fptr(off)), SHAPE, "count")
    expect(s(fptr(absmax), 100, 0, u8ptr(q), fptr(nested), 2, fptr(off)), INVALID, "nested_blocksize")
    expect(s(fptr(absmax), 100, 64, u8ptr(q), fptr(nested), 1, fptr(off)), TOO_SMALL, "nested_absmax")
    bad = absmax.copy()
    bad[42] = np.nan
    expect(s(fptr(bad), 100, 64, u8ptr(q), fptr(nested), 2, fptr(off)), NON_FINITE, "42")
    unchanged(q, nested, off)
    assert s(fptr(absmax), 100, 64, u8ptr(q), fptr(nested), 2, fptr(off)) == OK
    assert abs(off[0] - absmax.astype(np.float64).mean()) <= 1e-6 * absmax.mean()

    out = sentinel_f32(100)
    ds = C.qembed_dequantize_statistics
    expect(ds(None, 100, fptr(nested), 2, None, 64, 0.5, fptr(out)), NULL, "qabsmax")
    expect(ds(u8ptr(q), 100, None, 2, None, 64, 0.5, fptr(out)), NULL, "nested_absmax")
    expect(ds(u8ptr(q), 100, fptr(nested), 2, None, 64, 0.5, None), NULL, "absmax")
    expect(ds(u8ptr(q), 0, fptr(nested), 2, None, 64, 0.5, fptr(out)), INVALID, "count")
    expect(ds(u8ptr(q), 100, fptr(nested), 1, None, 64, 0.5, fptr(out)), TOO_SMALL, "nested_absmax")
    expect(ds(u8ptr(q), 100, fptr(nested), 2, None, 0, 0.5, fptr(out)), INVALID, "nested_blocksize")
    expect(ds(u8ptr(q), 100, fptr(nested), 2, None, 64, float("nan"), fptr(out)), NON_FINITE, "offset")
    expect(ds(u8ptr(q), 100, fptr(nested), 2, None, 64, float("inf"), fptr(out)), NON_FINITE, "offset")
    bad_code = np.linspace(1, -1, 256).astype(np.float32)
    expect(ds(u8ptr(q), 100, fptr(nested), 2, fptr(bad_code), 64, 0.5, fptr(out)), INVALID, "nested_code")
    unchanged(out)


# --------------------------------------------------------------------------
# 4-bit
# --------------------------------------------------------------------------


def test_quantize_4bit_bad_arguments(data):
    n, bs = data.size, 64
    packed, am = sentinel_u8(150), sentinel_f32(5)
    A = data.ctypes.data
    q = C.qembed_quantize_4bit
    F32, NF4 = C.QEMBED_DTYPE_F32, C.QEMBED_QUANT_NF4
    expect(q(None, F32, n, bs, NF4, u8ptr(packed), 150, fptr(am), 5), NULL, "A")
    expect(q(A, F32, n, bs, NF4, None, 150, fptr(am), 5), NULL, "packed")
    expect(q(A, F32, n, bs, NF4, u8ptr(packed), 150, None, 5), NULL, "absmax")
    expect(q(A, F32, 0, bs, NF4, u8ptr(packed), 150, fptr(am), 5), INVALID, "n")
    expect(q(A, F32, -1, bs, NF4, u8ptr(packed), 150, fptr(am), 5), INVALID, "n")
    expect(q(A, F32, 2 ** 62, bs, NF4, u8ptr(packed), 150, fptr(am), 5), SHAPE, "n")
    for bad_bs in (0, 16, 100, 8192, -64, 2 ** 40 + 64):
        expect(q(A, F32, n, bad_bs, NF4, u8ptr(packed), 150, fptr(am), 5), UNSUPPORTED, "blocksize")
    for bad_qt in (2, -1, 99):
        expect(q(A, F32, n, bs, bad_qt, u8ptr(packed), 150, fptr(am), 5), UNSUPPORTED, "quant_type")
    expect(q(A, 99, n, bs, NF4, u8ptr(packed), 150, fptr(am), 5), UNSUPPORTED, "dtype")
    expect(q(A, C.QEMBED_DTYPE_I64, n, bs, NF4, u8ptr(packed), 150, fptr(am), 5), UNSUPPORTED, "dtype")
    expect(q(A, F32, n, bs, NF4, u8ptr(packed), 149, fptr(am), 5), TOO_SMALL, "packed")
    expect(q(A, F32, n, bs, NF4, u8ptr(packed), 150, fptr(am), 4), TOO_SMALL, "absmax")
    unchanged(packed, am)
    x = data.copy()
    x[299] = -np.inf
    x[100] = np.nan
    expect(q(x.ctypes.data, F32, n, bs, NF4, u8ptr(packed), 150, fptr(am), 5), NON_FINITE, "A[100]")
    assert q(A, F32, n, bs, NF4, u8ptr(packed), 150, fptr(am), 5) == OK


def test_dequantize_4bit_bad_arguments(data):
    n, bs = data.size, 64
    packed = np.random.default_rng(2).integers(0, 256, 150).astype(np.uint8)
    am = np.abs(data[:5]) + 1
    out = sentinel_f32(n)
    o = out.ctypes.data
    d = C.qembed_dequantize_4bit
    F32, FP4 = C.QEMBED_DTYPE_F32, C.QEMBED_QUANT_FP4
    expect(d(None, 150, n, fptr(am), 5, bs, FP4, F32, o), NULL, "packed")
    expect(d(u8ptr(packed), 150, n, None, 5, bs, FP4, F32, o), NULL, "absmax")
    expect(d(u8ptr(packed), 150, n, fptr(am), 5, bs, FP4, F32, None), NULL, "out")
    expect(d(u8ptr(packed), 150, 0, fptr(am), 5, bs, FP4, F32, o), INVALID, "n")
    expect(d(u8ptr(packed), 150, -2, fptr(am), 5, bs, FP4, F32, o), INVALID, "n")
    expect(d(u8ptr(packed), 150, 2 ** 62, fptr(am), 5, bs, FP4, F32, o), SHAPE, "n")
    expect(d(u8ptr(packed), 149, n, fptr(am), 5, bs, FP4, F32, o), TOO_SMALL, "packed")
    expect(d(u8ptr(packed), 150, n, fptr(am), 4, bs, FP4, F32, o), TOO_SMALL, "absmax")
    expect(d(u8ptr(packed), 150, n, fptr(am), 5, 48, FP4, F32, o), UNSUPPORTED, "blocksize")
    expect(d(u8ptr(packed), 150, n, fptr(am), 5, bs, 5, F32, o), UNSUPPORTED, "quant_type")
    expect(d(u8ptr(packed), 150, n, fptr(am), 5, bs, FP4, 17, o), UNSUPPORTED, "dtype")
    expect(d(u8ptr(packed), 150, n, fptr(am), 5, bs, FP4, C.QEMBED_DTYPE_U8, o), UNSUPPORTED, "dtype")
    unchanged(out)
    assert d(u8ptr(packed), 150, n, fptr(am), 5, bs, FP4, F32, o) == OK


# --------------------------------------------------------------------------
# Int8 row-wise
# --------------------------------------------------------------------------


def test_int8_bad_arguments():
    rows, cols = 6, 50
    A = np.random.default_rng(4).standard_normal((rows, cols)).astype(np.float32)
    out, rs = np.full(rows * cols, SENTINEL_BYTE, np.uint8).view(np.int8), sentinel_f32(rows)
    oc = np.full(cols, -99, np.int32)
    cnt = c_int64(-99)
    q = C.qembed_int8_vectorwise_quant
    F32 = C.QEMBED_DTYPE_F32
    a = A.ctypes.data
    ocp = oc.ctypes.data_as(POINTER(c_int32))
    expect(q(None, F32, rows, cols, 0.0, i8ptr(out), fptr(rs), None, None), NULL, "A")
    expect(q(a, F32, rows, cols, 0.0, None, fptr(rs), None, None), NULL, "out")
    expect(q(a, F32, rows, cols, 0.0, i8ptr(out), None, None, None), NULL, "row_stats")
    expect(q(a, F32, rows, cols, 2.0, i8ptr(out), fptr(rs), None, byref(cnt)), NULL, "outlier_cols")
    expect(q(a, F32, rows, cols, 2.0, i8ptr(out), fptr(rs), ocp, None), NULL, "n_outlier_cols")
    expect(q(a, F32, 0, cols, 0.0, i8ptr(out), fptr(rs), None, None), INVALID, "rows")
    expect(q(a, F32, rows, -1, 0.0, i8ptr(out), fptr(rs), None, None), INVALID, "cols")
    expect(q(a, F32, 2 ** 31, 2 ** 31, 0.0, i8ptr(out), fptr(rs), None, None), SHAPE)  # rows*cols overflows
    expect(q(a, F32, 2 ** 62, cols, 0.0, i8ptr(out), fptr(rs), None, None), SHAPE, "rows")
    for t in (-1.0, float("nan"), float("inf")):
        expect(q(a, F32, rows, cols, t, i8ptr(out), fptr(rs), ocp, byref(cnt)), INVALID, "threshold")
    expect(q(a, 42, rows, cols, 0.0, i8ptr(out), fptr(rs), None, None), UNSUPPORTED, "dtype")
    expect(q(a, C.QEMBED_DTYPE_I8, rows, cols, 0.0, i8ptr(out), fptr(rs), None, None), UNSUPPORTED, "dtype")
    unchanged(out, rs)
    bad = A.copy()
    bad[4, 7] = np.nan
    # With outliers on, the column scan runs first: nothing is written.
    expect(q(bad.ctypes.data, F32, rows, cols, 2.0, i8ptr(out), fptr(rs), ocp, byref(cnt)), NON_FINITE,
           f"[{4 * cols + 7}]")
    unchanged(out, rs)
    # Without, one pass: named, out/row_stats unspecified (qembed.h).
    expect(q(bad.ctypes.data, F32, rows, cols, 0.0, i8ptr(out), fptr(rs), None, None), NON_FINITE,
           f"[{4 * cols + 7}]")
    assert np.all(oc == -99) and cnt.value == -99

    dq = C.qembed_int8_vectorwise_dequant
    qv = np.random.default_rng(5).integers(-127, 128, rows * cols).astype(np.int8)
    st = np.abs(A[:, 0]) + 1
    res = sentinel_f32(rows * cols)
    r = res.ctypes.data
    expect(dq(None, rows, cols, fptr(st), F32, r), NULL, "A")
    expect(dq(i8ptr(qv), rows, cols, None, F32, r), NULL, "row_stats")
    expect(dq(i8ptr(qv), rows, cols, fptr(st), F32, None), NULL, "out")
    expect(dq(i8ptr(qv), 0, cols, fptr(st), F32, r), INVALID, "rows")
    expect(dq(i8ptr(qv), rows, 0, fptr(st), F32, r), INVALID, "cols")
    expect(dq(i8ptr(qv), 2 ** 31, 2 ** 31, fptr(st), F32, r), SHAPE)
    expect(dq(i8ptr(qv), rows, cols, fptr(st), 77, r), UNSUPPORTED, "dtype")
    unchanged(res)
    assert dq(i8ptr(qv), rows, cols, fptr(st), F32, r) == OK


def test_int8_outlier_columns_via_c():
    A = np.zeros((3, 10), np.float32) + 0.5
    A[1, 2] = 9.0
    A[2, 8] = -7.0
    out = np.empty(30, np.int8)
    rs = np.empty(3, np.float32)
    oc = np.full(10, -1, np.int32)
    cnt = c_int64(-1)
    assert C.qembed_int8_vectorwise_quant(A.ctypes.data, C.QEMBED_DTYPE_F32, 3, 10, 6.0, i8ptr(out), fptr(rs),
                                          oc.ctypes.data_as(POINTER(c_int32)), byref(cnt)) == OK
    assert cnt.value == 2 and list(oc[:2]) == [2, 8]
    np.testing.assert_array_equal(rs, [0.5, 0.5, 0.5])


# --------------------------------------------------------------------------
# Finding and loading the library
# --------------------------------------------------------------------------


def run_python(code, env_extra, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("QEMBED_LIBRARY", "PYTHONPATH")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True)


def test_import_from_repo_root_with_only_pythonpath():
    res = run_python("import qembed, qembed.functional as F; print(qembed.__version__, qembed.library_path)",
                     {"PYTHONPATH": "bindings/python"}, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    version, path = res.stdout.split()
    assert version == qembed.__version__
    assert os.path.samefile(path, os.path.join(REPO_ROOT, ".build", "release", "libqembed.so"))


def test_qembed_library_override():
    lib = qembed.library_path
    res = run_python("import qembed; print(qembed.library_path)", {"PYTHONPATH": PYTHON_DIR, "QEMBED_LIBRARY": lib})
    assert res.returncode == 0 and res.stdout.strip() == lib, res.stderr
    res = run_python("import qembed; print(qembed.library_path)",
                     {"PYTHONPATH": PYTHON_DIR, "QEMBED_LIBRARY": os.path.dirname(lib)})
    assert res.returncode == 0 and os.path.samefile(res.stdout.strip(), lib), res.stderr


def test_missing_library_lists_paths_tried():
    missing = "/nonexistent/dir/libqembed.so"
    res = run_python("import qembed", {"PYTHONPATH": PYTHON_DIR, "QEMBED_LIBRARY": missing})
    assert res.returncode != 0
    assert "FileNotFoundError" in res.stderr and missing in res.stderr and "QEMBED_LIBRARY" in res.stderr


def test_find_library_without_override_lists_every_location(monkeypatch):
    from qembed import _lib
    monkeypatch.delenv("QEMBED_LIBRARY", raising=False)
    monkeypatch.setattr(_lib, "_REPO_ROOT", "/nonexistent-repo")
    monkeypatch.setattr(_lib, "_HERE", "/nonexistent-package")
    monkeypatch.setattr(_lib.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(FileNotFoundError) as e:
        _lib.find_library()
    msg = str(e.value)
    assert "/nonexistent-package/libqembed.so" in msg
    assert "/nonexistent-repo/.build/release/libqembed.so" in msg
    assert "find_library" in msg


def test_package_directory_copy_is_found(tmp_path):
    pkg = tmp_path / "qembed"
    shutil.copytree(os.path.join(PYTHON_DIR, "qembed"), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(qembed.library_path, pkg / "libqembed.so.0")
    # the dispatching x86-64 library loads its per-tier builds from its own directory
    for variant in glob.glob(os.path.join(os.path.dirname(os.path.realpath(qembed.library_path)), "libqembed-*.so")):
        shutil.copy(variant, pkg / os.path.basename(variant))
    res = run_python("import qembed; print(qembed.library_path)", {"PYTHONPATH": str(tmp_path)}, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(pkg / "libqembed.so.0")


def test_abi_major_is_checked(monkeypatch):
    from qembed import _lib

    class FakeLib:
        class qembed_version_number:
            argtypes = restype = None

            def __new__(cls):
                return 10203

    monkeypatch.setattr(_lib.ctypes, "CDLL", lambda path: FakeLib)
    with pytest.raises(ImportError, match="ABI major version 1"):
        _lib.load_library()


def test_cpu_tier_is_reported_and_a_refused_tier_fails_import():
    assert qembed.cpu_tier() in ("baseline", "avx2", "avx512", "native")
    if qembed.cpu_tier() == "native":
        pytest.skip("a one-tier build: nothing is dispatched")
    res = run_python("import qembed", {"QEMBED_CPU": "no-such-tier"})
    assert res.returncode != 0
    assert "ImportError" in res.stderr and "QEMBED_CPU=no-such-tier is not a tier" in res.stderr
    forced = run_python("import qembed; print(qembed.cpu_tier())", {"QEMBED_CPU": "baseline"})
    assert forced.returncode == 0 and forced.stdout.strip() == "baseline", forced.stderr
