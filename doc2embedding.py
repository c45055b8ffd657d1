"""Encode the passage file (psgs_w100.tsv) with a passage encoder into embedding shards, one per process.

    accelerate launch doc2embedding.py        # outputs/dpr_nq/best/doc_encoder -> outputs/dpr_nq/embeddings
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 doc2embedding.py --pretrained_model_path P --output_dir D

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
import sys
import time
from collections import namedtuple

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from tqdm import tqdm

from bench.profiling import LoopClock, encoding_report
from utils.embeddings import (
    PassageWindows,
    chunk_path,
    claim_run,
    committed_chunks,
    encode_defaults,
    finish_run,
    run_signature,
    write_chunk,
    write_shard,
)
from utils.errors import ConfigError, DataError, EncoderError, HelpFormatter
from utils.formats import RECIPE, check_made, count_lines, passage_shard
from utils.models import add_pooling_args, embedding_dim, encode_batches, encoder_identity, load_encoder

try:  # glibc: hand freed heap pages back to the OS once per window (see the loop)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # another libc: nothing to do
    _malloc_trim = lambda pad: 0  # noqa: E731


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--pretrained_model_path",
        default=RECIPE["doc_encoder"],
        help="passage encoder: our doc_encoder dir, an HF (DPR) model, or a DPR .cp file",
    )
    p.add_argument("--output_dir", default=RECIPE["embeddings"], help="the embedding dir")
    p.add_argument("--wikipedia_path", default=RECIPE["passages"], help="passages")
    p.add_argument("--max_length", type=int, default=256, help="tokens per passage (title [SEP] text)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--batch_size", type=int, help="fixed number of passages per batch (instead of a token budget)"
    )
    size.add_argument(
        "--max_tokens_per_batch",
        type=int,
        help="tokens per padded batch (default: GPU 262144 or what fits, CPU 4096/thread)",
    )
    p.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="of the stored embeddings"
    )
    p.add_argument(
        "--compute_dtype",
        choices=["float32", "bfloat16", "float16"],
        help="of the model's weights and activations (default: bfloat16 on GPUs that have it, else float16; "
        "float32 on CPU)",
    )
    p.add_argument("--limit", type=int, help="encode only the first N passages of the file")
    p.add_argument(
        "--window",
        type=int,
        default=16384,
        help="passages sorted, encoded and committed together (the first windows ramp up to it)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        help="tokenizing workers per process (default: cores per GPU but two, at most 16; CPU: 1)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the embeddings of a different run in output_dir"
    )
    p.add_argument("--report_json", help="also write the end report's figures here (rank 0)")
    add_pooling_args(p)
    args = p.parse_args(argv)
    for name in ("max_length", "batch_size", "max_tokens_per_batch", "limit", "window"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    return args


# What load hands the loop: the model, the settings the run resolved, this process's passages and progress.
Loaded = namedtuple("Loaded", "model pooling dim settings num_workers signature windows chunks done total")


def load(args, state):
    """The passage file and the model are checked before anything is written; then the run dir is claimed
    (or found finished: returns None) and this process's rows are located, after its committed chunks."""
    check_made(args.pretrained_model_path, args.wikipedia_path)
    start, end, line_no, count = passage_shard(
        args.wikipedia_path, state.process_index, state.num_processes, args.limit
    )
    model, tokenizer, pooling = load_encoder(
        args.pretrained_model_path, "passage", pooling=args.pooling, similarity=args.similarity
    )
    encoder = encoder_identity(model, args.pretrained_model_path)  # by content: a retrained model is another
    defaults = encode_defaults(state.device)
    budget = args.max_tokens_per_batch or (None if args.batch_size else defaults["max_tokens_per_batch"])
    # what the chunks depend on (run_signature), with the defaults
    settings = {
        "max_length": args.max_length,
        "dtype": args.dtype,
        "limit": args.limit,
        "window": args.window,
        "compute_dtype": args.compute_dtype or defaults["compute_dtype"],
        "batch_size": args.batch_size,
        "max_tokens_per_batch": budget,
    }
    num_workers = defaults["num_workers"] if args.num_workers is None else args.num_workers
    model.to(state.device, getattr(torch, settings["compute_dtype"]))
    dim = embedding_dim(model)

    settings["pooling"] = pooling  # the encoder's own or the flags'
    signature = run_signature(
        args.pretrained_model_path, encoder, args.wikipedia_path, state.num_processes, settings
    )
    if finished := claim_run(args.output_dir, signature, args.overwrite, state):
        n = finished["num_passages"]
        state.print(f"{args.output_dir} already holds these embeddings ({n} passages); nothing to do")
        return None

    chunks, done, resume = committed_chunks(args.output_dir, state.process_index)
    if resume:  # continue after the last committed chunk, from the offset it recorded
        start, line_no = resume
        count = None if count is None else count - done
    # rank 0's passages, for its progress bar (counting lines is a pass over the shard: other ranks skip it)
    total = None
    if state.is_main_process:
        total = (count if count is not None else count_lines(args.wikipedia_path, start, end)) + done
    state.print(
        f"encoding {args.wikipedia_path} with {args.pretrained_model_path} ({pooling}, dim {dim}, "
        f"{settings['compute_dtype']}) on {state.num_processes} process(es), {state.device}; "
        f"rank 0: ~{total} passages" + (f", resuming after {len(chunks)} committed chunks" if chunks else "")
    )
    windows = PassageWindows(
        args.wikipedia_path,
        start,
        end,
        line_no,
        count,
        len(chunks),
        args.window,
        tokenizer,
        args.max_length,
        args.batch_size,
        settings["max_tokens_per_batch"],
        defaults["always_mask"],
    )
    return Loaded(model, pooling, dim, settings, num_workers, signature, windows, chunks, done, total)


def encode(args, state, loaded):
    """Encode this process's windows and commit each as a chunk, written by a background thread while the
    model encodes the next window. Returns the loop's time split (LoopClock): the model (queue + GPU work)
    and the gaps where the GPU idles: waiting for tokenized windows, host copies, the previous chunk's
    write."""
    cuda, chunks = state.device.type == "cuda", loaded.chunks
    # per worker: one window ready
    loader = torch.utils.data.DataLoader(
        loaded.windows,
        batch_size=None,
        num_workers=loaded.num_workers,
        pin_memory=cuda,
        prefetch_factor=1 if loaded.num_workers else None,
    )
    sync = torch.cuda.synchronize if cuda else lambda: None
    # pending: the previous chunk's write; one at a time bounds memory by two windows
    clock, pending = (LoopClock(), None)
    with (
        concurrent.futures.ThreadPoolExecutor(1) as writer,
        tqdm(
            total=loaded.total,
            initial=loaded.done,
            unit="passage",
            disable=not state.is_main_process,
            smoothing=0.1,
        ) as bar,
    ):
        for item in loader:
            clock.lap("wait_s")
            clock["first_window_s"] = clock["first_window_s"] or clock["wait_s"]
            if "error" in item:
                raise DataError(item["error"])
            k, ids = item["window"], item["ids"].numpy()
            assert k == len(chunks), f"window {k} arrived, {len(chunks)} expected"
            # pin_memory reached the batches
            clock["pinned"] = bool(item["batches"][0][1]["input_ids"].is_pinned())
            emb = encode_batches(
                loaded.model, loaded.pooling, item["batches"], len(ids), state.device, host=False
            )
            sync()
            clock.lap("model_s")
            emb = emb.cpu().numpy()
            clock.lap("copy_s")
            if pending is not None:
                pending.result()
            chunks.append(chunk_path(args.output_dir, state.process_index, k))
            pending = writer.submit(write_chunk, chunks[-1], ids, emb, item["next"].numpy(), args.dtype)
            clock.lap("write_wait_s")
            clock.update(
                encoded=len(ids),
                tokens=item["tokens"],
                tokens_sq=item["tokens_sq"],
                prepare_s=item["prepare_s"],
            )
            bar.update(len(ids))
            # Each window's arrays differ in size; glibc keeps freed ones in a fragmented heap, so without
            # handing the pages back, RSS creeps up window after window instead of staying bounded by the
            # window.
            del item, emb
            _malloc_trim(0)
            clock.lap("other_s")
        if pending is not None:
            pending.result()  # the last chunk is committed before the shards are assembled
    return clock


def save(args, state, loaded):
    """This process's shard from its chunks; then rank 0 writes meta.json, last. Returns the shard counts."""
    n = write_shard(args.output_dir, state.process_index, loaded.chunks, loaded.dim, np.dtype(args.dtype))
    counts = gather_object([n])
    if state.is_main_process:
        source = {
            "path": loaded.signature["source"]["path"],
            "name": os.path.basename(args.wikipedia_path),
            "size": os.path.getsize(args.wikipedia_path),
        }
        finish_run(
            args.output_dir,
            {
                "model": loaded.signature["model"],
                "encoder": loaded.signature["encoder"],  # test_dpr.py checks it
                "role": "passage",
                "pooling": loaded.pooling,
                "dim": loaded.dim,
                "dtype": args.dtype,
                "max_length": args.max_length,
                "num_passages": sum(counts),
                "num_shards": state.num_processes,
                "shard_counts": counts,
                "source": source,
            },
        )
    return counts


def main(argv=None):
    """Returns encoding_report's figures (None when output_dir already held this run's embeddings)."""
    args = parse_args(argv)
    # Workers tokenize in parallel processes; the tokenizer's own threads would be disabled in them anyway,
    # with a warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Generous barrier timeout: after a resume, one rank may wait long for another.
    state = PartialState(
        cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available(),
        timeout=datetime.timedelta(hours=12),
    )
    try:
        loaded = load(args, state)
        if loaded is None:
            return None
        start = time.time()
        clock = encode(args, state, loaded)
        counts = save(args, state, loaded)
        settings = {
            "output_dir": args.output_dir,
            "num_workers": loaded.num_workers,
            "compute_dtype": loaded.settings["compute_dtype"],
        }
        encoded_all = sum(gather_object([clock["encoded"]]))
        stats = encoding_report(
            clock, loaded.model, state, settings, sum(counts), encoded_all, time.time() - start
        )
    except (ConfigError, DataError, EncoderError) as e:
        sys.exit(f"error: {e}")
    state.print(
        f"wrote {stats['passages']} x {loaded.dim} {args.dtype} embeddings to "
        f"{args.output_dir}/embeddings_shard_*.npy, "
        "ids to ids_shard_*.npy, meta.json"
    )
    if args.report_json and state.is_main_process:
        with open(args.report_json, "w") as f:
            json.dump(stats, f, indent=1)
    return stats


if __name__ == "__main__":
    main()
