"""Shared test setup: import path, golden fixtures, the end-of-run report.

Run from bindings/python:  python3 -m pytest -q tests

The tests need numpy and pytest only. torch, bitsandbytes and ml_dtypes are
optional: tests that need them are skipped when they cannot be imported.
QEMBED_TEST_EXTRA_SITE=<dir>[:<dir>...] appends directories to sys.path
(after the interpreter's own site-packages), e.g. the site-packages of a venv
holding torch and bitsandbytes, so the interop tests run with an interpreter
that has pytest:

    QEMBED_TEST_EXTRA_SITE=/work/refvenv/lib/python3.11/site-packages python3 -m pytest -q tests
"""

import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
REPO_ROOT = os.path.dirname(os.path.dirname(PYTHON_DIR))
GOLDEN_DIR = os.path.join(REPO_ROOT, "Tests", "golden")

if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)
for extra in filter(None, os.environ.get("QEMBED_TEST_EXTRA_SITE", "").split(os.pathsep)):
    if extra not in sys.path:
        sys.path.append(extra)

# Mismatch tallies collected by the golden tests, printed at the end.
REPORT = {}


def report(kind, differing, total):
    d = REPORT.setdefault(kind, [0, 0, 0])
    d[0] += int(differing)
    d[1] += int(total)
    d[2] += 1


def load_manifest():
    path = os.path.join(GOLDEN_DIR, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    tr = terminalreporter
    tr.section("expected, not failures: where bitsandbytes 0.50.2's CPU kernels round differently from the exact rule qembed implements (golden fixtures)")
    for kind, (d, t, cases) in sorted(REPORT.items()):
        tr.write_line(f"{kind:48s} {d:6d} of {t:7d} elements differ ({100.0 * d / max(t, 1):.3f}%) "
                      f"in {cases} cases")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh data per test, reproducible."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)
