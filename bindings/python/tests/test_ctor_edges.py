"""The layers' and optimizers' constructors at the edges of their
arguments, against bitsandbytes 0.50.2 (Tests/golden/ctor_edges.json, from
tools/gen_fixtures_ctor_edges.py): what bitsandbytes builds, qembed builds;
what it refuses, qembed refuses with a ValueError or TypeError. The
deliberate differences (docs/CONFORMANCE.md) are listed in DIFFERENT, each
with its reason; the test fails if one of them stops being a difference."""
import json
import os

import pytest

import qembed.nn as nn
import qembed.optim as optim

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "Tests", "golden", "ctor_edges.json")
CASES = json.load(open(GOLDEN))["cases"]

# (class, shape or None, kwargs): why qembed differs from bitsandbytes there
DIFFERENT = {
    ("Embedding", (10, 4), (("max_norm", 0.0),)): "max_norm <= 0 zeroes or sign-flips every looked-up row in torch: refused",
    ("Embedding", (10, 4), (("max_norm", -1.0),)): "max_norm <= 0 zeroes or sign-flips every looked-up row in torch: refused",
    ("StableEmbedding", (10, 4), (("max_norm", 0.0),)): "as Embedding",
    ("StableEmbedding", (10, 4), (("max_norm", -1.0),)): "as Embedding",
    ("Embedding", (0, 4), ()): "an empty table: qembed's tables have at least one row and column",
    ("Embedding", (10, 0), ()): "as above",
    ("StableEmbedding", (0, 4), ()): "as above",
    ("StableEmbedding", (10, 0), ()): "as above",
    ("Embedding4bit", (10, 64), (("blocksize", 32), ("quant_type", "nf4"))): "qembed's extension: blocksize",
    ("Embedding4bit", (10, 64), (("blocksize", 64), ("quant_type", "nf4"))): "qembed's extension: blocksize",
    ("Embedding4bit", (10, 64), (("blocksize", 32), ("quant_type", "fp4"))): "qembed's extension: blocksize",
    ("Embedding4bit", (10, 64), (("blocksize", 64), ("quant_type", "fp4"))): "qembed's extension: blocksize",
    ("EmbeddingNF4", (10, 64), (("compress_statistics", True),)): "qembed's extension: nested statistics",
    ("EmbeddingFP4", (10, 64), (("compress_statistics", True),)): "qembed's extension: nested statistics",
    ("Adam", None, (("optim_bits", 16),)): "bitsandbytes builds it and fails at the first step; qembed says so at once",
}


def key(c):
    return (c["cls"], tuple(c["shape"]) if c["kind"] == "nn" else None, tuple(sorted(c["kwargs"].items(), key=lambda kv: kv[0])))


def case_id(c):
    return c["cls"] + "(" + ",".join(f"{k}={v}" for k, v in c["kwargs"].items()) + (f",shape={c['shape']}" if c["kind"] == "nn" else "") + ")"


def build(c):
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in c["kwargs"].items()}
    if c["kind"] == "nn":
        return getattr(nn, c["cls"])(*c["shape"], **kw)
    return getattr(optim, c["cls"])(nn.Embedding(10, 4).parameters(), **kw)


def hashable(c):
    k = key(c)
    return (k[0], k[1], tuple((a, tuple(b) if isinstance(b, list) else b) for a, b in k[2]))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_constructor_edge(case):
    # qembed builds what bitsandbytes builds, except the documented differences
    # (each must still be one: the test fails when a difference disappears)
    qembed_builds = ("builds" in case) != (hashable(case) in DIFFERENT)
    if qembed_builds:
        build(case)
    else:  # as bitsandbytes: NotImplementedError for what it does not implement
        kinds = NotImplementedError if case.get("raises") == "NotImplementedError" else (ValueError, TypeError)
        with pytest.raises(kinds):
            build(case)


def test_every_documented_difference_is_a_case():
    keys = {hashable(c) for c in CASES}
    assert set(DIFFERENT) <= keys
