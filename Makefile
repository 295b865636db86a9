# qembed build, test, bench and install.
#   make            release build of libqembed.so
#   make demo       build and run the main job
#   make test       every test: Swift, C, Python, tiers, CLI, wheel, fuzzing
#   make check      the parity suites only (the edit-test loop)
#   make bench      the benchmark suite (qembed bench)
#   make cli        the qembed command (.build/release/qembed-cli, installed as qembed)
#   make install PREFIX=/usr/local
#   make install-debug   the same, binaries not stripped
# QEMBED_CPU picks how the library is built. On x86-64 the default,
# `dispatch`, builds it once per CPU tier (baseline = x86-64-v2, avx2 =
# x86-64-v3, avx512 = x86-64-v4) behind a small libqembed.so that loads the
# best one the CPU supports at run time (as ggml's CPU backend variants;
# swiftc's -target-cpu takes CPU names only: nehalem, haswell and
# skylake-avx512 carry exactly the features of the x86-64-v2/v3/v4 levels
# the dispatcher checks, and no instruction beyond them is ever generated);
# the qembed command is built for the baseline tier. QEMBED_CPU=native builds
# one library and command for the build machine only (fastest there, may
# not run elsewhere); any other value is passed to -target-cpu. Other
# architectures build one library for their default target.
# Everything links the Swift runtime statically (-static-stdlib): the
# installed files need no Swift toolchain.

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PYTHON     ?= python3
ARCH       := $(shell uname -m)
ifeq ($(ARCH),x86_64)
QEMBED_CPU ?= dispatch
else
QEMBED_CPU ?= native
endif
# QEMBED_CPU is also the run-time variable that forces a tier: a tier name
# found in the environment builds the dispatching library.
ifneq ($(filter baseline avx2 avx512 auto,$(QEMBED_CPU)),)
override QEMBED_CPU := dispatch
endif
CC         ?= cc
STRIP      ?= strip

MAJOR := $(shell sed -n 's/^\#define QEMBED_VERSION_MAJOR \([0-9]*\).*/\1/p' include/qembed.h)
MINOR := $(shell sed -n 's/^\#define QEMBED_VERSION_MINOR \([0-9]*\).*/\1/p' include/qembed.h)
PATCH := $(shell sed -n 's/^\#define QEMBED_VERSION_PATCH \([0-9]*\).*/\1/p' include/qembed.h)
VERSION := $(MAJOR).$(MINOR).$(PATCH)

STATIC := -Xswiftc -static-stdlib
TIERS  := baseline avx2 avx512
cpu_baseline := nehalem
cpu_avx2     := haswell
cpu_avx512   := skylake-avx512
ifeq ($(QEMBED_CPU),dispatch)
SWIFT_RELEASE := -c release $(STATIC) -Xswiftc -target-cpu -Xswiftc $(cpu_baseline)
else
SWIFT_RELEASE := -c release $(STATIC) -Xswiftc -target-cpu -Xswiftc $(QEMBED_CPU)
endif
BUILD := .build/release
LIB   := $(BUILD)/libqembed.so
CLI   := $(BUILD)/qembed-cli
SWIFT_SOURCES := $(shell find Sources -path Sources/dispatch -prune -o \( -name '*.swift' -o -name '*.c' -o -name '*.h' \) -print) Package.swift include/qembed.h qembed.map
VARIANTS := $(if $(filter dispatch,$(QEMBED_CPU)),$(foreach t,$(TIERS),$(BUILD)/libqembed-$(t).so))

.PHONY: all build cli deps demo test test-swift test-c test-python test-cli test-tiers test-wheel test-avx512 bench install install-debug uninstall clean pc sanitize valgrind fuzz fuzz-ci check test-all test-vbmi test-vbmi-swift vbmi-exhaustive

all: build

# System packages the build and tests need (apt-get / pip when missing).
deps:
	@sh tools/deps.sh

build: $(LIB)

ifeq ($(QEMBED_CPU),dispatch)
# One Swift build per tier, each in its own scratch directory, then the
# dispatching libqembed.so (Sources/dispatch) over them. All land in
# .build/release, which SwiftPM owns: it replaces a plain directory there by
# its symlink on its first release build, so the command is built first
# (order-only) and the files go into SwiftPM's directory.
$(BUILD)/libqembed-%.so: $(SWIFT_SOURCES) | $(CLI)
	QEMBED_SONAME=libqembed-$*.so QEMBED_TIER=$* swift build -c release $(STATIC) \
	    -Xswiftc -target-cpu -Xswiftc $(cpu_$*) --scratch-path .build-tier-$* --product qembed
	cp .build-tier-$*/release/libqembed.so $@

$(BUILD)/qembed_dispatch_gen.h: qembed.map | $(CLI)
	awk 'BEGIN { print "#define QEMBED_DISPATCH_FUNCTIONS(X) \\" } \
	     /^ *qembed_[a-z0-9_]*;/ { gsub(/[ ;]/, ""); if ($$0 != "qembed_cpu_tier") printf "    X(%d, %s) \\\n", n++, $$0 } \
	     END { print "" }' qembed.map > $@

$(LIB): $(VARIANTS) $(BUILD)/qembed_dispatch_gen.h Sources/dispatch/qembed_dispatch.c include/qembed.h qembed.map
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -fPIC -shared -Iinclude -I$(BUILD) Sources/dispatch/qembed_dispatch.c \
	    -o $@ -Wl,-soname,libqembed.so.$(MAJOR) -Wl,--version-script=qembed.map -Wl,-z,noexecstack -ldl
	ln -sf libqembed.so $(BUILD)/libqembed.so.$(MAJOR)
else
# The version script is not a Swift source: relink when it changes.
$(LIB): $(SWIFT_SOURCES)
	rm -f $(LIB)
	swift build $(SWIFT_RELEASE) --product qembed
	@touch $(LIB)
	ln -sf libqembed.so $(BUILD)/libqembed.so.$(MAJOR)
endif

cli: $(CLI)
CLI_TIER := $(if $(filter dispatch,$(QEMBED_CPU)),baseline,native)
$(CLI): $(SWIFT_SOURCES) $(shell find Sources/QembedCLI Sources/QembedBenchmarks -name '*.swift')
	QEMBED_TIER=$(CLI_TIER) swift build $(SWIFT_RELEASE) --product qembed-cli
	@touch $(CLI)

# The main job: train, quantize, save, reload, compare (about 15 s here).
demo: build cli
	$(CLI) demo

# Every suite, then one summary line per suite (tools/test_summary.sh).
test:
	@mkdir -p .build
	@{ $(MAKE) --no-print-directory test-all 2>&1; echo $$? > .build/test.status; } | tee .build/test.log
	@status=$$(cat .build/test.status); sh tools/test_summary.sh .build/test.log || status=1; exit $$status

test-all: deps build test-swift test-c test-python test-vbmi test-avx512 test-tiers test-cli test-wheel fuzz-ci

# The edit-test loop: every parity suite, without the tier reruns, the wheel and fuzzing.
check: deps build test-swift test-c test-python test-vbmi test-avx512 test-cli

# The AVX-512 bag and LoRA kernels against the AVX2 ones, bit for bit
# (tools/avx512_check.c; the AVX2 kernels are checked against the portable
# rule by the Swift tests): through SIMDe's portable AVX-512 on any CPU with
# AVX2, and natively too where the CPU has AVX-512. gcc: SIMDe 0.7.4 does not
# build under clang 21.
AVX512_FLAGS := -O2 -std=gnu11 -ffp-contract=off -Wall -Wextra -Wno-psabi -ISources/CQembedSIMD/include -ISources/CQembedSIMD
AVX512_SRC := tools/avx512_check.c $(wildcard Sources/CQembedSIMD/*.c Sources/CQembedSIMD/*.h Sources/CQembedSIMD/include/*.h)
AVX512_REF := Sources/CQembedSIMD/qembed_bag_avx2.c Sources/CQembedSIMD/qembed_lora_avx2.c
HAS_AVX512 := $(shell grep -qw avx512bw /proc/cpuinfo 2>/dev/null && grep -qw avx512vl /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo && echo yes)
HAS_AVX2 := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo && echo yes)
.build/avx512_check: $(AVX512_SRC)
	@mkdir -p .build
	gcc $(AVX512_FLAGS) tools/avx512_check.c $(AVX512_REF) -o $@ -lm
.build/avx512_check_native: $(AVX512_SRC)
	@mkdir -p .build
	gcc $(AVX512_FLAGS) -DQEMBED_AVX512_NATIVE tools/avx512_check.c $(AVX512_REF) -o $@ -lm
test-avx512: $(if $(HAS_AVX2),.build/avx512_check) $(if $(HAS_AVX512),.build/avx512_check_native)
	$(if $(HAS_AVX2),.build/avx512_check,@echo "test-avx512: this CPU has no AVX2/FMA: nothing to check the AVX-512 kernels against")
	$(if $(HAS_AVX512),.build/avx512_check_native,@echo "test-avx512: this CPU has no AVX-512: the kernels were checked emulated only")

# The AVX-512 VBMI kernels against the scalar spec (tools/vbmi_check.c):
# always through SIMDe's portable AVX-512, so their logic is proven on any
# CPU, and natively too where the CPU has VBMI. vbmi-exhaustive checks every
# float in [-1, 1] (minutes natively; 4 minutes emulated on a Zen 3).
VBMI_FLAGS := -O2 -std=gnu11 -ffp-contract=off -Wall -Wextra -Wno-psabi -Iinclude -ISources/CQembedSIMD/include
VBMI_SRC := tools/vbmi_check.c Sources/CQembedSIMD/qembed_vbmi.c Sources/CQembedSIMD/include/qembed_vbmi.h
HAS_VBMI := $(shell grep -qw avx512vbmi /proc/cpuinfo 2>/dev/null && echo yes)
.build/vbmi_check: $(VBMI_SRC) | $(LIB)
	$(CC) $(VBMI_FLAGS) tools/vbmi_check.c -o $@ -L$(BUILD) -lqembed -Wl,-rpath,$(abspath $(BUILD)) -lm
.build/vbmi_check_native: $(VBMI_SRC) | $(LIB)
	$(CC) $(VBMI_FLAGS) -DQEMBED_VBMI_NATIVE tools/vbmi_check.c -o $@ -L$(BUILD) -lqembed -Wl,-rpath,$(abspath $(BUILD)) -lm
test-vbmi: .build/vbmi_check $(if $(HAS_VBMI),.build/vbmi_check_native) test-vbmi-swift
	.build/vbmi_check quick
	$(if $(HAS_VBMI),.build/vbmi_check_native quick,@echo "test-vbmi: this CPU has no AVX-512 VBMI: the kernels were checked emulated only")
# The Swift core's use of the kernels (quantize, dequantize, 8-bit steps, all
# dtypes), with the kernels compiled against SIMDe: the VBMI and reference
# parity tests run through them on any CPU.
.build/vbmi_emu.o: Sources/CQembedSIMD/qembed_vbmi.c Sources/CQembedSIMD/include/qembed_vbmi.h
	@mkdir -p .build
	$(CC) $(VBMI_FLAGS) -fPIC -DQEMBED_VBMI_EMULATE -c Sources/CQembedSIMD/qembed_vbmi.c -o $@
test-vbmi-swift: .build/vbmi_emu.o
	@QEMBED_VBMI_EMULATED=1 swift test --scratch-path .build-vbmi-emu -Xcc -DQEMBED_VBMI_EXTERNAL \
	    -Xlinker $(abspath .build/vbmi_emu.o) --filter 'VBMITests|ReferenceParityTests|OptimizerTests|MapsTests' \
	    > .build/swift-vbmi.log 2>&1; s=$$?; \
	  { grep -E "error:|failed" .build/swift-vbmi.log | tail -n 20; grep -E "Executed [0-9]+ tests?" .build/swift-vbmi.log | tail -n 1; } \
	  | sed 's/^[[:space:]]*/test-vbmi-swift (emulated VBMI): /'; exit $$s
vbmi-exhaustive: .build/vbmi_check $(if $(HAS_VBMI),.build/vbmi_check_native)
	$(if $(HAS_VBMI),.build/vbmi_check_native,.build/vbmi_check) exhaustive

# The wheel: built, installed into a fresh venv, used with the toolchain hidden.
test-wheel: build cli
	PYTHON=$(PYTHON) sh tools/wheel_test.sh

# The parity suites (C tests, Python tests) again under every lower CPU tier
# this machine supports (QEMBED_CPU forces the tier at run time; make test-c
# and test-python above ran the best one). A tier the CPU lacks is reported
# as skipped, after checking that forcing it is refused cleanly.
test-tiers: build
	@if [ "$(QEMBED_CPU)" != dispatch ]; then echo "test-tiers: one tier in this build ($(QEMBED_CPU)): nothing to repeat"; exit 0; fi; \
	best=$$(PYTHONPATH=bindings/python $(PYTHON) -c "import qembed; print(qembed.cpu_tier())"); \
	status=0; \
	for t in $(TIERS); do \
	  if [ "$$t" = "$$best" ]; then echo "test-tiers: $$t: the default here, tested above"; continue; fi; \
	  got=$$(QEMBED_CPU=$$t PYTHONPATH=bindings/python $(PYTHON) -c "import qembed; print(qembed.cpu_tier())" 2>&1 | tail -n 1); \
	  if [ "$$got" = "$$t" ]; then \
	    echo "test-tiers: $$t"; \
	    QEMBED_CPU=$$t sh -c 'cd bindings/c && sh ./run_tests.sh --no-install $$(cd build && ls test_*)' || status=1; \
	    (cd bindings/python && QEMBED_CPU=$$t $(PYTHON) -m pytest -q -p no:cacheprovider tests) || status=1; \
	  else \
	    case "$$got" in *"QEMBED_CPU=$$t refused"*) echo "test-tiers: $$t: not supported by this CPU: forcing it is refused cleanly ($$got)";; \
	    *) echo "test-tiers: $$t: unexpected answer: $$got"; status=1;; esac; \
	  fi; \
	done; exit $$status

# swift test's own summary lines are printed; the log keeps the rest.
test-swift:
	@mkdir -p .build
	@echo "swift test (log: .build/swift-test.log):"
	@swift test > .build/swift-test.log 2>&1; s=$$?; \
	  grep -E "error:|failed" .build/swift-test.log | tail -n 25; \
	  grep -E "Executed [0-9]+ tests?" .build/swift-test.log | tail -n 1; \
	  grep -E "Test run with [0-9]+ tests?" .build/swift-test.log | tail -n 1; exit $$s

test-c: build
	$(MAKE) -C bindings/c test

# The qembed command end to end (quantize -> inspect -> lookup, errors, exit codes, demo --quick).
test-cli: build cli
	sh Tests/cli/run.sh $(CLI)

# Reliability (issue 7): sanitizers, valgrind, fuzzing. `fuzz-ci` is the short run make test does.
sanitize:
	sh tools/sanitize.sh
valgrind: build
	sh tools/valgrind.sh
fuzz:
	sh tools/fuzz.sh $${FUZZ_SECONDS:-300}
fuzz-ci:
	sh tools/fuzz.sh $${FUZZ_SECONDS:-20}

test-python: build
	cd bindings/python && $(PYTHON) -m pytest -q tests

# The benchmark suite runs in the qembed command's copy of the core, built
# here for BENCH_CPU (default: this machine, as the tier builds are for
# theirs; BENCH_CPU=haswell measures exactly the avx2 tier's code generation,
# nehalem the baseline's, skylake-avx512 the avx512 one's).
BENCH_CPU ?= native
bench:
	QEMBED_TIER=native swift build -c release $(STATIC) -Xswiftc -target-cpu -Xswiftc $(BENCH_CPU) --scratch-path .build-bench-$(BENCH_CPU) --product qembed-cli
	.build-bench-$(BENCH_CPU)/release/qembed-cli bench $(BENCH_ARGS)

pc: $(BUILD)/qembed.pc
$(BUILD)/qembed.pc: pkgconfig/qembed.pc.in include/qembed.h
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' pkgconfig/qembed.pc.in > $@

# The .pc is regenerated for each install so that PREFIX is always the given one.
# Binaries are stripped (install-debug keeps their symbols). The Python package
# goes where the target interpreter looks for a prefix's packages (sysconfig
# purelib with that prefix), or PYTHON_SITE=<dir>.
PYTHON_SITE ?= $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '$(PREFIX)', 'platbase': '$(PREFIX)'}))" 2>/dev/null || echo $(LIBDIR)/python3/site-packages)
INSTALL_STRIP ?= -s
install-debug:
	$(MAKE) install INSTALL_STRIP=

install: build cli
	@mkdir -p $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(INSTALL_STRIP) $(CLI) $(DESTDIR)$(PREFIX)/bin/qembed
	install -m 755 $(INSTALL_STRIP) $(LIB) $(DESTDIR)$(LIBDIR)/libqembed.so.$(VERSION)
	for v in $(VARIANTS); do install -m 755 $(INSTALL_STRIP) $$v $(DESTDIR)$(LIBDIR)/$$(basename $$v); done
	ln -sf libqembed.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libqembed.so.$(MAJOR)
	ln -sf libqembed.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libqembed.so
	install -m 644 include/qembed.h $(DESTDIR)$(INCLUDEDIR)/qembed.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' pkgconfig/qembed.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/qembed.pc
	@mkdir -p $(DESTDIR)$(PYTHON_SITE)
	rm -rf $(DESTDIR)$(PYTHON_SITE)/qembed
	cp -r bindings/python/qembed $(DESTDIR)$(PYTHON_SITE)/qembed
	find $(DESTDIR)$(PYTHON_SITE)/qembed -name __pycache__ -prune -exec rm -rf {} +
	ln -sf $(LIBDIR)/libqembed.so.$(MAJOR) $(DESTDIR)$(PYTHON_SITE)/qembed/libqembed.so
	@echo "installed qembed $(VERSION) into $(DESTDIR)$(PREFIX); the Python package is in $(PYTHON_SITE)"
	@if [ -z "$(DESTDIR)" ] && ! $(PYTHON) -c "import sys; sys.exit(0 if '$(PYTHON_SITE)' in sys.path else 1)" 2>/dev/null; then \
	  echo "note: $(PYTHON_SITE) is not on $(PYTHON)'s sys.path: export PYTHONPATH=$(PYTHON_SITE)"; fi

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libqembed.so* $(DESTDIR)$(LIBDIR)/libqembed-*.so $(DESTDIR)$(INCLUDEDIR)/qembed.h \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/qembed.pc $(DESTDIR)$(PREFIX)/bin/qembed
	rm -rf $(DESTDIR)$(PYTHON_SITE)/qembed

clean:
	swift package clean
	$(MAKE) -C bindings/c clean
