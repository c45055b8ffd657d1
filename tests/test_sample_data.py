"""The shipped sample (data/sample/) parses with our readers, is self-consistent, and is exactly
what data/make_sample.py writes."""
import filecmp
import importlib.util
import os

from conftest import ROOT
from utils.data import PassageStore, iter_biencoder, iter_json_list, iter_passages, read_qas
from utils.qa import has_answer

SAMPLE = os.path.join(ROOT, "data", "sample")
FILES = ["psgs.tsv", "train.json", "dev.json", "test.qa.csv"]


def passages():
    return {pid: (text, title) for _, pid, text, title in iter_passages(os.path.join(SAMPLE, "psgs.tsv"))}


def raw_records(name):
    return list(iter_json_list(os.path.join(SAMPLE, name)))


def test_passages_parse_with_consecutive_ids(tmp_path):
    rows = list(iter_passages(os.path.join(SAMPLE, "psgs.tsv")))
    assert 250 <= len(rows) <= 350
    assert [pid for _, pid, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [line for line, _, _, _ in rows] == list(range(2, len(rows) + 2))
    for _, _, text, title in rows:
        assert title and 60 <= len(text.split()) <= 110
    # Several passages per title: same-title passages are the natural hard negatives
    titles = [title for _, _, _, title in rows]
    assert len(set(titles)) < len(titles) / 2
    store = PassageStore(os.path.join(SAMPLE, "psgs.tsv"), index_path=str(tmp_path / "offsets.npz"))
    assert len(store) == len(rows)
    wanted = [len(rows), 1, 137]
    assert store.get_passages(wanted) == [(pid, text, title) for pid in wanted for _, i, text, title in rows if i == pid]


def test_passages_written_like_psgs_w100():
    with open(os.path.join(SAMPLE, "psgs.tsv"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "id\ttext\ttitle" and lines[-1] == ""
    for line in lines[1:-1]:
        pid, text, title = line.split("\t")
        assert text.startswith('"') and text.endswith('"'), pid  # text always quoted, as DPR's file
        assert text[1:-1].replace('""', "").count('"') == 0, pid  # inner quotes doubled
        assert not title.startswith('"'), pid  # no title here needs quoting


def test_biencoder_records_point_at_the_passages():
    psgs = passages()
    for name, count in (("train.json", 100), ("dev.json", 30)):
        stats = {}
        assert len(list(iter_biencoder(os.path.join(SAMPLE, name), stats))) == count and stats["skipped"] == 0
        for rec in raw_records(name):
            assert rec["question"] and rec["answers"]
            (pos,) = rec["positive_ctxs"]
            assert psgs[int(pos["passage_id"])] == (pos["text"], pos["title"])
            assert has_answer(rec["answers"], pos["text"]), rec["question"]
            assert rec["hard_negative_ctxs"] and rec["negative_ctxs"]
            ids = [pos["passage_id"]]
            for ctx in rec["hard_negative_ctxs"] + rec["negative_ctxs"]:
                assert psgs[int(ctx["passage_id"])] == (ctx["text"], ctx["title"])
                assert not has_answer(rec["answers"], ctx["text"]), (rec["question"], ctx["passage_id"])
                ids.append(ctx["passage_id"])
            assert len(set(ids)) == len(ids)


def test_test_questions_are_answerable_and_unseen():
    psgs = passages()
    qas = read_qas(os.path.join(SAMPLE, "test.qa.csv"))
    assert len(qas) == 50
    for question, answers in qas:
        assert answers and any(has_answer(answers, text) for text, _ in psgs.values()), question
    train = [r["question"] for r in raw_records("train.json")]
    dev = [r["question"] for r in raw_records("dev.json")]
    test = [q for q, _ in qas]
    assert len(set(train + dev + test)) == len(train) + len(dev) + len(test)


def test_generator_rewrites_the_same_bytes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample", os.path.join(ROOT, "data", "make_sample.py"))
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    make_sample.generate(str(tmp_path))
    for name in FILES:
        assert filecmp.cmp(tmp_path / name, os.path.join(SAMPLE, name), shallow=False), name
