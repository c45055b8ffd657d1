"""Passage-embedding shards written by doc2embedding.py and read by test_dpr.py.

Layout of an embedding dir D:
  meta.json                    model, role, pooling, dim, dtype, max_length, num_passages,
                               num_shards, shard_counts, source {path, size}
  embeddings_shard_{rank}.npy  (n_rank, dim) float16|float32, passages in file order
  ids_shard_{rank}.npy         (n_rank,) int64 passage ids, same order
"""
import json
import os

import numpy as np

from utils.data import atomic_write
from utils.errors import DataError

META = "meta.json"


def shard_paths(out_dir, rank):
    return (os.path.join(out_dir, f"embeddings_shard_{rank}.npy"), os.path.join(out_dir, f"ids_shard_{rank}.npy"))


def write_meta(out_dir, meta):
    with atomic_write(os.path.join(out_dir, META)) as f:
        json.dump(meta, f, indent=1)


def read_meta(out_dir):
    path = os.path.join(out_dir, META)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found; is {out_dir} an embedding dir written by doc2embedding.py (and did it finish)?")
    with open(path) as f:
        return json.load(f)


def load_embeddings(out_dir, mmap=False):
    """(ids int64 (N,), embeddings (N, dim)) over all shards, validated against meta.json.

    mmap: the shards stay on disk; several are joined by ShardRows, not copied (21M x 768 float16 is 32 GB)."""
    meta = read_meta(out_dir)
    for key in ("dim", "dtype", "num_passages", "num_shards", "shard_counts"):
        if key not in meta:
            raise DataError(f"{out_dir}/{META}: missing key {key!r}")
    all_ids, all_emb = [], []
    for rank in range(meta["num_shards"]):
        emb_path, ids_path = shard_paths(out_dir, rank)
        for p in (emb_path, ids_path):
            if not os.path.isfile(p):
                raise DataError(f"{p}: shard missing (meta.json says {meta['num_shards']} shards)")
        emb = np.load(emb_path, mmap_mode="r" if mmap else None)
        ids = np.load(ids_path)
        want = meta["shard_counts"][rank]
        if emb.ndim != 2 or emb.shape[1] != meta["dim"]:
            raise DataError(f"{emb_path}: shape {emb.shape}, meta.json says dim {meta['dim']}")
        if str(emb.dtype) != meta["dtype"]:
            raise DataError(f"{emb_path}: dtype {emb.dtype}, meta.json says {meta['dtype']}")
        if len(emb) != want or len(ids) != want:
            raise DataError(f"{emb_path}: {len(emb)} vectors and {len(ids)} ids, meta.json says {want}")
        if ids.dtype != np.int64:
            raise DataError(f"{ids_path}: dtype {ids.dtype}, expected int64")
        all_ids.append(ids)
        all_emb.append(emb)
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
    if len(ids) != meta["num_passages"]:
        raise DataError(f"{out_dir}: {len(ids)} passages in shards, meta.json says {meta['num_passages']}")
    emb = all_emb[0] if len(all_emb) == 1 else (ShardRows(all_emb) if mmap else np.concatenate(all_emb))
    return ids, emb


class ShardRows:
    """Memmapped shards read as one (N, dim) matrix: emb[i:j] and emb[sorted rows] copy only those rows."""

    def __init__(self, shards):
        self.shards, self.starts = shards, np.cumsum([0] + [len(s) for s in shards])
        self.shape, self.dtype = (int(self.starts[-1]), shards[0].shape[1]), shards[0].dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(len(self))
            parts = [s[max(start - lo, 0) : max(stop - lo, 0)] for s, lo in zip(self.shards, self.starts)]
        else:
            key = np.asarray(key)
            parts = [s[key[(key >= lo) & (key < lo + len(s))] - lo] for s, lo in zip(self.shards, self.starts)]
        return np.concatenate(parts)
