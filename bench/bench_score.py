"""Answer-matching speed: DPR's has_answer over questions x retrieved passages, as nanoDPR's test
loop does it (one Python thread) and as test_dpr.py does it (utils.qa.score_passages, a process pool).

    python bench/bench_score.py [--questions 3610] [--k 100] [--num_workers N] [--json OUT]

Synthetic but psgs_w100-like: 80-110 words of Zipf-distributed vocabulary with capitals,
digits and punctuation; 1-3 answers of 1-3 words per question, planted in about 1 in 5 passages.
Both ways must give identical verdicts.
"""

import argparse
import json
import multiprocessing
import os
import string
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from utils.qa import has_answer, score_passages  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description="has_answer: one-thread loop vs score_passages (process pool)")
    p.add_argument("--questions", type=int, default=3610, help="NQ test has 3,610 questions")
    p.add_argument("--k", type=int, default=100, help="retrieved passages per question")
    p.add_argument(
        "--num_workers", type=int, default=None, help="pool size (default: all cores, as test_dpr.py)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here (for bench/run_all.py)")
    return p.parse_args()


def synthetic(questions, k, seed):
    """answers[i] and texts[i] (k passages) for each question, every passage a distinct string."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list(string.ascii_lowercase), rng.integers(2, 11))) for _ in range(20000)]
    zipf = 1 / np.arange(1, len(words) + 1)
    # Tokens as they occur in prose: plain, capitalized, with trailing punctuation; some numbers.
    tokens = (
        words
        + [w.capitalize() for w in words]
        + [w + "," for w in words]
        + [w + "." for w in words]
        + [str(y) for y in range(1000, 2021)]
    )
    p = np.concatenate(
        [0.78 * zipf, 0.12 * zipf, 0.06 * zipf, 0.04 * zipf, np.full(1021, 0.02 * zipf.sum() / 1021)]
    )
    tokens, p = np.array(tokens, dtype=object), p / p.sum()
    # Answers: 1-3 rarer words (entities, dates), 1-3 answers per question.
    rare = np.array(words[1000:] + [str(y) for y in range(1000, 2021)], dtype=object)
    answers = [
        [" ".join(rng.choice(rare, rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
        for _ in range(questions)
    ]
    lengths = rng.integers(80, 111, size=(questions, k))
    stream = iter(rng.choice(tokens, size=int(lengths.sum()), p=p))
    texts = []
    for a, row in zip(answers, lengths):
        texts.append([])
        for n in row:
            ws = [next(stream) for _ in range(n)]
            if rng.random() < 0.2:  # plant an answer
                at = int(rng.integers(0, n))
                ws[at:at] = [a[int(rng.integers(0, len(a)))]]
            texts[-1].append(" ".join(ws))
    return answers, texts


def main():
    args = parse_args()
    t = time.perf_counter()
    answers, texts = synthetic(args.questions, args.k, args.seed)
    pairs = args.questions * args.k
    print(
        f"{pairs:,} (answers, passage) pairs, {sum(len(x) for row in texts for x in row) / pairs:.0f} "
        "chars/passage, "
        f"made in {time.perf_counter() - t:.1f} s"
    )

    t = time.perf_counter()
    loop = [[has_answer(a, text) for text in row] for a, row in zip(answers, texts)]
    loop_s = time.perf_counter() - t
    workers = args.num_workers or multiprocessing.cpu_count()
    t = time.perf_counter()
    pool = score_passages(answers, texts, "string", workers)
    pool_s = time.perf_counter() - t
    identical = pool == loop
    hit_rate = sum(map(sum, loop)) / pairs

    print(f"one-thread loop  {loop_s:7.2f} s  {pairs / loop_s:9.0f} pairs/s")
    print(
        f"score_passages   {pool_s:7.2f} s  {pairs / pool_s:9.0f} pairs/s  ({workers} processes on "
        f"{len(os.sched_getaffinity(0))} cores)"
    )
    print(
        f"ratio {loop_s / pool_s:.2f}x; verdicts identical: {identical}; {100 * hit_rate:.1f}% of pairs hold "
        "an answer"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "workload": "score",
                    "pairs": pairs,
                    "questions": args.questions,
                    "k": args.k,
                    "baseline_s": round(loop_s, 3),
                    "ours_s": round(pool_s, 3),
                    "ratio": round(loop_s / pool_s, 2),
                    "workers": workers,
                    "cores": len(os.sched_getaffinity(0)),
                    "identical": identical,
                    "hit_rate": round(hit_rate, 4),
                    "device": "cpu",
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")
    if not identical:
        raise SystemExit("error: score_passages and the one-thread loop disagree")


if __name__ == "__main__":
    main()
