"""Check that doc2embedding.py writes byte-identical embeddings to an earlier checkout's (same inputs, on CPU).

    git worktree add /tmp/before 10abebb
    python scripts/check_encode_behaviour.py /tmp/before --pretrained_model_path P [--wikipedia_path data/sample/psgs.tsv]

Runs both checkouts' doc2embedding.py under several argument sets (default float16; float32 with small
windows, a token budget and 2 tokenizing workers; --limit with --batch_size; 2 processes under torchrun),
then compares the shards and meta.json byte for byte (run.json records the arguments, so it may differ).
"""
import argparse
import filecmp
import glob
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "default": [],
    "float32-windows-budget-2-workers": ["--dtype", "float32", "--window", "64", "--max_tokens_per_batch", "1024", "--num_workers", "2"],
    "limit-batch-size-no-worker": ["--dtype", "float32", "--limit", "100", "--batch_size", "16", "--num_workers", "0"],
    "2-processes": ["--window", "50", "--max_tokens_per_batch", "2048"],
}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def check_encode(before_root, model, passages):
    """True when both checkouts' doc2embedding.py write the same shards and meta.json for every run in RUNS."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for run, extra in RUNS.items():
            for name, root in (("before", before_root), ("after", ROOT)):
                torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]
                cmd = [*(torchrun if run == "2-processes" else [sys.executable]), "doc2embedding.py", "--pretrained_model_path", model,
                       "--wikipedia_path", os.path.abspath(passages), "--output_dir", os.path.join(tmp, run, name), *extra]
                subprocess.run(cmd, cwd=root, env={**env, "PYTHONPATH": root}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tmp, run, "before", "*_shard_*.npy"))) + ["meta.json"]
            for file in names:
                equal = filecmp.cmp(os.path.join(tmp, run, "before", file), os.path.join(tmp, run, "after", file), shallow=False)
                print(f"{run}: {file}: {'identical' if equal else 'DIFFERENT'}")
                same &= equal
    return same


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="root of the earlier checkout (a git worktree)")
    p.add_argument("--pretrained_model_path", required=True)
    p.add_argument("--wikipedia_path", default=os.path.join(ROOT, "data", "sample", "psgs.tsv"))
    args = p.parse_args()
    sys.exit(0 if check_encode(os.path.abspath(args.before), args.pretrained_model_path, args.wikipedia_path) else 1)


if __name__ == "__main__":
    main()
