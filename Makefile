# qembed build, test, bench and install.
#   make            release build of libqembed.so
#   make demo       build and run the main job
#   make test       every test: Swift, C, Python
#   make bench      the benchmark suite (qembed bench)
#   make cli        the qembed command (.build/release/qembed-cli, installed as qembed)
#   make install PREFIX=/usr/local
# QEMBED_CPU picks the instruction set (default: the build machine's, like
# llama.cpp's GGML_NATIVE); use QEMBED_CPU=x86-64 for a portable build.

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PYTHON     ?= python3
QEMBED_CPU ?= native
CC         ?= cc

MAJOR := $(shell sed -n 's/^\#define QEMBED_VERSION_MAJOR \([0-9]*\).*/\1/p' include/qembed.h)
MINOR := $(shell sed -n 's/^\#define QEMBED_VERSION_MINOR \([0-9]*\).*/\1/p' include/qembed.h)
PATCH := $(shell sed -n 's/^\#define QEMBED_VERSION_PATCH \([0-9]*\).*/\1/p' include/qembed.h)
VERSION := $(MAJOR).$(MINOR).$(PATCH)

SWIFT_RELEASE := -c release -Xswiftc -target-cpu -Xswiftc $(QEMBED_CPU)
BUILD := .build/release
LIB   := $(BUILD)/libqembed.so
SWIFT_SOURCES := $(shell find Sources -name '*.swift' -o -name '*.c' -o -name '*.h') Package.swift include/qembed.h qembed.map

.PHONY: all build cli deps demo test test-swift test-c test-python test-cli bench install uninstall clean pc sanitize valgrind fuzz fuzz-ci

all: build

# System packages the build and tests need (apt-get / pip when missing).
deps:
	@sh tools/deps.sh

build: $(LIB)

# The version script is not a Swift source: relink when it changes.
$(LIB): $(SWIFT_SOURCES)
	rm -f $(LIB)
	swift build $(SWIFT_RELEASE) --product qembed
	@touch $(LIB)
	ln -sf libqembed.so $(BUILD)/libqembed.so.$(MAJOR)

CLI := $(BUILD)/qembed-cli
cli: $(CLI)
$(CLI): $(SWIFT_SOURCES) $(shell find Sources/QembedCLI Sources/QembedBenchmarks -name '*.swift')
	swift build $(SWIFT_RELEASE) --product qembed-cli
	@touch $(CLI)

# The main job: train, quantize, save, reload, compare (about 15 s here).
demo: build cli
	$(CLI) demo

test: deps build test-swift test-c test-python test-cli fuzz-ci

# swift test's own summary lines are printed; the log keeps the rest.
test-swift:
	@mkdir -p .build
	@swift test > .build/swift-test.log 2>&1; s=$$?; \
	  grep -E "error:|failed|Executed [0-9]+ tests?" .build/swift-test.log | tail -n 25; exit $$s

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

bench: build cli
	$(CLI) bench

pc: $(BUILD)/qembed.pc
$(BUILD)/qembed.pc: pkgconfig/qembed.pc.in include/qembed.h
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' pkgconfig/qembed.pc.in > $@

# The .pc is regenerated for each install so that PREFIX is always the given one.
install: build cli
	@mkdir -p $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(CLI) $(DESTDIR)$(PREFIX)/bin/qembed
	install -m 755 $(LIB) $(DESTDIR)$(LIBDIR)/libqembed.so.$(VERSION)
	ln -sf libqembed.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libqembed.so.$(MAJOR)
	ln -sf libqembed.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libqembed.so
	install -m 644 include/qembed.h $(DESTDIR)$(INCLUDEDIR)/qembed.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' pkgconfig/qembed.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/qembed.pc
	@mkdir -p $(DESTDIR)$(LIBDIR)/python3/site-packages
	rm -rf $(DESTDIR)$(LIBDIR)/python3/site-packages/qembed
	if [ -d bindings/python/qembed ]; then \
	  cp -r bindings/python/qembed $(DESTDIR)$(LIBDIR)/python3/site-packages/qembed && \
	  find $(DESTDIR)$(LIBDIR)/python3/site-packages/qembed -name __pycache__ -prune -exec rm -rf {} + && \
	  ln -sf ../../../libqembed.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/python3/site-packages/qembed/libqembed.so; fi
	@echo "installed qembed $(VERSION) into $(DESTDIR)$(PREFIX)"

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libqembed.so* $(DESTDIR)$(INCLUDEDIR)/qembed.h $(DESTDIR)$(LIBDIR)/pkgconfig/qembed.pc $(DESTDIR)$(PREFIX)/bin/qembed
	rm -rf $(DESTDIR)$(LIBDIR)/python3/site-packages/qembed

clean:
	swift package clean
	$(MAKE) -C bindings/c clean
