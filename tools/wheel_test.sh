#!/bin/sh
# tools/wheel_test.sh - the Python package as users get it (make test runs it):
#   1. `pip wheel .` builds a platform wheel (py3-none-<platform>) holding
#      libqembed.so, its per-CPU-tier builds and the qembed command;
#   2. auditwheel show (when installed) says which manylinux policy it meets;
#   3. the wheel installs into a fresh virtual environment (numpy comes as
#      its dependency);
#   4. with the Swift toolchain hidden (unshare -m, an empty tmpfs over its
#      root; skipped where unshare is refused) the venv's `qembed` entry point
#      quantizes and looks up, and `import qembed` quantizes, saves, reloads.
# Uses what `make build cli` built (QEMBED_PREBUILT=1). Prints
# "wheel_test: P passed, F failed"; exits 1 on any failure.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
passed=0
failed=0
work=$(mktemp -d "${TMPDIR:-/tmp}/qembed-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "wheel_test: FAILED: $*" >&2; }
finish() {
    echo "wheel_test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

# 1. the wheel
if (cd "$root" && QEMBED_PREBUILT=1 "$PYTHON" -m pip wheel . --no-deps --no-build-isolation -w "$work/dist") > "$work/wheel.log" 2>&1 ||
   (cd "$root" && QEMBED_PREBUILT=1 "$PYTHON" -m pip wheel . --no-deps -w "$work/dist") >> "$work/wheel.log" 2>&1; then
    ok
else
    fail "pip wheel . failed:"
    tail -n 20 "$work/wheel.log" | sed 's/^/    /' >&2
    finish
fi
rm -rf "$root/build" "$root/bindings/python/qembed.egg-info"
whl=$(ls "$work"/dist/qembed-*.whl)
case "$(basename "$whl")" in
*-py3-none-any.whl) fail "$(basename "$whl") is tagged as pure Python" ;;
*-py3-none-*.whl) ok; echo "wheel_test: built $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)" ;;
*) fail "unexpected wheel name $(basename "$whl")" ;;
esac
contents=$("$PYTHON" -m zipfile -l "$whl")
missing=""
for f in qembed/libqembed.so qembed/bin/qembed qembed/functional.py; do
    echo "$contents" | grep -q " *$f " || echo "$contents" | grep -q "^$f " || missing="$missing $f"
done
[ -z "$missing" ] && ok || fail "the wheel lacks:$missing"

# 2. auditwheel's verdict (information)
if command -v auditwheel > /dev/null 2>&1; then
    verdict=$(auditwheel show "$whl" 2>/dev/null | tr '\n' ' ' | sed -n 's/.*consistent with the following platform tag: *"\([^"]*\)".*/\1/p')
    echo "wheel_test: auditwheel: consistent with ${verdict:-(no verdict)}"
fi

# 3. a fresh virtual environment
if "$PYTHON" -m venv "$work/venv" > "$work/venv.log" 2>&1 && "$work/venv/bin/pip" install -q "$whl" >> "$work/venv.log" 2>&1; then
    ok
else
    fail "installing the wheel into a fresh venv:"
    tail -n 20 "$work/venv.log" | sed 's/^/    /' >&2
    finish
fi

# 4. without the toolchain
toolchain=$(command -v swift 2>/dev/null || true)
toolchain_root=${toolchain%/usr/bin/swift}
if [ -n "$toolchain_root" ] && unshare -m true 2> /dev/null; then
    runner="unshare -m sh"
    echo "wheel_test: running with $toolchain_root hidden"
else
    runner="sh"
    toolchain_root=""
    echo "wheel_test: unshare -m refused or no toolchain: running with the toolchain visible"
fi
cat > "$work/use.sh" << EOF
set -e
[ -z "$toolchain_root" ] || mount -t tmpfs none "$toolchain_root"
cd "$work"
"$work/venv/bin/qembed" --version
"$work/venv/bin/python" -c "import numpy as np; np.save('t.npy', np.random.default_rng(2).standard_normal((500, 128)).astype(np.float32))"
"$work/venv/bin/qembed" quantize t.npy -o t.int8.safetensors --type int8
"$work/venv/bin/qembed" lookup t.int8.safetensors 0 499 > rows.txt
"$work/venv/bin/python" -c "
import numpy as np, qembed
from qembed.nn import EmbeddingNF4, Embedding8bit
w = np.load('t.npy')
e = EmbeddingNF4(500, 128)
e.load_state_dict({'weight': w})
e.save('t.nf4.safetensors')
back = EmbeddingNF4.load('t.nf4.safetensors')
ids = np.array([1, 7, 499])
assert np.array_equal(back(ids), e(ids))
assert np.abs(back(ids) - w[ids]).max() < 0.5
q8 = Embedding8bit.load('t.int8.safetensors')
assert np.abs(q8(ids) - w[ids]).max() < 0.05
print('wheel_test: venv python ok: tier', qembed.cpu_tier(), 'library', qembed.library_path)
"
EOF
if env -u LD_LIBRARY_PATH -u PYTHONPATH $runner "$work/use.sh" > "$work/use.log" 2>&1; then
    ok
    grep '^wheel_test:' "$work/use.log"
else
    fail "using the installed wheel:"
    tail -n 20 "$work/use.log" | sed 's/^/    /' >&2
fi
finish
