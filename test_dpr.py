"""Evaluate a DPR retriever: encode the questions, search the passage embeddings, report top-k accuracy.

python test_dpr.py [--embedding_dir D] [--pretrained_model_path P] [--qa_file nq-test.csv] [--top_k 100]
    [--index flat|HNSW32|SQfp16|IVF4096,PQ64|... --index_path P] [--output_file R.json] [--run_file R.trec]

--index flat (default) is DPR's exact inner-product search (IndexFlatIP) over the embeddings that
doc2embedding.py wrote to D, on CPU faiss or a GPU; any other --index is a faiss index_factory string
that needs less memory or time, built once and reused through --index_path (docs/indexes.md). A
retrieved passage is a hit when its text holds an answer under DPR's has_answer rule; top-k accuracy
is the share of questions with a hit among their first k passages. Optionally writes DPR's results
JSON (what DPR's reader, FiD and pyserini's evaluation read), a TREC run file and a top-k curve.
"""

import argparse
import os
import sys

import numpy as np
import torch

from bench.profiling import LoopClock
from utils.errors import HelpFormatter, NanoDPRError
from utils.files import atomic_write
from utils.formats import RECIPE, check_made, normalize_question, read_qas, write_results, write_run
from utils.qa import score_passages, top_k_accuracy
from utils.retriever import Retriever, add_retriever_args

REPORT_KS = (1, 5, 10, 20, 50, 100)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    add_retriever_args(p)  # model, embeddings, passages, index: utils/retriever.py
    p.add_argument(
        "--qa_file",
        "--nq_test_file",
        dest="qa_file",
        default=RECIPE["questions"],
        help="questions with answers: question<TAB>['answer', ...], or a biencoder JSON (its questions and "
        "answers)",
    )
    p.add_argument("--top_k", type=int, default=100, help="passages retrieved per question")
    p.add_argument(
        "--match",
        choices=["string", "regex"],
        default="string",
        help="has_answer rule: DPR's token match, or answers as regular expressions (CuratedTREC)",
    )
    p.add_argument(
        "--output_file",
        help="write DPR's results JSON here, and the top-k curve next to it (.topk.csv, .topk.png)",
    )
    p.add_argument(
        "--run_file",
        help="write a TREC run file here: qid Q0 passage_id rank score tag (qid: 0-based row in --qa_file)",
    )
    p.add_argument(
        "--num_workers", type=int, default=None, help="processes for answer matching (default: all cores)"
    )
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top_k must be at least 1")
    if args.index_path and args.index == "flat":
        p.error(
            "--index_path saves a faiss index_factory index; --index flat searches the embeddings as they "
            "are (--index Flat builds a faiss IndexFlatIP that can be saved)"
        )
    return args


def fetch_and_score(store, ids, answers, match, num_workers):
    """{id: (text, title)} of the retrieved passages, read by id from the TSV, and hits[i][j] =
    has_answer(answers[i], text of ids[i][j]) (text only, as DPR)."""
    passages = {pid: (text, title) for pid, text, title in store.get_passages(np.unique(ids))}
    texts = [[passages[pid][0] for pid in row] for row in ids.tolist()]
    return passages, score_passages(answers, texts, match, num_workers)


def make_results(questions, answers, ids, scores, passages, hits):
    """DPR's dense_retriever results: ids and scores as strings, as DPR writes them."""
    return [
        {
            "question": question,
            "answers": answer,
            "ctxs": [
                {
                    "id": str(pid),
                    "title": passages[pid][1],
                    "text": passages[pid][0],
                    "score": str(score),
                    "has_answer": hit,
                }
                for pid, score, hit in zip(row_ids, row_scores, row_hits)
            ],
        }
        for question, answer, row_ids, row_scores, row_hits in zip(
            questions, answers, ids.tolist(), scores, hits
        )
    ]


def write_curve(stem, curve, title):
    """Top-k accuracy for k = 1..top_k: CSV always, PNG when matplotlib is installed. Returns the paths
    written."""
    paths = [stem + ".topk.csv"]
    with atomic_write(paths[0]) as f:
        f.write("k,accuracy_percent\n")
        f.writelines(f"{k},{100 * acc:.4f}\n" for k, acc in curve.items())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(curve), [100 * a for a in curve.values()])
    ax.set(xlabel="k (passages retrieved)", ylabel="top-k accuracy (%)", title=title, xscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(stem + ".topk.png")
    with atomic_write(paths[1], "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return paths


def format_table(header, rows):
    """A Markdown table: first column left-aligned, the others right-aligned, padded to line up."""
    rows = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r):
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            + " |"
        )

    rule = (
        "|"
        + "|".join((":" + "-" * (w + 1)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def run(args):
    clock = LoopClock()  # seconds per stage, for the report
    check_made(args.embedding_dir, args.pretrained_model_path, args.qa_file, args.wikipedia_path)
    qas = read_qas(args.qa_file)
    questions, answers = [normalize_question(q) for q, _ in qas], [a for _, a in qas]
    # the search API's retrieval path (utils/retriever.py): the evaluation measures what search_dpr.py answers
    retriever = Retriever.from_args(args)
    print(
        f"{len(questions)} questions from {args.qa_file}; question encoder {args.pretrained_model_path} "
        f"({retriever.pooling} pooling) on {retriever.device}"
    )
    k = min(args.top_k, len(retriever))
    if k < args.top_k:
        print(f"only {len(retriever)} passages in {args.embedding_dir}: retrieving top {k}")
    print(
        f"index: {len(retriever):,} passages x {retriever.dim} ({retriever.emb_dtype} on disk), "
        f"{retriever.index_name}"
    )
    clock.lap("load questions, encoder + index")

    q = retriever.encode(questions, progress=True)
    clock.lap("encode questions")
    scores, retrieved = retriever.search_vectors(q, k)
    store = retriever.store
    del retriever  # the index's memory goes back before the answer-matching workers start
    clock.lap("search")

    passages, hits = fetch_and_score(store, retrieved, answers, args.match, args.num_workers)
    curve = top_k_accuracy(hits, range(1, k + 1))
    clock.lap("fetch + score")
    written = save(args, questions, answers, retrieved, scores, passages, hits, curve)
    clock.lap("write outputs")
    clock["total"] = sum(clock.values())
    report(args, len(questions), curve, clock, written)
    return curve


def report(args, num_questions, curve, timings, written):
    print(f"\nTop-k accuracy, {num_questions} questions, {args.match} match ({args.qa_file}):")
    print(
        format_table(
            ["top-k", "accuracy (%)"],
            [[f"Top-{n}", f"{100 * curve[n]:.2f}"] for n in REPORT_KS if n in curve],
        )
    )
    print("\nTimings:")
    print(format_table(["step", "seconds"], [[step, f"{s:.2f}"] for step, s in timings.items()]))
    print(
        "\n".join(f"wrote {path}" for path in written)
        or "no --output_file or --run_file: results not written"
    )


def save(args, questions, answers, retrieved, scores, passages, hits, curve):
    """The results JSON with its top-k curve, and the TREC run file, as asked; returns the paths written."""
    written = []
    for path in filter(None, (args.output_file, args.run_file)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.output_file:
        write_results(args.output_file, make_results(questions, answers, retrieved, scores, passages, hits))
        written += [args.output_file] + write_curve(
            os.path.splitext(args.output_file)[0], curve, os.path.basename(args.qa_file)
        )
    if args.run_file:
        write_run(args.run_file, retrieved, scores, f"nanoDPR_{args.index}")
        written.append(args.run_file)
    return written


def main(argv=None):
    args = parse_args(argv)
    if args.index_device == "gpu" and args.index.split(":")[0] == "flat" and not torch.cuda.is_available():
        sys.exit("error: --index_device gpu, but torch sees no CUDA device")
    try:
        return run(args)
    except NanoDPRError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
