#!/bin/sh
# Tests/stress/run.sh - the concurrency stress program and the crash-safe-save
# test against the release library (issue 7).
#
#   sh Tests/stress/run.sh                  8 readers + 4 churners for 5 s, then crash_save
#   STRESS_SECONDS=60 STRESS_READERS=16 sh Tests/stress/run.sh
#   CRASH_KILLS=20 sh Tests/stress/run.sh   more SIGKILL rounds per writer
#
# Builds libqembed.so (make build) when it is missing, compiles stress.c and
# crash_save.c with the system C compiler into .build/stress/, runs both and
# ends with "stress-run: P passed, F failed" (programs that passed / failed).
# tools/sanitize.sh builds stress.c again with -fsanitize=thread against a
# TSan library.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2
CC=${CC:-cc}
lib=$root/.build/release
out=$root/.build/stress
mkdir -p "$out"
if [ ! -f "$lib/libqembed.so" ]; then
    make -s build || exit 1
fi
[ -e "$lib/libqembed.so.0" ] || ln -sf libqembed.so "$lib/libqembed.so.0"

pass=0
fail=0
for p in stress crash_save; do
    if ! "$CC" -std=c11 -O2 -g -Wall -Wextra -Werror -I"$root/include" -o "$out/$p" "Tests/stress/$p.c" \
        -L"$lib" -lqembed -Wl,-rpath,"$lib" -lpthread; then
        echo "stress-run: compiling Tests/stress/$p.c failed"
        fail=$((fail + 1))
    fi
done

run() { # name command...
    name=$1
    shift
    if "$@"; then pass=$((pass + 1)); else echo "stress-run: $name FAILED (exit status $?)"; fail=$((fail + 1)); fi
}
[ -x "$out/stress" ] && run stress "$out/stress" --readers "${STRESS_READERS:-8}" --churners "${STRESS_CHURNERS:-4}" \
    --seconds "${STRESS_SECONDS:-5}"
[ -x "$out/crash_save" ] && run crash_save "$out/crash_save" --kills "${CRASH_KILLS:-6}"
echo "stress-run: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
