"""Encode the passage file (psgs_w100.tsv) with a passage encoder into embedding shards, one per process.

    accelerate launch doc2embedding.py --pretrained_model_path outputs/nq/doc_encoder --output_dir outputs/nq/embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 doc2embedding.py ...     # two CPU processes

Fast: each process streams its own contiguous part of the file; DataLoader workers parse, tokenize,
sort each window of passages by length and pad them in batches of about max_tokens_per_batch tokens,
so the model computes almost no padding; embeddings go back to file order before they are written.
Safe: each window is committed as one chunk file (temp + rename). A relaunch with the same arguments
seeks past the committed chunks; the shards are assembled from the chunks at the end, so a killed and
resumed run writes the same files as an uninterrupted one. meta.json is written last: it marks a
finished dir (layout in utils/embeddings.py; read it back with utils.embeddings.load_embeddings).
"""
import argparse
import ctypes
import datetime
import glob
import json
import os
import resource
import shutil
import signal
import sys
import time

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm import tqdm

from utils.data import atomic_write, count_lines, parse_passage_line, shard_byte_range
from utils.embeddings import META, read_meta, shard_paths, write_meta
from utils.errors import DataError, EncoderError
from utils.models import encode_batches, load_encoder, pad_batch, padded_batches, tokenize_passages

try:  # glibc: hand freed heap pages back to the OS once per window (see the main loop)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # another libc: nothing to do
    _malloc_trim = lambda pad: 0  # noqa: E731
RUN_FILE = "run.json"  # the arguments that produced the chunks: a relaunch must match them to resume
KILL_AFTER_CHUNK = "NANODPR_KILL_AFTER_CHUNK"  # test hook: SIGKILL this process once chunk k is committed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model_path", required=True, help="passage encoder: our doc_encoder dir, an HF (DPR) model, or a DPR .cp file")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--wikipedia_path", default="downloads/data/wikipedia_split/psgs_w100.tsv")
    p.add_argument("--max_length", type=int, default=256)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch_size", type=int, help="fixed number of passages per batch (instead of a token budget)")
    size.add_argument("--max_tokens_per_batch", type=int,
                      help="token budget per batch, padding included (default: 65536 on GPU, 4096 per thread on CPU)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="of the stored embeddings")
    p.add_argument("--limit", type=int, help="encode only the first N passages of the file")
    p.add_argument("--window", type=int, default=16384,
                   help="passages sorted by length, encoded and committed together (the unit of resumption)")
    p.add_argument("--num_workers", type=int,
                   help="tokenizing DataLoader workers per process (default: the CPU cores per GPU but one, at most 16; 1 on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace the embeddings of a different run in output_dir")
    args = p.parse_args(argv)
    for name in ("max_length", "batch_size", "max_tokens_per_batch", "limit", "window"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# Which rows each process encodes


def shard_rows(path, rank, world_size, limit=None):
    """(start byte, end byte, line number at start, passage count or None) of this process's rows.

    Without --limit, a contiguous byte range of the file (cut at line starts). With --limit, the
    first `limit` passages split by count; finding where they start needs one scan of those rows.
    """
    if limit is None:
        start, end = shard_byte_range(path, rank, world_size)
        return start, end, 1 + count_lines(path, 0, start), None
    body, size = shard_byte_range(path, 0, 1)
    skip, take = limit * rank // world_size, limit * (rank + 1) // world_size - limit * rank // world_size
    with open(path, "rb") as f:
        f.seek(body)
        line_no = 2
        while skip:
            raw = f.readline()
            if not raw:
                break
            skip -= bool(raw.strip())
            line_no += 1
        return f.tell(), size, line_no, take


class PassageWindows(torch.utils.data.IterableDataset):
    """Windows of this process's passages, each parsed, tokenized and cut into padded batches.

    Yields {window, ids, batches: [(rows, padded batch)], next: [byte offset, line number] after
    the window, prepare_s: the worker's seconds for it}. With W DataLoader workers, worker w
    prepares windows w, w+W, ... and only reads past the others, so the DataLoader's round robin
    delivers them in file order.
    """

    def __init__(self, path, start, end, line_no, count, first_window, window, tokenizer, max_length, batch_size, max_tokens):
        super().__init__()
        self.path, self.start, self.end, self.line_no, self.count = path, start, end, line_no, count
        self.first_window, self.window, self.tokenizer, self.max_length = first_window, window, tokenizer, max_length
        self.batch_size, self.max_tokens = batch_size, max_tokens

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        try:
            for k, lines, next_offset, next_line in self.read_windows():
                if (k - self.first_window) % num_workers == worker:
                    t = time.perf_counter()
                    item = self.prepare(lines)
                    yield {"window": k, **item, "next": torch.tensor([next_offset, next_line]), "prepare_s": time.perf_counter() - t}
        except DataError as e:  # a message, not a traceback wrapped by the DataLoader
            yield {"error": str(e)}

    def read_windows(self):
        """(window index, [(line number, raw line)], byte offset and line number after it)."""
        left = self.count if self.count is not None else float("inf")
        with open(self.path, "rb") as f:
            f.seek(self.start)
            pos, line_no, k = self.start, self.line_no, self.first_window
            while left > 0 and pos < self.end:
                lines = []
                while len(lines) < min(self.window, left) and pos < self.end:
                    raw = f.readline()
                    if not raw:
                        break
                    pos += len(raw)
                    if raw.strip():
                        lines.append((line_no, raw))
                    line_no += 1
                if not lines:
                    return
                left -= len(lines)
                yield k, lines, pos, line_no
                k += 1

    def prepare(self, lines):
        rows = []
        for line_no, raw in lines:
            try:
                rows.append(parse_passage_line(raw.decode("utf-8"), self.path, line_no))
            except UnicodeDecodeError:
                raise DataError(f"{self.path}:{line_no}: not valid UTF-8") from None
        tokens = tokenize_passages(self.tokenizer, [r[2] for r in rows], [r[1] for r in rows], self.max_length)
        batches = padded_batches(tokens, self.tokenizer.pad_token_id, self.batch_size, self.max_tokens)
        return {"ids": torch.tensor([r[0] for r in rows], dtype=torch.int64), "batches": batches}


def default_max_tokens(device):
    """Token budget per batch. CPU: bigger batches thrash the cache, smaller ones keep the threads waiting on each other."""
    return 65536 if device.type == "cuda" else min(65536, 4096 * torch.get_num_threads())


# ---------------------------------------------------------------------------------------------
# Output dir: run signature, chunks, shards


def run_signature(args, world_size):
    st = os.stat(args.wikipedia_path)
    model = args.pretrained_model_path
    return {
        "model": os.path.abspath(model) if os.path.exists(model) else model,
        "source": {"path": os.path.abspath(args.wikipedia_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        **{k: getattr(args, k) for k in ("max_length", "dtype", "limit", "window", "batch_size", "max_tokens_per_batch")},
        "world_size": world_size,
    }


def check_run(out_dir, signature, overwrite, is_main):
    """True when out_dir already holds this run's finished embeddings. Refuses another run's files."""
    ours = [META, RUN_FILE, "chunks"] + [os.path.basename(p) for p in glob.glob(os.path.join(out_dir, "*_shard_*.npy"))]
    present = [name for name in ours if os.path.exists(os.path.join(out_dir, name))]
    if overwrite:
        if is_main:
            for name in present:
                path = os.path.join(out_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return False
    run_path = os.path.join(out_dir, RUN_FILE)
    if os.path.isfile(run_path):
        with open(run_path) as f:
            before = json.load(f)
        if before != signature:
            diff = ", ".join(f"{k}: {before.get(k)!r} -> {signature.get(k)!r}" for k in signature if before.get(k) != signature.get(k))
            raise DataError(f"{out_dir} holds embeddings of a run with other arguments ({diff}); pass --overwrite to replace them")
        return os.path.isfile(os.path.join(out_dir, META))
    if present:
        raise DataError(f"{out_dir} holds embedding files ({', '.join(present)}) of an unknown run; pass --overwrite to replace them")
    return False


def chunk_path(out_dir, rank, k):
    return os.path.join(out_dir, "chunks", f"rank{rank}_{k:06d}.npz")


def committed_chunks(out_dir, rank):
    paths = []
    while os.path.isfile(chunk_path(out_dir, rank, len(paths))):
        paths.append(chunk_path(out_dir, rank, len(paths)))
    return paths


def write_shard(out_dir, rank, chunks, dim, dtype):
    """Concatenate this rank's chunks into its two .npy shards, one chunk in memory at a time."""
    counts = [len(np.load(p)["ids"]) for p in chunks]
    emb_path, ids_path = shard_paths(out_dir, rank)
    with atomic_write(emb_path, "wb") as emb_f, atomic_write(ids_path, "wb") as ids_f:
        for f, dt, shape in ((emb_f, dtype, (sum(counts), dim)), (ids_f, np.int64, (sum(counts),))):
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dt)), "fortran_order": False, "shape": shape})
        for p in chunks:
            z = np.load(p)
            emb_f.write(np.ascontiguousarray(z["embeddings"]).tobytes())
            ids_f.write(np.ascontiguousarray(z["ids"]).tobytes())
    return sum(counts)


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    """Returns {passages, encoded (this launch), seconds, passages_per_s_per_process, output_dir} and rank 0's
    time split: model_s, waited_s (first_window_s of it), tokenize_per_worker_per_s, num_workers; and its
    peak_rss_gib, worker_peak_rss_gib."""
    args = parse_args(argv)
    # Workers tokenize in parallel processes; the tokenizer's own threads would be disabled in them anyway, with a warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Generous barrier timeout: after a resume, one rank may wait long for another.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available(),
                         timeout=datetime.timedelta(hours=12))
    rank, world_size, device = state.process_index, state.num_processes, state.device
    try:
        return run(args, state, rank, world_size, device)
    except (DataError, EncoderError) as e:
        sys.exit(f"error: {e}")


def run(args, state, rank, world_size, device):
    # Cheap checks first: the passage file, then the model; nothing is written before both pass.
    if not os.path.isfile(args.wikipedia_path):
        raise DataError(f"{args.wikipedia_path}: passage file not found")
    start, end, line_no, count = shard_rows(args.wikipedia_path, rank, world_size, args.limit)
    model, tokenizer, pooling = load_encoder(args.pretrained_model_path, "passage")
    model.to(device)
    probe = [(torch.tensor([0]), pad_batch(tokenize_passages(tokenizer, [""], ["dim"], args.max_length), tokenizer.pad_token_id))]
    dim = encode_batches(model, pooling, probe, 1, device).shape[1]
    out_dtype = np.dtype(args.dtype)
    if args.batch_size is None and args.max_tokens_per_batch is None:
        args.max_tokens_per_batch = default_max_tokens(device)

    signature = run_signature(args, world_size)
    os.makedirs(args.output_dir, exist_ok=True)
    if check_run(args.output_dir, signature, args.overwrite, state.is_main_process):
        state.print(f"{args.output_dir} already holds these embeddings ({read_meta(args.output_dir)['num_passages']} passages); nothing to do")
        if state.is_main_process:  # a run killed while removing its chunks
            shutil.rmtree(os.path.join(args.output_dir, "chunks"), ignore_errors=True)
        return None
    state.wait_for_everyone()
    if state.is_main_process:
        os.makedirs(os.path.join(args.output_dir, "chunks"), exist_ok=True)
        with atomic_write(os.path.join(args.output_dir, RUN_FILE)) as f:
            json.dump(signature, f, indent=1)
    state.wait_for_everyone()

    # Resume: continue after the last committed chunk, from the offset it recorded.
    chunks = committed_chunks(args.output_dir, rank)
    done = 0
    if chunks:
        last = np.load(chunks[-1])
        start, line_no = (int(x) for x in last["next"])
        done = sum(len(np.load(p)["ids"]) for p in chunks)
        count = None if count is None else count - done
    total = None
    if state.is_main_process:  # for the progress bar only
        total = (count if count is not None else count_lines(args.wikipedia_path, start, end)) + done
    state.print(f"encoding {args.wikipedia_path} with {args.pretrained_model_path} ({pooling}, dim {dim}) on {world_size} "
                f"process(es), {device}; rank 0: ~{total} passages" + (f", resuming after {len(chunks)} committed chunks" if chunks else ""))

    dataset = PassageWindows(args.wikipedia_path, start, end, line_no, count, len(chunks), args.window, tokenizer,
                             args.max_length, args.batch_size, args.max_tokens_per_batch)
    num_workers = args.num_workers
    if num_workers is None:  # one worker tokenizes ~2-4k passages/s; a GPU encodes >10k/s
        cores_per_process = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        num_workers = max(1, min(16, cores_per_process - 1)) if device.type == "cuda" else 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=1 if num_workers else None)  # each worker: one window ready, one in the making
    kill_after = int(os.environ.get(KILL_AFTER_CHUNK, -1))
    # Where the time goes, for the report: in the model (the .cpu() at the end of each window waits for the GPU),
    # waiting for the workers' tokenized windows (the first one is the pipeline fill), and the workers' own time.
    t0, encoded, first, in_model, waited, tokenizing = time.time(), 0, None, 0.0, 0.0, 0.0
    ready = time.perf_counter()
    with tqdm(total=total, initial=done, unit="passage", disable=not state.is_main_process, smoothing=0.1) as bar:
        for item in loader:
            if "error" in item:
                raise DataError(item["error"])
            waited += time.perf_counter() - ready
            first = waited if first is None else first
            k, ids = item["window"], item["ids"].numpy()
            assert k == len(chunks), f"window {k} arrived, {len(chunks)} expected"
            t = time.perf_counter()
            emb = encode_batches(model, pooling, item["batches"], len(ids), device)
            in_model += time.perf_counter() - t
            tokenizing += item["prepare_s"]
            chunks.append(chunk_path(args.output_dir, rank, k))
            with atomic_write(chunks[-1], "wb") as f:
                np.savez(f, ids=ids, embeddings=emb.astype(out_dtype), next=item["next"].numpy())
            if k == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            encoded += len(ids)
            bar.update(len(ids))
            # Each window's arrays differ in size; glibc keeps freed ones in a fragmented heap and RSS crept up
            # window after window (peak 0.96 GiB at 20k passages, 1.41 at 200k; trimmed: 1.05 and 1.26, bounded by the window).
            _malloc_trim(0)
            ready = time.perf_counter()

    n = write_shard(args.output_dir, rank, chunks, dim, out_dtype)
    counts, encoded_all = gather_object([n]), gather_object([encoded])
    seconds = time.time() - t0
    if state.is_main_process:  # meta.json last: its presence marks a finished dir
        size = os.path.getsize(args.wikipedia_path)
        write_meta(args.output_dir, {
            "model": signature["model"], "role": "passage", "pooling": pooling, "dim": dim, "dtype": args.dtype,
            "max_length": args.max_length, "num_passages": sum(counts), "num_shards": world_size, "shard_counts": counts,
            "source": {"path": signature["source"]["path"], "name": os.path.basename(args.wikipedia_path), "size": size},
        })
        shutil.rmtree(os.path.join(args.output_dir, "chunks"))
    rate = sum(encoded_all) / seconds / world_size
    state.print(f"encoded {sum(encoded_all)} passages in {seconds:.1f}s: {rate:.1f} passages/s per process ({world_size} processes, {device.type})"
                + (f"; {sum(counts) - sum(encoded_all)} came from committed chunks" if sum(counts) != sum(encoded_all) else ""))
    if encoded:
        state.print(f"rank 0 time: model {in_model:.1f}s ({encoded / in_model:.0f} passages/s while encoding), waiting for tokenized "
                    f"windows {waited:.1f}s (first window {first:.1f}s); tokenizing {encoded / tokenizing:.0f} passages/s per worker x {num_workers or 1}")
        if waited - first > 0.2 * seconds:
            state.print("tokenization held the model back: more --num_workers (CPU cores) would raise the rate")
    # Linux reports KiB. Workers: the largest finished child of this process (the tokenizing workers).
    peak_rss, worker_rss = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    state.print(f"peak memory (RSS) of rank 0: {peak_rss:.2f} GiB" + (f", of its largest tokenizing worker {worker_rss:.2f} GiB" if num_workers else ""))
    state.print(f"wrote {sum(counts)} x {dim} {args.dtype} embeddings to {args.output_dir}/embeddings_shard_*.npy, ids to ids_shard_*.npy, meta.json")
    return {"passages": sum(counts), "encoded": sum(encoded_all), "seconds": seconds, "first_window_s": first or 0.0,
            "passages_per_s_per_process": rate, "output_dir": args.output_dir, "model_s": in_model, "waited_s": waited,
            "tokenize_per_worker_per_s": encoded / tokenizing if encoded else None, "num_workers": num_workers or 1,
            "peak_rss_gib": peak_rss, "worker_peak_rss_gib": worker_rss if num_workers else None}


if __name__ == "__main__":
    main()
