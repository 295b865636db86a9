#!/bin/sh
# tools/valgrind.sh [PROGRAM...] - the C test programs and examples under
# valgrind memcheck (`make valgrind`; issue 7).
#
# Builds bindings/c/build/* (make -C bindings/c all, against the release
# libqembed.so) and runs each program (default: every test_* and example
# there) as
#   valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
# from a scratch working directory (word2vec gets --quick --out-dir). A program
# fails on any memcheck error (invalid read/write, uninitialised value,
# bad free...) or a definitely lost block. Definite leaks are attributed: to
# qembed when libqembed.so or a Swift frame is in the allocation stack, else
# to the program itself. The Swift runtime's metadata caches show up only as
# "possibly lost" / "still reachable", which memcheck does not count as errors
# here, so no suppression file is used; fuzz/valgrind.supp is added to the
# command line if it ever exists (for runtime internals only, never for
# qembed's own allocations).
# Prints one line per program and ends with "valgrind: P passed, F failed".
# Logs: .build/valgrind/<program>.log.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2

if ! command -v valgrind > /dev/null 2>&1; then
    echo "valgrind: valgrind is not installed (apt-get install valgrind)"
    echo "valgrind: 0 passed, 1 failed"
    exit 1
fi
logs=$root/.build/valgrind
mkdir -p "$logs"
if ! make -s -C bindings/c all > "$logs/build.log" 2>&1; then
    cat "$logs/build.log"
    echo "valgrind: building bindings/c failed"
    echo "valgrind: 0 passed, 1 failed"
    exit 1
fi

programs=${*:-$(cd bindings/c/build && ls | grep -v '\.' | sort)}
supp=
[ -f fuzz/valgrind.supp ] && supp=--suppressions=$root/fuzz/valgrind.supp
QEMBED_TEST_DATA=$root/bindings/c/tests/data
export QEMBED_TEST_DATA
scratch=$(mktemp -d "${TMPDIR:-/tmp}/qembed-valgrind.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM

passed=0
failed=0
summary=
now() { date +%s; }
t_all=$(now)
echo "valgrind: $(valgrind --version), memcheck, --leak-check=full --errors-for-leak-kinds=definite${supp:+ $supp}"
for p in $programs; do
    exe=$root/bindings/c/build/$p
    [ -x "$exe" ] || { echo "  $p: not built"; failed=$((failed + 1)); continue; }
    args=
    src=$(ls bindings/c/tests/$p.c bindings/c/examples/$p.c 2>/dev/null | head -n 1)
    if [ -n "$src" ]; then
        grep -q -- '"--quick"' "$src" && args=--quick
        grep -q -- '"--out-dir"' "$src" && args="$args --out-dir $scratch"
    fi
    log=$logs/$p.log
    t0=$(now)
    # shellcheck disable=SC2086
    (cd "$scratch" && valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
        --num-callers=30 $supp "$exe" $args) > "$log" 2>&1
    status=$?
    secs=$(($(now) - t0))
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
    definite=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tail -n 1)
    possibly=$(sed -n 's/.*possibly lost: \([0-9,]*\) bytes.*/\1/p' "$log" | tail -n 1)
    own=$(grep -E '^[A-Za-z_ -]+: [0-9]+ passed, [0-9]+ failed$|bad-input cases' "$log" | tail -n 2 | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    # who allocated the definitely lost blocks
    leak_owner=$(awk '
        /definitely lost in loss record/ { inrec = 1; lib = 0; next }
        inrec && /^==[0-9]+== *$/ { print (lib ? "qembed" : "program"); inrec = 0; next }
        inrec && /libqembed|\$s[0-9]*Qembed|libswift/ { lib = 1 }
    ' "$log" | sort | uniq -c | awk '{ printf "%s%s in %s", (NR > 1 ? ", " : ""), $1, $2 }')
    line="$p: ${errors:-?} errors, definitely lost ${definite:-0} B${leak_owner:+ ($leak_owner)}, possibly lost ${possibly:-0} B [$secs s]${own:+ $own}"
    if [ "$status" -eq 0 ] && [ "${errors:-1}" = 0 ]; then
        passed=$((passed + 1))
        summary="$summary
  ok    $line"
        echo "  ok    $line"
    else
        failed=$((failed + 1))
        summary="$summary
  FAIL  $line (exit $status)"
        echo "  FAIL  $line (exit $status)"
        grep -E 'Invalid (read|write)|uninitialised|Invalid free|definitely lost in loss record|Process terminating' "$log" |
            sed 's/^==[0-9]*== //' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/        /'
        echo "        log: $log"
    fi
done
echo "valgrind: summary ($(($(now) - t_all)) s):$summary"
echo "valgrind: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
