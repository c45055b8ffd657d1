"""Top-k table for several DPR results files side by side (e.g. untrained vs trained)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.data import read_results
from utils.errors import DataError  # noqa: E402
from utils.qa import top_k_accuracy  # noqa: E402

KS = (1, 5, 10, 20, 50, 100)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", help="results JSON files written by test_dpr.py")
    parser.add_argument("--timings", help="TSV of stage<TAB>seconds to print below the table")
    args = parser.parse_args()
    try:
        runs = [(os.path.basename(p).removesuffix(".json"), read_results(p)) for p in args.results]
    except DataError as e:
        sys.exit(f"error: {e}")
    depth = min(len(r["ctxs"]) for _, records in runs for r in records)
    ks = [k for k in KS if k <= depth]
    print(f"\n{'top-k accuracy (%)':<24}" + "".join(f"{'Top-' + str(k):>9}" for k in ks))
    for name, records in runs:
        acc = top_k_accuracy([[c["has_answer"] for c in r["ctxs"]] for r in records], ks)
        print(f"{name + f' ({len(records)} q)':<24}" + "".join(f"{100 * acc[k]:>9.2f}" for k in ks))
    if args.timings:
        print(f"\n{'stage':<24}{'seconds':>9}")
        with open(args.timings) as f:
            for line in f:
                stage, seconds = line.rstrip("\n").split("\t")
                print(f"{stage:<24}{seconds:>9}")


if __name__ == "__main__":
    main()
