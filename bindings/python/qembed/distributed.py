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
from . import io as _io
from .nn.modules import Embedding, StableEmbedding, _int, _value_error

__all__ = ["ShardedEmbedding", "row_bounds"]

INDEX_FILE = "model.safetensors.index.json"


def row_bounds(num_embeddings, embedding_dim, world_size):
    """The row ranges of `world_size` ranks: bounds[r] .. bounds[r+1]. Equal
    shares rounded up to a multiple of 256 / gcd(embedding_dim, 256) rows
    (so no 8-bit optimizer block straddles two ranks); the last ranks may
    hold fewer rows, or none."""
    step = 256 // math.gcd(embedding_dim, 256)
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

    def parameters(self):
        """This rank's parameters (its rows; a StableEmbedding's replicated
        LayerNorm too), for qembed.optim."""
        return iter(self.local.parameters()) if self.local is not None else iter(())

    @property
    def weight(self):
        """This rank's rows (a qembed Parameter), or None for a rank with no rows."""
        return self.local.weight if self.local is not None else None

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
        order, local_ids, send, recv = self._route(ids)
        got = self._exchange(local_ids, send, recv)
        if self.local is not None and got.size:
            rows = self.local.forward(got)
        else:
            rows = np.empty((got.size, self.embedding_dim), dtype=self.dtype)
        back = self._exchange(_bits(rows), recv, send)
        out = np.empty((ids.size, self.embedding_dim), dtype=self.dtype)
        out[order] = _from_bits(back, self.dtype)
        return out.reshape(ids.shape + (self.embedding_dim,))

    __call__ = forward

    def backward(self, input, grad_output):
        """Send d(loss)/d(forward(input)) to the rows' owners, which
        accumulate it into their gradients. Collective, as forward."""
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
        if self.local is not None:
            self.local.zero_grad()

    # -- whole table

    def gather_weight(self):
        """The full table (every rank gets it; collective)."""
        mine = self.local.weight.data if self.local is not None else np.empty((0, self.embedding_dim), self.dtype)
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
        tensor's pieces. Collective (a barrier at the end)."""
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
            _io.write_json(os.path.join(path, INDEX_FILE), index)
        if self.world_size > 1:
            dist.barrier(group=self.group)
        return path

    @classmethod
    def load(cls, path, process_group=None, **kw):
        """A checkpoint saved by save() with any world size, re-sharded for
        this group's (a world of one without an initialized group)."""
        path = os.fspath(path)
        with open(os.path.join(path, INDEX_FILE)) as f:
            index = json.load(f)
        meta = index["metadata"]
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
        self.row_offset, self.rows = lo, hi - lo
        self.local = None
        if self.rows > 0:
            cls = StableEmbedding if stable else Embedding
            self.local = cls(self.rows, D, _weight=rows_weight, _shard=(lo, V), **kw)
        self.dtype = self.local.dtype if self.local is not None else np.dtype(dtype or np.float32)

    def __repr__(self):
        return (f"ShardedEmbedding({self.num_embeddings}, {self.embedding_dim}, rank {self.rank} of {self.world_size}: "
                f"rows [{self.row_offset}, {self.row_offset + self.rows}))")


def _bits(a):
    """Rows as integers of the same width (bfloat16 has no torch<->numpy
    conversion; integers travel unchanged)."""
    a = np.ascontiguousarray(a)
    return a.view(np.int16) if a.dtype.itemsize == 2 else a.view(np.int32)


def _from_bits(a, dtype):
    return np.ascontiguousarray(a).view(dtype)
