"""Build DPR training data with BM25: DPR's recipe for questions without gold passages (paper, 4.1 and 5.1),
whose BM25 pipeline DPR did not release.

    python utils/bm25_train_data.py --wikipedia_path psgs_w100.tsv --qa_file train.qa.csv \\
        --output_file train.json
    python utils/bm25_train_data.py --wikipedia_path psgs_w100.tsv --train_file gold.json \\
        --output_file train.json

BM25 ranks the passages for each question. The positive is the highest-ranked passage holding an answer
(DPR's has_answer, text only); a question with none in the top k is dropped. Hard negatives: the
top-ranked passages without an answer; other negatives: random passages without an answer (seeded).
With --train_file the given positives are kept and BM25 supplies only the negatives. BM25: Lucene's,
from bm25s, over "title text"; the index is built in memory in one streaming pass (docs/own_data.md).
"""

import argparse
import array
import multiprocessing
import os
import random
import re
import resource
import sys
from collections import Counter
from contextlib import nullcontext

import bm25s
import numpy as np
import Stemmer
from tqdm import tqdm

if __package__ in (None, ""):  # `python utils/bm25_train_data.py`: make the `utils` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import DataError, HelpFormatter, NanoDPRError
from utils.formats import (
    PassageStore,
    check_answers,
    iter_labelled_records,
    iter_passages,
    passage_key,
    read_qas,
    same_passage_file,
    write_json_list,
)
from utils.qa import has_answer

K1, B = 0.9, 0.4  # the settings DPR reports for its Lucene BM25 baseline (as pyserini's DPR reproduction)
# questions retrieved at a time (one task of a worker): results for all NQ questions at once are not needed
CHUNK = 256
# Lucene's StandardTokenizer keeps words with an inner ' or . ("o'neill", "u.s") and digit groups ("1,000")
_WORD = re.compile(r"\w+(?:(?:['’.]|(?<=\d),(?=\d))\w+)*")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--wikipedia_path", required=True, help="passages, psgs_w100.tsv format")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--qa_file", help="questions and answers, DPR's qas CSV: BM25 finds the positives")
    src.add_argument("--train_file", help="biencoder JSON with positives: BM25 adds the negatives")
    p.add_argument("--output_file", required=True, help="biencoder JSON")
    p.add_argument(
        "--top_k", type=int, default=100, help="BM25 passages searched for the positive and hard negatives"
    )
    p.add_argument("--num_hard_negatives", type=int, default=30, help="BM25 passages without an answer")
    p.add_argument("--num_other_negatives", type=int, default=30, help="random passages without an answer")
    p.add_argument("--seed", type=int, default=12345, help="for the random negatives")
    p.add_argument(
        "--num_workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes retrieving and labelling questions (forked: they share the index); default: all "
        "cores",
    )
    args = p.parse_args(argv)
    if args.top_k < 1 or args.num_hard_negatives < 0 or args.num_other_negatives < 0 or args.num_workers < 1:
        p.error("--top_k and --num_workers must be >= 1, the negative counts >= 0")
    return args


def split_words(text):
    """Lucene's English analysis, approximately: StandardTokenizer words, possessive 's removed."""
    return [w[:-2] if w.endswith(("'s", "’s")) else w for w in _WORD.findall(text)]


def make_tokenizer():
    """Lower case, Lucene's 33 English stopwords (bm25s 'en' is that list), Porter stemming: Anserini's
    default."""
    return bm25s.tokenization.Tokenizer(
        lower=True, splitter=split_words, stopwords="en", stemmer=Stemmer.Stemmer("porter")
    )


def build_index(path, tokenizer):
    """(BM25 index, passage id of each row): one streaming pass; only token ids are kept, no text."""
    pids = array.array("q")

    def texts():
        for _, pid, text, title in tqdm(
            iter_passages(path), desc="tokenize passages", unit=" passages", mininterval=5
        ):
            pids.append(pid)
            yield f"{title} {text}"

    token_ids = list(tokenizer.streaming_tokenize(texts()))
    if not token_ids:
        raise DataError(f"{path}: no passages")
    # bm25s's compiled numba backend when installed
    retriever = bm25s.BM25(k1=K1, b=B, method="lucene", backend="auto")
    retriever.index(
        bm25s.tokenization.Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()), show_progress=True
    )
    return retriever, np.frombuffer(pids, dtype=np.int64)


def search(retriever, tokenizer, questions, k):
    """[(rows, scores)] per question: its top-k passage rows by BM25, best first; rows scoring 0 match no
    question word and are left out."""
    query_ids = list(tokenizer.streaming_tokenize(questions, update_vocab=False))
    # numpy: threads don't help
    rows, scores = retriever.retrieve(
        query_ids,
        k=min(k, retriever.scores["num_docs"]),
        show_progress=False,
        n_threads=-1 if retriever.backend == "numba" else 0,
    )
    return [(r[s > 0], s[s > 0]) for r, s in zip(rows, scores)]


def load_questions(args):
    """[(question, answers, positives or None)]: from the qas CSV, or with positives from a biencoder JSON."""
    if args.qa_file:
        qas = read_qas(args.qa_file)
        for i, (_, answers) in enumerate(qas):
            check_answers(answers, f"{args.qa_file}: question {i + 1}", usable=True)
        return [(q, answers, None) for q, answers in qas]
    return [
        (rec["question"], rec["answers"], rec["positive_ctxs"])
        for rec in iter_labelled_records(args.train_file)
    ]


def ctx(passage, score=None):
    pid, text, title = passage
    return {
        "title": title,
        "text": text,
        **({} if score is None else {"score": round(float(score), 4)}),
        "passage_id": str(pid),
    }


def random_negatives(answers, exclude, n, store, pids, rng):
    """n random passages without an answer and not in `exclude` (ids); fewer if 10 draws per slot run out."""
    out = []
    for _ in range(10):
        if len(out) >= n:
            break
        for passage in store.get_passages(pids[[rng.randrange(len(pids)) for _ in range(n - len(out))]]):
            if str(passage[0]) not in exclude and not has_answer(answers, passage[1]):
                exclude.add(str(passage[0]))
                out.append(ctx(passage))
    return out


def label(ranked, answers, positives, n_hard):
    """(positive or None, hard negatives) from BM25's ranking; has_answer is only run as far as needed."""
    exclude = {passage_key(p) for p in positives or ()}
    positive, hard = None, []
    for c in ranked:
        if (positives or positive) and len(hard) >= n_hard:
            break
        if c["passage_id"] in exclude:
            continue
        if not has_answer(answers, c["text"]):
            hard.append(c)
        elif positive is None and positives is None:
            positive = c
    return positive, hard[:n_hard]


def make_record(question, answers, positives, hits, store, pids, args, rng, stats, where):
    """One biencoder record, or None (question dropped, reason counted in stats)."""
    rows, scores = hits
    ranked = [ctx(p, s) for p, s in zip(store.get_passages(pids[rows]), scores)]
    for p in positives or ():  # given positives must be this passage file's passages
        key = passage_key(p) or ""
        if key.isdigit():
            try:
                same_passage_file(ctx(store.get_passages([int(key)])[0]), p, where)
            except DataError as e:
                raise DataError(f"{where}: positive passage_id {key}: {e}") from None
    if positives == []:
        stats["dropped: no positive in the train file"] += 1
        return None
    positive, hard = label(ranked, answers, positives, args.num_hard_negatives)
    if positives is None and positive is None:
        stats[
            "dropped: no passage with an answer in the BM25 top k"
            if ranked
            else "dropped: no question word in the corpus"
        ] += 1
        return None
    positives = positives or [positive]
    exclude = {passage_key(p) for p in positives} | {c["passage_id"] for c in hard}
    other = random_negatives(answers, exclude, args.num_other_negatives, store, pids, rng)
    stats["questions with fewer hard negatives than asked"] += len(hard) < args.num_hard_negatives
    stats["questions with fewer other negatives than asked"] += len(other) < args.num_other_negatives
    return {
        "question": question,
        "answers": answers,
        "positive_ctxs": positives,
        "negative_ctxs": other,
        "hard_negative_ctxs": hard,
    }


_SHARED = {}  # what the forked workers read: set before the pool starts, inherited, never pickled


def label_chunk(start):
    """(records or None, stats) of questions [start, start + CHUNK). Each question draws its random negatives
    from its own seed, so the file does not depend on the number of workers."""
    questions, retriever, tokenizer, store, pids, args = _SHARED["work"]
    chunk, stats, out = questions[start : start + CHUNK], Counter(), []
    where = args.train_file or args.qa_file
    hits = search(retriever, tokenizer, [q for q, _, _ in chunk], args.top_k)
    for i, ((q, answers, positives), hit) in enumerate(zip(chunk, hits), start):
        rng = random.Random(f"{args.seed}/{i}")
        out.append(
            make_record(q, answers, positives, hit, store, pids, args, rng, stats, f"{where}: record {i}")
        )
    return out, stats


def records(questions, retriever, tokenizer, store, pids, args, stats):
    """The output records in question order, CHUNK questions per task over args.num_workers processes."""
    _SHARED["work"] = (questions, retriever, tokenizer, store, pids, args)
    starts = range(0, len(questions), CHUNK)
    workers = min(args.num_workers, len(starts))
    with (
        multiprocessing.get_context("fork").Pool(workers) if workers > 1 else nullcontext() as pool,
        tqdm(total=len(questions), desc="BM25 retrieve + label", unit=" questions") as bar,
    ):
        for recs, chunk_stats in pool.imap(label_chunk, starts) if pool else map(label_chunk, starts):
            stats.update(chunk_stats)
            yield from (rec for rec in recs if rec is not None)
            bar.update(len(recs))


def main(argv=None):
    args = parse_args(argv)
    stats = Counter()
    try:
        questions = load_questions(args)
        print(
            f"{len(questions)} questions from {args.qa_file or args.train_file}; indexing "
            f"{args.wikipedia_path}"
        )
        tokenizer = make_tokenizer()
        retriever, pids = build_index(args.wikipedia_path, tokenizer)
        store = PassageStore(args.wikipedia_path)
        n = write_json_list(
            args.output_file, records(questions, retriever, tokenizer, store, pids, args, stats)
        )
    except NanoDPRError as e:
        sys.exit(f"error: {e}")
    print(f"{len(pids)} passages, BM25 k1={K1} b={B}; {n} of {len(questions)} questions kept")
    for name, count in sorted(stats.items()):
        print(f"  {name}: {count}")
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB; wrote "
        f"{args.output_file}"
    )


if __name__ == "__main__":
    main()
