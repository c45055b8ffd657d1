"""utils/mine_negatives.py: adv-hn mining from a retriever's results, its false-negative control, bad
input."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, write_json, write_passages_tsv
from utils.formats import PassageStore
from utils.qa import has_answer

TOOL = os.path.join(ROOT, "utils", "mine_negatives.py")
TEXTS = {
    1: "paris is the capital of france",  # the positive of question 0
    2: "the capital of france has many museums",
    3: "lyon is a city in france",
    4: "paris hilton visited lyon",  # holds both answers: never a negative
    5: "the river seine flows through the capital",
    6: "marseille is a port in france",
    7: "the louvre is a museum",
}
POS0 = {"title": "France", "text": TEXTS[1], "passage_id": "1", "score": 1000}
POS1 = {"title": "Lyon", "text": TEXTS[3], "passage_id": "3"}
TRAIN = [
    {
        "question": "what is the capital of france",
        "answers": ["Paris"],
        "positive_ctxs": [POS0],
        "negative_ctxs": [{"title": "Louvre", "text": TEXTS[7], "passage_id": "7"}],
        "hard_negative_ctxs": [],
    },
    {
        "question": "which city's in france",
        "answers": ["Lyon"],
        "positive_ctxs": [POS1],
        "negative_ctxs": [],
        "hard_negative_ctxs": [{"title": "Port", "text": TEXTS[6], "passage_id": "6"}],
    },
]
RANKING = [[2, 1, 4, 5, 6, 7, 3], [3, 4, 2, 6, 7, 1, 5]]


def results(train=TRAIN, ranking=RANKING, texts=TEXTS):
    """test_dpr.py's results JSON: ids and scores as strings."""
    return [
        {
            "question": rec["question"],
            "answers": rec["answers"],
            "ctxs": [
                {
                    "id": str(pid),
                    "title": f"t{pid}",
                    "text": texts[pid],
                    "score": str(10.0 - rank),
                    "has_answer": has_answer(rec["answers"], texts[pid]),
                }
                for rank, pid in enumerate(row)
            ],
        }
        for rec, row in zip(train, ranking)
    ]


def mine(tmp_path, res, *extra, train=TRAIN):
    out, res_path = tmp_path / "out.json", tmp_path / "results.json"
    # str: raw (malformed) text
    res_path.write_text(res) if isinstance(res, str) else write_json(res_path, res)
    proc = subprocess.run(
        [
            sys.executable,
            TOOL,
            "--train_file",
            str(write_json(tmp_path / "train.json", train)),
            "--results_file",
            str(res_path),
            "--output_file",
            str(out),
            *map(str, extra),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return proc, out


def ids(ctxs):
    return [int(c["passage_id"]) for c in ctxs]


def test_negatives_are_the_top_answer_free_passages_and_positives_are_kept(tmp_path):
    proc, out = mine(tmp_path, results(), "--num_hard_negatives", 3)
    assert proc.returncode == 0, proc.stderr
    recs = json.loads(out.read_text())
    # q0: 2 (no answer), 1 positive, 4 holds 'paris', then 5, 6; q1: 3 positive, 4 holds 'lyon', then 2, 6, 7
    assert [ids(r["hard_negative_ctxs"]) for r in recs] == [[2, 5, 6], [2, 6, 7]]
    for rec, given in zip(recs, TRAIN):
        assert (
            rec["positive_ctxs"] == given["positive_ctxs"] and rec["negative_ctxs"] == given["negative_ctxs"]
        )
        assert rec["question"] == given["question"] and rec["answers"] == given["answers"]
        assert not any(has_answer(rec["answers"], c["text"]) for c in rec["hard_negative_ctxs"])
    assert "filtered: holds an answer: 2" in proc.stdout and "filtered: is a positive: 2" in proc.stdout


def test_skip_top_skips_the_first_ranks(tmp_path):
    proc, out = mine(tmp_path, results(), "--skip_top", 3, "--num_hard_negatives", 30)
    assert proc.returncode == 0, proc.stderr
    recs = json.loads(out.read_text())
    assert [ids(r["hard_negative_ctxs"]) for r in recs] == [[5, 6, 7, 3], [6, 7, 1, 5]]
    assert "skipped (--skip_top): 6" in proc.stdout


def test_positive_ids_from_dpr_results_are_recognised(tmp_path):
    res = results()
    for rec in res:  # DPR's dense_retriever writes psgs_w100 ids as 'wiki:N'
        for c in rec["ctxs"]:
            c["id"] = "wiki:" + c["id"]
    proc, out = mine(tmp_path, res)
    assert proc.returncode == 0, proc.stderr
    recs = json.loads(out.read_text())
    assert [ids(r["hard_negative_ctxs"]) for r in recs] == [[2, 5, 6, 7, 3], [2, 6, 7, 1, 5]]


def test_question_normalization_as_dpr(tmp_path):
    train = [dict(TRAIN[1], question="which city\u2019s in france")]
    proc, out = mine(tmp_path, results()[1:], train=train)
    assert proc.returncode == 0, proc.stderr


def test_quoted_passages_read_as_dpr_match_the_csv_field(tmp_path):
    """A passage whose text starts and ends with a quote: test_dpr.py's results hold it as DPR's CsvCtxSrc
    reads it (text.strip('"')), a biencoder JSON (mini-NQ's train.json) as the csv field: one passage."""
    texts = {**TEXTS, 1: '"Paris" is the capital of france, "la ville lumiere"'}
    write_passages_tsv(tmp_path / "psgs.tsv", [(pid, text, f"t{pid}") for pid, text in texts.items()])
    read = {pid: text for pid, text, _ in PassageStore(str(tmp_path / "psgs.tsv")).get_passages(list(texts))}
    assert read[1] == texts[1].strip('"') != texts[1]  # the data path under test: how test_dpr.py reads them
    train = [dict(TRAIN[0], positive_ctxs=[dict(POS0, text=texts[1])]), TRAIN[1]]
    proc, out = mine(tmp_path, results(train, texts=read), "--num_hard_negatives", 3, train=train)
    assert proc.returncode == 0, proc.stderr  # was: "passage id 1 has another text than the train file's ..."
    assert [ids(r["hard_negative_ctxs"]) for r in json.loads(out.read_text())] == [[2, 5, 6], [2, 6, 7]]


BAD = {
    "another question": (
        lambda d: [dict(r, question="who is he") if i else r for i, r in enumerate(results())],
        "results.json: record 1",
    ),
    "fewer questions": (lambda d: results()[:1], "results.json"),
    "more questions": (lambda d: results() + results()[:1], "results.json"),
    "another passage file": (
        lambda d: results(texts={**TEXTS, 1: "berlin is the capital of germany"}),
        "results.json: record 0",
    ),
    "not a results file": (lambda d: TRAIN, "results.json: record 0"),
    "malformed JSON": (lambda d: "[{", "results.json"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_results_are_one_clear_error(case, tmp_path):
    make, names = BAD[case]
    proc, out = mine(tmp_path, make(tmp_path))
    assert proc.returncode != 0
    assert (
        proc.stderr.strip().startswith("error:") and names in proc.stderr and "Traceback" not in proc.stderr
    )
    assert not os.path.exists(out) and not os.path.exists(f"{out}.tmp")


@pytest.mark.parametrize(
    "train, names",
    [
        ([dict(TRAIN[0], answers=[])], "train.json: record 0"),
        ([dict(TRAIN[0], answers=[""])], "train.json: record 0"),
        ([{"question": "q"}], "train.json: record 0"),
        ([], "train.json: no questions"),
    ],
)
def test_bad_train_file_is_one_clear_error(train, names, tmp_path):
    proc, out = mine(tmp_path, results(), train=train)
    assert proc.returncode != 0
    assert (
        proc.stderr.strip().startswith("error:") and names in proc.stderr and "Traceback" not in proc.stderr
    )
    assert not os.path.exists(out)


def test_missing_files_are_one_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            TOOL,
            "--train_file",
            str(tmp_path / "nowhere.json"),
            "--results_file",
            str(tmp_path / "r.json"),
            "--output_file",
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode != 0 and "nowhere.json" in proc.stderr and "Traceback" not in proc.stderr
