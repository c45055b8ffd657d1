"""Training-step throughput: a nanoDPR-style step vs train_dpr.py's step, same device, one run.

    python bench/bench_train.py                    # GPU: bert-base config, batch 128 (+1 hard negative each)
    python bench/bench_train.py --device cpu       # CPU: a small BERT, batch 8
    python bench/bench_train.py --json OUT.json    # also write the results (bench/run_all.py reads them)

Random-init weights and random token ids (the speed of a step does not depend on them), lengths drawn
like NQ's: questions 10-20 tokens, passages 150-200. Variants, each a full optimizer step (forward,
backward, clip, AdamW) through utils.biencoder.plain_step / grad_cache_step:
  nanodpr  fp32, eager attention, every sequence padded to 256, no gradient cache
  ours     bf16 autocast on GPU (fp32 on CPU), SDPA, padded per batch (on CPU in 4 length groups)
  ours_gc  ours + gradient cache (chunks of --chunk questions)
  ours+LEVER (--levers): ours with one change each, to measure it side by side (LEVERS below)
examples/s = questions per second; peak memory = torch.cuda.max_memory_allocated (GPU only).
If a variant runs out of memory at --batch_size it is retried at half the batch (reported).
"""

import argparse
import contextlib
import json
import os
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import BertConfig, BertModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from accelerate.utils import send_to_device  # noqa: E402

from utils.biencoder import BiEncoder, grad_cache_step, plain_step  # noqa: E402
from utils.models import pad_batch  # noqa: E402
from utils.train_data import make_chunk, passage_groups  # noqa: E402

LEVERS = {  # name: what changes against "ours"
    "pad8": "every batch padded to a multiple of 8 tokens (Collate's pad_multiple)",
    "mask4d": "4-D boolean attention masks: transformers passes them on (no host sync checking a 2-D one)",
    "no_cudnn": "SDPA without its cuDNN backend (flash, memory-efficient or math kernels only)",
    "unfused_adamw": "AdamW's foreach implementation instead of the fused kernel train_dpr.py uses on GPUs",
    "sync": "a host sync per step (loss.item()), as a loop that logs every step would have",
}
SIZES = {  # hidden, layers, heads, intermediate
    "base": (768, 12, 12, 3072),  # bert-base-uncased, DPR's encoder
    "small": (256, 2, 4, 1024),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=SIZES, default=None, help="default: base on GPU, small on CPU")
    p.add_argument(
        "--batch_size", type=int, default=None, help="questions per step; default 128 on GPU, 8 on CPU"
    )
    p.add_argument(
        "--chunk", type=int, default=None, help="gradient-cache chunk (questions); default 32 GPU, 4 CPU"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant; default 10 GPU, 2 CPU")
    p.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="untimed steps; 4: one pass over the 4 distinct "
        "batches, so no variant meets a batch shape first while timed (GPU libraries plan per shape)",
    )
    p.add_argument("--levers", nargs="*", default=[], choices=LEVERS, help="also run ours with each of these")
    p.add_argument(
        "--no_baseline", action="store_true", help="skip the nanoDPR-style step (slow; measured before)"
    )
    p.add_argument(
        "--profile", action="store_true", help="print ours' top operators over 4 steps (torch.profiler)"
    )
    p.add_argument("--json", default=None, help="write results to this file")
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.model = args.model or ("base" if gpu else "small")
    args.batch_size = args.batch_size or (128 if gpu else 8)
    args.chunk = args.chunk or (32 if gpu else 4)
    args.steps = args.steps or (10 if gpu else 2)
    return args


def make_batches(n, batch_size, chunk, pad_to, seed, groups=1, pad_multiple=1):
    """n synthetic micro-batches as utils.train_data.Collate builds them (per question [positive, hard
    negative]); pad_to: nanoDPR-style, every sequence padded to that length, no length groups."""
    g = torch.Generator().manual_seed(seed)

    def seqs(count, lo, hi):
        lengths = torch.randint(lo, hi + 1, (count,), generator=g).tolist()
        return [[101] + torch.randint(1000, 30000, (k - 2,), generator=g).tolist() + [102] for k in lengths]

    def pad(ids):  # to pad_to: a row at full width joins the batch, then is dropped
        return {k: v[:-1] for k, v in pad_batch(ids + [[0] * pad_to], 0).items()}

    batches = []
    for _ in range(n):
        questions, passages = seqs(batch_size, 10, 20), seqs(2 * batch_size, 150, 200)
        chunks = []
        for s in range(0, batch_size, chunk):
            q, p = questions[s : s + chunk], passages[2 * s : 2 * (s + chunk)]
            chunks.append(
                {"question": pad(q), "passages": [pad(p)], "passage_order": torch.arange(len(p))}
                if pad_to
                else make_chunk(q, p, 0, 0, groups, pad_multiple)
            )
        batches.append({"chunks": chunks, "positives": torch.arange(0, 2 * batch_size, 2)})
    return batches


def run_variant(name, args, device, batch_size):
    hidden, layers, heads, inter = SIZES[args.model]
    gpu = device.type == "cuda"
    nano, lever = name == "nanodpr", name.partition("+")[2]
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        attn_implementation="eager" if nano else "sdpa",
    )
    torch.manual_seed(0)
    model = BiEncoder(
        BertModel(config, add_pooling_layer=False), BertModel(config, add_pooling_layer=False)
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=2e-5, eps=1e-8, fused=gpu and lever != "unfused_adamw"
    )
    bf16 = gpu and not nano
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float32, enabled=bf16)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    grad_cache = name == "ours_gc"
    train_step = grad_cache_step if grad_cache else plain_step
    chunk = args.chunk if grad_cache else batch_size
    batches = [
        send_to_device(b, device, non_blocking=True)
        for b in make_batches(
            4,
            batch_size,
            chunk,
            256 if nano else None,
            1,
            passage_groups(device),
            8 if lever == "pad8" else 1,
        )
    ]
    if lever == "mask4d":
        for x in (x for b in batches for c in b["chunks"] for x in [c["question"], *c["passages"]]):
            x["attention_mask"] = x["attention_mask"][:, None, None, :].bool()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

    def step(i):
        with sdpa_kernel(backends) if lever == "no_cudnn" else contextlib.nullcontext():
            loss = train_step(model, batches[i % len(batches)], autocast, scaler, loss_weight=1.0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if lever == "sync":
            loss.item()
        return loss

    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    loss = loss.item()
    elapsed = time.perf_counter() - start
    result = {
        "variant": name,
        "batch_size": batch_size,
        "examples_per_s": batch_size * args.steps / elapsed,
        "steps_per_s": args.steps / elapsed,
        "loss": loss,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
    }
    if args.profile and name == "ours":  # where a step's time goes: the top operators over 4 steps
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if gpu else []
        )
        try:
            with torch.profiler.profile(activities=activities) as prof:
                for i in range(4):
                    step(i)
                sync()
            key = "self_device_time_total" if gpu else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
        except Exception as e:  # noqa: BLE001 (a failing profiler costs only its table)
            print(f"profile failed: {type(e).__name__}: {e}")
    model = optimizer = batches = None  # free the GPU memory before empty_cache (step holds them)
    if gpu:
        torch.cuda.empty_cache()
    return result


def main():
    args = parse_args()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device {name}, model {args.model} {SIZES[args.model]}, batch {args.batch_size} questions x 2 "
        "passages, "
        f"{args.steps} timed steps"
    )
    results = []
    variants = (
        ([] if args.no_baseline else ["nanodpr"]) + ["ours", "ours_gc"] + [f"ours+{x}" for x in args.levers]
    )
    for variant in variants:
        batch_size = args.batch_size
        while True:
            try:
                r = run_variant(variant, args, device, batch_size)
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"{variant}: out of memory at batch {batch_size}")
                batch_size //= 2
                if batch_size < 1:
                    raise
            except Exception as e:  # noqa: BLE001 (a lever that fails is reported, the others still run)
                if "+" not in variant:
                    raise
                r = {"variant": variant, "error": f"{type(e).__name__}: {e}"}
                print(f"{variant}: failed: {r['error']}")
                break
        if "error" in r:
            results.append(r)
            continue
        r["oom_at_requested_batch"] = batch_size != args.batch_size
        results.append(r)
        mem = f", peak {r['peak_mem_gb']:.1f} GiB" if r["peak_mem_gb"] is not None else ""
        print(
            f"{variant:8s} batch {batch_size:4d}: {r['examples_per_s']:8.1f} examples/s, "
            f"{r['steps_per_s']:.3f} steps/s{mem}"
        )
    base = results[0]["examples_per_s"] if results[0]["variant"] == "nanodpr" else None
    for r in results[1:] if base else []:
        r["speedup_vs_nanodpr"] = r["examples_per_s"] / base
        print(f"{r['variant']} / nanodpr: {r['speedup_vs_nanodpr']:.2f}x examples/s")
    ours = next(r["examples_per_s"] for r in results if r["variant"] == "ours")
    for r in (r for r in results if "+" in r["variant"] and "error" not in r):
        r["vs_ours"] = r["examples_per_s"] / ours
        print(f"lever {r['variant']}: {r['vs_ours']:.3f}x ours ({LEVERS[r['variant'].partition('+')[2]]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "bench": "train",
                    "device": name,
                    "model": args.model,
                    "batch_size": args.batch_size,
                    "chunk": args.chunk,
                    "steps": args.steps,
                    "results": results,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
