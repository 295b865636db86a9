#!/bin/sh
# install_test.sh - `make install` into a fresh prefix, then use qembed the way
# a user would: a C program built with nothing but
#   pkg-config --cflags --libs qembed  (+ -Wl,-rpath,$prefix/lib)
# (quickstart.c, and word2vec.c run with --quick) and `import qembed` from
# the installed Python package.
# Prints "install_test: P passed, F failed"; exits 1 on any failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CC=${CC:-cc}
PYTHON=${PYTHON:-python3}
passed=0
failed=0
prefix=$(mktemp -d "${TMPDIR:-/tmp}/qembed-prefix.XXXXXX")
work=$(mktemp -d "${TMPDIR:-/tmp}/qembed-install-test.XXXXXX")
trap 'rm -rf "$prefix" "$work"' EXIT

ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "install_test: FAILED: $*" >&2; }
finish() {
    echo "install_test: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}

hdr=$root/include/qembed.h
major=$(sed -n 's/^#define QEMBED_VERSION_MAJOR \([0-9]*\).*/\1/p' "$hdr")
minor=$(sed -n 's/^#define QEMBED_VERSION_MINOR \([0-9]*\).*/\1/p' "$hdr")
patch=$(sed -n 's/^#define QEMBED_VERSION_PATCH \([0-9]*\).*/\1/p' "$hdr")
version=$major.$minor.$patch

# 1. make install
if make -C "$root" install PREFIX="$prefix" > "$work/install.log" 2>&1; then
    ok
else
    fail "make install PREFIX=$prefix failed:"
    tail -n 20 "$work/install.log" | sed 's/^/    /' >&2
    finish
fi

# 2. the installed layout
missing=""
for f in "lib/libqembed.so.$version" "lib/libqembed.so.$major" lib/libqembed.so include/qembed.h lib/pkgconfig/qembed.pc; do
    [ -e "$prefix/$f" ] || missing="$missing $f"
done
if [ -z "$missing" ] && [ -L "$prefix/lib/libqembed.so" ] && [ -L "$prefix/lib/libqembed.so.$major" ]; then
    ok
else
    fail "installed layout: missing or not symlinks:$missing"
fi

# 3. pkg-config
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pc_version=$(pkg-config --modversion qembed 2>&1)
flags=$(pkg-config --cflags --libs qembed 2>&1)
if [ "$pc_version" = "$version" ] && pkg-config --exists qembed; then
    ok
else
    fail "pkg-config --modversion qembed: '$pc_version', want $version"
fi
case "$flags" in
*"-I$prefix/include"*"-L$prefix/lib"*"-lqembed"*) ok ;;
*) fail "pkg-config --cflags --libs qembed: '$flags'" ;;
esac

# 4. build and run the quickstart with those flags only
# shellcheck disable=SC2086
if $CC -std=c11 -Wall -Wextra -Werror -pedantic "$here/examples/quickstart.c" $flags -Wl,-rpath,"$prefix/lib" \
    -o "$work/quickstart" > "$work/cc.log" 2>&1; then
    ok
else
    fail "building examples/quickstart.c with pkg-config flags:"
    sed 's/^/    /' "$work/cc.log" >&2
fi
if [ -x "$work/quickstart" ]; then
    if (cd "$work" && env -u LD_LIBRARY_PATH ./quickstart) > "$work/run.log" 2>&1; then
        ok
        sed 's/^/install_test: /' "$work/run.log"
    else
        fail "quickstart failed:"
        sed 's/^/    /' "$work/run.log" >&2
    fi
    # the installed library is the one it loads
    if env -u LD_LIBRARY_PATH ldd "$work/quickstart" | grep -q "libqembed.so.$major => $prefix/lib/"; then
        ok
    else
        fail "quickstart does not load libqembed.so.$major from $prefix/lib:"
        env -u LD_LIBRARY_PATH ldd "$work/quickstart" | sed 's/^/    /' >&2
    fi
fi

# 4b. the word2vec example (the demo in C) with the same flags, in its quick mode
# shellcheck disable=SC2086
if $CC -std=c11 -O2 -Wall -Wextra -Werror -pedantic "$here/examples/word2vec.c" $flags -lm -Wl,-rpath,"$prefix/lib" \
    -o "$work/word2vec" > "$work/cc2.log" 2>&1; then
    ok
else
    fail "building examples/word2vec.c with pkg-config flags:"
    sed 's/^/    /' "$work/cc2.log" >&2
fi
if [ -x "$work/word2vec" ]; then
    if (cd "$work" && env -u LD_LIBRARY_PATH ./word2vec --quick --out-dir "$work") > "$work/w2v.log" 2>&1 &&
        grep -q '^nearest-neighbour cluster accuracy' "$work/w2v.log" && grep -q '^  int8 ' "$work/w2v.log"; then
        ok
        grep -E '^(training: [0-9]+ steps|nearest-neighbour|  (nf4|int8) )' "$work/w2v.log" | sed 's/^/install_test: word2vec: /'
    else
        fail "word2vec --quick failed:"
        tail -n 15 "$work/w2v.log" | sed 's/^/    /' >&2
    fi
fi

# 4c. pkg-config --static --libs links too (the Swift runtime is inside libqembed.so)
sflags=$(pkg-config --cflags --static --libs qembed 2>&1)
# shellcheck disable=SC2086
if $CC -std=c11 "$here/examples/quickstart.c" $sflags -Wl,-rpath,"$prefix/lib" -o "$work/quickstart_s" > "$work/cc3.log" 2>&1 &&
    (cd "$work" && env -u LD_LIBRARY_PATH ./quickstart_s) > /dev/null 2>&1; then
    ok
else
    fail "building/running quickstart.c with pkg-config --static --libs ($sflags):"
    sed 's/^/    /' "$work/cc3.log" >&2
fi

# 4d. no installed binary depends on the Swift toolchain; installed binaries are stripped
toolchain=$(command -v swift 2>/dev/null || true)
toolchain_root=${toolchain%/usr/bin/swift}
bad=""
for f in "$prefix/lib/libqembed.so.$version" "$prefix"/lib/libqembed-*.so "$prefix/bin/qembed"; do
    [ -e "$f" ] || continue
    if env -u LD_LIBRARY_PATH ldd "$f" | grep -qiE 'swift|not found' ||
        { [ -n "$toolchain_root" ] && env -u LD_LIBRARY_PATH ldd "$f" | grep -q "$toolchain_root"; }; then
        bad="$bad $f"
    fi
    if readelf -d "$f" 2>/dev/null | grep -E 'RUNPATH|RPATH' | grep -qiE 'swift|toolchain'; then bad="$bad $f(runpath)"; fi
    if readelf -S "$f" 2>/dev/null | grep -q '\.symtab'; then bad="$bad $f(not stripped)"; fi
done
if [ -z "$bad" ]; then
    ok
else
    fail "installed binaries that need the toolchain or are not stripped:$bad"
fi

# 5. the Python package
site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '$prefix', 'platbase': '$prefix'}))")
if [ -f "$site/qembed/__init__.py" ]; then
    if (cd "$work" && env -u LD_LIBRARY_PATH PYTHONPATH="$site" "$PYTHON" -c \
        "import qembed, sys; sys.stdout.write('python: qembed from %s\n' % qembed.__file__)") > "$work/py.log" 2>&1; then
        ok
        sed 's/^/install_test: /' "$work/py.log"
    else
        fail "PYTHONPATH=$site $PYTHON -c 'import qembed':"
        tail -n 15 "$work/py.log" | sed 's/^/    /' >&2
    fi
else
    echo "install_test: skipped the Python check: $site/qembed/__init__.py was not installed (no Python package yet)"
fi

# 5b. with the Swift toolchain hidden (a private mount namespace with an empty
# tmpfs over the toolchain's root), the installed C program, the qembed command
# and `import qembed` each do real work: quantize, look up, save, reload.
if [ -z "$toolchain_root" ] || [ ! -d "$toolchain_root" ]; then
    echo "install_test: skipped the hidden-toolchain check: no Swift toolchain found to hide"
elif ! unshare -m true 2> /dev/null; then
    echo "install_test: skipped the hidden-toolchain check: unshare -m is refused here"
else
    cat > "$work/hidden.sh" << EOF
set -e
mount -t tmpfs none "$toolchain_root"
[ ! -e "$toolchain" ]
cd "$work"
./quickstart
"$PYTHON" -c "import numpy as np; np.save('t.npy', np.random.default_rng(1).standard_normal((300, 64)).astype(np.float32))"
"$prefix/bin/qembed" quantize t.npy -o t.nf4.safetensors --type nf4 --blocksize 64
"$prefix/bin/qembed" lookup t.nf4.safetensors 3 299 > lookup.txt
PYTHONPATH="$site" "$PYTHON" -c "
import numpy as np, qembed, qembed.functional as F
from qembed.nn import EmbeddingNF4
w = np.load('t.npy')
q, s = F.quantize_4bit(w, blocksize=64, quant_type='nf4')
back = F.dequantize_4bit(q, s)
assert np.abs(back - w).max() < 0.5
e = EmbeddingNF4.load('t.nf4.safetensors')  # the command stores a .npy table as its only layer
rows = e(np.array([3, 299]))
assert np.abs(rows - back[[3, 299]]).max() == 0, 'the command and the binding disagree'
print('hidden-toolchain python ok, tier', qembed.cpu_tier())
"
EOF
    if env -u LD_LIBRARY_PATH unshare -m sh "$work/hidden.sh" > "$work/hidden.log" 2>&1; then
        ok
        grep 'hidden-toolchain' "$work/hidden.log" | sed 's/^/install_test: /'
    else
        fail "with the toolchain at $toolchain_root hidden:"
        tail -n 20 "$work/hidden.log" | sed 's/^/    /' >&2
    fi
fi

# 6. DESTDIR staging puts everything under DESTDIR/PREFIX
if make -C "$root" install DESTDIR="$work/stage" PREFIX=/opt/qembed > "$work/stage.log" 2>&1 &&
    [ -e "$work/stage/opt/qembed/lib/libqembed.so.$version" ] &&
    grep -q '^prefix=/opt/qembed$' "$work/stage/opt/qembed/lib/pkgconfig/qembed.pc"; then
    ok
else
    fail "make install DESTDIR=... PREFIX=/opt/qembed did not stage under DESTDIR:"
    tail -n 10 "$work/stage.log" | sed 's/^/    /' >&2
fi

# 7. uninstall removes what install wrote
if make -C "$root" uninstall PREFIX="$prefix" > "$work/uninstall.log" 2>&1 &&
    [ ! -e "$prefix/lib/libqembed.so" ] && [ ! -e "$prefix/include/qembed.h" ] &&
    [ ! -e "$prefix/lib/pkgconfig/qembed.pc" ] && [ ! -e "$prefix/lib/libqembed.so.$version" ]; then
    ok
else
    fail "make uninstall PREFIX=$prefix left files behind:"
    (cd "$prefix" && find . -type f -o -type l) | sed 's/^/    /' >&2
fi

finish
