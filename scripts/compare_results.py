"""Top-k table for several DPR results files side by side (e.g. untrained vs trained).

With two files on the same questions it also prints the change, how many questions the second
run gets right at Top-1 that the first did not (and the reverse), and one such question with
each run's first passage.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.errors import DataError  # noqa: E402
from utils.formats import read_results  # noqa: E402
from utils.qa import top_k_accuracy  # noqa: E402

KS = (1, 5, 10, 20, 50, 100)


def answer_hits(records):
    """has_answer of each retrieved passage, per question, in rank order."""
    return [[c["has_answer"] for c in r["ctxs"]] for r in records]


def print_change(runs, ks):
    """The second run against the first: change per k, questions won and lost at Top-1, one example."""
    (name_a, a), (name_b, b) = runs
    if [r["question"] for r in a] != [r["question"] for r in b]:
        return
    acc_a, acc_b = (top_k_accuracy(answer_hits(r), ks) for r in (a, b))
    print(f"{'change (points)':<24}" + "".join(f"{100 * (acc_b[k] - acc_a[k]):>+9.2f}" for k in ks))
    top1 = [(ra["ctxs"][0]["has_answer"], rb["ctxs"][0]["has_answer"]) for ra, rb in zip(a, b)]
    won = [i for i, (x, y) in enumerate(top1) if y and not x]
    lost = sum(x and not y for x, y in top1)
    print(
        f"\nTop-1: {name_b} answers {len(won)} questions that {name_a} missed; misses {lost} that {name_a} "
        "answered."
    )
    if won:
        i = won[0]
        print(f"e.g. {a[i]['question']!r} (answer {a[i]['answers'][0]!r}), first passage retrieved:")
        for name, records in runs:
            ctx = records[i]["ctxs"][0]
            print(f"  {name}: [{ctx['title']}] {ctx['text'][:200]}{'...' if len(ctx['text']) > 200 else ''}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="results JSON files written by test_dpr.py")
    parser.add_argument("--timings", help="TSV of stage<TAB>seconds to print below the table")
    args = parser.parse_args()
    try:
        runs = [
            (os.path.basename(p).removesuffix(".json").removeprefix("results_"), read_results(p))
            for p in args.results
        ]
    except DataError as e:
        sys.exit(f"error: {e}")
    depth = min(len(r["ctxs"]) for _, records in runs for r in records)
    ks = [k for k in KS if k <= depth]
    print(f"\n{'top-k accuracy (%)':<24}" + "".join(f"{'Top-' + str(k):>9}" for k in ks))
    for name, records in runs:
        acc = top_k_accuracy(answer_hits(records), ks)
        print(f"{name + f' ({len(records)} q)':<24}" + "".join(f"{100 * acc[k]:>9.2f}" for k in ks))
    if len(runs) == 2:
        print_change(runs, ks)
    if args.timings:
        print(f"\n{'stage':<24}{'seconds':>9}")
        with open(args.timings) as f:
            for line in f:
                stage, seconds = line.rstrip("\n").split("\t")
                print(f"{stage:<24}{seconds:>9}")


if __name__ == "__main__":
    main()
