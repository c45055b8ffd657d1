"""Encode the passage file (psgs_w100.tsv) with a passage encoder into embedding shards, one per process.

    accelerate launch doc2embedding.py --pretrained_model_path outputs/nq/doc_encoder --output_dir outputs/nq/embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 doc2embedding.py ...     # two CPU processes

Fast: each process streams its own contiguous part of the file; DataLoader workers parse, tokenize,
sort each window of passages by length and pad them in batches of about max_tokens_per_batch tokens,
so the model computes almost no padding; a background thread writes each window while the next is encoded.
Safe: each window is committed as one chunk file (temp + rename). A relaunch with the same arguments
seeks past the committed chunks; the shards are assembled from the chunks at the end, so a killed and
resumed run writes the same files as an uninterrupted one. meta.json is written last (layout and
machinery in utils/embeddings.py; read the result with utils.embeddings.load_embeddings).
"""
import argparse
import concurrent.futures
import ctypes
import datetime
import json
import os
import resource
import sys
import time

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm import tqdm

from utils.data import count_lines, passage_shard
from utils.embeddings import (LoopClock, PassageWindows, check_run, chunk_path, committed_chunks, encode_defaults, finish_run,
                              flop_coefficients, read_meta, run_signature, start_run, write_chunk, write_shard)
from utils.errors import DataError, EncoderError
from utils.models import add_pooling_args, encode_batches, load_encoder, pad_batch, tokenize_passages

try:  # glibc: hand freed heap pages back to the OS once per window (see the loop)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # another libc: nothing to do
    _malloc_trim = lambda pad: 0  # noqa: E731


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model_path", required=True,
                   help="passage encoder: our doc_encoder dir, an HF (DPR) model, or a DPR .cp file")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--wikipedia_path", default="downloads/data/wikipedia_split/psgs_w100.tsv")
    p.add_argument("--max_length", type=int, default=256)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch_size", type=int, help="fixed number of passages per batch (instead of a token budget)")
    size.add_argument("--max_tokens_per_batch", type=int,
                      help="token budget per batch, padding included (default: 65536 on GPU, 4096 per thread on CPU)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="of the stored embeddings")
    p.add_argument("--compute_dtype", choices=["float32", "bfloat16", "float16"],
                   help="of the model's weights and activations (default: bfloat16 on GPUs that have it, else float16; float32 on CPU)")
    p.add_argument("--limit", type=int, help="encode only the first N passages of the file")
    p.add_argument("--window", type=int, default=16384,
                   help="passages sorted by length, encoded and committed together (the unit of resumption)")
    p.add_argument("--num_workers", type=int,
                   help="tokenizing DataLoader workers per process (default on GPU: the CPU cores per GPU but two, at most 8; 1 on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace the embeddings of a different run in output_dir")
    p.add_argument("--report_json", help="also write the end report's figures here (rank 0)")
    add_pooling_args(p)
    args = p.parse_args(argv)
    for name in ("max_length", "batch_size", "max_tokens_per_batch", "limit", "window"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    return args


def load(args, state):
    """The passage file and the model are checked before anything is written; then the run dir is claimed
    (or found finished: returns None) and this process's rows are located, after its committed chunks."""
    start, end, line_no, count = passage_shard(args.wikipedia_path, state.process_index, state.num_processes, args.limit)
    model, tokenizer, pooling = load_encoder(args.pretrained_model_path, "passage", pooling=args.pooling,
                                             similarity=args.similarity)
    defaults = encode_defaults(state.device)
    args.compute_dtype = args.compute_dtype or defaults["compute_dtype"]
    args.num_workers = defaults["num_workers"] if args.num_workers is None else args.num_workers
    model.to(state.device, getattr(torch, args.compute_dtype))
    probe = [(torch.tensor([0]), pad_batch(tokenize_passages(tokenizer, [""], ["dim"], args.max_length), tokenizer.pad_token_id))]
    dim = encode_batches(model, pooling, probe, 1, state.device, autocast=False).shape[1]
    if args.batch_size is None and args.max_tokens_per_batch is None:
        args.max_tokens_per_batch = defaults["max_tokens_per_batch"]

    keys = ("max_length", "dtype", "compute_dtype", "limit", "window", "batch_size", "max_tokens_per_batch")
    settings = {**{k: getattr(args, k) for k in keys}, "pooling": pooling}  # the encoder's own or the flags'
    signature = run_signature(args.pretrained_model_path, args.wikipedia_path, state.num_processes, settings)
    os.makedirs(args.output_dir, exist_ok=True)
    if check_run(args.output_dir, signature, args.overwrite, state.is_main_process):
        n = read_meta(args.output_dir)["num_passages"]
        state.print(f"{args.output_dir} already holds these embeddings ({n} passages); nothing to do")
        return None
    state.wait_for_everyone()
    if state.is_main_process:
        start_run(args.output_dir, signature)
    state.wait_for_everyone()

    chunks, done, resume = committed_chunks(args.output_dir, state.process_index)
    if resume:  # continue after the last committed chunk, from the offset it recorded
        start, line_no = resume
        count = None if count is None else count - done
    # rank 0's passages, for its progress bar (counting lines is a pass over the shard: other ranks skip it)
    total = (count if count is not None else count_lines(args.wikipedia_path, start, end)) + done if state.is_main_process else None
    state.print(f"encoding {args.wikipedia_path} with {args.pretrained_model_path} ({pooling}, dim {dim}, {args.compute_dtype}) on "
                f"{state.num_processes} process(es), {state.device}; rank 0: ~{total} passages"
                + (f", resuming after {len(chunks)} committed chunks" if chunks else ""))
    windows = PassageWindows(args.wikipedia_path, start, end, line_no, count, len(chunks), args.window, tokenizer,
                             args.max_length, args.batch_size, args.max_tokens_per_batch)
    return model, pooling, dim, signature, windows, chunks, (done, total)


def encode(args, state, model, pooling, windows, chunks, progress):
    """Encode this process's windows and commit each as a chunk, written by a background thread while the
    model encodes the next window. Returns the loop's time split (LoopClock): the model (queue + GPU work)
    and the gaps where the GPU idles: waiting for tokenized windows, host copies, the previous chunk's write."""
    loader = torch.utils.data.DataLoader(windows, batch_size=None, num_workers=args.num_workers, pin_memory=state.device.type == "cuda",
                                         prefetch_factor=1 if args.num_workers else None)  # each worker: one window ready, one in the making
    sync = torch.cuda.synchronize if state.device.type == "cuda" else lambda: None
    t, pending = LoopClock(), None  # pending: the previous chunk's write; one at a time bounds memory by two windows
    with concurrent.futures.ThreadPoolExecutor(1) as writer, \
            tqdm(total=progress[1], initial=progress[0], unit="passage", disable=not state.is_main_process, smoothing=0.1) as bar:
        for item in loader:
            t.lap("wait_s")
            t["first_window_s"] = t["first_window_s"] or t["wait_s"]
            if "error" in item:
                raise DataError(item["error"])
            k, ids = item["window"], item["ids"].numpy()
            assert k == len(chunks), f"window {k} arrived, {len(chunks)} expected"
            t["pinned"] = bool(item["batches"][0][1]["input_ids"].is_pinned())  # the loader's pin_memory reached the batches
            emb = encode_batches(model, pooling, item["batches"], len(ids), state.device, host=False, autocast=False)
            sync()
            t.lap("model_s")
            emb = emb.cpu().numpy()
            t.lap("copy_s")
            if pending is not None:
                pending.result()
            chunks.append(chunk_path(args.output_dir, state.process_index, k))
            pending = writer.submit(write_chunk, chunks[-1], ids, emb, item["next"].numpy(), args.dtype)
            t.lap("write_wait_s")
            t.update(encoded=len(ids), tokens=item["tokens"], tokens_sq=item["tokens_sq"], prepare_s=item["prepare_s"])
            bar.update(len(ids))
            # Each window's arrays differ in size; glibc keeps freed ones in a fragmented heap, so without
            # handing the pages back, RSS creeps up window after window instead of staying bounded by the window.
            del item, emb
            _malloc_trim(0)
            t.lap("other_s")
        if pending is not None:
            pending.result()  # the last chunk is committed before the shards are assembled
    return t


def save(args, state, signature, dim, pooling, chunks):
    """This process's shard from its chunks; then rank 0 writes meta.json, last. Returns the shard counts."""
    n = write_shard(args.output_dir, state.process_index, chunks, dim, np.dtype(args.dtype))
    counts = gather_object([n])
    if state.is_main_process:
        finish_run(args.output_dir, {
            "model": signature["model"], "role": "passage", "pooling": pooling, "dim": dim, "dtype": args.dtype,
            "max_length": args.max_length, "num_passages": sum(counts), "num_shards": state.num_processes, "shard_counts": counts,
            "source": {"path": signature["source"]["path"], "name": os.path.basename(args.wikipedia_path),
                       "size": os.path.getsize(args.wikipedia_path)},
        })
    return counts


def report(args, state, model, t, counts, seconds):
    """Where the time went on rank 0, to hold against bench/bench_embed.py's model-alone ceiling. TFLOP/s counts the
    real tokens' work: 2 x non-embedding params x tokens + 4 x layers x hidden x sum(length^2) (flop_coefficients)."""
    encoded_all, enc, (a, b) = sum(gather_object([t["encoded"]])), t["encoded"], flop_coefficients(model)
    per = (lambda x: enc / x if enc else None)  # passages per second of x
    s = {"passages": sum(counts), "encoded": encoded_all, "seconds": seconds, "output_dir": args.output_dir,
         "passages_per_s_per_process": encoded_all / seconds / state.num_processes, "num_workers": args.num_workers or 1,
         "compute_dtype": args.compute_dtype, "model_passages_per_s": per(t["model_s"]), "tokenize_per_worker_per_s": per(t["prepare_s"]),
         "tflops": (a * t["tokens"] + b * t["tokens_sq"]) / t["model_s"] / 1e12 if enc else None,
         "waited_s": t["wait_s"], "idle_s": t["wait_s"] + t["copy_s"] + t["write_wait_s"] + t["other_s"], **t}
    state.print(f"encoded {encoded_all} passages in {seconds:.1f}s: {s['passages_per_s_per_process']:.1f} passages/s per process "
                f"({state.num_processes} processes, {state.device.type})"
                + (f"; {sum(counts) - encoded_all} came from committed chunks" if sum(counts) != encoded_all else ""))
    if enc:
        state.print(f"rank 0: model {t['model_s']:.1f}s ({s['model_passages_per_s']:.0f} passages/s, {s['tflops']:.3g} TFLOP/s, "
                    f"{args.compute_dtype}); {state.device.type} idle {s['idle_s']:.1f}s: waiting for tokenized windows {t['wait_s']:.1f}s "
                    f"(first {t['first_window_s']:.1f}s), host copies {t['copy_s']:.2f}s, chunk writes {t['write_wait_s']:.2f}s; "
                    f"tokenizing {s['tokenize_per_worker_per_s']:.0f} passages/s per worker x {s['num_workers']}")
        if t["wait_s"] - t["first_window_s"] > 0.2 * seconds:
            state.print("tokenization held the model back: more --num_workers (CPU cores) would raise the rate")
    # Linux reports KiB. Workers: the largest finished child of this process (the tokenizing workers).
    s["peak_rss_gib"], rss = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    s["worker_peak_rss_gib"] = rss if args.num_workers else None
    state.print(f"peak memory (RSS) of rank 0: {s['peak_rss_gib']:.2f} GiB"
                + (f", of its largest tokenizing worker {rss:.2f} GiB" if args.num_workers else ""))
    return s


def main(argv=None):
    """Returns report()'s figures (None when output_dir already held this run's embeddings)."""
    args = parse_args(argv)
    # Workers tokenize in parallel processes; the tokenizer's own threads would be disabled in them anyway, with a warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Generous barrier timeout: after a resume, one rank may wait long for another.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available(),
                         timeout=datetime.timedelta(hours=12))
    try:
        loaded = load(args, state)
        if loaded is None:
            return None
        model, pooling, dim, signature, windows, chunks, progress = loaded
        t0 = time.time()
        times = encode(args, state, model, pooling, windows, chunks, progress)
        counts = save(args, state, signature, dim, pooling, chunks)
        stats = report(args, state, model, times, counts, time.time() - t0)
    except (DataError, EncoderError) as e:
        sys.exit(f"error: {e}")
    state.print(f"wrote {stats['passages']} x {dim} {args.dtype} embeddings to {args.output_dir}/embeddings_shard_*.npy, "
                "ids to ids_shard_*.npy, meta.json")
    if args.report_json and state.is_main_process:
        with open(args.report_json, "w") as f:
            json.dump(stats, f, indent=1)
    return stats


if __name__ == "__main__":
    main()
