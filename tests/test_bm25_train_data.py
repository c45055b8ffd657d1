"""utils/bm25_train_data.py: Lucene BM25 against a hand computation, DPR's labelling recipe, bad input."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_json, write_passages_tsv
from utils.bm25_train_data import K1, B, build_index, make_tokenizer, search
from utils.formats import iter_biencoder
from utils.qa import has_answer

TOOL = os.path.join(ROOT, "utils", "bm25_train_data.py")

# words that are no Lucene stopwords and that Porter stemming leaves alone: tokens are just str.split()
SCORE_CORPUS = [
    (1, "red fox red dog", "fox"),
    (2, "blue cat sky", "cat"),
    (3, "red bird green tree sun red red", "bird"),
    (4, "dog dog fox", "dog"),
    (5, "blue sky sun tree green bird cat", "sky"),
    (6, "green tree", "tree"),
]


def lucene_bm25(docs, query, k1, b):
    """Scores by hand: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf (k1 + 1) / (tf + k1 (1 - b + b dl /
    avgdl))."""
    n, avgdl = len(docs), sum(len(d) for d in docs.values()) / len(docs)
    scores = {}
    for pid, d in docs.items():
        s = 0.0
        for term in query:  # a repeated query word counts twice, as in Lucene's BooleanQuery
            tf, df = d.count(term), sum(term in e for e in docs.values())
            if tf:
                s += (
                    math.log(1 + (n - df + 0.5) / (df + 0.5))
                    * tf
                    * (k1 + 1)
                    / (tf + k1 * (1 - b + b * len(d) / avgdl))
                )
        if s > 0:
            scores[pid] = s
    return scores


def test_bm25_scores_equal_the_lucene_formula(tmp_path):
    path = write_passages_tsv(tmp_path / "psgs.tsv", SCORE_CORPUS)
    tokenizer = make_tokenizer()
    retriever, pids = build_index(str(path), tokenizer)
    docs = {pid: f"{title} {text}".split() for pid, text, title in SCORE_CORPUS}
    for query in ["red fox fox tree", "sky", "green bird dog"]:
        ((rows, scores),) = search(retriever, tokenizer, [query], k=10)
        ours = {int(pids[r]): float(s) for r, s in zip(rows, scores)}
        hand = lucene_bm25(docs, query.split(), K1, B)
        assert set(ours) == set(hand), query
        # Lucene >= 8 (pyserini) and bm25s leave out the factor (k1 + 1), the same for every passage
        for pid in hand:
            assert ours[pid] * (K1 + 1) == pytest.approx(hand[pid], rel=1e-5), (query, pid)
        assert list(scores) == sorted(scores, reverse=True)
    assert (K1, B) == (0.9, 0.4)


def test_tokenizer_approximates_lucene_english_analysis():
    tokenizer = make_tokenizer()
    ids = list(tokenizer.streaming_tokenize(["The Obama's running dogs of the U.S. in 1,000 days"]))[0]
    inverse = {v: k for k, v in tokenizer.get_vocab_dict().items()}
    # stopwords out, possessive 's off, inner "." and digit-group "," kept, Porter stems ("days" -> "dai",
    # "u.s" -> "u.")
    assert [inverse[i] for i in ids] == ["obama", "run", "dog", "u.", "1,000", "dai"]


CORPUS = [
    (1, "the capital of france is a city of museums and the capital has a river", "France capital"),
    (2, "paris is the capital of france and its largest city", "Paris"),
    (3, "the capital of france was moved during the war to paris and back", "War"),
    (4, "lyon is a large city in france", "Lyon"),
] + [(i, f"filler passage number {i} about rivers and mountains", f"Filler {i}") for i in range(5, 40)]
QAS = [
    ("what is the capital of france", ["Paris"]),
    ("which river runs through the mountains", ["Antarctica"]),  # no passage holds the answer: dropped
    ("where do penguins live", ["Antarctica"]),  # no word of it in the corpus: dropped
    ("which city is in france", ["Lyon"]),
]


def write_qas(path, qas):
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([q, str(a)] for q, a in qas)
    return path


def run_tool(*args):
    return subprocess.run(
        [sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.fixture
def recipe(tmp_path):
    psgs = write_passages_tsv(tmp_path / "psgs.tsv", CORPUS)
    qa = write_qas(tmp_path / "qa.csv", QAS)
    out = tmp_path / "out.json"
    proc = run_tool(
        "--wikipedia_path",
        psgs,
        "--qa_file",
        qa,
        "--output_file",
        out,
        "--num_hard_negatives",
        3,
        "--num_other_negatives",
        4,
        "--seed",
        7,
    )
    assert proc.returncode == 0, proc.stderr
    return psgs, qa, out, proc


def test_positive_is_the_best_ranked_passage_with_an_answer(recipe):
    psgs, _, out, proc = recipe
    records = json.loads(out.read_text())
    assert [r["question"] for r in records] == [QAS[0][0], QAS[3][0]]
    tokenizer = make_tokenizer()
    retriever, pids = build_index(str(psgs), tokenizer)
    texts = {pid: text for pid, text, _ in CORPUS}
    for rec in records:
        ((rows, _),) = search(retriever, tokenizer, [rec["question"]], k=100)
        ranked = [str(pids[r]) for r in rows]
        with_answer = [p for p in ranked if has_answer(rec["answers"], texts[int(p)])]
        without = [p for p in ranked if not has_answer(rec["answers"], texts[int(p)])]
        assert [c["passage_id"] for c in rec["positive_ctxs"]] == with_answer[:1]
        assert [c["passage_id"] for c in rec["hard_negative_ctxs"]] == without[:3]
        assert len(rec["negative_ctxs"]) == 4
        used = [
            c["passage_id"] for c in rec["positive_ctxs"] + rec["hard_negative_ctxs"] + rec["negative_ctxs"]
        ]
        assert len(set(used)) == len(used)
        for c in rec["hard_negative_ctxs"] + rec["negative_ctxs"]:
            assert not has_answer(rec["answers"], c["text"])
            assert c["text"] == texts[int(c["passage_id"])]
        assert all("score" in c for c in rec["positive_ctxs"] + rec["hard_negative_ctxs"])
    assert "dropped: no passage with an answer in the BM25 top k: 1" in proc.stdout
    assert "dropped: no question word in the corpus: 1" in proc.stdout
    # train_dpr.py's reader
    assert [r["question"] for r in iter_biencoder(str(out))] == [r["question"] for r in records]


def test_a_question_without_an_answer_in_the_top_k_is_dropped(tmp_path):
    psgs = write_passages_tsv(tmp_path / "psgs.tsv", CORPUS)
    qa = write_qas(tmp_path / "qa.csv", [("which city is in france", ["Lyon"])])
    out = tmp_path / "out.json"
    proc = run_tool("--wikipedia_path", psgs, "--qa_file", qa, "--output_file", out, "--top_k", 1)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == []  # Lyon's passage ranks below the top 1
    assert "dropped: no passage with an answer in the BM25 top k: 1" in proc.stdout


def test_fixed_seed_gives_an_identical_file(recipe, tmp_path):
    psgs, qa, out, _ = recipe
    again = tmp_path / "again.json"
    proc = run_tool(
        "--wikipedia_path",
        psgs,
        "--qa_file",
        qa,
        "--output_file",
        again,
        "--num_hard_negatives",
        3,
        "--num_other_negatives",
        4,
        "--seed",
        7,
    )
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == out.read_bytes()


def test_workers_give_the_same_file_as_one_process(tmp_path):
    """More questions than one task holds (CHUNK), spread over 3 processes: the same bytes, the same
    counts."""
    from utils.bm25_train_data import CHUNK

    psgs = write_passages_tsv(tmp_path / "psgs.tsv", CORPUS)
    qa = write_qas(tmp_path / "qa.csv", [QAS[i % len(QAS)] for i in range(2 * CHUNK + 7)])
    runs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}.json"
        proc = run_tool(
            "--wikipedia_path",
            psgs,
            "--qa_file",
            qa,
            "--output_file",
            out,
            "--num_other_negatives",
            4,
            "--num_workers",
            workers,
        )
        assert proc.returncode == 0, proc.stderr
        runs[workers] = out.read_bytes(), [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert runs[1] == runs[3]
    records = json.loads(runs[1][0])
    kept = {QAS[0][0], QAS[3][0]}  # as in the recipe test: the other questions are dropped
    assert len(records) == sum(QAS[i % len(QAS)][0] in kept for i in range(2 * CHUNK + 7))
    # each question draws from its own seed: a repeated question does not repeat its random negatives
    same_question = [r["negative_ctxs"] for r in records if r["question"] == records[0]["question"]]
    assert any(negatives != same_question[0] for negatives in same_question)


def test_train_file_keeps_positives_and_adds_negatives(recipe, tmp_path):
    psgs, _, _, _ = recipe
    gold = {"title": "War", "text": CORPUS[2][1], "passage_id": "3", "score": 1000}
    train = write_json(
        tmp_path / "gold.json",
        [
            {
                "question": QAS[0][0],
                "answers": ["Paris"],
                "positive_ctxs": [gold],
                "negative_ctxs": [],
                "hard_negative_ctxs": [],
            }
        ],
    )
    out = tmp_path / "out.json"
    proc = run_tool(
        "--wikipedia_path", psgs, "--train_file", train, "--output_file", out, "--num_hard_negatives", 5
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = json.loads(out.read_text())
    assert rec["positive_ctxs"] == [gold]
    negatives = rec["hard_negative_ctxs"] + rec["negative_ctxs"]
    assert rec["hard_negative_ctxs"] and all(not has_answer(["Paris"], c["text"]) for c in negatives)
    assert "3" not in [c["passage_id"] for c in negatives]


def test_train_file_positive_may_keep_the_quotes_dpr_strips(tmp_path):
    """mini-NQ's train.json holds a passage's csv field as is ('"Paris" is ...'); the passage file read as
    DPR's CsvCtxSrc reads it has the quotes stripped. Same passage: kept, not refused as another passage
    file."""
    text = '"Paris" is the capital of france, "the city of light"'
    psgs = write_passages_tsv(tmp_path / "psgs.tsv", [(2, text, "Paris")] + [r for r in CORPUS if r[0] != 2])
    gold = {"title": "Paris", "text": text, "passage_id": "2"}
    train = write_json(
        tmp_path / "gold.json",
        [
            {
                "question": QAS[0][0],
                "answers": ["Paris"],
                "positive_ctxs": [gold],
                "negative_ctxs": [],
                "hard_negative_ctxs": [],
            }
        ],
    )
    proc = run_tool("--wikipedia_path", psgs, "--train_file", train, "--output_file", tmp_path / "out.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())[0]["positive_ctxs"] == [gold]


BAD = {
    "missing passage file": (lambda d: {"--wikipedia_path": d / "nowhere.tsv"}, "nowhere.tsv"),
    "malformed passage file": (
        lambda d: {"--wikipedia_path": write_text(d / "bad.tsv", "id\ttext\ttitle\n1\tonly two\n")},
        "bad.tsv:2",
    ),
    "missing qa file": (lambda d: {"--qa_file": d / "nowhere.csv"}, "nowhere.csv"),
    "answers not a list": (lambda d: {"--qa_file": write_text(d / "q.csv", "who\tParis\n")}, "q.csv:1"),
    "empty answer list": (
        lambda d: {"--qa_file": write_qas(d / "q.csv", [("who", [])])},
        "q.csv: question 1",
    ),
    "empty answer": (
        lambda d: {"--qa_file": write_qas(d / "q.csv", [("who", ["Paris", " "])])},
        "q.csv: question 1",
    ),
    "malformed train file": (
        lambda d: {"--qa_file": None, "--train_file": write_text(d / "t.json", '[{"question": ')},
        "t.json",
    ),
    "positive from another passage file": (
        lambda d: {
            "--qa_file": None,
            "--train_file": write_json(
                d / "t.json",
                [
                    {
                        "question": "q",
                        "answers": ["Paris"],
                        "positive_ctxs": [{"title": "x", "text": "paris elsewhere", "passage_id": "2"}],
                    }
                ],
            ),
        },
        "t.json: record 0",
    ),
    "positive id not in the passage file": (
        lambda d: {
            "--qa_file": None,
            "--train_file": write_json(
                d / "t.json",
                [
                    {
                        "question": "q",
                        "answers": ["Paris"],
                        "positive_ctxs": [{"title": "x", "text": "paris", "passage_id": "99"}],
                    }
                ],
            ),
        },
        "t.json: record 0",
    ),
}


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_error(case, tmp_path):
    make, names = BAD[case]
    args = {
        "--wikipedia_path": write_passages_tsv(tmp_path / "psgs.tsv", CORPUS),
        "--qa_file": write_qas(tmp_path / "qa.csv", QAS),
        "--output_file": tmp_path / "out.json",
    }
    args.update(make(tmp_path))
    proc = run_tool(*[x for k, v in args.items() if v is not None for x in (k, v)])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]  # after any progress bar
    assert last.startswith("error:") and names in last and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out.json") and not os.path.exists(tmp_path / "out.json.tmp")
