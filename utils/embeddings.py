"""Passage-embedding shards written by doc2embedding.py and read by test_dpr.py, and the machinery
that writes them: passage windows for the tokenizing workers, device defaults, run signature, resumable
chunks.

Layout of an embedding dir D:
  meta.json                    model, role, pooling, dim, dtype, max_length, num_passages,
                               num_shards, shard_counts, source {path, size},
                               encoder {digest, run, step}: which passage encoder made them (encoder_identity)
  embeddings_shard_{rank}.npy  (n_rank, dim) float16|float32, passages in file order
  ids_shard_{rank}.npy         (n_rank,) int64 passage ids, same order
While a run is going (chunks/ is removed once meta.json is written; run.json stays for relaunches):
  run.json                     the arguments the chunks depend on (run_signature)
  chunks/rank{r}_{k:06d}.npz   window k of rank r: ids, embeddings, next (byte offset, line number after it)
"""

import glob
import itertools
import json
import os
import shutil
import time

import numpy as np
import torch

from utils.checkpoint import check_shared_dir
from utils.errors import ConfigError, DataError
from utils.files import atomic_write
from utils.formats import iter_passage_lines, parse_passage_line
from utils.models import autocast_dtype, encoder_identity, padded_batches, tokenize_passages

META, RUN_FILE, CHUNKS = "meta.json", "run.json", "chunks"


def shard_paths(out_dir, rank):
    return (
        os.path.join(out_dir, f"embeddings_shard_{rank}.npy"),
        os.path.join(out_dir, f"ids_shard_{rank}.npy"),
    )


def write_meta(out_dir, meta):
    with atomic_write(os.path.join(out_dir, META)) as f:
        json.dump(meta, f, indent=1)


def read_meta(out_dir):
    path = os.path.join(out_dir, META)
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: not found; is {out_dir} an embedding dir written by doc2embedding.py (and did it "
            "finish)?"
        )
    with open(path) as f:
        return json.load(f)


def check_provenance(out_dir, meta, passages, question_model, question_path, trust_pair=False):
    """Were the embeddings in out_dir (meta: its meta.json) made from this passage file (a warning: the file
    may have moved) and by the passage tower that belongs with this question encoder? They belong when both
    come from the same training run and step, or when one model serves both towers (equal digests, e.g. an
    untrained base model). Anything else (e.g. official DPR encoders) is for the user to vouch for
    (trust_pair): a stale or foreign passage encoder's vectors would give a wrong top-k table."""
    size = (meta.get("source") or {}).get("size")
    if size is not None and os.path.isfile(passages) and os.path.getsize(passages) != size:
        print(
            f"warning: {passages} has {os.path.getsize(passages)} bytes, but the embeddings "
            f"were made from a {size}-byte file ({meta['source'].get('path')})"
        )
    if trust_pair:
        return
    question, passage = encoder_identity(question_model, question_path), meta.get("encoder")
    if passage and question["digest"] == passage["digest"]:
        return
    same_run = passage and question["run"] and question["run"] == passage["run"]
    if same_run and question["step"] == passage["step"]:
        return

    def made(e):
        return f"run {e['run']} step {e['step']}" if e["run"] else f"no run, digest {e['digest'][:12]}"

    why = f"{made(question)} vs {made(passage)}" if passage else f"{out_dir}/{META} names no passage encoder"
    raise ConfigError(
        f"question encoder {question_path} does not belong with passage encoder "
        f"{meta.get('model')}, which made {out_dir} ({why}); re-encode with the matching "
        "passage encoder, or pass --trust_encoder_pair"
    )


def check_pooling(out_dir, meta, pooling):
    """Questions must be pooled as the passages were (cosine questions against inner-product passages rank
    wrongly); `pooling` as utils.models.load_encoder returns it."""
    if pooling != meta.get("pooling", pooling):
        raise DataError(
            f"{out_dir}: passages pooled {meta['pooling']}, question encoder {pooling}: "
            "pool both alike (--pooling/--similarity on both scripts)"
        )


def load_embeddings(out_dir, mmap=False):
    """(ids int64 (N,), embeddings (N, dim)) over all shards, validated against meta.json. mmap: the shards
    stay on disk; several are joined by ShardRows, not copied (21M x 768 float16 is 32 GB)."""
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
        emb, ids, want = (
            np.load(emb_path, mmap_mode="r" if mmap else None),
            np.load(ids_path),
            meta["shard_counts"][rank],
        )
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
    return ids, all_emb[0] if len(all_emb) == 1 else (ShardRows(all_emb) if mmap else np.concatenate(all_emb))


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
            parts = [
                s[key[(key >= lo) & (key < lo + len(s))] - lo] for s, lo in zip(self.shards, self.starts)
            ]
        return np.concatenate(parts)


# Passages in, per process: windows of parsed, tokenized, length-batched passages
def window_size(k, window):
    """Passages in window k: a linear ramp, window/16 more per window up to `window` (1,024, 2,048, ...
    16,384), so the first window is tokenized within a second and the model starts while the workers' bigger
    windows are still in the making. A function of k and `window` alone: a resumed run cuts the same
    windows."""
    return min(window, max(1, window // 16) * (k + 1))


class PassageWindows(torch.utils.data.IterableDataset):
    """One process's passages in windows, each parsed, tokenized and cut into padded batches.

    Yields {window, ids, batches: [(rows, padded batch)], tokens, tokens_sq (sums of the token
    lengths and their squares, for FLOPs), next: [byte offset, line number] after the window,
    prepare_s: the worker's seconds}. With W DataLoader workers, worker w prepares windows w, w+W, ...
    and only reads past the others' lines, so the DataLoader's round robin delivers them in file order.
    """

    def __init__(
        self,
        path,
        start,
        end,
        line_no,
        count,
        first_window,
        window,
        tokenizer,
        max_length,
        batch_size=None,
        max_tokens=None,
        always_mask=False,
    ):
        super().__init__()
        self.path, self.start, self.end, self.line_no, self.count = path, start, end, line_no, count
        self.first_window, self.window, self.tokenizer, self.max_length = (
            first_window,
            window,
            tokenizer,
            max_length,
        )
        self.batch_size, self.max_tokens, self.always_mask = batch_size, max_tokens, always_mask

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        try:
            for k, lines, next_offset, next_line in self.read_windows():
                if (k - self.first_window) % num_workers == worker:
                    started = time.perf_counter()
                    yield {
                        "window": k,
                        **self.prepare(lines),
                        "next": torch.tensor([next_offset, next_line]),
                        "prepare_s": time.perf_counter() - started,
                    }
        except DataError as e:  # a message, not a traceback wrapped by the DataLoader
            yield {"error": str(e)}

    def read_windows(self):
        """(window index, [(line number, raw line)], byte offset and line number after the window)."""
        rows = itertools.islice(iter_passage_lines(self.path, self.start, self.end, self.line_no), self.count)
        for k in itertools.count(self.first_window):
            lines = list(itertools.islice(rows, window_size(k, self.window)))
            if not lines:
                return
            yield k, [(n, raw) for n, raw, _ in lines], lines[-1][2], lines[-1][0] + 1

    def prepare(self, lines):
        rows = [parse_passage_line(raw, self.path, n) for n, raw in lines]
        tokens = tokenize_passages(
            self.tokenizer, [r[2] for r in rows], [r[1] for r in rows], self.max_length
        )
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        return {
            "ids": torch.tensor([r[0] for r in rows], dtype=torch.int64),
            "tokens": int(lengths.sum()),
            "tokens_sq": int((lengths**2).sum()),
            "batches": padded_batches(
                tokens,
                self.tokenizer.pad_token_id,
                self.batch_size,
                self.max_tokens,
                always_mask=self.always_mask,
            ),
        }


# GPU token budget: the fastest measured on one H200 (262,144; docs/benchmarks.md), or less where the free
# memory is short: 64 KiB of it per token, 4x bert-base's bf16 activations at their widest layer (~16 KiB:
# hidden 768 x 2 and the FFN's 3,072 x 2 values of 2 bytes), so bert-large and the allocator's slack fit too.
GPU_MAX_TOKENS, GPU_BYTES_PER_TOKEN = 1 << 18, 1 << 16


def encode_defaults(device):
    """doc2embedding.py's settings that depend on the device. CPU: float32 weights (most chips emulate half
    precision slowly); 4096 tokens per batch and thread (bigger batches thrash the cache, smaller ones keep
    the threads waiting on each other); one tokenizing worker, the model wants the cores. GPU: bfloat16
    weights (float16 on GPUs without it); GPU_MAX_TOKENS per batch, halved until it fits the free memory; the
    cores per GPU but two as workers (two are left to the process itself: kernel launches, pinning, chunk
    writes), at most 16 (twice what the model's measured peak rate needs; each holds ~1.3 GiB); an attention
    mask on every batch. NANODPR_ALWAYS_MASK=0|1 overrides the mask choice (the benchmarks compare both)."""
    mask = os.environ.get("NANODPR_ALWAYS_MASK")
    if device.type != "cuda":
        return {
            "compute_dtype": "float32",
            "max_tokens_per_batch": min(65536, 4096 * torch.get_num_threads()),
            "num_workers": 1,
            "always_mask": mask == "1",
        }
    cores_per_process = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    tokens = GPU_MAX_TOKENS
    while tokens > 4096 and tokens * GPU_BYTES_PER_TOKEN > torch.cuda.mem_get_info(device)[0]:
        tokens //= 2
    return {
        "compute_dtype": str(autocast_dtype(device)).removeprefix("torch."),
        "max_tokens_per_batch": tokens,
        "num_workers": max(1, min(16, cores_per_process - 2)),
        "always_mask": mask != "0",
    }


# The output dir while a run is going: run signature, committed chunks, shards
def run_signature(model, encoder, passages, world_size, settings):
    """What the chunks depend on; a relaunch must match it to resume. encoder: the model by content
    (encoder_identity): a model retrained in the same dir is a changed argument."""
    st = os.stat(passages)
    source = {"path": os.path.abspath(passages), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    model = os.path.abspath(model) if os.path.exists(model) else model
    return {"model": model, "encoder": encoder, "source": source, **settings, "world_size": world_size}


def changes(before, now, where=""):
    """'key: old -> new' for each value that differs, naming keys inside dicts (encoder.digest)."""
    for k, v in now.items():
        if isinstance(v, dict) and isinstance(before.get(k), dict):
            yield from changes(before[k], v, f"{where}{k}.")
        elif before.get(k) != v:
            yield f"{where}{k}: {before.get(k)!r} -> {v!r}"


def check_run(out_dir, signature, overwrite, is_main):
    """True when out_dir already holds this run's finished embeddings. Refuses another run's files."""
    ours = [os.path.join(out_dir, name) for name in (META, RUN_FILE, CHUNKS)] + glob.glob(
        os.path.join(out_dir, "*_shard_*.npy")
    )
    present = [path for path in ours if os.path.exists(path)]
    run_path = os.path.join(out_dir, RUN_FILE)
    if overwrite:
        if is_main:
            for path in present:
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return False
    if not os.path.isfile(run_path):
        if present:
            names = ", ".join(os.path.basename(p) for p in present)
            raise DataError(
                f"{out_dir} holds embedding files ({names}) of an unknown run; pass --overwrite to replace "
                "them"
            )
        return False
    with open(run_path) as f:
        before = json.load(f)
    if before != signature:
        diff = ", ".join(changes(before, signature))
        raise DataError(
            f"{out_dir} holds embeddings of a run with other arguments ({diff}); pass --overwrite to replace "
            "them"
        )
    finished = os.path.isfile(os.path.join(out_dir, META))
    if finished and is_main:  # a run killed while removing its chunks
        shutil.rmtree(os.path.join(out_dir, CHUNKS), ignore_errors=True)
    return finished


def start_run(out_dir, signature):
    os.makedirs(os.path.join(out_dir, CHUNKS), exist_ok=True)
    with atomic_write(os.path.join(out_dir, RUN_FILE)) as f:
        json.dump(signature, f, indent=1)


def claim_run(out_dir, signature, overwrite, state):
    """meta.json when out_dir already holds this run's finished embeddings (check_run); else None, and
    out_dir is this run's, with its run.json. All processes must see the same out_dir: rank 0 gathers what
    each writes."""
    os.makedirs(out_dir, exist_ok=True)
    check_shared_dir(out_dir, state)
    if check_run(out_dir, signature, overwrite, state.is_main_process):
        return read_meta(out_dir)
    state.wait_for_everyone()
    if state.is_main_process:
        start_run(out_dir, signature)
    state.wait_for_everyone()
    return None


def chunk_path(out_dir, rank, k):
    return os.path.join(out_dir, CHUNKS, f"rank{rank}_{k:06d}.npz")


def committed_chunks(out_dir, rank):
    """(paths of this rank's committed chunks, passages in them, [byte offset, line number] after the last or
    None)."""
    paths = list(
        itertools.takewhile(os.path.isfile, (chunk_path(out_dir, rank, k) for k in itertools.count()))
    )
    if not paths:
        return paths, 0, None
    with np.load(paths[-1]) as last:
        resume = [int(x) for x in last["next"]]
    return paths, sum(len(np.load(p)["ids"]) for p in paths), resume


def write_chunk(path, ids, embeddings, next_row, dtype):
    """Commit one window, embeddings stored as dtype: temp name, then rename, so a chunk file is always
    whole."""
    with atomic_write(path, "wb") as f:
        np.savez(f, ids=ids, embeddings=embeddings.astype(dtype), next=next_row)


def write_shard(out_dir, rank, chunks, dim, dtype):
    """Concatenate this rank's chunks into its two .npy shards, one chunk in memory at a time."""
    n = sum(len(np.load(p)["ids"]) for p in chunks)
    emb_path, ids_path = shard_paths(out_dir, rank)
    with atomic_write(emb_path, "wb") as emb_f, atomic_write(ids_path, "wb") as ids_f:
        for f, dt, shape in ((emb_f, dtype, (n, dim)), (ids_f, np.int64, (n,))):
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dt)),
                "fortran_order": False,
                "shape": shape,
            }
            np.lib.format.write_array_header_1_0(f, header)
        for p in chunks:
            with np.load(p) as z:
                emb_f.write(z["embeddings"].tobytes())
                ids_f.write(z["ids"].tobytes())
    return n


def finish_run(out_dir, meta):
    """meta.json last: its presence marks a finished dir. Then the chunks go."""
    write_meta(out_dir, meta)
    shutil.rmtree(os.path.join(out_dir, CHUNKS))
