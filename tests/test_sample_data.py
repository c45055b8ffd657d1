"""The shipped sample (data/sample/) parses with our readers, is built as its README says (a fact and
a trap passage per question, people split between train, dev and test), and is exactly what
data/make_sample.py writes."""

import filecmp
import functools
import importlib.util
import os
import re
from collections import Counter

import pytest

from conftest import ROOT
from utils.formats import PassageStore, iter_biencoder, iter_json_list, iter_passages, read_qas
from utils.qa import has_answer

SAMPLE = os.path.join(ROOT, "data", "sample")
FILES = ["psgs.tsv", "train.json", "dev.json", "test.qa.csv"]
RELATIONS = 6  # birthplace, teacher, spouse, death, first work, prize
STOP = set(
    "a an the of in on at by to for with and was is did do s what who whom when where which how".split()
)


@pytest.fixture(scope="module")
def make_sample():
    spec = importlib.util.spec_from_file_location("make_sample", os.path.join(ROOT, "data", "make_sample.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def passages():
    return {pid: (text, title) for _, pid, text, title in iter_passages(os.path.join(SAMPLE, "psgs.tsv"))}


@functools.lru_cache(maxsize=1)
def passage_words():
    return {pid: set(re.findall(r"\w+", text.lower())) for pid, (text, _) in passages().items()}


def answer_passages(answers):
    """(text, title) of the passages that hold an answer (has_answer, tried only where all its words
    occur)."""
    psgs, words = passages(), [set(re.findall(r"\w+", a.lower())) for a in answers]
    return [
        psgs[pid]
        for pid, pw in passage_words().items()
        if any(w <= pw for w in words) and has_answer(answers, psgs[pid][0])
    ]


def raw_records(name):
    return list(iter_json_list(os.path.join(SAMPLE, name)))


def content_words(text):
    return set(re.findall(r"[a-z0-9]+", text.lower())) - STOP


def test_passages_parse_with_consecutive_ids_grouped_by_person(tmp_path):
    rows = list(iter_passages(os.path.join(SAMPLE, "psgs.tsv")))
    assert [pid for _, pid, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [line for line, _, _, _ in rows] == list(range(2, len(rows) + 2))
    titles = [title for _, _, _, title in rows]
    counts = Counter(titles)
    assert len(rows) == 96 * 2 * RELATIONS and set(counts.values()) == {2 * RELATIONS}
    # one person's passages sit together, as an article's do in psgs_w100.tsv
    assert sum(a != b for a, b in zip(titles, titles[1:])) == len(counts) - 1
    for _, _, text, title in rows:
        assert title in text and 15 <= len(text.split()) <= 60, text
    store = PassageStore(os.path.join(SAMPLE, "psgs.tsv"), index_path=str(tmp_path / "offsets.npz"))
    assert len(store) == len(rows)
    wanted = [len(rows), 1, 137]
    assert store.get_passages(wanted) == [
        (pid, text, title) for pid in wanted for _, i, text, title in rows if i == pid
    ]


def test_passages_written_like_psgs_w100():
    with open(os.path.join(SAMPLE, "psgs.tsv"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "id\ttext\ttitle" and lines[-1] == ""
    for line in lines[1:-1]:
        pid, text, title = line.split("\t")
        # text quoted, as DPR's file
        assert text.startswith('"') and text.endswith('"') and '"' not in text[1:-1], pid
        assert not title.startswith('"'), pid


def test_biencoder_records_point_at_the_passages():
    psgs = passages()
    for name, count in (("train.json", 48 * RELATIONS), ("dev.json", 8 * RELATIONS)):
        stats = {}
        assert len(list(iter_biencoder(os.path.join(SAMPLE, name), stats))) == count and stats["skipped"] == 0
        for rec in raw_records(name):
            (pos,) = rec["positive_ctxs"]
            assert psgs[int(pos["passage_id"])] == (pos["text"], pos["title"])
            assert has_answer(rec["answers"], pos["text"]), rec["question"]
            assert pos["title"].lower() in rec["question"]  # questions name the person
            ids = [pos["passage_id"]]
            assert len(rec["hard_negative_ctxs"]) == 3 and len(rec["negative_ctxs"]) == 2
            for ctx in rec["hard_negative_ctxs"] + rec["negative_ctxs"]:
                assert psgs[int(ctx["passage_id"])] == (ctx["text"], ctx["title"])
                assert not has_answer(rec["answers"], ctx["text"]), (rec["question"], ctx["passage_id"])
                ids.append(ctx["passage_id"])
            assert len(set(ids)) == len(ids)
            # the top BM25 hard negative is the person's trap: more of the question's words than the positive
            trap = rec["hard_negative_ctxs"][0]
            q = content_words(rec["question"])
            assert trap["title"] == pos["title"] and len(q & content_words(trap["text"])) > len(
                q & content_words(pos["text"])
            )


def test_each_question_has_one_answer_passage_and_a_trap():
    """Every answer occurs in exactly one passage (its fact passage), and a passage of the same person
    that does not hold it shares more of the question's words (its trap)."""
    psgs = passages()
    texts_by_title = {}
    for text, title in psgs.values():
        texts_by_title.setdefault(title, []).append(text)
    qas = read_qas(os.path.join(SAMPLE, "test.qa.csv"))
    assert len(qas) == 40 * RELATIONS
    for question, answers in qas:
        holders = answer_passages(answers)
        assert len(holders) == 1, (question, len(holders))
        fact, title = holders[0]
        assert title.lower() in question
        q = content_words(question)
        trap = max(len(q & content_words(t)) for t in texts_by_title[title] if t != fact)
        assert trap > len(q & content_words(fact)), question


def test_splits_ask_about_different_people():
    def people(questions_answers):
        return {title for _, answers in questions_answers for _, title in answer_passages(answers)}

    train = people((r["question"], r["answers"]) for r in raw_records("train.json"))
    dev = people((r["question"], r["answers"]) for r in raw_records("dev.json"))
    test = people(read_qas(os.path.join(SAMPLE, "test.qa.csv")))
    assert (len(train), len(dev), len(test)) == (48, 8, 40)
    assert not (train & dev or train & test or dev & test)


def test_generator_rewrites_the_same_bytes(tmp_path, make_sample):
    make_sample.generate(str(tmp_path))
    for name in FILES:
        assert filecmp.cmp(tmp_path / name, os.path.join(SAMPLE, name), shallow=False), name


def test_generator_scales_with_people_who_add_passages_only(tmp_path, make_sample):
    counts = make_sample.generate(str(tmp_path), splits={"train": 3, "dev": 1, "test": 2}, extra_people=4)
    assert counts == {
        "passages": 10 * 2 * RELATIONS,
        "train": 3 * RELATIONS,
        "dev": RELATIONS,
        "test": 2 * RELATIONS,
    }
    assert len(list(iter_passages(str(tmp_path / "psgs.tsv")))) == counts["passages"]
    assert len(read_qas(str(tmp_path / "test.qa.csv"))) == counts["test"]
