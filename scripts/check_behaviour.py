"""Does a change keep behaviour? Run an old revision and the working tree on data/sample with the same
settings and compare what each stage writes. Exit status 1 when a difference exceeds its tolerance.

    python scripts/check_behaviour.py --old 10abebb                     # a tiny random BERT built here
    python scripts/check_behaviour.py --old HEAD --base_model DIR       # e.g. the offline MiniLM
    python scripts/check_behaviour.py --old main --keep /tmp/check      # keep both trees' outputs

Stages, in order (each a run function called once per tree and a compare function):
  train  train_dpr.py for a few steps across an epoch boundary, plain and with --grad_cache_chunk_size,
         dropout on: largest |weight difference| in last_state/ and in best/'s encoder dirs, per-step losses,
         dev metrics.
  encode doc2embedding.py on the CPU over data/sample/psgs.tsv with the base model (max_length 128: the tiny
         BERT's positions), under several argument sets
         (ENCODE_RUNS, one under torchrun with 2 processes): embeddings and ids byte for byte, meta.json's
         values (tolerance 0) but its "encoder" record (newer revisions only).
  search test_dpr.py (--index flat, CPU) over the same embeddings (made by the working tree's
         doc2embedding.py) with the base model as question encoder: results JSON and top-k curve byte for
         byte.
To add a stage: write run_<name>(tree, out, ctx) -> outputs and compare_<name>(old, new) -> [(what, diff,
tol)], and list it in STAGES; ctx carries the inputs (base model, data) and earlier stages' outputs of the
working tree.
"""

import argparse
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
# every option whose default may differ between revisions
TRAIN_ARGS = [
    "--train_batch_size",
    "16",
    "--max_train_epochs",
    "2",
    "--max_train_steps",
    "8",
    "--eval_steps",
    "4",
    "--lr",
    "1e-3",
    "--warmup_steps",
    "2",
    "--max_length",
    "64",
    "--num_hard_negatives",
    "1",
    "--val_av_rank_start_epoch",
    "0",
    "--val_av_rank_hard_neg",
    "5",
    "--val_av_rank_other_neg",
    "2",
    "--eval_batch_size",
    "32",
    "--num_workers",
    "0",
    "--log_steps",
    "1",
    "--mixed_precision",
    "no",
    "--dropout",
    "0.1",
    "--seed",
    "7",
    "--save_total_limit",
    "1",
    "--adam_eps",
    "1e-8",
    "--max_grad_norm",
    "2.0",
]
TRAIN_VARIANTS = {"plain": [], "grad_cache": ["--grad_cache_chunk_size", "4"]}


def tiny_bert(out_dir):
    """A 2-layer random BERT with a character-level vocab (every lower-case word tokenizes), no pooler."""
    os.makedirs(out_dir, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    with open(os.path.join(out_dir, "vocab.txt"), "w") as f:
        f.write(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars])
            + "\n"
        )
    tokenizer = BertTokenizerFast.from_pretrained(out_dir, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def run(cmd, tree, **extra_env):
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra_env)
    result = subprocess.run([sys.executable] + cmd, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed in {tree}: {' '.join(cmd)}\n{result.stdout[-2000:]}{result.stderr[-3000:]}")


def run_train(tree, out, ctx):
    for variant, extra in TRAIN_VARIANTS.items():
        run(
            [
                "train_dpr.py",
                "--train_file",
                ctx["train"],
                "--dev_file",
                ctx["dev"],
                "--base_model",
                ctx["base_model"],
                "--output_dir",
                os.path.join(out, variant),
            ]
            + TRAIN_ARGS
            + extra,
            tree,
        )
    return {"train_dir": os.path.join(out, "plain")}


def weight_diff(a, b, what):
    """Largest |a - b| over the weights both have; weights only one has must be BERT's unused pooler."""
    only = sorted(k for k in set(a) ^ set(b) if "pooler." not in k)
    if only:
        sys.exit(f"{what}: weights in one run only: {only[:5]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in set(a) & set(b))


def read_log(path):
    with open(os.path.join(path, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def compare_train(old, new):
    rows = []
    for variant in TRAIN_VARIANTS:
        a, b = os.path.join(old, variant), os.path.join(new, variant)
        state = [
            torch.load(os.path.join(d, "last_state", "state.pt"), weights_only=True)["model"] for d in (a, b)
        ]
        rows.append((f"{variant}: last_state weights", weight_diff(*state, variant), 1e-6))
        for tower in ("query_encoder", "doc_encoder"):
            saved = [load_file(os.path.join(d, "best", tower, "model.safetensors")) for d in (a, b)]
            rows.append((f"{variant}: best/{tower} weights", weight_diff(*saved, variant), 1e-6))
        log_a, log_b = read_log(a), read_log(b)
        if [(r["step"], sorted(r)) for r in log_a] != [(r["step"], sorted(r)) for r in log_b]:
            sys.exit(f"{variant}: train_log.jsonl records differ in steps or keys")
        for key, tol in (
            ("loss", 1e-6),
            ("grad_norm", 1e-5),
            ("lr", 0.0),
            ("dev_nll", 1e-5),
            ("dev_avg_rank", 1e-6),
        ):
            diffs = [abs(x[key] - y[key]) for x, y in zip(log_a, log_b) if key in x]
            rows.append((f"{variant}: {key} ({len(diffs)} records)", max(diffs), tol))
    return rows


ENCODE_RUNS = {
    "default": [],
    "float32, windows, budget, 2 workers": [
        "--dtype",
        "float32",
        "--window",
        "64",
        "--max_tokens_per_batch",
        "1024",
        "--num_workers",
        "2",
    ],
    "limit, batch_size, no worker": [
        "--dtype",
        "float32",
        "--limit",
        "100",
        "--batch_size",
        "16",
        "--num_workers",
        "0",
    ],
    "2 processes": ["--window", "50", "--max_tokens_per_batch", "2048"],
}


def free_port():
    """For torchrun: a fixed port collides with another torchrun on the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_encode(tree, out, ctx):
    for i, (name, extra) in enumerate(ENCODE_RUNS.items()):
        launch = (
            ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
            if name == "2 processes"
            else []
        )
        run(
            launch
            + [
                "doc2embedding.py",
                "--pretrained_model_path",
                ctx["base_model"],
                "--wikipedia_path",
                ctx["psgs"],
                "--output_dir",
                os.path.join(out, str(i)),
                "--max_length",
                "128",
            ]
            + extra,
            tree,
            ACCELERATE_USE_CPU="1",
        )
    return {}


def compare_encode(old, new):
    """The stored files themselves: run.json may differ (it records the arguments, including new ones), and so
    may meta.json's "encoder" record of the passage encoder (revisions before it lack it)."""
    rows = []
    for i, name in enumerate(ENCODE_RUNS):
        a, b = os.path.join(old, str(i)), os.path.join(new, str(i))
        for file in sorted(f for f in os.listdir(a) if f.endswith(".npy")) + ["meta.json"]:
            x, y = (open(os.path.join(d, file), "rb").read() for d in (a, b))
            if file == "meta.json":
                x, y = ({k: v for k, v in json.loads(m).items() if k != "encoder"} for m in (x, y))
            diff = 0.0 if x == y else float("inf")
            ea, eb = (
                (np.load(os.path.join(d, file)).astype(np.float32) for d in (a, b))
                if file.startswith("embeddings_")
                else (0, 0)
            )
            if x != y and file.startswith("embeddings_") and np.shape(ea) == np.shape(eb):  # how far apart
                diff = float(np.abs(ea - eb).max())
            rows.append((f"{name}: {file} ({'values' if file == 'meta.json' else 'bytes'})", diff, 0.0))
    return rows


def run_search(tree, out, ctx):
    emb = os.path.join(out, "embeddings")
    # the working tree's: both trees search the same vectors
    run(
        [
            "doc2embedding.py",
            "--pretrained_model_path",
            ctx["base_model"],
            "--wikipedia_path",
            ctx["psgs"],
            "--output_dir",
            emb,
            "--max_length",
            "128",
        ],
        ROOT,
        ACCELERATE_USE_CPU="1",
    )
    run(
        [
            "test_dpr.py",
            "--embedding_dir",
            emb,
            "--pretrained_model_path",
            ctx["base_model"],
            "--wikipedia_path",
            ctx["psgs"],
            "--qa_file",
            ctx["qa"],
            "--index_device",
            "cpu",
            "--output_file",
            os.path.join(out, "results.json"),
        ],
        tree,
    )
    return {}


def compare_search(old, new):
    rows = []
    for file in ("results.json", "results.topk.csv"):
        x, y = (open(os.path.join(d, file), "rb").read() for d in (old, new))
        rows.append((f"{file} (bytes)", 0.0 if x == y else float("inf"), 0.0))
    return rows


STAGES = [
    ("train", run_train, compare_train),
    ("encode", run_encode, compare_encode),
    ("search", run_search, compare_search),
]


def export(rev, dest):
    """The tracked files of revision `rev` (git archive: no worktree bookkeeping left behind)."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", required=True, help="git revision to compare the working tree with")
    parser.add_argument(
        "--base_model", help="BERT dir both runs start from (default: a tiny random BERT built here)"
    )
    parser.add_argument(
        "--stages", default=",".join(name for name, _, _ in STAGES), help="comma-separated stages"
    )
    parser.add_argument("--keep", help="work in this dir and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        trees = {"old": export(args.old, os.path.join(work, "old_tree")), "new": ROOT}
        ctx = {
            "train": os.path.join(SAMPLE, "train.json"),
            "dev": os.path.join(SAMPLE, "dev.json"),
            "psgs": os.path.join(SAMPLE, "psgs.tsv"),
            "qa": os.path.join(SAMPLE, "test.qa.csv"),
            "base_model": args.base_model or tiny_bert(os.path.join(work, "tiny_bert")),
        }
        failed = False
        for name, run_stage, compare in STAGES:
            if name not in args.stages.split(","):
                continue
            for side in trees:
                shutil.rmtree(os.path.join(work, side, name), ignore_errors=True)
            outputs = {
                side: run_stage(tree, os.path.join(work, side, name), ctx) for side, tree in trees.items()
            }
            ctx.update(outputs["new"])
            print(f"{name}: {args.old} vs working tree")
            for what, diff, tol in compare(os.path.join(work, "old", name), os.path.join(work, "new", name)):
                failed |= diff > tol
                print(f"  {what:45s} max |diff| {diff:.3g}{'  > tolerance %g' % tol if diff > tol else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
