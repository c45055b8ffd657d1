"""The NQ recipe's three bare commands in the default layout (downloads/..., outputs/dpr_nq/...):
train_dpr.py (only the base model and sizes overridden: no hub here), then doc2embedding.py and test_dpr.py
with no arguments; then the second run people make: retrain into the same dir, and the stale embeddings
are refused, not scored."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import BertModel, BertTokenizerFast

import doc2embedding
import test_dpr
import train_dpr
from conftest import ROOT, make_tiny_bert, write_json, write_passages_tsv
from utils.embeddings import load_embeddings
from utils.qa import has_answer, top_k_accuracy

PEOPLE = [
    "anna",
    "boris",
    "chen",
    "dara",
    "emil",
    "fatma",
    "goran",
    "hana",
    "ivan",
    "jonas",
    "kemal",
    "lea",
    "milo",
    "nora",
    "omar",
    "pia",
]
SIZES = ["--train_batch_size", "8", "--max_train_steps", "4", "--eval_batch_size", "32", "--num_workers", "0"]


def bare(script, cwd, *args):
    """python ROOT/script [args] in cwd, as a user types it there."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_error_line(excinfo):
    message = str(excinfo.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.fixture
def layout(tmp_path):
    """Tiny DPR files where utils/download_data.py puts NQ's: each person's passage says where they live."""
    rng = random.Random(0)
    cities = ["paris", "rome", "oslo", "lima"]
    home = {p: cities[i % 4] for i, p in enumerate(PEOPLE)}
    passages = [(i + 1, f"{p} is the king of the city of {home[p]}", p.title()) for i, p in enumerate(PEOPLE)]
    passages += [
        (100 + i, f"the river of {rng.choice(cities)} is the {w}", "River") for i, w in enumerate("abcdefgh")
    ]

    def ctx(pid):
        _, text, title = next(r for r in passages if r[0] == pid)
        return {"title": title, "text": text, "passage_id": str(pid)}

    records = [
        {
            "question": f"who is {p}",
            "answers": [home[p]],
            "positive_ctxs": [ctx(i + 1)],
            "hard_negative_ctxs": [ctx((i + 1) % len(PEOPLE) + 1)],
            "negative_ctxs": [],
        }
        for i, p in enumerate(PEOPLE)
    ]
    retriever = tmp_path / "downloads" / "data" / "retriever"
    os.makedirs(retriever / "qas")
    write_json(retriever / "nq-train.json", records)
    write_json(retriever / "nq-dev.json", records[:8])
    qas = [(f"what city is {p} the king of", [home[p]]) for p in PEOPLE[:10]]
    (retriever / "qas" / "nq-test.csv").write_text("".join(f"{q}\t{a!r}\n" for q, a in qas))
    return {"dir": tmp_path, "passages": passages, "qas": qas, "base": make_tiny_bert(str(tmp_path / "base"))}


def reference_accuracy(out, passages, qas, ks):
    """Independently: best/'s towers by a direct BertModel forward (DPR's [CLS], zero token types), the stored
    vectors equal to them within float16 rounding, float64 search over the stored vectors, has_answer."""
    q_dir, p_dir = (os.path.join(out, "best", t) for t in ("query_encoder", "doc_encoder"))

    def cls(model_dir, texts):
        tok, model = BertTokenizerFast.from_pretrained(model_dir), BertModel.from_pretrained(model_dir).eval()
        with torch.no_grad():
            enc = [tok(*t, truncation=True, max_length=256, return_tensors="pt") for t in texts]
            return np.stack(
                [
                    model(input_ids=e["input_ids"], token_type_ids=torch.zeros_like(e["input_ids"]))
                    .last_hidden_state[0, 0]
                    .numpy()
                    for e in enc
                ]
            )

    ids, stored = load_embeddings(os.path.join(out, "embeddings"))
    assert ids.tolist() == [pid for pid, _, _ in passages]
    np.testing.assert_allclose(
        stored.astype(np.float32), cls(p_dir, [(t, x) for _, x, t in passages]), rtol=2**-10, atol=1e-3
    )
    questions = cls(q_dir, [(q,) for q, _ in qas])
    order = np.argsort(-(questions.astype(np.float64) @ stored.astype(np.float64).T), axis=1, kind="stable")
    hits = [[has_answer(a, passages[j][1]) for j in row] for (_, a), row in zip(qas, order)]
    return top_k_accuracy(hits, ks)


def table(stdout):
    return {
        c[1].strip(): float(c[2])
        for c in (x.split("|") for x in stdout.splitlines())
        if len(c) == 4 and c[1].strip().startswith("Top-")
    }


def test_bare_commands_then_retrain_refuses_stale_embeddings(layout, monkeypatch):
    d, out = layout["dir"], layout["dir"] / "outputs" / "dpr_nq"
    # before anything is made: each command names the one that makes its input
    monkeypatch.chdir(d)
    with pytest.raises(SystemExit) as e:
        doc2embedding.main([])
    assert one_error_line(e) == (
        "error: outputs/dpr_nq/best/doc_encoder: not found; train it with: accelerate launch train_dpr.py"
    )
    with pytest.raises(SystemExit) as e:
        test_dpr.main([])
    assert one_error_line(e) == (
        "error: outputs/dpr_nq/embeddings: not found; make them with: accelerate launch doc2embedding.py"
    )

    r = bare("train_dpr.py", d, "--base_model", layout["base"], *SIZES)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out / "best")) == ["doc_encoder", "query_encoder", "trainer_state.json"]
    with pytest.raises(SystemExit) as e:  # the passages are not downloaded yet
        doc2embedding.main([])
    assert one_error_line(e) == (
        "error: downloads/data/wikipedia_split/psgs_w100.tsv: not found; download it with: "
        "python utils/download_data.py --resource data.wikipedia_split.psgs_w100"
    )
    os.makedirs(d / "downloads" / "data" / "wikipedia_split")
    write_passages_tsv(d / "downloads" / "data" / "wikipedia_split" / "psgs_w100.tsv", layout["passages"])

    r = bare("doc2embedding.py", d)
    assert r.returncode == 0, r.stderr[-3000:]
    r = bare("test_dpr.py", d)
    assert r.returncode == 0, r.stderr[-3000:]
    n = len(layout["passages"])
    assert f"{len(layout['qas'])} questions from downloads/data/retriever/qas/nq-test.csv" in r.stdout
    assert f"only {n} passages in outputs/dpr_nq/embeddings: retrieving top {n}" in r.stdout
    want = reference_accuracy(out, layout["passages"], layout["qas"], (1, 5, 10, 20))
    assert table(r.stdout) == {f"Top-{k}": round(100 * acc, 2) for k, acc in want.items()}
    assert len(set(want.values())) > 1  # a table that tells rankings apart

    # rerun: nothing to do. Retrain into the same dir: the old embeddings are refused, never reused or scored.
    assert doc2embedding.main([]) is None
    with pytest.raises(SystemExit) as e:
        train_dpr.main(["--base_model", layout["base"], *SIZES])
    assert "holds another training run" in one_error_line(e)
    train_dpr.main(["--base_model", layout["base"], *SIZES, "--seed", "5", "--overwrite_output_dir", "true"])
    with pytest.raises(SystemExit) as e:
        doc2embedding.main([])
    assert "encoder.digest" in one_error_line(e) and "--overwrite" in one_error_line(e)
    with pytest.raises(SystemExit) as e:
        test_dpr.main([])
    message = one_error_line(e)
    assert (
        "question encoder outputs/dpr_nq/best/query_encoder does not belong with passage encoder" in message
    )
    assert os.path.abspath("outputs/dpr_nq/best/doc_encoder") in message and "--trust_encoder_pair" in message
    doc2embedding.main(["--overwrite"])
    with open(out / "best" / "doc_encoder" / "nanodpr.json") as f:
        saved = json.load(f)
    with open(out / "embeddings" / "meta.json") as f:
        assert (json.load(f)["encoder"]["run"], saved["step"]) == (saved["run"], 4)
    assert test_dpr.main([]) == pytest.approx(
        reference_accuracy(out, layout["passages"], layout["qas"], range(1, n + 1))
    )
