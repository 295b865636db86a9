#!/bin/sh
# check_symbols.sh - the ABI of libqembed.so against include/qembed.h
# (after libpng's checksym):
#   1. the functions declared in the header == the T/W symbols the .so exports
#   2. the version script qembed.map lists exactly the header's functions
#   3. no Swift-mangled ($s...) symbol is exported
#   4. SONAME is libqembed.so.<QEMBED_VERSION_MAJOR>
#   5. every exported symbol carries the version node QEMBED_<MAJOR>
#   6. ldd resolves every dependency without LD_LIBRARY_PATH
# Usage: check_symbols.sh [path/to/libqembed.so]   (run from anywhere)
# Prints "check_symbols: P passed, F failed"; exits 1 on any failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lib=${1:-$root/.build/release/libqembed.so}
header=$root/include/qembed.h
map=$root/qembed.map
CC=${CC:-cc}
passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "check_symbols: FAILED: $*" >&2; }

if [ ! -f "$lib" ]; then
    fail "$lib does not exist (run make build)"
    echo "check_symbols: $passed passed, $failed failed"
    exit 1
fi

major=$(sed -n 's/^#define QEMBED_VERSION_MAJOR \([0-9]*\).*/\1/p' "$header")

# 1. header functions vs exported functions
"$CC" -E -P -I "$root/include" "$header" | grep -oE '\bqembed_[a-z0-9_]+[[:space:]]*\(' \
    | sed 's/[[:space:]]*($//' | sort -u > "$tmp/header"
nm -D --defined-only "$lib" | awk '$2 == "T" || $2 == "W" { print $3 }' | sed 's/@.*//' | sort -u > "$tmp/exported"
if [ ! -s "$tmp/header" ]; then
    fail "no function found in $header"
elif diff "$tmp/header" "$tmp/exported" > "$tmp/diff"; then
    ok
else
    fail "header functions (<) and exported functions (>) differ:"
    sed 's/^/    /' "$tmp/diff" >&2
fi

# 2. the version script lists the header's functions
if [ -f "$map" ]; then
    sed -e 's|/\*.*\*/||g' "$map" | grep -oE '\bqembed_[a-z0-9_]+[[:space:]]*;' | sed 's/[[:space:]]*;$//' \
        | sort -u > "$tmp/map"
    if diff "$tmp/header" "$tmp/map" > "$tmp/diff"; then
        ok
    else
        fail "header functions (<) and qembed.map globals (>) differ:"
        sed 's/^/    /' "$tmp/diff" >&2
    fi
fi

# 3. nothing Swift-mangled (or anything else) exported beyond the header
nm -D --defined-only "$lib" | awk '$2 ~ /^[A-Z]$/ && $2 != "A" { print $3 }' | sed 's/@.*//' | sort -u > "$tmp/global"
if grep -q '^\$s' "$tmp/global"; then
    fail "Swift-mangled symbols are exported: $(grep '^\$s' "$tmp/global" | head -5 | tr '\n' ' ')"
else
    ok
fi
if diff "$tmp/header" "$tmp/global" > "$tmp/diff"; then
    ok
else
    fail "exported symbols of any kind (>) beyond the header's functions (<):"
    sed 's/^/    /' "$tmp/diff" >&2
fi
nlocal=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[a-z]$/' | grep -c '\$s' || true)
[ "$nlocal" -eq 0 ] || echo "check_symbols: note: $nlocal local-binding \$s entries in .dynsym (not exported)"

# 4. SONAME
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
if [ "$soname" = "libqembed.so.$major" ]; then
    ok
else
    fail "SONAME is '$soname', want libqembed.so.$major"
fi

# 5. symbol version node
unversioned=$(nm -D --defined-only "$lib" | awk '$2 == "T" || $2 == "W" { print $3 }' | grep -v "@@QEMBED_$major\$" || true)
if [ -z "$unversioned" ]; then
    ok
else
    fail "symbols without version QEMBED_$major: $(echo "$unversioned" | head -5 | tr '\n' ' ')"
fi

# 6. dependencies resolve through RUNPATH alone
if env -u LD_LIBRARY_PATH ldd "$lib" > "$tmp/ldd" 2>&1 && ! grep -q 'not found' "$tmp/ldd"; then
    ok
else
    fail "ldd cannot resolve every dependency without LD_LIBRARY_PATH:"
    sed 's/^/    /' "$tmp/ldd" >&2
fi

# 7. the per-tier builds the dispatching libqembed.so loads (x86-64): each
# exports exactly the header's functions, needs no Swift runtime library,
# and nothing Swift-mangled is global
for v in "$(dirname "$lib")"/libqembed-*.so; do
    [ -e "$v" ] || continue
    nm -D --defined-only "$v" | awk '$2 == "T" || $2 == "W" { print $3 }' | sed 's/@.*//' | sort -u > "$tmp/vexported"
    nm -D --defined-only "$v" | awk '$2 ~ /^[A-Z]$/ && $2 != "A" { print $3 }' | sed 's/@.*//' | sort -u > "$tmp/vglobal"
    if diff "$tmp/header" "$tmp/vexported" > /dev/null && diff "$tmp/header" "$tmp/vglobal" > /dev/null &&
        ! env -u LD_LIBRARY_PATH ldd "$v" | grep -qiE 'swift|not found'; then
        ok
    else
        fail "$(basename "$v"): exports differ from the header or it needs a Swift runtime library"
    fi
done

echo "check_symbols: $(wc -l < "$tmp/header" | tr -d ' ') functions in the header, SONAME $soname"
echo "check_symbols: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
