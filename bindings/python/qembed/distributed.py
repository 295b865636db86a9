"""qembed.distributed: row-sharded embedding tables over torch.distributed.

    import torch.distributed as dist
    dist.init_process_group("gloo", ...)                  # CPU collectives
    emb = qembed.distributed.ShardedEmbedding(10_000_000, 128, sparse=True)
    opt = qembed.optim.Adam8bit(emb.parameters())      # this rank's rows only
    y = emb(ids)                                          # collective: every rank calls it with its own ids
    emb.backward(ids, dy); opt.step(); opt.zero_grad()
    emb.save("ckpt")                                      # one file per rank + ckpt/model.safetensors.index.json
    emb = qembed.distributed.ShardedEmbedding.load("ckpt")   # any world size: re-sharded

Rows are split in contiguous ranges, one per rank (TorchRec's row-wise
sharding): rank r holds rows [bounds[r], bounds[r+1]) as an ordinary qembed
table (qembed_embedding_create_shard). A forward sends each id to the rank
that owns it (all_to_all_single of the counts, then of the ids), the owners
look their rows up, and the rows come back the same way; backward sends the
gradient rows to the owners, which accumulate them like one batch made of
every rank's ids in rank order. The optimizer state lives with its rows and
is never communicated. Range starts are multiples of 256 / gcd(dim, 256)
rows, so the 8-bit optimizer's 256-element blocks never straddle two ranks:
a sharded table trains bit for bit like the unsharded one fed the ranks'
batches concatenated (the tests check weights and 8-bit state).

Quantized tables (inference): ``emb.quantize("nf4", blocksize=64)`` gives
the sharded int8 / FP4 / NF4 table, byte for byte the ranks' rows of the
unsharded quantization (4-bit ranges on block boundaries, see row_bounds);
``ShardedEmbeddingBag`` is the bag form (qembed.nn.EmbeddingBag's
arguments; rows travel, bags are pooled by the rank that asked). Ray
Train's TorchTrainer initializes the gloo group itself: the modules run
unchanged in its workers.

What crosses the network per step: per looked-up id, 8 bytes out and one
row back (embedding_dim x 4 bytes for float32) in forward, one row to the
owner in backward; nothing for the optimizer. The collectives are
torch.distributed's (gloo on CPU); without an initialized process group a
ShardedEmbedding is a world of one. torch is needed only for the
collectives: importing this module without it raises ImportError.
"""

import json
import math
import os

import numpy as np

try:
    import torch
    import torch.distributed as dist
except ImportError as e:  # pragma: no cover - exercised without torch
    raise ImportError("qembed.distributed needs torch (torch.distributed provides the collectives): "
                      "pip install torch") from e

from . import _arrays
from . import _capi as C
from . import io as _io
from .functional import _FOUR_BIT_BLOCKSIZES
from .nn import _bags
from .nn.embedding_bag import EmbeddingBag
from .nn.modules import Embedding, StableEmbedding, _int, _type_error, _value_error
from .nn.quantized import Embedding4bit, Embedding8bit, _quantized_shard

__all__ = ["ShardedEmbedding", "ShardedEmbeddingBag", "row_bounds"]

INDEX_FILE = "model.safetensors.index.json"


def row_bounds(num_embeddings, embedding_dim, world_size, blocksize=None):
    """The row ranges of `world_size` ranks: bounds[r] .. bounds[r+1]. Equal
    shares rounded up to a multiple of A / gcd(embedding_dim, A) rows, A =
    256 (so no 8-bit optimizer block straddles two ranks) or, for a 4-bit
    table of `blocksize`, lcm(256, blocksize) (no 4-bit block straddles two
    ranks either; the same bounds as a float table's for blocksize <= 256).
    The last ranks may hold fewer rows, or none."""
    align = 256
    if blocksize is not None:
        blocksize = _int(blocksize, "blocksize")
        if blocksize < 1:
            raise _value_error(f"blocksize must be >= 1, got {blocksize}")
        align = align * blocksize // math.gcd(align, blocksize)
    step = align // math.gcd(embedding_dim, align)
    share = -(-num_embeddings // world_size)
    share = -(-share // step) * step
    return [min(num_embeddings, r * share) for r in range(world_size + 1)]


def _world(group):
    if not dist.is_available() or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class ShardedEmbedding:
    """``ShardedEmbedding(num_embeddings, embedding_dim, _weight=None,
    process_group=None, **kw)`` with qembed.nn.Embedding's keyword arguments
    (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, dtype,
    seed) and ``stable=True`` for a StableEmbedding (its LayerNorm is
    replicated: every rank holds it, its gradients are summed across ranks
    in backward, so every rank's optimizer applies the same update). _weight,
    when given, is the full table, the same on every rank; each rank keeps
    its rows. Without _weight, the table is the Xavier draw of `seed` that
    the unsharded layer would have."""

    def __init__(self, num_embeddings, embedding_dim, _weight=None, process_group=None, stable=False, **kw):
        self.num_embeddings = _int(num_embeddings, "num_embeddings")
        self.embedding_dim = _int(embedding_dim, "embedding_dim")
        self.group = process_group
        self.world_size, self.rank = _world(process_group)
        self.bounds = row_bounds(self.num_embeddings, self.embedding_dim, self.world_size)
        self.stable = bool(stable)
        self._kw = dict(kw)
        self.quant_type = None
        lo, hi = self.bounds[self.rank], self.bounds[self.rank + 1]
        self.row_offset, self.rows = lo, hi - lo
        rows_weight = None
        if _weight is not None:
            full = _arrays.to_numpy(_weight)
            if full.shape != (self.num_embeddings, self.embedding_dim):
                raise _value_error(f"_weight: expected the full table ({self.num_embeddings}, {self.embedding_dim}), "
                                   f"got {full.shape}")
            rows_weight = np.ascontiguousarray(full[lo:hi])
        self.local = None
        if self.rows > 0:
            cls = StableEmbedding if self.stable else Embedding
            self.local = cls(self.rows, self.embedding_dim, _weight=rows_weight, _shard=(lo, self.num_embeddings), **kw)
        elif self.stable:
            raise _value_error(f"rank {self.rank} would hold no rows of a StableEmbedding of {self.num_embeddings} rows "
                               f"over {self.world_size} ranks (its LayerNorm needs a local table)")
        self.dtype = self.local.dtype if self.local is not None else np.dtype(np.float32)

    # -- parameters

    @property
    def is_quantized(self):
        return self.quant_type is not None

    def parameters(self):
        """This rank's parameters (its rows; a StableEmbedding's replicated
        LayerNorm too), for qembed.optim. None for a quantized table."""
        if self.local is None or self.is_quantized:
            return iter(())
        return iter(self.local.parameters())

    @property
    def weight(self):
        """This rank's rows (a qembed Parameter), or None for a rank with no
        rows or a quantized table (its rows are self.local, an
        Embedding8bit / EmbeddingFP4 / EmbeddingNF4)."""
        return self.local.weight if self.local is not None and not self.is_quantized else None

    # -- quantized inference tables

    def quantize(self, quant_type="nf4", blocksize=64, compress_statistics=False):
        """The sharded quantized table of the current weight, for inference
        (qembed.nn's Embedding8bit.from_embedding / Embedding4bit.from_embedding
        over the whole table, one shard per rank). quant_type: "int8"
        (Embedding8bit: int8 rows, one scale per row), "fp4" or "nf4"
        (blocks of `blocksize` values). Each rank's shard is byte for byte its
        rows of the unsharded table's quantization
        (qembed_qembedding_quantize_shard), so forward equals the unsharded
        quantized layer's bit for bit. 4-bit ranges follow
        row_bounds(..., blocksize=blocksize): for blocksize <= 256 they are
        this table's ranges, for larger blocks the rows move once to their new
        owners (collective: every rank calls quantize). compress_statistics
        needs the whole table on one rank (a world of one): the nested
        offset is the mean of every block's absmax, so per-rank nested
        statistics would differ from the unsharded ones, and the library
        refuses them. A StableEmbedding's LayerNorm is not part of the
        quantized table (as in qembed.nn). The result has forward() and
        gather_weight() (the dequantized table); backward() and parameters()
        do not apply; save() and load() keep the quantized bytes (re-sharded
        on load)."""
        if self.is_quantized:
            raise _type_error("quantize: this ShardedEmbedding is already quantized")
        if quant_type not in ("int8", "fp4", "nf4"):
            raise _value_error(f"quant_type must be 'int8', 'fp4' or 'nf4', got {quant_type!r}")
        blocksize = _int(blocksize, "blocksize")
        if quant_type != "int8" and blocksize not in _FOUR_BIT_BLOCKSIZES:
            raise _value_error(f"blocksize must be one of {_FOUR_BIT_BLOCKSIZES}, got {blocksize}")
        bounds = self.bounds if quant_type == "int8" else row_bounds(self.num_embeddings, self.embedding_dim,
                                                                     self.world_size, blocksize)
        rows = self._rows_for(bounds)
        q = ShardedEmbedding._quantized_shell(self.num_embeddings, self.embedding_dim, self.group, self.world_size,
                                              self.rank, bounds, quant_type, blocksize, compress_statistics, self.dtype)
        if q.rows > 0:
            code = self.local._dtype_code if self.local is not None else None
            q.local = _quantized_shard(rows, quant_type, blocksize, compress_statistics, q.row_offset,
                                       self.num_embeddings, code)
        return q

    def _index_extra(self):
        """More entries for the checkpoint index's metadata (the bag form's)."""
        return {}

    @staticmethod
    def _quantized_shell(V, D, group, world, rank, bounds, quant_type, blocksize, compress_statistics, dtype):
        q = ShardedEmbedding.__new__(ShardedEmbedding)
        q.num_embeddings, q.embedding_dim = V, D
        q.group, q.world_size, q.rank, q.bounds = group, world, rank, bounds
        q.stable, q._kw, q.dtype = False, {}, dtype
        q.row_offset, q.rows = bounds[rank], bounds[rank + 1] - bounds[rank]
        q.quant_type, q.blocksize, q.compress_statistics = quant_type, blocksize, bool(compress_statistics)
        q.local = None
        return q

    def _rows_for(self, bounds):
        """This rank's rows of the ranges `bounds` (an all_to_all of rows when
        they differ from this table's; collective then)."""
        D = self.embedding_dim
        mine = np.ascontiguousarray(self.local.weight.data) if self.local is not None else np.empty((0, D), self.dtype)
        if list(bounds) == list(self.bounds):
            return mine
        old, new, r = self.bounds, bounds, self.rank

        def overlap(a, b, c, d):
            return max(0, min(b, d) - max(a, c))
        send = np.array([overlap(old[r], old[r + 1], new[q], new[q + 1]) for q in range(self.world_size)], np.int64)
        recv = np.array([overlap(new[r], new[r + 1], old[q], old[q + 1]) for q in range(self.world_size)], np.int64)
        return _from_bits(self._exchange(_bits(mine), send, recv), mine.dtype)

    # -- routing

    def _route(self, ids):
        """(order, owner-local ids in send order, send counts, receive counts)."""
        flat = ids.reshape(-1).astype(np.int64, copy=False)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_embeddings):
            bad = int(flat[(flat < 0) | (flat >= self.num_embeddings)][0])
            raise _value_error(f"index {bad} is out of range for an embedding table of {self.num_embeddings} rows")
        owner = np.searchsorted(np.asarray(self.bounds[1:]), flat, side="right")
        order = np.argsort(owner, kind="stable")
        send_counts = np.bincount(owner, minlength=self.world_size).astype(np.int64)
        local_ids = flat[order] - np.asarray(self.bounds[:-1], dtype=np.int64)[owner[order]]
        recv_counts = self._exchange_counts(send_counts)
        return order, local_ids, send_counts, recv_counts

    def _exchange_counts(self, send):
        if self.world_size == 1:
            return send.copy()
        out = torch.empty(self.world_size, dtype=torch.int64)
        dist.all_to_all_single(out, torch.from_numpy(send), group=self.group)
        return out.numpy()

    def _exchange(self, data, send_counts, recv_counts):
        """all_to_all_single of the rows of `data` (split by send_counts)."""
        if self.world_size == 1:
            return data
        shape = (int(recv_counts.sum()),) + data.shape[1:]
        src = torch.from_numpy(np.ascontiguousarray(data))
        out = torch.empty(shape, dtype=src.dtype)
        dist.all_to_all_single(out, src, output_split_sizes=recv_counts.tolist(), input_split_sizes=send_counts.tolist(),
                               group=self.group)
        return out.numpy()

    # -- forward / backward (collective)

    def forward(self, input):
        """Rows of `input` (global ids, any shape): input.shape + (embedding_dim,).
        Collective: every rank of the group calls it (with its own ids, any
        number, none included)."""
        ids, _ = _arrays.index_array(input)
        return self._lookup(ids).reshape(ids.shape + (self.embedding_dim,))

    def _lookup(self, ids, raw=False):
        """(ids.size, embedding_dim) rows of the global ids (collective): the
        owners' forward, or with `raw` their stored rows (no max_norm
        renormalization; float tables only)."""
        order, local_ids, send, recv = self._route(ids)
        got = self._exchange(local_ids, send, recv)
        if self.local is not None and got.size:
            rows = self.local.weight.data[got] if raw else self.local.forward(got)
        else:
            rows = np.empty((got.size, self.embedding_dim), dtype=self.dtype)
        back = self._exchange(_bits(rows), recv, send)
        out = np.empty((ids.size, self.embedding_dim), dtype=self.dtype)
        out[order] = _from_bits(back, self.dtype)
        return out

    __call__ = forward

    def backward(self, input, grad_output):
        """Send d(loss)/d(forward(input)) to the rows' owners, which
        accumulate it into their gradients. Collective, as forward."""
        if self.is_quantized:
            raise _type_error(f"backward: a quantized ShardedEmbedding ({self.quant_type}) is for inference only; "
                              f"train the float table and quantize() it")
        ids, _ = _arrays.index_array(input)
        g, _ = _arrays.float_array(grad_output, "grad_output")
        if g.shape != ids.shape + (self.embedding_dim,):
            raise _value_error(f"grad_output: expected shape {ids.shape + (self.embedding_dim,)}, got {g.shape}")
        g = g.reshape(-1, self.embedding_dim).astype(np.float32, copy=False)
        order, local_ids, send, recv = self._route(ids)
        got_ids = self._exchange(local_ids, send, recv)
        got_g = self._exchange(g[order], send, recv)
        if self.local is not None:
            # also with no rows: the shard's next step then counts, as the
            # unsharded table's does (its step count stays the same)
            self.local.backward(got_ids, got_g.reshape(-1, self.embedding_dim))
        if self.stable and self.world_size > 1:
            for p in self.local.parameters():
                if p.name.startswith("norm."):
                    if p.grad is None:  # no row served here: a zero contribution
                        p.grad = np.zeros(p.shape, np.float32)
                    t = torch.from_numpy(p.grad)
                    dist.all_reduce(t, group=self.group)

    def zero_grad(self):
        if self.local is not None and not self.is_quantized:
            self.local.zero_grad()

    # -- whole table

    def gather_weight(self):
        """The full table (every rank gets it; collective). For a quantized
        table: the dequantized table, in the dtype its lookups have."""
        if self.local is None:
            mine = np.empty((0, self.embedding_dim), self.dtype)
        elif self.is_quantized:
            mine = self.local.forward(np.arange(self.rows, dtype=np.int64))
        else:
            mine = self.local.weight.data
        if self.world_size == 1:
            return np.array(mine)
        counts = np.diff(np.asarray(self.bounds)).astype(np.int64)
        most = int(counts.max())   # gloo's all_gather wants equal sizes: pad to the largest shard
        bits = _bits(mine)
        padded = np.zeros((most, self.embedding_dim), dtype=bits.dtype)
        padded[:bits.shape[0]] = bits
        parts = [torch.empty((most, self.embedding_dim), dtype=torch.from_numpy(padded).dtype) for _ in counts]
        dist.all_gather(parts, torch.from_numpy(padded), group=self.group)
        return _from_bits(np.concatenate([p.numpy()[:int(c)] for p, c in zip(parts, counts)]), self.dtype)

    # -- checkpoints

    def save(self, path):
        """One safetensors file per rank, ``shard-RRRRR-of-WWWWW.safetensors``
        (its rows as tensor "weight", row_offset / rows / world_size in the
        metadata; a StableEmbedding's LayerNorm in rank 0's file), and, from
        rank 0, an index in the shape of transformers'
        model.safetensors.index.json whose "shards" entry lists each split
        tensor's pieces. Collective (a barrier at the end).

        A quantized table saves each rank's quantized rows under
        bitsandbytes' names (weight, weight.SCB or weight.absmax,
        weight.quant_map, weight.quant_state.bitsandbytes__<type>: an
        ordinary Embedding8bit / Embedding4bit file of its rows) and the
        quantization in the index's metadata ("quantized"); load() re-shards
        it without dequantizing (a nested-statistics table, saved by a world
        of one, loads only into a world of one)."""
        if self.is_quantized:
            return self._save_quantized(path)
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        name = f"shard-{self.rank:05d}-of-{self.world_size:05d}.safetensors"
        tensors = {}
        if self.local is not None:
            tensors["weight"] = np.array(self.local.weight.data)
            if self.stable and self.rank == 0:
                tensors["norm.weight"] = np.array(self.local.norm.weight.data)
                tensors["norm.bias"] = np.array(self.local.norm.bias.data)
        meta = {"row_offset": str(self.row_offset), "rows": str(self.rows), "world_size": str(self.world_size),
                "rank": str(self.rank), "num_embeddings": str(self.num_embeddings),
                "embedding_dim": str(self.embedding_dim), "format": "pt"}
        _io.save_file(tensors, os.path.join(path, name), metadata=meta)
        if self.rank == 0:
            files = [f"shard-{r:05d}-of-{self.world_size:05d}.safetensors" for r in range(self.world_size)]
            itemsize = np.dtype(self.dtype).itemsize
            pieces = [{"file": files[r], "row_offset": self.bounds[r], "rows": self.bounds[r + 1] - self.bounds[r]}
                      for r in range(self.world_size) if self.bounds[r + 1] > self.bounds[r]]
            index = {"metadata": {"total_size": self.num_embeddings * self.embedding_dim * itemsize,
                                  "format": "qembed.distributed.ShardedEmbedding", "world_size": self.world_size,
                                  "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                                  "stable": self.stable, "options": {k: v for k, v in self._kw.items() if k != "dtype"}},
                     "weight_map": {"weight": pieces[0]["file"]},
                     "shards": {"weight": pieces}}
            if self.stable:
                index["weight_map"].update({"norm.weight": files[0], "norm.bias": files[0]})
            index["metadata"].update(self._index_extra())
            _io.write_json(os.path.join(path, INDEX_FILE), index)
        if self.world_size > 1:
            dist.barrier(group=self.group)
        return path

    def _save_quantized(self, path):
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        files = [f"shard-{r:05d}-of-{self.world_size:05d}.safetensors" for r in range(self.world_size)]
        tensors = dict(self.local.state_dict()) if self.local is not None else {}
        dtype_name = _arrays.float_dtype_name(self.dtype)
        meta = {"row_offset": str(self.row_offset), "rows": str(self.rows), "world_size": str(self.world_size),
                "rank": str(self.rank), "num_embeddings": str(self.num_embeddings),
                "embedding_dim": str(self.embedding_dim), "quant_type": self.quant_type,
                "qembed.weight.dtype": dtype_name, "format": "pt"}
        _io.save_file(tensors, os.path.join(path, files[self.rank]), metadata=meta)
        if self.rank == 0:
            pieces = [{"file": files[r], "row_offset": self.bounds[r], "rows": self.bounds[r + 1] - self.bounds[r]}
                      for r in range(self.world_size) if self.bounds[r + 1] > self.bounds[r]]
            n = self.num_embeddings * self.embedding_dim     # the table's bytes (per-file maps and JSON aside)
            total = n + 4 * self.num_embeddings if self.quant_type == "int8" else -(-n // 2) + 4 * -(-n // self.blocksize)
            index = {"metadata": {"total_size": total,
                                  "format": "qembed.distributed.ShardedEmbedding", "world_size": self.world_size,
                                  "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                                  "stable": False, "options": {},
                                  "quantized": {"quant_type": self.quant_type, "blocksize": self.blocksize,
                                                "compress_statistics": self.compress_statistics,
                                                "dtype": dtype_name}},
                     "weight_map": {k: pieces[0]["file"] for k in tensors},
                     "shards": {"weight": pieces}}
            _io.write_json(os.path.join(path, INDEX_FILE), index)
        if self.world_size > 1:
            dist.barrier(group=self.group)
        return path

    @classmethod
    def _load_quantized(cls, path, index, group):
        meta = index["metadata"]
        qm = meta["quantized"]
        V, D = int(meta["num_embeddings"]), int(meta["embedding_dim"])
        qt, bs, nested, dtype_name = qm["quant_type"], int(qm["blocksize"]), bool(qm["compress_statistics"]), qm["dtype"]
        world, rank = _world(group)
        bounds = row_bounds(V, D, world, None if qt == "int8" else bs)
        lo, hi = bounds[rank], bounds[rank + 1]
        dtype = _arrays.numpy_float_dtype(dtype_name)
        q = ShardedEmbedding._quantized_shell(V, D, group, world, rank, bounds, qt, bs, nested, dtype)
        if hi == lo:
            return q
        if nested and (lo, hi) != (0, V):
            raise _value_error(f"{path}: a table with nested statistics (compress_statistics) loads only into a "
                               f"world of one (this rank would hold rows [{lo}, {hi}) of {V})")
        parts, extra = [], {}
        for piece in index["shards"]["weight"]:
            a, b = piece["row_offset"], piece["row_offset"] + piece["rows"]
            if b <= lo or a >= hi:
                continue
            s, e = max(lo, a) - a, min(hi, b) - a       # rows of this piece
            with _io.TensorFile(os.path.join(path, piece["file"])) as t:
                got = t.tensors()
            if nested:
                extra = got
                continue
            if qt == "int8":
                parts.append((got["weight"][s:e], got["weight.SCB"][s:e]))
                continue
            if (s * D) % bs or ((e * D) % bs and a + e != V):
                raise _value_error(f"{path}: rows [{a + s}, {a + e}) of {piece['file']} do not fall on "
                                   f"{bs}-element blocks", C.QEMBED_ERR_FORMAT)
            packed = got["weight"].reshape(-1)
            parts.append((packed[s * D // 2: -(-e * D // 2)], got["weight.absmax"][s * D // bs: -(-e * D // bs)]))
            extra = {k: v for k, v in got.items() if k in ("weight.quant_map", f"weight.quant_state.bitsandbytes__{qt}")}
        if nested:
            tensors = extra
        elif qt == "int8":
            tensors = {"weight": np.concatenate([p[0] for p in parts]), "weight.SCB": np.concatenate([p[1] for p in parts])}
        else:
            key = f"weight.quant_state.bitsandbytes__{qt}"
            state = json.loads(bytes(np.asarray(extra[key])).decode())
            state["shape"] = [hi - lo, D]
            tensors = {"weight": np.concatenate([p[0] for p in parts]).reshape(-1, 1),
                       "weight.absmax": np.concatenate([p[1] for p in parts]),
                       "weight.quant_map": extra["weight.quant_map"],
                       key: np.frombuffer(json.dumps(state).encode(), np.uint8)}
        if qt == "int8":
            layer = Embedding8bit(hi - lo, D, dtype=dtype_name)
        else:
            layer = Embedding4bit(hi - lo, D, dtype=dtype_name, quant_type=qt, blocksize=bs,
                                  compress_statistics=nested)
        layer.load_state_dict(tensors)
        q.local = layer
        return q

    @classmethod
    def load(cls, path, process_group=None, **kw):
        """A checkpoint saved by save() with any world size, re-sharded for
        this group's (a world of one without an initialized group). A
        quantized checkpoint gives the quantized table (its rows moved, not
        requantized); its local layers are ordinary Embedding8bit /
        Embedding4bit tables of their rows (self.row_offset says where they
        sit)."""
        path = os.fspath(path)
        with open(os.path.join(path, INDEX_FILE)) as f:
            index = json.load(f)
        meta = index["metadata"]
        if "quantized" in meta:
            return cls._load_quantized(path, index, process_group)
        V, D = int(meta["num_embeddings"]), int(meta["embedding_dim"])
        world, rank = _world(process_group)
        bounds = row_bounds(V, D, world)
        lo, hi = bounds[rank], bounds[rank + 1]
        rows = []
        dtype = None
        for piece in index["shards"]["weight"]:
            a, b = piece["row_offset"], piece["row_offset"] + piece["rows"]
            if b <= lo or a >= hi:
                continue
            with _io.TensorFile(os.path.join(path, piece["file"])) as t:
                w = t.get("weight")
            dtype = w.dtype
            rows.append(w[max(lo, a) - a: min(hi, b) - a])
        options = dict(meta.get("options", {}))
        options.update(kw)
        stable = bool(meta.get("stable", False))
        full = None
        if hi > lo:
            part = np.concatenate(rows) if rows else None
            if part is None or part.shape[0] != hi - lo:
                raise _value_error(f"{path}: the pieces do not cover rows [{lo}, {hi})")
            # A full-size placeholder would cost the whole table: hand the rows over directly.
            full = part
        self = cls.__new__(cls)
        self._init_from_rows(V, D, full, lo, hi, world, rank, bounds, process_group, stable, options, dtype)
        if stable and self.local is not None:
            with _io.TensorFile(os.path.join(path, index["weight_map"]["norm.weight"])) as t:
                self.local.norm.weight.data = t.get("norm.weight")
                self.local.norm.bias.data = t.get("norm.bias")
        return self

    def _init_from_rows(self, V, D, rows_weight, lo, hi, world, rank, bounds, group, stable, kw, dtype):
        self.num_embeddings, self.embedding_dim = V, D
        self.group, self.world_size, self.rank, self.bounds = group, world, rank, bounds
        self.stable, self._kw = stable, dict(kw)
        self.quant_type = None
        self.row_offset, self.rows = lo, hi - lo
        self.local = None
        if self.rows > 0:
            cls = StableEmbedding if stable else Embedding
            self.local = cls(self.rows, D, _weight=rows_weight, _shard=(lo, V), **kw)
        self.dtype = self.local.dtype if self.local is not None else np.dtype(dtype or np.float32)

    def __repr__(self):
        q = "" if not self.is_quantized else f", {self.quant_type}" + (
            "" if self.quant_type == "int8" else f", blocksize={self.blocksize}")
        return (f"ShardedEmbedding({self.num_embeddings}, {self.embedding_dim}{q}, rank {self.rank} of "
                f"{self.world_size}: rows [{self.row_offset}, {self.row_offset + self.rows}))")


class ShardedEmbeddingBag(ShardedEmbedding):
    """``ShardedEmbeddingBag(num_embeddings, embedding_dim, max_norm=None,
    norm_type=2.0, scale_grad_by_freq=False, mode="mean", sparse=False,
    _weight=None, include_last_offset=False, padding_idx=None, dtype=None,
    seed=0, process_group=None)``: qembed.nn.EmbeddingBag (torch's
    arguments) over row shards. Without _weight the table is the N(0, 1)
    draw of `seed` the unsharded EmbeddingBag would have (each rank keeps
    its rows), the padding row zero; _weight is the full table, as for
    ShardedEmbedding. 8-bit optimizers keep 8-bit state for the weight (no
    32-bit override, as qembed.nn.EmbeddingBag).

    Communication: rows travel, bags are pooled where they were asked for.
    forward(input, offsets, per_sample_weights) sends each rank's distinct
    ids to their owners (all_to_all, as ShardedEmbedding.forward), gets one
    row back per distinct id, and pools the bags locally with the library's
    bag kernel over those rows, so sum, mean and max equal the unsharded
    qembed.nn.EmbeddingBag bit for bit (the same rows, the same index order,
    the same float32 reductions). Per step and rank that is 8 bytes out and
    one row back per distinct id (a partial-bag scheme would send one vector
    per (bag, owner) instead, and sum/mean would then depend on the owners'
    split). backward(input, grad_output, offsets, per_sample_weights) sums
    the gradient of each distinct id over the rank's bags (the library's bag
    backward: mean's division, max's argmax from the current rows,
    per-sample weights) and sends one gradient row per distinct id to its
    owner, which accumulates them like ShardedEmbedding.backward; it returns
    the per-sample weights' gradient (exact). The weight gradient differs from the unsharded
    layer's only by float32 summation order when an id recurs on a rank and
    on another rank (each rank's repeats are summed first): within a few
    units of 2^-24 of the sum of the contributions' magnitudes.
    scale_grad_by_freq counts an id within each rank's input (as each rank's
    own loss would under data parallelism), not across the group. Collective:
    every rank calls forward and backward. save() / ShardedEmbeddingBag.load()
    as ShardedEmbedding's (any world size; the bag options go in the index).
    No quantized form yet."""

    def __init__(self, num_embeddings, embedding_dim, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                 mode="mean", sparse=False, _weight=None, include_last_offset=False, padding_idx=None, dtype=None,
                 seed=0, process_group=None, device=None):
        _bags.mode_code(mode)
        V, D = _int(num_embeddings, "num_embeddings"), _int(embedding_dim, "embedding_dim")
        if V < 1 or D < 1:
            raise _value_error(f"num_embeddings and embedding_dim must be >= 1, got ({V}, {D})")
        world, rank = _world(process_group)
        bounds = row_bounds(V, D, world)
        lo, hi = bounds[rank], bounds[rank + 1]
        pad = None if padding_idx is None else _int(padding_idx, "padding_idx")
        if pad is not None and not -V <= pad < V:
            raise _value_error(f"padding_idx must be within num_embeddings: [-{V}, {V}), got {pad}",
                               C.QEMBED_ERR_OUT_OF_RANGE)
        seed = _int(seed, "seed")
        if _weight is not None:
            full = _arrays.to_numpy(_weight)
            if full.shape != (V, D):
                raise _value_error(f"_weight: expected the full table ({V}, {D}), got {full.shape}")
            rows = np.ascontiguousarray(full[lo:hi])
        else:   # the unsharded layer's N(0, 1) draw, drawn up to this rank's last row in pieces
            if not 0 <= seed < 2 ** 64:
                raise _value_error(f"seed must be in [0, 2**64), got {seed}")
            rng = np.random.default_rng(seed)
            done, rows = 0, None
            while done < hi:
                n = min(hi - done, max(1, (1 << 20) // D))
                piece = rng.standard_normal((n, D), dtype=np.float32)
                if done + n > lo:
                    keep = piece[max(0, lo - done):]
                    rows = keep if rows is None else np.concatenate([rows, keep])
                done += n
            if rows is None:
                rows = np.empty((0, D), np.float32)
            if pad is not None and lo <= pad % V < hi:
                rows[pad % V - lo] = 0
        kw = dict(max_norm=max_norm, norm_type=norm_type, sparse=sparse, padding_idx=pad, dtype=dtype, device=device)
        self._init_from_rows(V, D, rows if hi > lo else None, lo, hi, world, rank, bounds, process_group, False, kw,
                             None if dtype is None else _arrays.numpy_float_dtype(_arrays.float_dtype_name(dtype)))
        if self.local is not None:
            self.local.weight._clear_override("optim_bits")
        self.mode = mode
        self.include_last_offset = bool(include_last_offset)
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.sparse = bool(sparse)
        self.padding_idx = None if pad is None else pad % V
        self.seed = seed

    def quantize(self, *args, **kw):
        raise _type_error("quantize: ShardedEmbeddingBag has no quantized form yet (quantize a ShardedEmbedding "
                          "and pool with its rows)")

    def _index_extra(self):
        return {"bag": {"mode": self.mode, "include_last_offset": self.include_last_offset,
                        "scale_grad_by_freq": self.scale_grad_by_freq}}

    @classmethod
    def load(cls, path, process_group=None):
        """A checkpoint saved by ShardedEmbeddingBag.save (ShardedEmbedding's
        format; the bag options in the index's "bag" entry), re-sharded as
        ShardedEmbedding.load does. ShardedEmbedding.load reads the same
        checkpoint as a plain table."""
        with open(os.path.join(os.fspath(path), INDEX_FILE)) as f:
            meta = json.load(f)["metadata"]
        if "bag" not in meta:
            raise _value_error(f"{os.fspath(path)}: not a ShardedEmbeddingBag checkpoint (no \"bag\" entry in "
                               f"its index); load it with ShardedEmbedding.load", C.QEMBED_ERR_FORMAT)
        self = super().load(path, process_group)
        if self.local is not None:
            self.local.weight._clear_override("optim_bits")
        bag = meta["bag"]
        self.mode = bag["mode"]
        self.include_last_offset = bool(bag["include_last_offset"])
        self.scale_grad_by_freq = bool(bag["scale_grad_by_freq"])
        self.sparse = bool(self._kw.get("sparse", False))
        pad = self._kw.get("padding_idx")
        self.padding_idx = None if pad is None else pad % self.num_embeddings
        self.seed = 0
        return self

    def _distinct(self, input, offsets, per_sample_weights):
        """Validates the bag arguments (torch's rules, the layer's mode) and
        returns (distinct global ids, input as positions into them)."""
        bags = _bags.make_bags(input, offsets, per_sample_weights, self.mode, self.include_last_offset,
                               C.QEMBED_NO_PADDING, self.scale_grad_by_freq, self.sparse)
        ids = bags._keep[0]
        uniq, inv = np.unique(ids.reshape(-1).astype(np.int64, copy=False), return_inverse=True)
        return uniq, inv.reshape(ids.shape).astype(np.int64), bags

    def _pool_table(self, uniq, rows, grad):
        """A local EmbeddingBag over the distinct ids' rows (one zero row for
        an empty input), the padding id mapped to its position."""
        pad = None
        if self.padding_idx is not None and uniq.size:
            k = int(np.searchsorted(uniq, self.padding_idx))
            pad = k if k < uniq.size and uniq[k] == self.padding_idx else None
        if rows.shape[0] == 0:
            rows = np.zeros((1, self.embedding_dim), rows.dtype)
        return EmbeddingBag.from_pretrained(rows, freeze=not grad, mode=self.mode,
                                            include_last_offset=self.include_last_offset, padding_idx=pad,
                                            scale_grad_by_freq=self.scale_grad_by_freq and grad)

    def forward(self, input, offsets=None, per_sample_weights=None):
        """The bags' reductions, (num_bags, embedding_dim) in the table's
        dtype, equal bit for bit to qembed.nn.EmbeddingBag.forward over the
        whole table. Arguments as EmbeddingBag.forward (global ids).
        Collective."""
        uniq, inv, _ = self._distinct(input, offsets, per_sample_weights)
        rows = self._lookup(uniq)
        with self._pool_table(uniq, rows, grad=False) as t:
            return t.forward(inv, offsets, per_sample_weights)

    __call__ = forward

    def backward(self, input, grad_output, offsets=None, per_sample_weights=None):
        """Accumulates the owners' weight gradients for d(loss)/d(forward(input,
        offsets, per_sample_weights)) = grad_output (see the class: one row
        per distinct id crosses the network); returns the per-sample weights'
        gradient (float32, input's shape) when they are given, else None.
        Collective; in mode sum either every rank passes per_sample_weights
        or none does (their gradient needs the rows: one more exchange)."""
        uniq, inv, bags = self._distinct(input, offsets, per_sample_weights)
        need_rows = self.mode == "max" or per_sample_weights is not None
        rows = self._lookup(uniq, raw=True) if need_rows else np.zeros((uniq.size, self.embedding_dim), self.dtype)
        with self._pool_table(uniq, rows, grad=True) as t:
            psw_grad = t.backward(inv, grad_output, offsets, per_sample_weights)
            g = t.weight.grad
            g = (np.zeros((uniq.size, self.embedding_dim), np.float32) if g is None
                 else np.array(_arrays.to_numpy(g)[:uniq.size], dtype=np.float32))   # a copy: t's memory goes
        # only the rows the unsharded backward touches: in a bag and not padding
        used = np.zeros(uniq.size, bool)
        flat = inv.reshape(-1)
        in_bag = flat
        if bags._keep[1] is not None and self.include_last_offset and bags._keep[1].size:
            in_bag = flat[:int(bags._keep[1][-1])]
        used[in_bag] = True
        if self.padding_idx is not None:
            used &= uniq != self.padding_idx
        ShardedEmbedding.backward(self, uniq[used], np.ascontiguousarray(g[used], dtype=np.float32))
        return psw_grad

    def __repr__(self):
        return (f"ShardedEmbeddingBag({self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, rank "
                f"{self.rank} of {self.world_size}: rows [{self.row_offset}, {self.row_offset + self.rows}))")


def _bits(a):
    """Rows as integers of the same width (bfloat16 has no torch<->numpy
    conversion; integers travel unchanged)."""
    a = np.ascontiguousarray(a)
    return a.view(np.int16) if a.dtype.itemsize == 2 else a.view(np.int32)


def _from_bits(a, dtype):
    return np.ascontiguousarray(a).view(dtype)
