"""Pooling and similarity beyond DPR's [CLS] + inner product: mean pooling, cosine with a scale, recorded in
the saved dirs and followed by encoding and search; sentence-transformers dirs bring their own. Tiny BERTs
built here."""

import json
import math
import os

import numpy as np
import pytest
import torch
import yaml
from transformers import BertModel, BertTokenizerFast

import doc2embedding
import test_dpr
import train_dpr
from conftest import make_tiny_bert, write_json, write_passages_tsv
from utils.biencoder import global_nll_loss, load_biencoder, nll_loss
from utils.embeddings import load_embeddings, read_meta
from utils.errors import ConfigError
from utils.formats import read_qas
from utils.models import embed, load_encoder, pad_batch, save_encoder, tokenize_questions

torch.set_num_threads(1)


def test_mean_pooling_is_the_masked_mean_and_ignores_padding(tiny_bert):
    model, tok, _ = load_encoder(tiny_bert, "question", pooling="mean")
    short, long = tokenize_questions(tok, ["who is it", "what is the capital of the river city"], 64)
    batch = pad_batch([short, long], tok.pad_token_id)
    with torch.no_grad():
        padded = embed(model, "mean", batch)
        alone = [embed(model, "mean", pad_batch([x], tok.pad_token_id)) for x in (short, long)]
        bert = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
        hidden = bert(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()
    assert mask[0].sum() == len(short) < mask.shape[1]  # the short question is padded
    by_hand = [(hidden[i] * mask[i][:, None]).sum(0) / mask[i].sum() for i in range(2)]  # real tokens only
    np.testing.assert_allclose(padded.numpy(), np.stack(by_hand), atol=1e-5)
    np.testing.assert_allclose(padded[0].numpy(), alone[0][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(padded[1].numpy(), alone[1][0].numpy(), atol=1e-5)
    unit = embed(model, "mean+normalize", pad_batch([short, long], tok.pad_token_id)).detach()
    norms = np.linalg.norm(padded.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(unit.numpy(), padded.numpy() / norms, atol=1e-6)


def test_cosine_loss_with_scale_is_hand_computed():
    q = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    # cosines by hand: q0 = (0.6, 0.8) -> [0.6, 0.8, 1.4/sqrt2]; q1 = (0, 1) -> [0, 1, 1/sqrt2]
    # positives: p1 for q0, p0 for q1
    cos = [[0.6, 0.8, 1.4 / math.sqrt(2)], [0.0, 1.0, 1 / math.sqrt(2)]]
    nll = [-(20 * c[pos] - math.log(sum(math.exp(20 * x) for x in c))) for c, pos in zip(cos, [1, 0])]
    assert nll_loss(q, p, torch.tensor([1, 0]), scale=20.0).item() == pytest.approx(sum(nll) / 2, abs=1e-5)
    loss = global_nll_loss(q, p, torch.tensor([1, 0]), scale=20.0).item()
    assert loss == pytest.approx(sum(nll) / 2, abs=1e-5)
    dot = [[3.0, 20.0, 7.0], [0.0, 10.0, 2.0]]  # no scale: DPR's inner product as before
    nll = [-(d[pos] - math.log(sum(math.exp(x) for x in d))) for d, pos in zip(dot, [1, 0])]
    assert nll_loss(q, p, torch.tensor([1, 0])).item() == pytest.approx(sum(nll) / 2, abs=1e-5)


def make_sentence_transformers_dir(out_dir, mode="pooling_mode_mean_tokens", normalize=True):
    """A tiny BertModel saved with sentence-transformers' module files (as all-MiniLM-L6-v2 ships them)."""
    make_tiny_bert(out_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        normalize_type = "sentence_transformers.models.Normalize"
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": normalize_type})
        os.makedirs(os.path.join(out_dir, "2_Normalize"))
    write_json(os.path.join(out_dir, "modules.json"), modules)
    os.makedirs(os.path.join(out_dir, "1_Pooling"))
    all_modes = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
    modes = {m: m == mode for m in all_modes}
    write_json(os.path.join(out_dir, "1_Pooling", "config.json"), {"word_embedding_dimension": 32, **modes})
    return out_dir


def test_sentence_transformers_dir_brings_its_pooling(tmp_path, tiny_bert):
    st = make_sentence_transformers_dir(str(tmp_path / "st"))
    assert load_encoder(st, "passage")[2] == "mean+normalize"
    assert load_encoder(st, "passage", pooling="cls", similarity="dot")[2] == "cls"  # flags override
    cls_dot = make_sentence_transformers_dir(str(tmp_path / "cls"), "pooling_mode_cls_token", normalize=False)
    assert load_encoder(cls_dot, "question")[2] == "cls"
    assert load_encoder(tiny_bert, "question")[2] == "cls"  # a plain BERT dir: DPR's [CLS] and inner product
    assert load_encoder(tiny_bert, "question", similarity="cos")[2] == "cls+normalize"
    max_pool = make_sentence_transformers_dir(str(tmp_path / "st_max"), "pooling_mode_max_tokens")
    with pytest.raises(Exception, match="1_Pooling/config.json: pooling modes"):
        load_encoder(max_pool, "question")
    model, _ = load_biencoder(st, 0.1)
    assert (model.pooling, model.scale) == ("mean+normalize", 20.0)
    model, _ = load_biencoder(tiny_bert, 0.1)
    assert (model.pooling, model.scale) == ("cls", None)


def test_saved_dirs_record_pooling_and_similarity(tmp_path, tiny_bert):
    model, tok, _ = load_encoder(tiny_bert, "passage")
    save_encoder(model, tok, str(tmp_path / "mean_cos"), "passage", "mean+normalize")
    assert json.load(open(tmp_path / "mean_cos" / "nanodpr.json"))["similarity"] == "cos"
    assert load_encoder(str(tmp_path / "mean_cos"), "passage")[2] == "mean+normalize"
    assert load_encoder(str(tmp_path / "mean_cos"), "passage", similarity="dot")[2] == "mean"


WORDS = ["river", "city", "king", "capital"]


def test_mean_cos_survives_train_save_encode_search(tmp_path):
    """A sentence-transformers base trains with its own mean + cos; the saved dirs carry them to
    doc2embedding.py (unit vectors) and test_dpr.py (results equal a brute-force cosine search of a
    hand-pooled question)."""
    st = make_sentence_transformers_dir(str(tmp_path / "st"))
    rng = np.random.default_rng(0)
    vocab = WORDS + ["abc", "xyz", "paris", "rome"]
    rows = [(pid, " ".join(rng.choice(vocab, 8)), f"t{pid}") for pid in range(1, 41)]
    psgs = write_passages_tsv(str(tmp_path / "psgs.tsv"), rows)
    ctx = [{"title": t, "text": x} for _, x, t in rows]
    records = [
        {
            "question": f"what is the {WORDS[i % 4]} {i}",
            "answers": ["paris"],
            "positive_ctxs": [ctx[i]],
            "hard_negative_ctxs": [ctx[i + 20]],
            "negative_ctxs": [],
        }
        for i in range(16)
    ]
    train = write_json(str(tmp_path / "train.json"), records)
    out = tmp_path / "run"
    train_dpr.main(
        [
            "--train_file",
            train,
            "--dev_file",
            train,
            "--base_model",
            st,
            "--output_dir",
            str(out),
            "--train_batch_size",
            "8",
            "--max_train_epochs",
            "1",
            "--lr",
            "1e-3",
            "--warmup_steps",
            "0",
            "--max_length",
            "32",
            "--num_workers",
            "0",
            "--val_av_rank_start_epoch",
            "0",
            "--val_av_rank_hard_neg",
            "1",
            "--val_av_rank_other_neg",
            "1",
        ]
    )
    for tower in ("query_encoder", "doc_encoder"):
        saved = json.load(open(out / "best" / tower / "nanodpr.json"))
        assert (saved["pooling"], saved["similarity"]) == ("mean", "cos")
    emb_dir = str(tmp_path / "emb")
    doc2embedding.main(
        [
            "--pretrained_model_path",
            str(out / "best" / "doc_encoder"),
            "--output_dir",
            emb_dir,
            "--wikipedia_path",
            psgs,
            "--dtype",
            "float32",
            "--num_workers",
            "0",
        ]
    )
    assert read_meta(emb_dir)["pooling"] == "mean+normalize"
    ids, emb = load_embeddings(emb_dir)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    qa = str(tmp_path / "qa.csv")
    with open(qa, "w") as f:
        f.writelines(f"{r['question']}\t['paris']\n" for r in records[:6])
    results = str(tmp_path / "results.json")
    test_dpr.main(
        [
            "--embedding_dir",
            emb_dir,
            "--pretrained_model_path",
            str(out / "best" / "query_encoder"),
            "--wikipedia_path",
            psgs,
            "--qa_file",
            qa,
            "--top_k",
            "5",
            "--index_device",
            "cpu",
            "--output_file",
            results,
            "--num_workers",
            "1",
        ]
    )
    # brute force: the saved question tower run directly, mean over its tokens, unit length, cosine to all
    # passages
    tok = BertTokenizerFast.from_pretrained(str(out / "best" / "query_encoder"))
    bert = BertModel.from_pretrained(str(out / "best" / "query_encoder"), add_pooling_layer=False).eval()
    got = json.load(open(results))
    for (question, _), result in zip(read_qas(qa), got):
        enc = tok(question, return_tensors="pt")
        with torch.no_grad():
            zeros = torch.zeros_like(enc["input_ids"])
            h = bert(input_ids=enc["input_ids"], token_type_ids=zeros).last_hidden_state[0]
        q = h.mean(0).numpy()
        cos = emb @ (q / np.linalg.norm(q))
        want = ids[np.argsort(-cos, kind="stable")[:5]]
        assert [int(c["id"]) for c in result["ctxs"]] == want.tolist()
        got_scores = [float(c["score"]) for c in result["ctxs"]]
        np.testing.assert_allclose(got_scores, np.sort(cos)[::-1][:5], atol=1e-4)

    with pytest.raises(SystemExit, match="pool both alike"):  # questions pooled unlike the passages: refused
        test_dpr.main(
            [
                "--embedding_dir",
                emb_dir,
                "--pretrained_model_path",
                str(out / "best" / "query_encoder"),
                "--wikipedia_path",
                psgs,
                "--qa_file",
                qa,
                "--similarity",
                "dot",
            ]
        )


def test_config_options_are_checked(tmp_path):
    cfg = str(tmp_path / "cfg.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump({"pooling": "mean", "similarity": "cos", "scale": 30}, f)
    parsed = train_dpr.parse_args(["--config_file", cfg])
    assert (parsed.pooling, parsed.similarity, parsed.scale) == ("mean", "cos", 30.0)
    assert train_dpr.parse_args([]).pooling == "auto"
    with pytest.raises(ConfigError, match="argument --pooling: invalid choice"):
        train_dpr.parse_args(["--pooling", "max"])
