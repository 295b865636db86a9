#!/bin/sh
# tools/fuzz.sh [SECONDS] - builds and runs qembed's libFuzzer targets.
#
#   sh tools/fuzz.sh 20     what `make fuzz-ci` (part of `make test`) runs: ~2 minutes
#   sh tools/fuzz.sh 300    what `make fuzz` runs (FUZZ_SECONDS=300 per target)
#
# 1. builds libqembed.so with ASan and libFuzzer's coverage instrumentation
#    (swift build --build-path .build/fuzz -Xswiftc -sanitize=address,fuzzer
#    -Xcc -fsanitize=address,fuzzer-no-link) and checks both are in it,
#    so the fuzzer is guided by the library's own branches and ASan checks
#    every Swift access; FUZZ_LIB=release links the plain release library
#    instead (coverage of the harness only; see docs/RELIABILITY.md);
# 2. compiles fuzz/fuzz_*.c with clang -fsanitize=fuzzer,address,undefined;
# 3. runs each target for SECONDS on a working corpus (.build/fuzz/work/<t>,
#    kept between runs) seeded from fuzz/corpus/<t>, with fuzz/<t>.dict, and
#    prints libFuzzer's own final lines (Done N runs in T second(s), stat::*);
#    FUZZ_JOBS targets run at once (default: cores, at most 2);
# 4. replays every input under fuzz/regressions/<t>/ once, strictly; inputs
#    listed in fuzz/regressions/KNOWN_OPEN are bugs already reported and
#    not fixed yet: they are shown as XFAIL (XPASS once fixed) and do not fail
#    the run, and their ids are given to the fuzzing runs
#    (QEMBED_FUZZ_KNOWN_OPEN) so that those oracles step over them.
# Ends with "fuzz: P passed, F failed"; exit status 1 on any crash, sanitizer
# report, failed oracle or failed regression. A crashing input is kept as
# .build/fuzz/work/<t>-artifacts/crash-*: copy it to fuzz/regressions/<t>/.
set -u
# libFuzzer reports a crash itself; the Swift runtime's backtracer, started on
# the same signal, was seen to hang after it (swift-backtrace waiting on the
# dead process): leave crash reports to libFuzzer.
export SWIFT_BACKTRACE=enable=no

seconds=${1:-60}
# (libFuzzer reads -max_total_time=0 as "no limit": SECONDS must be >= 1)
case $seconds in '' | *[!0-9]* | 0 | 00*) echo "usage: sh tools/fuzz.sh [SECONDS >= 1]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2

targets=${FUZZ_TARGETS:-"fuzz_safetensors fuzz_npy fuzz_quant_state fuzz_capi"}
build=$root/.build/fuzz
bin=$build/bin
work=$build/work
mkdir -p "$bin" "$work"

# the Swift toolchain's clang carries libFuzzer and the sanitizer runtimes
clang=${FUZZ_CC:-}
if [ -z "$clang" ]; then
    for c in /opt/swift/usr/bin/clang "$(dirname "$(command -v swift 2>/dev/null || echo /nonexistent/swift)")/clang"; do
        if [ -x "$c" ]; then clang=$c; break; fi
    done
fi
if [ -z "$clang" ] || [ ! -x "$clang" ]; then
    echo "fuzz: no clang with libFuzzer found (set FUZZ_CC); the Swift toolchain's is /opt/swift/usr/bin/clang" >&2
    echo "fuzz: 0 passed, 1 failed"
    exit 1
fi
ld_flag=
[ -x "$(dirname "$clang")/ld.lld" ] && ld_flag=-fuse-ld=lld

now() { date +%s; }
t_start=$(now)

# ---- 1. the library --------------------------------------------------------
lib_kind=${FUZZ_LIB:-asan}
if [ "$lib_kind" = release ]; then
    echo "fuzz: FUZZ_LIB=release: the plain release library (no coverage feedback from qembed itself)"
    make -s build > "$build/build.log" 2>&1 || { cat "$build/build.log"; echo "fuzz: 0 passed, 1 failed"; exit 1; }
    libdir=$root/.build/release
    sanitizers=fuzzer,address,undefined
else
    # One -sanitize=address,fuzzer: SwiftPM turns `--sanitize=address
    # --sanitize=fuzzer` into two -sanitize= flags in no fixed order, and
    # swiftc keeps only the last, which silently drops ASan or the coverage.
    echo "fuzz: building libqembed.so with ASan + libFuzzer coverage (.build/fuzz)"
    t0=$(now)
    if ! swift build --build-path "$build" --product qembed -Xswiftc -sanitize=address,fuzzer \
        -Xcc -fsanitize=address,fuzzer-no-link > "$build/build.log" 2>&1; then
        tail -n 40 "$build/build.log"
        echo "fuzz: swift build failed (log: $build/build.log)"
        echo "fuzz: 0 passed, 1 failed"
        exit 1
    fi
    echo "fuzz: library built in $(($(now) - t0)) s"
    libdir=$build/debug
    # both instrumentations must be in the library, or the run proves little
    if ! nm -D --undefined-only "$libdir/libqembed.so" | grep -q '__asan_report_load' ||
        ! nm -D --undefined-only "$libdir/libqembed.so" | grep -q '__sanitizer_cov_8bit_counters_init'; then
        echo "fuzz: $libdir/libqembed.so lacks ASan checks or coverage counters"
        echo "fuzz: 0 passed, 1 failed"
        exit 1
    fi
    sanitizers=fuzzer,address,undefined
fi
# programs record the SONAME libqembed.so.0; SwiftPM writes only libqembed.so
ln -sf libqembed.so "$libdir/libqembed.so.0"

# ---- 2. the targets -----------------------------------------------------------
t0=$(now)
for t in $targets; do
    if ! "$clang" -std=c11 -g -O1 -Wall -Wextra -Werror $ld_flag -fsanitize=$sanitizers \
        -fno-sanitize-recover=undefined -fno-omit-frame-pointer -I"$root/include" \
        -o "$bin/$t" "fuzz/$t.c" -L"$libdir" -lqembed -Wl,-rpath,"$libdir" -lm \
        > "$build/$t.cc.log" 2>&1; then
        grep -v "Cannot export local symbol" "$build/$t.cc.log"
        echo "fuzz: compiling fuzz/$t.c failed"
        echo "fuzz: 0 passed, 1 failed"
        exit 1
    fi
done
echo "fuzz: targets compiled in $(($(now) - t0)) s: $targets"

# ---- 3. fuzzing ---------------------------------------------------------------
# The Swift runtime's own crash handler would catch the signal first and hide
# the sanitizer's report; the scratch files go to a directory removed below.
SWIFT_BACKTRACE=enable=no
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/qembed-fuzz.XXXXXX")
[ -w /dev/shm ] && { rmdir "$scratch"; scratch=$(mktemp -d /dev/shm/qembed-fuzz.XXXXXX); }
QEMBED_FUZZ_TMPDIR=$scratch
export SWIFT_BACKTRACE ASAN_OPTIONS UBSAN_OPTIONS QEMBED_FUZZ_TMPDIR
trap 'rm -rf "$scratch"' EXIT INT TERM

known=fuzz/regressions/KNOWN_OPEN
known_ids=
[ -f "$known" ] && known_ids=$(grep -v '^#' "$known" | awk 'NF >= 2 { print $2 }' | sort -u | tr '\n' ',')

# one target: fuzz for $seconds, leave its log and exit status in $work
run_target() { # target
    t=$1
    corpus=$work/$t/corpus
    mkdir -p "$corpus" "$work/$t-artifacts"
    dict=
    case $t in
        fuzz_safetensors) dict=fuzz/safetensors.dict ;;
        fuzz_npy) dict=fuzz/npy.dict ;;
        fuzz_quant_state) dict=fuzz/quant_state.dict ;;
    esac
    QEMBED_FUZZ_KNOWN_OPEN=$known_ids "$bin/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=30 \
        -rss_limit_mb=3072 -max_len=16384 ${dict:+-dict=$dict} -artifact_prefix="$work/$t-artifacts/" \
        "$corpus" "fuzz/corpus/$t" > "$work/$t.log" 2>&1
    echo $? > "$work/$t.status"
}

# FUZZ_JOBS targets at a time (default: the number of cores, at most 2; each
# libFuzzer process runs its inputs on one thread)
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -gt 2 ] 2>/dev/null && [ -z "${FUZZ_JOBS:-}" ] && jobs=2
[ "$jobs" -ge 1 ] 2>/dev/null || jobs=1
echo "fuzz: $seconds s per target, $jobs at a time"
running=0
for t in $targets; do
    rm -f "$work/$t.status"
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait
        running=0
    fi
done
wait

passed=0
failed=0
summary=
for t in $targets; do
    log=$work/$t.log
    status=$(cat "$work/$t.status" 2>/dev/null || echo 1)
    # libFuzzer's own final lines
    grep -E '^Done [0-9]+ runs in [0-9]+ second|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" |
        sed "s/^/  $t: /"
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    units=$(ls "$work/$t/corpus" | wc -l | tr -d ' ')
    if [ "$status" -ne 0 ]; then
        failed=$((failed + 1))
        echo "  $t: FAILED (exit status $status): the report:"
        grep -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_ASSERT|SUMMARY:|Test unit written|^ *#[0-9]+ .* in ' "$log" |
            head -n 40 | sed 's/^/    /'
        echo "    full log: $log"
        echo "    keep the input: cp $work/$t-artifacts/<crash-file> fuzz/regressions/$t/<short-name>"
        summary="$summary
  $t: CRASH after ${runs:-?} runs"
    else
        passed=$((passed + 1))
        summary="$summary
  $t: ${runs:-?} runs in ${secs:-?} s, no crash (working corpus: $units inputs)"
    fi
done

# ---- 4. regressions -------------------------------------------------------------
rp=0
rf=0
rx=0
for t in $targets; do
    dir=fuzz/regressions/$t
    [ -d "$dir" ] || continue
    for f in "$dir"/*; do
        [ -f "$f" ] || continue
        rel=$t/$(basename "$f")
        id=
        [ -f "$known" ] && id=$(grep -v '^#' "$known" | awk -v r="$rel" '$1 == r { print $2 }' | head -n 1)
        if "$bin/$t" -artifact_prefix="$work/replay-" "$f" > "$work/replay.log" 2>&1; then
            if [ -n "$id" ]; then
                echo "  regression $rel: XPASS (known open bug '$id' no longer reproduces: remove it from $known)"
            fi
            rp=$((rp + 1))
        elif [ -n "$id" ]; then
            echo "  regression $rel: XFAIL (known open bug '$id', see $known)"
            rx=$((rx + 1))
        else
            echo "  regression $rel: FAILED"
            grep -E 'ERROR: |runtime error:|FUZZ_ASSERT|SUMMARY:' "$work/replay.log" | head -n 10 | sed 's/^/    /'
            rf=$((rf + 1))
        fi
    done
done
echo "fuzz: regressions: $rp passed, $rx known open (XFAIL), $rf failed"
passed=$((passed + rp))
failed=$((failed + rf))

echo "fuzz: summary ($seconds s per target, $(($(now) - t_start)) s in all):$summary"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
