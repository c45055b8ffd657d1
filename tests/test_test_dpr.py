"""test_dpr.py and utils/index.py against independent expectations: brute-force numpy search, hand-computed
accuracies, a direct BertModel forward, and utils/qa.has_answer re-run on the written results."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import BertModel, BertTokenizerFast

import test_dpr
from conftest import ROOT, make_tiny_bert, write_embedding_dir, write_passages_tsv
from utils.formats import PassageStore, read_results
from utils.index import FaissIndex, TorchIndex, build_index
from utils.models import encoder_identity, load_encoder, save_encoder
from utils.qa import has_answer, top_k_accuracy

# ---------------------------------------------------------------------------------------------
# Search: every path returns the brute-force top-k (up to near-ties)


def assert_same_topk(scores, rows, stored, queries, k, tol=1e-3):
    """rows/scores equal a float64 numpy search over the stored vectors; positions whose reference
    score is within `tol` of a neighbour (a near-tie, order not defined) may swap ids."""
    ref = queries.astype(np.float64) @ stored.astype(np.float64).T
    order = np.argsort(-ref, axis=1, kind="stable")
    ref_top = np.take_along_axis(ref, order[:, : k + 1], 1)
    assert rows.shape == (len(queries), k) and scores.shape == (len(queries), k)
    # true scores of those rows
    np.testing.assert_allclose(scores, np.take_along_axis(ref, rows, 1), rtol=1e-5, atol=1e-4)
    # and the k best
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), ref_top[:, :k], rtol=0, atol=1e-4)
    gaps = np.diff(ref_top, axis=1)  # <= 0
    clear = np.ones((len(queries), k), bool)
    clear[:, :] &= -gaps[:, :k] > tol  # separated from the next one
    clear[:, 1:] &= -gaps[:, : k - 1] > tol  # and from the previous one
    assert clear.mean() > 0.9, "test data has too many near-ties to check ids"
    assert (rows == order[:, :k])[clear].all()


@pytest.mark.parametrize(
    "backend, file_dtype, storage",
    [
        ("faiss", np.float32, None),
        ("faiss", np.float16, None),
        ("torch", np.float32, torch.float32),
        ("torch", np.float16, torch.float16),
        (
            "torch",
            np.float32,
            torch.float16,
        ),  # float16 storage of float32 embeddings: exact for the stored vectors
        ("torch-2-shards", np.float32, torch.float32),
        ("torch-2-shards", np.float16, torch.float16),
        (
            "torch-2-shards-bfloat16",
            np.float16,
            torch.float16,
        ),  # low-precision scores, candidates re-scored in float32
        ("torch-float16", np.float32, torch.float16),
    ],
)
def test_search_equals_brute_force(backend, file_dtype, storage):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2000, 24)).astype(file_dtype)
    queries = rng.standard_normal((16, 24)).astype(np.float32)
    if backend == "faiss":
        index = FaissIndex(emb)
    else:
        devices = ["cpu", "cpu"] if backend.startswith("torch-2-shards") else ["cpu"]
        search_dtype = backend.split("-")[-1] if backend.endswith("16") else "float32"
        # several chunks, a ragged last one
        index = TorchIndex(emb, devices, dtype=storage, chunk_rows=300, search_dtype=search_dtype)
        assert ("re-scored in float32" in index.name) == (search_dtype != "float32")
    assert index.name
    scores, rows = index.search(queries, 40)
    stored = emb.astype(np.float16) if storage == torch.float16 else emb
    assert_same_topk(scores, rows, stored, queries, 40)


def test_search_with_exact_ties_returns_the_tied_scores():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 8)).astype(np.float32)
    emb = np.concatenate([base, base, base])  # every score occurs 3 times
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    ref = np.sort(queries.astype(np.float64) @ emb.astype(np.float64).T, axis=1)[:, ::-1][:, :10]
    for index in (FaissIndex(emb), TorchIndex(emb, ["cpu", "cpu"], chunk_rows=7)):
        scores, rows = index.search(queries, 10)
        np.testing.assert_allclose(scores, ref, atol=1e-4)
        np.testing.assert_array_equal(rows % 50, np.repeat(rows[:, ::3] % 50, 3, axis=1)[:, :10])
        assert all(len(set(r)) == 10 for r in rows.tolist())  # distinct rows, no duplicate from the merge


def test_build_index_cpu_is_faiss():
    assert isinstance(build_index(np.zeros((3, 4), np.float16), "cpu"), FaissIndex)
    assert build_index(np.zeros((3, 4), np.float16), "cpu", "bfloat16").search_dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Scoring: hand-built retrieval lists, hand-computed accuracy

HAND_PASSAGES = [
    (1, "Paris is the capital of France.", "France"),
    (2, "The river Thames flows through London.", "Thames"),
    (3, "The club was founded in 1889 by the king.", "Club"),
    (4, "Nothing to see here.", "Paris"),  # answer in the title only: not a hit (DPR matches the text)
    (5, "Tokyo is a large city.", "Tokyo"),
]


@pytest.fixture
def hand_store(tmp_path):
    path = write_passages_tsv(str(tmp_path / "psgs.tsv"), HAND_PASSAGES)
    return PassageStore(path, str(tmp_path / "offsets.npz"))


def test_accuracy_string_match_hand_computed(hand_store):
    answers = [["Paris"], ["london"], ["Berlin"], ["Thames flows", "nowhere"]]
    ids = np.array([[4, 1, 2], [2, 1, 3], [1, 2, 3], [3, 5, 2]])
    # first hit at rank 2, 1, none, 3  ->  top-1 1/4, top-2 2/4, top-3 3/4
    passages, hits = test_dpr.fetch_and_score(hand_store, ids, answers, "string", num_workers=2)
    assert hits == [[False, True, False], [True, False, False], [False, False, False], [False, False, True]]
    assert top_k_accuracy(hits, [1, 2, 3]) == {1: 0.25, 2: 0.5, 3: 0.75}
    assert passages[2] == ("The river Thames flows through London.", "Thames")


def test_accuracy_regex_match_hand_computed(hand_store):
    answers = [["18[0-9]{2}"], ["capital of (France|Spain)"], ["19[0-9]{2}"]]
    ids = np.array([[1, 3, 2], [1, 2, 3], [1, 3, 5]])
    # first hit at rank 2, 1, none  ->  top-1 1/3, top-2 2/3, top-3 2/3
    _, hits = test_dpr.fetch_and_score(hand_store, ids, answers, "regex", num_workers=1)
    assert top_k_accuracy(hits, [1, 2, 3]) == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3}
    _, as_strings = test_dpr.fetch_and_score(hand_store, ids, answers, "string", num_workers=1)
    assert not any(map(any, as_strings))  # the same patterns, read as plain answers, match nothing


def test_accuracy_table_shows_only_ks_up_to_top_k():
    table = test_dpr.format_table(["top-k", "accuracy (%)"], [["Top-1", "25.00"], ["Top-5", "50.00"]])
    assert table.splitlines() == [
        "| top-k | accuracy (%) |",
        "|:------|-------------:|",
        "| Top-1 |        25.00 |",
        "| Top-5 |        50.00 |",
    ]


def test_nq_test_file_is_an_alias_of_qa_file():
    args = test_dpr.parse_args(
        ["--embedding_dir", "D", "--pretrained_model_path", "P", "--nq_test_file", "x.csv"]
    )
    assert args.qa_file == "x.csv"


# ---------------------------------------------------------------------------------------------
# End to end: small TSV + qa file, tiny BERT question encoder, random passage embeddings

WORDS = ["river", "city", "king", "the", "of", "and", "stone", "bridge", "tower", "field", "road", "hill"]
ANSWERS = ["paris", "london", "rome", "berlin", "oslo", "lima"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    rows = []
    for pid in range(101, 141):  # ids need not start at 1
        words = list(rng.choice(WORDS, 12))
        if rng.random() < 0.6:
            words.insert(int(rng.integers(0, 12)), str(rng.choice(ANSWERS)))
        rows.append((pid, " ".join(words), f"title {pid}"))
    tsv = write_passages_tsv(str(tmp / "psgs.tsv"), rows)
    qas = [
        (f"what city of the {w} is the capital", [str(a)])
        for w, a in zip(WORDS, rng.choice(ANSWERS, len(WORDS)))
    ]
    qas[0] = ("which king\u2019s city is it", ["rome", "lima"])  # DPR normalizes ’ to '
    qa_file = str(tmp / "qa.csv")
    with open(qa_file, "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([(q, repr(a)) for q, a in qas])
    model = make_tiny_bert(str(tmp / "question_encoder"), role="question")
    emb = rng.standard_normal((len(rows), 32)).astype(np.float16)
    # as if one model served both towers (random vectors here): the question encoder belongs with them
    encoder = encoder_identity(load_encoder(model, "question")[0], model)
    emb_dir = write_embedding_dir(str(tmp / "emb"), [r[0] for r in rows], emb, tsv, encoder=encoder)
    return dict(
        tmp=tmp,
        rows=rows,
        tsv=tsv,
        qas=qas,
        qa_file=qa_file,
        model=model,
        emb=emb,
        emb_dir=emb_dir,
        encoder=encoder,
    )


def reference_retrieval(e2e, k):
    """Independent expectation: per-question BertModel forward (CLS, zero token types), numpy search,
    has_answer."""
    tokenizer = BertTokenizerFast.from_pretrained(e2e["model"])
    model = BertModel.from_pretrained(e2e["model"], add_pooling_layer=False).eval()
    vectors = []
    with torch.no_grad():
        for question, _ in e2e["qas"]:
            enc = tokenizer(
                question.replace("\u2019", "'"), truncation=True, max_length=256, return_tensors="pt"
            )
            out = model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                token_type_ids=torch.zeros_like(enc["input_ids"]),
            )
            vectors.append(out.last_hidden_state[0, 0].numpy())
    queries = np.stack(vectors)
    scores = queries.astype(np.float64) @ e2e["emb"].astype(np.float64).T
    order = np.argsort(-scores, axis=1)[:, :k]
    ids = [[e2e["rows"][j][0] for j in row] for row in order]
    texts = {pid: text for pid, text, _ in e2e["rows"]}
    hits = [[has_answer(a, texts[pid]) for pid in row] for (_, a), row in zip(e2e["qas"], ids)]
    return queries, ids, hits


def test_end_to_end_cli(e2e):
    out = str(e2e["tmp"] / "out" / "results.json")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "test_dpr.py"),
        "--embedding_dir",
        e2e["emb_dir"],
        "--pretrained_model_path",
        e2e["model"],
        "--wikipedia_path",
        e2e["tsv"],
        "--qa_file",
        e2e["qa_file"],
        "--top_k",
        "10",
        "--output_file",
        out,
        "--index_device",
        "cpu",
        "--num_workers",
        "2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr

    queries, ref_ids, ref_hits = reference_retrieval(e2e, 10)
    ref_acc = top_k_accuracy(ref_hits, range(1, 11))
    table = {
        c[1].strip(): c[2].strip() for c in (x.split("|") for x in proc.stdout.splitlines()) if len(c) == 4
    }
    assert {k: v for k, v in table.items() if k.startswith("Top-")} == {
        f"Top-{k}": f"{100 * ref_acc[k]:.2f}" for k in (1, 5, 10)
    }
    assert "Top-20" not in proc.stdout and "fetch + score" in proc.stdout
    assert f"wrote {out}" in proc.stdout

    # Results JSON: DPR's format, the reference ranking, has_answer flags that re-check
    records = read_results(out)
    assert [r["question"] for r in records] == [q.replace("\u2019", "'") for q, _ in e2e["qas"]]
    texts = {pid: (text, title) for pid, text, title in e2e["rows"]}
    stored = e2e["emb"]
    pos = {pid: i for i, (pid, _, _) in enumerate(e2e["rows"])}
    rows = np.array([[pos[int(c["id"])] for c in r["ctxs"]] for r in records])
    scores = np.array([[float(c["score"]) for c in r["ctxs"]] for r in records])
    assert_same_topk(scores, rows, stored, queries, 10)
    for rec, (_, answers) in zip(records, e2e["qas"]):
        assert rec["answers"] == answers and len(rec["ctxs"]) == 10
        for c in rec["ctxs"]:
            assert isinstance(c["id"], str) and (c["text"], c["title"]) == texts[int(c["id"])]
            assert c["has_answer"] == has_answer(answers, c["text"])
    flags = [[c["has_answer"] for c in r["ctxs"]] for r in records]
    assert top_k_accuracy(flags, range(1, 11)) == ref_acc

    # Top-k curve CSV (PNG only with matplotlib)
    stem = os.path.splitext(out)[0]
    with open(stem + ".topk.csv") as f:
        curve = list(csv.DictReader(f))
    assert [int(r["k"]) for r in curve] == list(range(1, 11))
    assert [float(r["accuracy_percent"]) for r in curve] == pytest.approx(
        [100 * ref_acc[k] for k in range(1, 11)]
    )
    try:
        import matplotlib  # noqa: F401

        assert os.path.isfile(stem + ".topk.png")
    except ImportError:
        assert not os.path.exists(stem + ".topk.png")
    # offsets next to the embeddings
    assert os.path.isfile(os.path.join(e2e["emb_dir"], "passages.offsets.npz"))


def test_top_k_larger_than_corpus_is_clamped(e2e, capsys):
    # --index_device auto: cpu here
    curve = test_dpr.main(
        [
            "--embedding_dir",
            e2e["emb_dir"],
            "--pretrained_model_path",
            e2e["model"],
            "--wikipedia_path",
            e2e["tsv"],
            "--nq_test_file",
            e2e["qa_file"],
            "--num_workers",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert len(curve) == 40 and curve[40] == 1.0 - sum(
        not any(has_answer(a, r[1]) for r in e2e["rows"]) for _, a in e2e["qas"]
    ) / len(e2e["qas"])
    assert (
        "retrieving top 40" in out
        and "| Top-20 " in out
        and "Top-50" not in out
        and "no --output_file" in out
    )


def test_low_precision_flat_search_gives_the_exact_results(e2e, tmp_path):
    """--index flat:bfloat16 through the CLI: the same passages, ranks and scores as exact --index flat (the
    default)."""
    out = {}
    for spec in ("flat", "flat:bfloat16"):
        out[spec] = str(tmp_path / f"{spec.replace(':', '_')}.json")
        test_dpr.main(
            [
                "--embedding_dir",
                e2e["emb_dir"],
                "--pretrained_model_path",
                e2e["model"],
                "--wikipedia_path",
                e2e["tsv"],
                "--qa_file",
                e2e["qa_file"],
                "--index_device",
                "cpu",
                "--num_workers",
                "1",
                "--top_k",
                "10",
                "--index",
                spec,
                "--output_file",
                out[spec],
            ]
        )
    exact, fast = read_results(out["flat"]), read_results(out["flat:bfloat16"])
    assert [[c["id"] for c in r["ctxs"]] for r in fast] == [[c["id"] for c in r["ctxs"]] for r in exact]
    np.testing.assert_allclose(
        [[float(c["score"]) for c in r["ctxs"]] for r in fast],
        [[float(c["score"]) for c in r["ctxs"]] for r in exact],
        rtol=1e-5,
        atol=1e-5,
    )
    assert "saves a faiss index_factory index" in run_main(
        e2e, **{"--index": "flat:float16", "--index_path": str(tmp_path / "x")}
    )


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error line, non-zero exit


def run_main(e2e, ok=False, **over):
    """test_dpr.main on the e2e files with `over` (None: a flag); its one error line, or (ok) its curve."""
    argv = {
        "--embedding_dir": e2e["emb_dir"],
        "--pretrained_model_path": e2e["model"],
        "--wikipedia_path": e2e["tsv"],
        "--qa_file": e2e["qa_file"],
        "--index_device": "cpu",
        "--num_workers": "1",
        "--top_k": "5",
    }
    argv.update(over)
    argv = [x for kv in argv.items() for x in kv if x is not None]
    if ok:
        return test_dpr.main(argv)
    with pytest.raises(SystemExit) as exc:
        test_dpr.main(argv)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_error_embedding_dim_differs_from_encoder(e2e, tmp_path):
    ids = [r[0] for r in e2e["rows"]]
    emb_dir = write_embedding_dir(
        str(tmp_path / "emb16"), ids, np.zeros((len(ids), 16), np.float16), e2e["tsv"], encoder=e2e["encoder"]
    )
    message = run_main(e2e, **{"--embedding_dir": emb_dir})
    assert "16-d" in message and "32-d" in message and emb_dir in message


def test_error_ids_not_in_passage_file(e2e, tmp_path):
    ids = [r[0] for r in e2e["rows"]]
    ids[3] = 999
    emb_dir = write_embedding_dir(
        str(tmp_path / "emb_bad_ids"),
        ids,
        np.ones((len(ids), 32), np.float16),
        e2e["tsv"],
        encoder=e2e["encoder"],
    )
    message = run_main(e2e, **{"--embedding_dir": emb_dir, "--top_k": "40"})
    assert "999" in message and "not found" in message and e2e["tsv"] in message


def test_error_empty_qa_file(e2e, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    message = run_main(e2e, **{"--qa_file": str(empty)})
    assert str(empty) in message and "no questions" in message


def test_error_malformed_qa_row(e2e, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("who is the king\t['rome']\nwhat city is it\tnot a list\n")
    message = run_main(e2e, **{"--qa_file": str(bad)})
    assert f"{bad}:2:" in message


def test_error_exits_non_zero_with_one_line(e2e, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "test_dpr.py"),
            "--embedding_dir",
            str(tmp_path / "nowhere"),
            "--pretrained_model_path",
            e2e["model"],
            "--qa_file",
            e2e["qa_file"],
            "--wikipedia_path",
            e2e["tsv"],
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")
    ]
    assert "meta.json" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Factory indexes, TREC run file, biencoder JSON as the qa file


def test_run_file_matches_results_line_by_line(e2e):
    out, run = str(e2e["tmp"] / "run" / "results.json"), str(e2e["tmp"] / "run" / "results.trec")
    test_dpr.main(
        [
            "--embedding_dir",
            e2e["emb_dir"],
            "--pretrained_model_path",
            e2e["model"],
            "--wikipedia_path",
            e2e["tsv"],
            "--qa_file",
            e2e["qa_file"],
            "--top_k",
            "7",
            "--output_file",
            out,
            "--run_file",
            run,
            "--num_workers",
            "1",
        ]
    )
    records = read_results(out)
    with open(run) as f:
        lines = f.read().splitlines()
    assert len(lines) == 7 * len(e2e["qas"])
    for line, (qid, rank, ctx) in zip(
        lines, [(q, r, c) for q, rec in enumerate(records) for r, c in enumerate(rec["ctxs"], 1)]
    ):
        assert line.split(" ") == [str(qid), "Q0", ctx["id"], str(rank), ctx["score"], "nanoDPR_flat"]


def test_factory_index_saved_then_reused_by_the_cli(e2e, tmp_path):
    index_path = str(tmp_path / "hnsw.faiss")
    argv = [
        "--embedding_dir",
        e2e["emb_dir"],
        "--pretrained_model_path",
        e2e["model"],
        "--wikipedia_path",
        e2e["tsv"],
        "--qa_file",
        e2e["qa_file"],
        "--top_k",
        "10",
        "--index",
        "HNSW8",
        "--index_path",
        index_path,
        "--num_workers",
        "1",
    ]
    runs = []
    for name in ("first", "second"):
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "test_dpr.py"),
                *argv,
                "--output_file",
                str(tmp_path / f"{name}.json"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        runs.append((proc.stdout, read_results(str(tmp_path / f"{name}.json"))))
    assert f"saved to {index_path}" in runs[0][0] and f"loaded from {index_path}" in runs[1][0]
    assert runs[0][1] == runs[1][1]
    # 40 passages, efSearch 256: the graph search visits them all, so HNSW finds the exact top-k
    queries, _, _ = reference_retrieval(e2e, 10)
    pos = {pid: i for i, (pid, _, _) in enumerate(e2e["rows"])}
    rows = np.array([[pos[int(c["id"])] for c in r["ctxs"]] for r in runs[0][1]])
    scores = np.array([[float(c["score"]) for c in r["ctxs"]] for r in runs[0][1]])
    assert_same_topk(scores, rows, e2e["emb"], queries, 10)


def test_index_path_needs_a_factory_index(capsys):
    with pytest.raises(SystemExit):
        test_dpr.parse_args(
            ["--embedding_dir", "D", "--pretrained_model_path", "P", "--index_path", "x.faiss"]
        )
    assert "--index Flat" in capsys.readouterr().err


def test_error_ivf_lists_hold_fewer_than_k(e2e):
    message = run_main(e2e, **{"--index": "IVF8,Flat", "--nprobe": "1", "--top_k": "30"})
    assert "raise --nprobe" in message and "IVF8,Flat" in message


def test_error_bad_factory_string(e2e):
    message = run_main(e2e, **{"--index": "IVF8,Nonsense"})
    assert "IVF8,Nonsense" in message


def test_biencoder_json_as_qa_file(e2e, tmp_path):
    """A biencoder JSON gives its questions and answers, every record in file order (also one without
    positives, which training skips): retrieval for a model's own training questions."""
    records = [
        {
            "question": q,
            "answers": a,
            "positive_ctxs": [{"title": "t", "text": "x"}] if i else [],
            "hard_negative_ctxs": [],
        }
        for i, (q, a) in enumerate(e2e["qas"])
    ]
    json_file = str(tmp_path / "train.biencoder")  # no .json name: recognised by its content
    with open(json_file, "w") as f:
        json.dump(records, f, indent=2)
    csv_out, json_out = str(tmp_path / "csv.json"), str(tmp_path / "json.json")
    for qa_file, out in ((e2e["qa_file"], csv_out), (json_file, json_out)):
        test_dpr.main(
            [
                "--embedding_dir",
                e2e["emb_dir"],
                "--pretrained_model_path",
                e2e["model"],
                "--wikipedia_path",
                e2e["tsv"],
                "--qa_file",
                qa_file,
                "--top_k",
                "5",
                "--output_file",
                out,
                "--num_workers",
                "1",
            ]
        )
    assert read_results(json_out) == read_results(csv_out)


def test_error_biencoder_record_without_answers(e2e, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "answers": ["a"]}, {"question": "q2", "positive_ctxs": []}]))
    message = run_main(e2e, **{"--qa_file": str(bad)})
    assert str(bad) in message and "record 1" in message and "answers" in message


# ---------------------------------------------------------------------------------------------
# Provenance: the question encoder must belong with the passage encoder that made the embeddings


def test_question_encoder_must_belong_with_the_passage_encoder(e2e, tmp_path):
    """Ours: the same training run and step. Not ours: one model serving both towers (equal digests).
    Anything else is refused with one line naming both, unless --trust_encoder_pair."""
    ids, emb = [r[0] for r in e2e["rows"]], e2e["emb"]
    torch.manual_seed(0)
    tok = BertTokenizerFast.from_pretrained(e2e["model"])
    towers = {}
    for name, role, run, step in (
        ("p", "passage", "runA", 4),
        ("q", "question", "runA", 4),
        ("q_step2", "question", "runA", 2),
        ("q_runB", "question", "runB", 4),
    ):
        towers[name] = str(tmp_path / name)
        model = BertModel.from_pretrained(
            make_tiny_bert(str(tmp_path / f"{name}_base"), seed=len(towers)), add_pooling_layer=False
        )
        save_encoder(model, tok, towers[name], role, run=run, step=step)
    passage = encoder_identity(load_encoder(towers["p"], "passage")[0], towers["p"])
    assert (passage["run"], passage["step"]) == ("runA", 4)
    emb_dir = write_embedding_dir(str(tmp_path / "emb"), ids, emb, e2e["tsv"], encoder=passage)
    curve = run_main(e2e, **{"--embedding_dir": emb_dir, "--pretrained_model_path": towers["q"]}, ok=True)
    assert len(curve) == 5
    for name, why in (
        ("q_step2", "run runA step 2 vs run runA step 4"),
        ("q_runB", "run runB step 4 vs run runA step 4"),
        (e2e["model"], "no run, digest "),
    ):
        path = towers.get(name, name)
        message = run_main(e2e, **{"--embedding_dir": emb_dir, "--pretrained_model_path": path})
        assert (
            f"question encoder {path} does not belong with passage encoder tiny, which made {emb_dir}"
            in message
        )
        assert why in message and "--trust_encoder_pair" in message
        curve = run_main(
            e2e,
            **{"--embedding_dir": emb_dir, "--pretrained_model_path": path, "--trust_encoder_pair": None},
            ok=True,
        )
        assert len(curve) == 5
    unrecorded = write_embedding_dir(str(tmp_path / "old"), ids, emb, e2e["tsv"])  # older: no "encoder"
    assert "meta.json names no passage encoder" in run_main(e2e, **{"--embedding_dir": unrecorded})
