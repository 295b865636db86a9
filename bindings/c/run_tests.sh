#!/bin/sh
# run_tests.sh - runs the C test suite of bindings/c (called by `make test`):
# the header compile checks, each test program given as an argument (from
# build/), check_symbols.sh and install_test.sh. Each runner ends with
# "<name>: P passed, F failed"; this script adds them up and ends with
# the line "N passed, M failed". Exit status 1 when anything failed.
# --no-install: the header checks and the test programs only (make test-tiers
# reruns them under each CPU tier).
set -u
no_install=0
if [ "${1:-}" = --no-install ]; then
    no_install=1
    shift
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CC=${CC:-cc}
CXX=${CXX:-c++}
total_pass=0
total_fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# add the "<name>: P passed, F failed" line of a runner's output; a runner
# that exits non-zero without reporting a failure (a crash) counts as one
tally() { # name exit_status
    line=$(grep -E "^$1: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "$1: no summary line (exit status $2): counted as 1 failure"
        total_fail=$((total_fail + 1))
        return
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed$/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed$/\2/')
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "$1: exit status $2 with no failure reported: counted as 1 failure"
        f=1
    fi
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
}

# 1. the header alone compiles as C99, C11 and C++11, and twice in one unit
hp=0
hf=0
header_check() { # description command...
    desc=$1
    shift
    if "$@" > "$log" 2>&1; then
        hp=$((hp + 1))
    else
        hf=$((hf + 1))
        echo "header: FAILED: $desc" >&2
        sed 's/^/    /' "$log" >&2
    fi
}
hdr=$root/include/qembed.h
header_check "C99" "$CC" -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c "$hdr"
header_check "C11" "$CC" -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only -x c "$hdr"
header_check "C++11" "$CXX" -std=c++11 -x c++ -fsyntax-only -Wall -Wextra -Werror "$hdr"
header_check "C++11 -pedantic" "$CXX" -std=c++11 -x c++ -fsyntax-only -Wall -Wextra -Werror -pedantic "$hdr"
header_check "included twice (include guard)" sh -c \
    "printf '#include \"qembed.h\"\n#include \"qembed.h\"\nint main(void) { return QEMBED_VERSION_MAJOR * 0; }\n' |
     \"$CC\" -std=c99 -Wall -Wextra -Werror -pedantic -fsyntax-only -I\"$root/include\" -x c -"
echo "header: $hp passed, $hf failed"
total_pass=$((total_pass + hp))
total_fail=$((total_fail + hf))

# 2. the C test programs
for t in "$@"; do
    "$here/build/$t" > "$log" 2>&1
    status=$?
    cat "$log"
    tally "$t" "$status"
done

# 3. the ABI and the install
for s in check_symbols install_test; do
    [ "$no_install" -eq 1 ] && break
    sh "$here/$s.sh" > "$log" 2>&1
    status=$?
    cat "$log"
    tally "$s" "$status"
done

echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
