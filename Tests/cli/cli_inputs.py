"""Inputs and checks for Tests/cli/run.sh (system python3 + numpy only).

  python3 cli_inputs.py make DIR
      DIR/table.npy          200 x 64 float32, N(0, 0.5), seed 1
      DIR/multi.safetensors  a BERT-like state dict (written by hand):
          embeddings.word_embeddings.weight       F32  300 x 64
          embeddings.position_embeddings.weight   F16   40 x 64
          embeddings.token_type_embeddings.weight BF16   2 x 64
          embeddings.LayerNorm.weight             F32  64
          position_ids                            I64  1 x 40
        with __metadata__ {"format": "pt"}
      DIR/ints.npy           10 x 4 int32 (not a float table)

  python3 cli_inputs.py kept ORIG OUT TABLE[,TABLE...]
      OUT (qembed quantize --keep-others) holds every tensor of ORIG but the
      TABLEs byte for byte with the same dtype and shape, the TABLEs' quantized
      tensors, and ORIG's metadata; read with the `safetensors` package when
      it is installed (else with this file's own reader). Prints one line.

  python3 cli_inputs.py rows MODE ORIG TENSOR LOOKUP_OUT [BLOCKSIZE [QFILE]]
      Compares the rows printed by `qembed lookup` ("id: v v v ...") with
      the original table (tensor TENSOR of ORIG; "-" for a .npy) within
      the error bound of MODE: exact, int8, nf4, fp4, blockwise8 (its code
      read from QFILE). Prints one line; exit status 1 when a value is out
      of bounds, the output is malformed, or no row was printed.
  python3 cli_inputs.py shards DIR
      Row-sharded checkpoints in the layout of qembed.distributed's
      ShardedEmbedding.save (per-rank files + model.safetensors.index.json):
      DIR/ckpt     Embedding 1000 x 24 F32 over 3 ranks (rows 0-351, 352-703,
                   704-999), DIR/table.npy the whole table;
      DIR/stable   StableEmbedding 300 x 16 BF16 over 4 ranks, the last one
                   empty, LayerNorm in rank 0's file; DIR/stable_*.npy;
      DIR/gap      the index of ckpt with one piece dropped (rows missing);
      DIR/escape   a piece whose file name leaves the folder;
      DIR/quantized the index of ckpt marked as a quantized checkpoint.

  python3 cli_inputs.py joined OUT DIR/NAME
      OUT (qembed consolidate) holds exactly the table, dtype and (stable)
      LayerNorm of the checkpoint DIR/NAME made by `shards`. Prints one line.
"""
import json
import struct
import sys

import numpy as np

# half the largest gap between neighbouring levels of each 4-bit type
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230731010437, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
FP4 = [0.0, 0.0052083333, 0.6666667, 1.0, 0.3333333, 0.5, 0.1666667, 0.25]
FP4 = sorted(FP4 + [-v for v in FP4[1:]])


def half_gap(levels):
    levels = sorted(levels)
    return max(b - a for a, b in zip(levels, levels[1:])) / 2


def bf16_bits(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs = []
    off = 0
    for name, dtype, arr in tensors:
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = data[8 + n + b:8 + n + e]
        dt = v["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                                          "U8": "u1", "I8": "i1"}[dt])
        out[name] = a.reshape(v["shape"])
        out[name + "/dtype"] = dt
    return out


def make(d):
    rng = np.random.default_rng(1)
    np.save(d + "/table.npy", (rng.standard_normal((200, 64)) * 0.5).astype(np.float32))
    word = (rng.standard_normal((300, 64)) * 0.05).astype(np.float32)
    pos = (rng.standard_normal((40, 64)) * 0.02).astype(np.float16)
    tok = bf16_bits(rng.standard_normal((2, 64)) * 0.02)
    ln = np.ones(64, dtype=np.float32)
    ids = np.arange(40, dtype=np.int64).reshape(1, 40)
    write_safetensors(d + "/multi.safetensors", [
        ("embeddings.word_embeddings.weight", "F32", word),
        ("embeddings.position_embeddings.weight", "F16", pos),
        ("embeddings.token_type_embeddings.weight", "BF16", tok),
        ("embeddings.LayerNorm.weight", "F32", ln),
        ("position_ids", "I64", ids),
    ], {"format": "pt"})
    np.save(d + "/ints.npy", np.arange(40, dtype=np.int32).reshape(10, 4))


def rows(mode, orig, tensor, lookup_out, blocksize=None, qfile=None):
    round_rel = 0.0
    if tensor == "-":
        table = np.load(orig).astype(np.float64)
    else:
        st = read_safetensors(orig)
        table = st[tensor].astype(np.float64)
        # lookups round to the table's dtype (upstream's .to(self.dtype))
        round_rel = {"F16": 2.0 ** -11, "BF16": 2.0 ** -8}.get(st[tensor + "/dtype"], 0.0)
    if table.ndim == 1:
        table = table.reshape(1, -1)
    n_rows, dim = table.shape
    flat = table.reshape(-1)
    bs = int(blocksize) if blocksize not in (None, "-") else None
    if mode in ("nf4", "fp4", "blockwise8"):
        nblocks = -(-flat.size // bs)
        padded = np.zeros(nblocks * bs)
        padded[:flat.size] = np.abs(flat)
        block_absmax = padded.reshape(nblocks, bs).max(axis=1)
    if mode == "blockwise8":
        q = read_safetensors(qfile)
        (key,) = [k for k in q if k.endswith(".quant_map")]
        code = q[key].astype(np.float64)
        gap8 = half_gap(code)
    worst = 0.0
    count = 0
    for line in open(lookup_out):
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(":")
        r = int(head)
        vals = [float(x) for x in rest.split()]
        if len(vals) != dim:
            print("row %d: %d values printed, want %d" % (r, len(vals), dim))
            return 1
        for j, got in enumerate(vals):
            want = table[r, j]
            err = abs(got - want)
            fmt = 1e-5 * max(abs(got), abs(want))       # %.6g printing
            if mode == "exact":
                bound = 0.0
            elif mode == "int8":
                bound = np.abs(table[r]).max() / 127 * 0.5 * (1 + 1e-5)
            elif mode == "nf4":
                bound = block_absmax[(r * dim + j) // bs] * half_gap(NF4) * (1 + 1e-5)
            elif mode == "fp4":
                bound = block_absmax[(r * dim + j) // bs] * half_gap(FP4) * (1 + 1e-5)
            elif mode == "blockwise8":
                bound = block_absmax[(r * dim + j) // bs] * gap8 * (1 + 1e-5)
            else:
                print("unknown mode " + mode)
                return 1
            if mode != "exact":
                bound += round_rel * abs(got) + (6e-8 if round_rel else 0.0)  # f16/bf16 output rounding
            bound += fmt + 1e-30
            worst = max(worst, err / bound if bound > 0 else 0)
            if err > bound:
                print("row %d col %d: got %r, original %r, error %.3g > bound %.3g (%s)" % (r, j, got, want, err, bound, mode))
                return 1
            count += 1
    if count == 0:
        print("no rows printed")
        return 1
    print("%s: %d values within bounds (worst %.2f of the bound)" % (mode, count, worst))
    return 0


def read_raw(path):
    """{name: (dtype, shape, bytes)} and the metadata, by hand."""
    with open(path, "rb") as fh:
        raw = fh.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    return {k: (v["dtype"], list(v["shape"]), raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in header.items()}, meta


def kept(orig, out, tables):
    tables = tables.split(",")
    a, ma = read_raw(orig)
    b, mb = read_raw(out)
    reader = "by hand"
    try:  # the format's own reader must accept the output (it validates the layout on open)
        from safetensors import safe_open
    except ImportError:
        safe_open = None
    if safe_open is not None:
        reader = "safetensors " + __import__("safetensors").__version__
        with safe_open(out, framework="np") as f:
            if sorted(f.keys()) != sorted(b):
                print("safetensors sees other tensors: %s" % sorted(f.keys()))
                return 1
            for k in f.keys():
                if b[k][0] == "BF16":
                    continue  # numpy has no bfloat16 without ml_dtypes; compared by hand below
                if f.get_tensor(k).tobytes() != b[k][2]:
                    print("safetensors reads %s differently" % k)
                    return 1
    for k, v in a.items():
        if k in tables:
            if k not in b or b[k][0] == v[0] and b[k][1] == v[1]:
                print("table %s was not replaced" % k)
                return 1
            continue
        if b.get(k) != v:
            print("tensor %s changed or is missing" % k)
            return 1
    for k, v in ma.items():
        if mb.get(k) != v:
            print("metadata %s changed" % k)
            return 1
    extra = sorted(set(b) - set(a))
    if not all(any(e.startswith(t + ".") for t in tables) for e in extra):
        print("unexpected tensors: %s" % extra)
        return 1
    print("%d other tensors byte-identical, %d quantized tables, %d new tensors (read %s)"
          % (len(a) - len(tables), len(tables), len(extra), reader))
    return 0


def _checkpoint(path, weight, dtype, bounds, stable=None):
    """Writes a ShardedEmbedding.save layout by hand: shard-RRRRR-of-WWWWW files
    with "weight" (and the LayerNorm in rank 0's) and the index JSON."""
    import os
    os.makedirs(path, exist_ok=True)
    world = len(bounds) - 1
    V, D = weight.shape
    files = ["shard-%05d-of-%05d.safetensors" % (r, world) for r in range(world)]
    for r in range(world):
        lo, hi = bounds[r], bounds[r + 1]
        tensors = [("weight", dtype, weight[lo:hi])] if hi > lo else []
        if stable is not None and r == 0:
            tensors += [("norm.weight", dtype, stable[0]), ("norm.bias", dtype, stable[1])]
        meta = {"row_offset": str(lo), "rows": str(hi - lo), "world_size": str(world), "rank": str(r),
                "num_embeddings": str(V), "embedding_dim": str(D), "format": "pt"}
        write_safetensors(os.path.join(path, files[r]), tensors, meta)
    pieces = [{"file": files[r], "row_offset": bounds[r], "rows": bounds[r + 1] - bounds[r]}
              for r in range(world) if bounds[r + 1] > bounds[r]]
    index = {"metadata": {"total_size": weight.nbytes, "format": "qembed.distributed.ShardedEmbedding",
                          "world_size": world, "num_embeddings": V, "embedding_dim": D,
                          "stable": stable is not None, "options": {"padding_idx": 3}},
             "weight_map": {"weight": pieces[0]["file"]}, "shards": {"weight": pieces}}
    if stable is not None:
        index["weight_map"].update({"norm.weight": files[0], "norm.bias": files[0]})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    return index


def shards(d):
    import os
    import shutil
    rng = np.random.default_rng(7)
    # values over many orders of magnitude, as trained tables have
    w = (rng.standard_normal((1000, 24)) * 10.0 ** rng.uniform(-6, 3, (1000, 1))).astype(np.float32)
    np.save(d + "/table.npy", w)
    index = _checkpoint(d + "/ckpt", w, "F32", [0, 352, 704, 1000])
    s = bf16_bits(rng.standard_normal((300, 16)))
    ln = (bf16_bits(rng.uniform(0.5, 1.5, 16)), bf16_bits(rng.standard_normal(16) * 0.1))
    _checkpoint(d + "/stable", s, "BF16", [0, 96, 192, 300, 300], stable=ln)
    np.save(d + "/stable_weight.npy", s)
    np.save(d + "/stable_norm_weight.npy", ln[0])
    np.save(d + "/stable_norm_bias.npy", ln[1])
    for name, edit in (("gap", lambda ix: ix["shards"]["weight"].pop(1)),
                       ("quantized", lambda ix: ix["metadata"].update(quantized={"quant_type": "nf4", "blocksize": 64})),
                       ("escape", lambda ix: ix["shards"]["weight"][0].update(file="../table.npy"))):
        shutil.copytree(d + "/ckpt", d + "/" + name)
        ix = json.loads(json.dumps(index))
        edit(ix)
        with open(os.path.join(d, name, "model.safetensors.index.json"), "w") as f:
            json.dump(ix, f)


def joined(out, ckpt):
    import os
    d, name = os.path.split(ckpt.rstrip("/"))
    got, meta = read_raw(out)
    if name == "ckpt":
        want = {"weight": ("F32", np.load(d + "/table.npy"))}
    else:
        want = {"weight": ("BF16", np.load(d + "/stable_weight.npy")),
                "norm.weight": ("BF16", np.load(d + "/stable_norm_weight.npy")),
                "norm.bias": ("BF16", np.load(d + "/stable_norm_bias.npy"))}
    if sorted(got) != sorted(want):
        print("tensors %s, want %s" % (sorted(got), sorted(want)))
        return 1
    for k, (dt, arr) in want.items():
        gdt, shape, raw = got[k]
        if gdt != dt or shape != list(arr.shape) or raw != arr.tobytes():
            print("%s: %s %s differs from the checkpoint's %s %s" % (k, gdt, shape, dt, list(arr.shape)))
            return 1
    layer = "StableEmbedding" if name == "stable" else "Embedding"
    if meta.get("qembed.layer") != layer:
        print("metadata qembed.layer = %r, want %r" % (meta.get("qembed.layer"), layer))
        return 1
    print("%s: %s byte for byte (%s)" % (out, ", ".join(sorted(want)), layer))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "kept":
        sys.exit(kept(*sys.argv[2:]))
    elif sys.argv[1] == "rows":
        sys.exit(rows(*sys.argv[2:]))
    elif sys.argv[1] == "shards":
        shards(sys.argv[2])
    elif sys.argv[1] == "joined":
        sys.exit(joined(*sys.argv[2:]))
    else:
        sys.exit("unknown command " + sys.argv[1])
