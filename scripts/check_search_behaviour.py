"""Check that test_dpr.py writes byte-identical results to an earlier checkout's (same inputs, --index flat on CPU).

    git worktree add /tmp/before 10abebb
    python scripts/check_search_behaviour.py /tmp/before --embedding_dir D --pretrained_model_path P \
        --wikipedia_path psgs.tsv --qa_file dev.qa.csv

Runs both checkouts' test_dpr.py, then compares the results JSON and the top-k curve CSV byte for byte.
"""
import argparse
import filecmp
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_search(before_root, test_dpr_args):
    """True when both checkouts' test_dpr.py write the same results JSON and curve; prints each comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in (("before", before_root), ("after", ROOT)):
            out = os.path.join(tmp, name, "results.json")
            subprocess.run([sys.executable, "test_dpr.py", *test_dpr_args, "--index_device", "cpu", "--output_file", out],
                           cwd=root, check=True, stdout=subprocess.DEVNULL)
        same = True
        for name in ("results.json", "results.topk.csv"):
            equal = filecmp.cmp(os.path.join(tmp, "before", name), os.path.join(tmp, "after", name), shallow=False)
            print(f"{name}: {'identical' if equal else 'DIFFERENT'}")
            same &= equal
    return same


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="root of the earlier checkout (a git worktree)")
    p.add_argument("--embedding_dir", required=True)
    p.add_argument("--pretrained_model_path", required=True)
    p.add_argument("--wikipedia_path", required=True)
    p.add_argument("--qa_file", required=True)
    args = p.parse_args()
    test_dpr_args = [f"--{k}={v}" for k, v in vars(args).items() if k != "before"]
    sys.exit(0 if check_search(os.path.abspath(args.before), test_dpr_args) else 1)


if __name__ == "__main__":
    main()
