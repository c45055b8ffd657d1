"""Mine hard negatives with a trained retriever: DPR's adv-hn recipe (Karpukhin et al. 2020, section 6.2
and the single-adv-hn checkpoint), which DPR describes but did not release as code.

    python utils/mine_negatives.py --train_file IN.json --results_file RESULTS.json --output_file OUT.json

RESULTS is test_dpr.py's results JSON over IN's questions, in IN's order (retrieved by the round-1
model). OUT keeps IN's questions, answers, positives and other negatives; its hard_negative_ctxs are
the model's top-ranked passages that hold no answer (DPR's has_answer, text only) and are not a
positive. Train round 2 on both: train_dpr.py --train_file IN OUT (docs/own_data.md).
"""

import argparse
import os
import sys
from collections import Counter

if __package__ in (None, ""):  # `python utils/mine_negatives.py`: make the `utils` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import DataError, HelpFormatter, NanoDPRError
from utils.formats import (
    iter_labelled_records,
    iter_results,
    normalize_question,
    passage_key,
    same_passage_file,
    write_json_list,
)
from utils.qa import has_answer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--train_file", required=True, help="biencoder JSON with positives (round 1's training data)"
    )
    p.add_argument(
        "--results_file", required=True, help="test_dpr.py --output_file over the train file's questions"
    )
    p.add_argument("--output_file", required=True, help="biencoder JSON with the mined hard negatives")
    p.add_argument("--num_hard_negatives", type=int, default=30, help="hard negatives kept per question")
    p.add_argument(
        "--skip_top", type=int, default=0, help="ranks skipped first (unlabelled positives sit there)"
    )
    args = p.parse_args(argv)
    if args.num_hard_negatives < 1 or args.skip_top < 0:
        p.error("--num_hard_negatives must be >= 1 and --skip_top >= 0")
    return args


def mine(rec, result, args, stats, where):
    """The hard negatives of one question: its top-ranked answer-free passages that are not a positive."""
    positives = {passage_key(c): c for c in rec["positive_ctxs"]}
    mined = []
    for rank, ctx in enumerate(result["ctxs"]):
        key = passage_key(ctx)
        if key in positives:
            same_passage_file(ctx, positives[key], where)
        if len(mined) == args.num_hard_negatives:
            continue  # keep checking ids against positives: a wrong passage file must not pass silently
        if rank < args.skip_top:
            stats["skipped (--skip_top)"] += 1
        elif key in positives:
            stats["filtered: is a positive"] += 1
        elif has_answer(rec["answers"], ctx["text"]):
            stats["filtered: holds an answer"] += 1
        else:
            mined.append(
                {"title": ctx["title"], "text": ctx["text"], "score": float(ctx["score"]), "passage_id": key}
            )
    stats["questions with fewer hard negatives than asked"] += len(mined) < args.num_hard_negatives
    return mined


def mined_records(args, stats):
    """IN's records with their hard negatives replaced by the mined ones, IN and RESULTS read in lockstep."""
    train, results, i = iter_labelled_records(args.train_file), iter_results(args.results_file), -1
    for i, rec in enumerate(train):
        result = next(results, None)
        if result is None:
            raise DataError(
                f"{args.results_file}: {i} questions, {args.train_file} has more: retrieve for its questions"
            )
        if normalize_question(result["question"]) != normalize_question(rec["question"]):
            raise DataError(
                f"{args.results_file}: record {i}: question {result['question'][:60]!r} is not the train "
                f"file's {rec['question'][:60]!r}: retrieve for {args.train_file}'s questions, in its order"
            )
        mined = mine(rec, result, args, stats, f"{args.results_file}: record {i}")
        stats["hard negatives written"] += len(mined)
        yield {**rec, "hard_negative_ctxs": mined}
    if i < 0:
        raise DataError(f"{args.train_file}: no questions")
    if next(results, None) is not None:
        raise DataError(f"{args.results_file}: more questions than the {i + 1} of {args.train_file}")


def main(argv=None):
    args = parse_args(argv)
    stats = Counter()
    try:
        n = write_json_list(args.output_file, mined_records(args, stats))
    except NanoDPRError as e:
        sys.exit(f"error: {e}")
    print(
        f"{n} questions: positives kept from {args.train_file}, hard negatives mined from {args.results_file}"
    )
    for name, count in sorted(stats.items()):
        print(f"  {name}: {count}")
    print(f"wrote {args.output_file}")


if __name__ == "__main__":
    main()
