#!/usr/bin/env python3
"""Parse-bound file benchmark (issue "Conformance and hardening", part 3): opening a
safetensors header of 100,000 tensors, and loading a 250,000 x 256 nested NF4 layer, best of 5.

    python3 bench/parse_bench.py bindings/python      # the binding (and library) to time

Run it against two builds in turn (e.g. a git worktree of an older commit) to compare them."""
import json, struct, time, sys, os
sys.path.insert(0, sys.argv[1])
import qembed.io as io
from qembed.nn import EmbeddingNF4, StableEmbedding
d = os.path.join(os.environ.get("TMPDIR", "/tmp"), "qembed-parse-bench"); os.makedirs(d, exist_ok=True)
n = 100_000
hdr = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4*i, 4*i+4]} for i in range(n)}
h = json.dumps(hdr).encode()
with open(f"{d}/many.safetensors", "wb") as f: f.write(struct.pack("<Q", len(h)) + h + b"\0" * (4*n))
q = EmbeddingNF4.from_embedding(StableEmbedding(250_000, 256, seed=1), compress_statistics=True)
q.save(f"{d}/nf4.safetensors")
def best(fn, reps=5):
    t = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return min(t) * 1e3
kw = {"mmap": True} if "mmap" in io.TensorFile.__init__.__code__.co_varnames else {}
print(f"open 100k-tensor header ({len(h)/1e6:.1f} MB JSON): {best(lambda: io.TensorFile(f'{d}/many.safetensors', **kw).close()):.1f} ms")
print(f"load NF4+nested 250000x256: {best(lambda: EmbeddingNF4.load(f'{d}/nf4.safetensors', **kw)):.1f} ms")
