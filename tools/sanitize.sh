#!/bin/sh
# tools/sanitize.sh [SECTION...] - qembed under AddressSanitizer, UBSan and
# ThreadSanitizer (`make sanitize`; issue 7). Sections (default: all four):
#
#   asan-c      swift build --build-path .build/asan --sanitize=address --product qembed,
#               then every C test (bindings/c/tests/test_*.c) and example
#               (bindings/c/examples/*.c) compiled with clang
#               -fsanitize=address,undefined against that library and run with
#               leak detection on;
#   asan-swift  swift test --sanitize=address --build-path .build/asan-test;
#   tsan-swift  swift test --sanitize=thread --build-path .build/tsan-test
#               --filter 'EmbeddingTests|OptimizerTests' (the concurrency tests;
#               the pattern also matches QuantizedEmbeddingTests);
#   tsan-c      swift build --build-path .build/tsan --sanitize=thread --product qembed,
#               then Tests/stress/stress.c and the C thread tests compiled with
#               -fsanitize=thread against it (TSan sees the library's own
#               accesses, locks and libdispatch work items).
#
# Each sanitizer is first shown to work: a scratch program with a deliberate
# one-float overflow (asan) or an unsynchronized read of a layer's table
# (tsan) must be reported, or the section fails.
# Prints one line per program or suite (sanitizer verdict, the program's own
# summary line, time) and ends with "sanitize: P passed, F failed". Exit
# status 1 on any sanitizer report, crash or failing test. Logs:
# .build/sanitize/*.log.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2

sections=${*:-"asan-c asan-swift tsan-swift tsan-c"}
logs=$root/.build/sanitize
mkdir -p "$logs"
clang=${SANITIZE_CC:-/opt/swift/usr/bin/clang}
if [ ! -x "$clang" ]; then
    clang=$(dirname "$(command -v swift 2>/dev/null || echo /nonexistent/swift)")/clang
fi
if [ ! -x "$clang" ]; then
    echo "sanitize: the Swift toolchain's clang was not found (set SANITIZE_CC)"
    echo "sanitize: 0 passed, 1 failed"
    exit 1
fi
swiftlib=$(cd "$(dirname "$clang")/../lib/swift/linux" 2>/dev/null && pwd)
ld_flag=
[ -x "$(dirname "$clang")/ld.lld" ] && ld_flag=-fuse-ld=lld

# The Swift runtime's crash handler would take the signal before the
# sanitizer's report; UBSan stops at the first finding.
SWIFT_BACKTRACE=enable=no
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export SWIFT_BACKTRACE UBSAN_OPTIONS
QEMBED_TEST_DATA=$root/bindings/c/tests/data
export QEMBED_TEST_DATA

passed=0
failed=0
report=
now() { date +%s; }
note() { # verdict line
    report="$report
$1"
    echo "$1"
}

# sanitizer findings in a log: ASan/LSan/UBSan/TSan reports
findings() { # log
    grep -cE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|WARNING: ThreadSanitizer|ThreadSanitizer: reported' "$1"
}

# run one program: verdict from its exit status, sanitizer reports and its
# "<name>: P passed, F failed" line
run_one() { # label log command...
    label=$1
    log=$2
    shift 2
    t0=$(now)
    "$@" > "$log" 2>&1
    status=$?
    n=$(findings "$log")
    line=$({ grep -E '^[A-Za-z_ -]+: [0-9]+ passed, [0-9]+ failed$|bad-input cases' "$log" | tail -n 2
             grep -E 'Executed [0-9]+ tests?' "$log" | tail -n 1; } | sed 's/^[[:space:]]*//' | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if [ "$n" -gt 0 ]; then
        note "  $label: SANITIZER REPORT ($n) [exit $status, $(($(now) - t0)) s] $line"
        grep -E 'ERROR: |runtime error:|WARNING: ThreadSanitizer|SUMMARY:' "$log" | head -n 6 | sed 's/^/      /'
        echo "      log: $log"
        failed=$((failed + 1))
    elif [ "$status" -ne 0 ]; then
        note "  $label: clean, but FAILED (exit $status, $(($(now) - t0)) s) $line"
        grep -E 'FAILED|error:|Fatal' "$log" | head -n 5 | sed 's/^/      /'
        echo "      log: $log"
        failed=$((failed + 1))
    else
        note "  $label: clean [$(($(now) - t0)) s] $line"
        passed=$((passed + 1))
    fi
}

in_dir() { # dir command... : run a program with dir as its working directory
    d=$1
    shift
    (cd "$d" && exec "$@")
}

build_lib() { # kind(address|thread) build-path
    t0=$(now)
    echo "sanitize: swift build --build-path $2 --sanitize=$1 --product qembed"
    if ! swift build --build-path "$root/$2" --sanitize="$1" --product qembed > "$logs/build-$1.log" 2>&1; then
        tail -n 30 "$logs/build-$1.log"
        note "  build ($1): FAILED (log: $logs/build-$1.log)"
        failed=$((failed + 1))
        return 1
    fi
    ln -sf libqembed.so "$root/$2/debug/libqembed.so.0"
    # the instrumentation is really in the library
    probe=__asan_report_load
    [ "$1" = thread ] && probe=__tsan_read
    if ! nm -D --undefined-only "$root/$2/debug/libqembed.so" | grep -q "$probe"; then
        note "  build ($1): FAILED: $2/debug/libqembed.so has no $probe calls"
        failed=$((failed + 1))
        return 1
    fi
    echo "sanitize: built in $(($(now) - t0)) s"
}

# compile a C program against a sanitized library
cc_san() { # sanitizers libdir out src extra...
    san=$1 libdir=$2 out=$3 src=$4
    shift 4
    "$clang" -std=c11 -O1 -g -fno-omit-frame-pointer -ffp-contract=off $ld_flag -fsanitize="$san" \
        -fno-sanitize-recover=undefined -I"$root/include" -I"$root/bindings/c/tests" -o "$out" "$src" \
        -L"$libdir" -lqembed -Wl,-rpath,"$libdir" "$@" -lpthread -lm > "$out.cc.log" 2>&1 ||
        { grep -v 'Cannot export local symbol' "$out.cc.log"; return 1; }
}

# ---- asan-c ------------------------------------------------------------------
section_asan_c() {
    echo "sanitize: [asan-c] the C tests and examples against the ASan library"
    build_lib address .build/asan || return
    lib=$root/.build/asan/debug
    bin=$logs/asan-c
    mkdir -p "$bin"
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1}
    export ASAN_OPTIONS
    # the detector works: a float buffer one element short for a 256-entry code
    cat > "$bin/selfcheck.c" << 'EOF'
#include <stdlib.h>
#include "qembed.h"
int main(void) {
    float *code = malloc(255 * sizeof *code); /* 256 are written */
    int s = qembed_create_dynamic_map(true, 7, 8, code);
    free(code);
    return s;
}
EOF
    if cc_san address,undefined "$lib" "$bin/selfcheck" "$bin/selfcheck.c" &&
        ! "$bin/selfcheck" > "$logs/asan-selfcheck.log" 2>&1 &&
        grep -q 'heap-buffer-overflow' "$logs/asan-selfcheck.log"; then
        note "  asan self-check: a 1-float overflow written by the library was reported (heap-buffer-overflow)"
    else
        note "  asan self-check: FAILED: a deliberate overflow was not reported (log: $logs/asan-selfcheck.log)"
        failed=$((failed + 1))
        return
    fi
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/qembed-asan.XXXXXX")
    for src in bindings/c/tests/test_*.c bindings/c/examples/*.c; do
        name=$(basename "$src" .c)
        if ! cc_san address,undefined "$lib" "$bin/$name" "$src"; then
            note "  $name: FAILED to compile"
            failed=$((failed + 1))
            continue
        fi
        args=
        grep -q -- '"--quick"' "$src" && args=--quick
        grep -q -- '"--out-dir"' "$src" && args="$args --out-dir $scratch"
        # shellcheck disable=SC2086
        run_one "$name (asan+ubsan)" "$logs/asan-$name.log" in_dir "$scratch" "$bin/$name" $args
    done
    rm -rf "$scratch"
}

# ---- swift test under a sanitizer ---------------------------------------------
section_swift() { # address|thread build-path [filter]
    san=$1 bp=$2 filter=${3:-}
    echo "sanitize: [$san-swift] swift test --sanitize=$san --build-path $bp${filter:+ --filter '$filter'}"
    log=$logs/swift-test-$san.log
    if [ "$san" = address ]; then
        # XCTest and Foundation keep allocations alive at exit: leaks are
        # checked by the C programs (asan-c) and valgrind, not here
        ASAN_OPTIONS=${ASAN_OPTIONS_SWIFT:-detect_leaks=0:abort_on_error=0}
        export ASAN_OPTIONS
    fi
    if [ -n "$filter" ]; then
        run_one "swift test ($san sanitizer, --filter '$filter')" "$log" swift test --sanitize="$san" --build-path "$root/$bp" --filter "$filter"
    else
        run_one "swift test ($san sanitizer)" "$log" swift test --sanitize="$san" --build-path "$root/$bp"
    fi
}

# ---- tsan-c --------------------------------------------------------------------
section_tsan_c() {
    echo "sanitize: [tsan-c] Tests/stress/stress.c and the C thread tests against the TSan library"
    build_lib thread .build/tsan || return
    lib=$root/.build/tsan/debug
    bin=$logs/tsan-c
    mkdir -p "$bin"
    TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1}
    export TSAN_OPTIONS
    # TSan's libdispatch interceptors need libdispatch and the blocks runtime
    dispatch="-L$swiftlib -ldispatch -lBlocksRuntime -Wl,-rpath,$swiftlib"
    cat > "$bin/selfcheck.c" << 'EOF'
#include <pthread.h>
#include "qembed.h"
static qembed_embedding *e;
static volatile float sink;
static void *writer(void *arg) {
    uint64_t i;
    (void)arg;
    for (i = 0; i < 200; i++) qembed_embedding_reset_parameters(e, i); /* rewrites the table */
    return NULL;
}
int main(void) {
    qembed_embedding_params p;
    qembed_param *w = NULL;
    qembed_param_info info;
    pthread_t t;
    int i;
    qembed_embedding_params_init(&p);
    p.num_embeddings = 8;
    p.embedding_dim = 16;
    qembed_embedding_create(&p, &e);
    qembed_embedding_param(e, 0, &w);
    info.struct_size = sizeof info;
    qembed_param_info_get(w, &info);
    pthread_create(&t, NULL, writer, NULL);
    for (i = 0; i < 100000; i++) sink += ((const float *)info.data)[i % 128]; /* documented as a data race */
    pthread_join(t, NULL);
    qembed_embedding_free(e);
    return 0;
}
EOF
    # shellcheck disable=SC2086
    if cc_san thread "$lib" "$bin/selfcheck" "$bin/selfcheck.c" $dispatch &&
        { "$bin/selfcheck" > "$logs/tsan-selfcheck.log" 2>&1; grep -q 'WARNING: ThreadSanitizer: data race' "$logs/tsan-selfcheck.log"; }; then
        note "  tsan self-check: an unsynchronized read of a table the library rewrites was reported (data race)"
    else
        note "  tsan self-check: FAILED: a deliberate race was not reported (log: $logs/tsan-selfcheck.log)"
        failed=$((failed + 1))
        return
    fi
    for src in Tests/stress/stress.c bindings/c/tests/test_threads.c bindings/c/tests/test_embedding_threads.c; do
        name=$(basename "$src" .c)
        # shellcheck disable=SC2086
        if ! cc_san thread "$lib" "$bin/$name" "$src" $dispatch; then
            note "  $name: FAILED to compile"
            failed=$((failed + 1))
            continue
        fi
        if [ "$name" = stress ]; then
            run_one "stress (tsan, 8 readers + 4 churners, ${TSAN_STRESS_SECONDS:-10} s)" "$logs/tsan-$name.log" \
                "$bin/$name" --readers 8 --churners 4 --seconds "${TSAN_STRESS_SECONDS:-10}"
            grep -E '^stress: (readers|churners):' "$logs/tsan-$name.log" | sed 's/^/      /'
        else
            run_one "$name (tsan)" "$logs/tsan-$name.log" "$bin/$name"
        fi
    done
}

t_all=$(now)
for s in $sections; do
    case $s in
        asan-c) section_asan_c ;;
        asan-swift) section_swift address .build/asan-test ;;
        tsan-swift) section_swift thread .build/tsan-test 'EmbeddingTests|OptimizerTests' ;;
        tsan-c) section_tsan_c ;;
        *) echo "sanitize: unknown section '$s' (asan-c asan-swift tsan-swift tsan-c)"; failed=$((failed + 1)) ;;
    esac
done
echo "sanitize: summary ($(($(now) - t_all)) s):$report"
echo "sanitize: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
