"""Speed and memory of utils/bm25_train_data.py: BM25 indexing (passages/s), retrieval (questions/s),
retrieval + labelling as the tool does it (questions/s), and the process's peak RSS.

    python bench/bench_bm25.py --psgs ../shared/mini_nq/psgs.tsv --qa ../shared/mini_nq/train.qa.csv
    python bench/bench_bm25.py --synthetic 1000000 --queries 2000  # a psgs_w100-like file, made in a temp dir

Synthetic passages: 100 words (psgs_w100's size) drawn from a Zipf law (p ~ 1/rank) over a 500k-word
vocabulary whose most frequent words are Lucene's 33 English stopwords (30% of the words); titles of 2 words.
Questions: 9 words of a random passage, one more of its words as the answer. The figures at 21M are linear
extrapolations (marked so): indexing and memory grow with the corpus, each question's retrieval with its
words' posting lists, labelling (has_answer, reading passages) not.
"""

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from bm25s.stopwords import STOPWORDS_EN  # noqa: E402

from utils.bm25_train_data import build_index, make_record, make_tokenizer, search  # noqa: E402
from utils.formats import PassageStore, read_qas  # noqa: E402

NQ_PASSAGES = 21_015_324
NQ_TRAIN_QUESTIONS = 58_880
WORDS_PER_PASSAGE = 100


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--psgs", help="a passages TSV (with --qa)")
    src.add_argument("--synthetic", type=int, help="passages of a generated psgs_w100-like file")
    p.add_argument("--qa", help="questions for --psgs (qas CSV)")
    p.add_argument("--queries", type=int, default=2000, help="questions timed (at most the qa file's)")
    p.add_argument("--top_k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    if args.psgs and not args.qa:
        p.error("--psgs needs --qa")
    return args


def synthetic_corpus(path, n, seed):
    """Write n psgs_w100-like passages; return (question, answers) pairs drawn from them."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = list(STOPWORDS_EN) + ["".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(500_000)]
    vocab = np.array(vocab, dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    qas, pick = [], set(rng.choice(n, size=min(n, 20_000), replace=False).tolist())
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for start in range(0, n, 10_000):
            rows = min(10_000, n - start)
            words = vocab[np.searchsorted(cdf, rng.random((rows, WORDS_PER_PASSAGE + 2)) * cdf[-1])]
            for i in range(rows):
                text = " ".join(words[i, 2:])
                f.write(f'{start + i + 1}\t"{text}"\t{words[i, 0]} {words[i, 1]}\n')
                if start + i in pick:
                    w = words[i, 2:].tolist()
                    qas.append((" ".join(w[:9]), [w[-1]]))
    random.Random(seed).shuffle(qas)
    return qas


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KB


def timed(fn, *args):
    """(fn(*args), (wall seconds, CPU seconds of this process))."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            t = time.perf_counter()
            psgs = os.path.join(tmp, "psgs.tsv")
            qas = synthetic_corpus(psgs, args.synthetic, args.seed)
            print(f"wrote {args.synthetic:,} synthetic passages in {time.perf_counter() - t:.0f} s")
        else:
            psgs, qas = args.psgs, read_qas(args.qa)
        qas = qas[: args.queries]
        rss_start = peak_rss_gb()
        tokenizer = make_tokenizer()
        (retriever, pids), index_s = timed(build_index, psgs, tokenizer)
        rss_index = peak_rss_gb()
        store = PassageStore(psgs, os.path.join(tmp, "offsets.npz"))
        hits, search_s = timed(search, retriever, tokenizer, [q for q, _ in qas], args.top_k)
        opts = argparse.Namespace(num_hard_negatives=30, num_other_negatives=30)
        rng, stats = random.Random(args.seed), Counter()
        kept, label_s = timed(
            lambda: sum(
                make_record(q, a, None, h, store, pids, opts, rng, stats, "bench") is not None
                for (q, a), h in zip(qas, hits)
            )
        )
    n, q = len(pids), len(qas)
    fig = {
        "passages": n,
        "questions": q,
        "kept": kept,
        "backend": retriever.backend,
        "load_average_1min": os.getloadavg()[0],
    }
    # cpu: this process's CPU time, the figure a loaded machine keeps
    for clock, i in (("wall", 0), ("cpu", 1)):
        fig[clock] = {
            "index_passages_per_s": n / index_s[i],
            "retrieve_questions_per_s": q / search_s[i],
            "retrieve_and_label_questions_per_s": q / (search_s[i] + label_s[i]),
        }
    fig.update(peak_rss_gb=peak_rss_gb(), peak_rss_gb_after_index=rss_index, rss_gb_before_index=rss_start)
    scale = NQ_PASSAGES / n  # linear extrapolation to psgs_w100, from CPU time
    fig["extrapolated_21M"] = {
        "index_hours": index_s[1] * scale / 3600,
        "index_peak_rss_gb": rss_start + (rss_index - rss_start) * scale,
        "nq_train_retrieve_and_label_hours": NQ_TRAIN_QUESTIONS
        * (search_s[1] * scale + label_s[1])
        / q
        / 3600,
    }
    for k, v in fig.items():
        print(
            f"{k}: {json.dumps(v) if isinstance(v, dict) else (f'{v:,.2f}' if isinstance(v, float) else v)}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1)


if __name__ == "__main__":
    main()
