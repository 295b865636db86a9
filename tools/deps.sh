#!/bin/sh
# Installs what qembed's build and tests need when it is missing:
# Debian packages (libffi-dev for ctypes, pkg-config, a C compiler, SIMDe) and the
# Python packages the binding and its tests use (numpy, pytest).
set -e
need_apt=""
[ -e /usr/include/ffi.h ] || [ -e /usr/include/x86_64-linux-gnu/ffi.h ] || need_apt="$need_apt libffi-dev"
command -v pkg-config >/dev/null 2>&1 || need_apt="$need_apt pkg-config"
command -v cc >/dev/null 2>&1 || need_apt="$need_apt gcc"
command -v c++ >/dev/null 2>&1 || need_apt="$need_apt g++"
command -v make >/dev/null 2>&1 || need_apt="$need_apt make"
# SIMDe: portable AVX-512, so tools/vbmi_check.c proves the VBMI kernels on any CPU
[ -e /usr/include/simde/x86/avx512.h ] || need_apt="$need_apt libsimde-dev"
if [ -n "$need_apt" ]; then
  echo "deps: apt-get install$need_apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq $need_apt >/dev/null
fi
PY=${PYTHON:-python3}
$PY -c "import numpy" 2>/dev/null || { echo "deps: pip install numpy"; $PY -m pip install -q numpy; }
$PY -c "import pytest" 2>/dev/null || { echo "deps: pip install pytest"; $PY -m pip install -q pytest; }
# the format's own reader, for the interop checks (tests skip it when missing)
$PY -c "import safetensors" 2>/dev/null || { echo "deps: pip install safetensors"; $PY -m pip install -q safetensors || true; }
$PY -c "import ml_dtypes" 2>/dev/null || { echo "deps: pip install ml_dtypes"; $PY -m pip install -q ml_dtypes || true; }
# the wheel test (tools/wheel_test.sh): a build backend without network
# isolation, and auditwheel's verdict (information only)
$PY -c "import setuptools, wheel; import sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 68)" 2>/dev/null ||
  { echo "deps: pip install setuptools>=68 wheel"; $PY -m pip install -q "setuptools>=68" wheel || true; }
command -v auditwheel >/dev/null 2>&1 || { echo "deps: pip install auditwheel"; $PY -m pip install -q auditwheel || true; }
exit 0
