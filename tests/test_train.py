"""train_dpr.py: the loss, multi-process equivalence, gradient cache, a short run, exact resume, bad input.

Tiny random-init BERTs (conftest.make_tiny_bert) on a synthetic biencoder set written here: each
question names a made-up person, its positive passage is about that person, negatives about others.
"""

import dataclasses
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from transformers import BertModel

import train_dpr
from conftest import ROOT, free_port, make_tiny_bert, write_json
from utils.biencoder import global_nll_loss, grad_cache_step, load_biencoder, nll_loss, plain_step
from utils.errors import ConfigError
from utils.models import pad_batch, tokenize_passages, tokenize_questions
from utils.train_data import BiencoderData, Collate, build_cache, epoch_batches, steps_per_epoch

torch.set_num_threads(1)  # tiny models: more threads only contend on a shared 2-core machine


def shifted(word):
    return "".join(chr((ord(c) - ord("a") + 1) % 26 + ord("a")) for c in word)


def make_records(n, seed, n_hard=2, n_other=2):
    """n questions "who is NAME"; the positive passage names the person letter-shifted (abc -> bcd), so
    a random-init BERT sees no overlap and must learn the match; negatives are drawn from 2n distractor
    passages (never another question's positive: no ties with it)."""
    rng = random.Random(seed)
    names = set()
    while len(names) < 3 * n:
        names.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)))
    names = sorted(names)
    rng.shuffle(names)
    ctx = [
        {"title": shifted(name), "text": f"{shifted(name)} is the king of {name[::-1][:4]}"} for name in names
    ]
    return [
        {
            "question": f"who is {names[i]}",
            "answers": [names[i][::-1][:4]],
            "positive_ctxs": [ctx[i]],
            "hard_negative_ctxs": [ctx[j] for j in neg[:n_hard]],
            "negative_ctxs": [ctx[j] for j in neg[n_hard:]],
        }
        for i in range(n)
        for neg in [rng.sample(range(n, 3 * n), n_hard + n_other)]
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny BERT, train (64 questions) / dev (16) files and a base config (48 steps); shared by the module."""
    d = tmp_path_factory.mktemp("train")
    base = make_tiny_bert(str(d / "bert"), seed=0)
    records = make_records(64, seed=1)
    train = write_json(str(d / "train.json"), records)
    # dev: reworded questions about 16 of the training people (a 2-layer BERT from scratch learns them, not
    # language)
    dev = write_json(
        str(d / "dev.json"),
        [dict(r, question=r["question"].replace("who is", "what is")) for r in records[:16]],
    )
    cfg = dict(
        train_file=train,
        dev_file=dev,
        base_model=base,
        train_batch_size=16,
        max_train_epochs=12,
        lr=1e-2,
        warmup_steps=2,
        max_length=64,
        num_hard_negatives=1,
        num_other_negatives=0,
        val_av_rank_start_epoch=0,
        eval_batch_size=32,
        num_workers=0,
        log_steps=1,
        seed=7,
    )
    config = str(d / "cfg.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)
    return {"dir": d, "base": base, "train": train, "dev": dev, "config": config}


def argv(setup, out, **overrides):
    args = ["--config_file", setup["config"], "--output_dir", str(out)]
    for k, v in overrides.items():
        args.append(f"--{k}={'null' if v is None else v}")
    return args


def read_log(out):
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(out):
    return torch.load(os.path.join(out, "last_state", "state.pt"), weights_only=True)["model"]


def test_loss_is_hand_computed_nll():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0], [1.0, -1.0]])
    # scores by hand: q0 -> [1, 0, 2, 1], q1 -> [2, 2, 0, -2]; q0's positive is p0, q1's is p2
    nll0 = -(1 - math.log(math.e + 1 + math.e**2 + math.e))
    nll1 = -(0 - math.log(math.e**2 + math.e**2 + 1 + math.e**-2))
    expected = (nll0 + nll1) / 2
    assert nll_loss(q, p, torch.tensor([0, 2])).item() == pytest.approx(expected, abs=1e-6)
    assert global_nll_loss(q, p, torch.tensor([0, 2])).item() == pytest.approx(expected, abs=1e-6)


def make_step_inputs(setup, chunk_size, dropout):
    model, tokenizers = load_biencoder(setup["base"], dropout)
    records = make_records(6, seed=3)
    items = [
        (r["question"], [(c["title"], c["text"]) for c in r["positive_ctxs"] + r["hard_negative_ctxs"]])
        for r in records
    ]
    batch = Collate(tokenizers, 64, chunk_size, groups=2)(items)
    return model, batch


def step_grads(model, batch, grad_cache, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    step = grad_cache_step if grad_cache else plain_step
    loss = step(
        model, batch, torch.autocast("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False), 1.0
    )
    # not the unused pooler
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_grad_cache_gradients_equal_plain_step(setup, dropout):
    model, chunked = make_step_inputs(setup, chunk_size=2, dropout=dropout)
    _, whole = make_step_inputs(setup, chunk_size=6, dropout=dropout)
    loss, plain = step_grads(model, chunked, grad_cache=False, seed=0)  # same chunks, full autograd graph
    loss_gc, cached = step_grads(model, chunked, grad_cache=True, seed=0)
    assert loss_gc == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(cached, plain, atol=1e-5, rtol=0), (cached - plain).abs().max()
    assert plain.abs().max() > 1e-3
    if dropout == 0:  # no masks to replay: also equal to one un-chunked forward of the whole batch
        _, single = step_grads(model, whole, grad_cache=False, seed=0)
        assert torch.allclose(cached, single, atol=1e-5, rtol=0), (cached - single).abs().max()
    else:  # dropout is really on: another seed gives other gradients
        _, other_seed = step_grads(model, chunked, grad_cache=True, seed=1)
        assert (other_seed - cached).abs().max() > 1e-4


def test_padding_to_a_multiple_of_8_gives_the_same_step(setup):
    """Collate's pad_multiple (a speed lever): every width a multiple of 8, extra positions masked, the same
    loss and gradients as padding to the longest (no dropout: its masks are drawn over the wider tensors)."""
    model, batch = make_step_inputs(setup, chunk_size=3, dropout=0.0)
    items = [
        (r["question"], [(c["title"], c["text"]) for c in r["positive_ctxs"] + r["hard_negative_ctxs"]])
        for r in make_records(6, seed=3)
    ]
    wide = Collate(load_biencoder(setup["base"], 0.0)[1], 64, 3, groups=2, pad_multiple=8)(items)
    for narrow, padded in zip(batch["chunks"], wide["chunks"]):
        for a, b in zip([narrow["question"], *narrow["passages"]], [padded["question"], *padded["passages"]]):
            assert b["input_ids"].shape[1] % 8 == 0 and b["input_ids"].shape[1] - a["input_ids"].shape[
                1
            ] in range(8)
            assert b["attention_mask"][:, a["input_ids"].shape[1] :].sum() == 0
    loss, grads = step_grads(model, batch, grad_cache=False, seed=0)
    loss8, grads8 = step_grads(model, wide, grad_cache=False, seed=0)
    assert loss8 == pytest.approx(loss, abs=1e-6)
    assert torch.allclose(grads8, grads, atol=1e-5, rtol=0), (grads8 - grads).abs().max()


def test_two_processes_equal_one(setup, tmp_path):
    """Same global batches, 2 gloo processes (with gradient cache) vs 1 (plain), both accumulating 2
    micro-batches: same losses, grad norms, parameters and dev metrics. Dropout off: each process draws its
    own masks. Adam with eps 1 moves a parameter by about lr * gradient (not lr * sign), so equal parameters
    mean equal gradients."""
    common = dict(
        dropout=0.0,
        max_train_steps=3,
        eval_steps=3,
        train_batch_size=8,
        max_train_epochs=1,
        lr=1.0,
        adam_eps=1.0,
        mixed_precision="no",
        gradient_accumulation_steps=2,
    )
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        os.path.join(ROOT, "train_dpr.py"),
    ] + argv(setup, tmp_path / "two", grad_cache_chunk_size=1, **common)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    train_dpr.main(argv(setup, tmp_path / "one", **common))
    two, one = read_log(tmp_path / "two"), read_log(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 3]
    for a, b in zip(two, one):
        for key in ("loss", "grad_norm", "dev_nll", "dev_avg_rank"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)
    p2, p1 = final_params(tmp_path / "two"), final_params(tmp_path / "one")
    assert max((p2[k] - p1[k]).abs().max().item() for k in p1) < 1e-5


def brute_force_avg_rank(q_dir, p_dir, dev_records, max_length, n_hard=30, n_other=30):
    """DPR's average rank, independently: BertModel forwards, every question against the pooled
    [positive, other negatives, hard negatives] of all dev questions, rank by sorting."""
    from transformers import AutoTokenizer

    q_model, p_model = BertModel.from_pretrained(q_dir).eval(), BertModel.from_pretrained(p_dir).eval()
    q_tok, p_tok = AutoTokenizer.from_pretrained(q_dir), AutoTokenizer.from_pretrained(p_dir)
    pool, gold = [], []
    for r in dev_records:
        hard = r["hard_negative_ctxs"] or r["negative_ctxs"]
        gold.append(len(pool))
        pool += r["positive_ctxs"][:1] + r["negative_ctxs"][:n_other] + hard[:n_hard]
    with torch.no_grad():
        q = q_model(
            **pad_batch(tokenize_questions(q_tok, [r["question"] for r in dev_records], max_length), 0)
        )
        p = p_model(
            **pad_batch(
                tokenize_passages(p_tok, [c["title"] for c in pool], [c["text"] for c in pool], max_length), 0
            )
        )
    scores = (q.last_hidden_state[:, 0] @ p.last_hidden_state[:, 0].T).numpy()
    ranks = [int(np.nonzero(np.argsort(-s, kind="stable") == g)[0][0]) for s, g in zip(scores, gold)]
    return float(np.mean(ranks))


def test_short_run_learns_and_writes_loadable_checkpoints(setup, tmp_path):
    out = tmp_path / "run"
    train_dpr.main(argv(setup, out, dropout=0.0, mixed_precision="no"))
    log = read_log(out)
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    with open(setup["dev"]) as f:
        dev = json.load(f)
    before = brute_force_avg_rank(setup["base"], setup["base"], dev, 64)
    best = os.path.join(out, "best")
    after = brute_force_avg_rank(
        os.path.join(best, "query_encoder"), os.path.join(best, "doc_encoder"), dev, 64
    )
    assert after < 0.5 * before, (before, after)
    with open(os.path.join(best, "trainer_state.json")) as f:
        reported = json.load(f)
    assert reported["dev_avg_rank"] == pytest.approx(after, abs=1e-6)  # the script's own computation agrees
    for tower, role in (("query_encoder", "question"), ("doc_encoder", "passage")):
        with open(os.path.join(best, tower, "nanodpr.json")) as f:
            assert json.load(f)["role"] == role
    steps = sorted(d for d in os.listdir(out) if d.startswith("step-"))
    assert steps == ["step-44", "step-48"]  # 4 steps per epoch, evaluated per epoch, save_total_limit 2


def test_saved_encoders_load_as_plain_bert_with_the_base_pooler(setup, tmp_path):
    """BertModel.from_pretrained(dir) finds every weight (nothing newly initialized); the pooler, which DPR
    never uses, is the base model's as it was."""
    from transformers import AutoTokenizer

    base = str(tmp_path / "base")
    torch.manual_seed(3)
    with_pooler = BertModel(BertModel.config_class.from_pretrained(setup["base"]), add_pooling_layer=True)
    with_pooler.save_pretrained(base)
    AutoTokenizer.from_pretrained(setup["base"]).save_pretrained(base)
    out = tmp_path / "run"
    # step 1 has lr 0 (warm-up)
    train_dpr.main(argv(setup, out, base_model=base, max_train_steps=2, dev_file=None))
    for tower in ("query_encoder", "doc_encoder"):
        model, info = BertModel.from_pretrained(os.path.join(out, "step-2", tower), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert torch.equal(model.pooler.dense.weight, with_pooler.pooler.dense.weight)
        assert not torch.equal(
            model.encoder.layer[0].output.dense.weight, with_pooler.encoder.layer[0].output.dense.weight
        )


class Crash(Exception):
    pass


def test_resume_after_crash_equals_uninterrupted_run(setup, tmp_path, monkeypatch):
    """Killed during step 5 (last checkpoint: step 3, mid-epoch 0; 4 steps per epoch), resumed: the same
    parameters and per-step losses as an uninterrupted 8-step run, dropout and gradient cache on."""
    common = dict(
        dropout=0.1, grad_cache_chunk_size=3, eval_steps=3, max_train_steps=8, num_workers=1, log_steps=1
    )
    train_dpr.main(argv(setup, tmp_path / "straight", **common))

    step = train_dpr.grad_cache_step
    calls = []

    def crash_in_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise Crash
        return step(*args, **kwargs)

    monkeypatch.setattr(train_dpr, "grad_cache_step", crash_in_step_5)
    with pytest.raises(Crash):
        train_dpr.main(argv(setup, tmp_path / "resumed", **common))
    monkeypatch.setattr(train_dpr, "grad_cache_step", step)
    assert [r["step"] for r in read_log(tmp_path / "resumed") if "loss" in r] == [1, 2, 3, 4]
    (crashed_run, _), _ = encoder_origin(tmp_path / "resumed", "step-3")
    train_dpr.main(argv(setup, tmp_path / "resumed", resume_from_checkpoint="last", **common))
    assert encoder_origin(tmp_path / "resumed", "step-8") == [(crashed_run, 8)] * 2  # the same run, resumed
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    # step 4 logged once: the crashed run's entry dropped
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    assert [r["loss"] for r in log_b if "loss" in r] == pytest.approx(
        [r["loss"] for r in log_a if "loss" in r], abs=1e-6
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(foo=1), "unrecognized arguments: --foo=1"),
        (dict(lr="fast"), "argument --lr: invalid float value: 'fast'"),
        (dict(train_file="/nonexistent/train.json"), "/nonexistent/train.json: file not found"),
        (dict(train_batch_size=6, gradient_accumulation_steps=4), "not divisible"),
    ],
)
def test_bad_input_is_one_clear_error(setup, tmp_path, overrides, message):
    with pytest.raises(SystemExit) as e:
        train_dpr.main(argv(setup, tmp_path / "bad", **overrides))
    assert message in str(e.value) and str(e.value).startswith("error: ")


def test_dataset_without_usable_questions_is_an_error(setup, tmp_path):
    records = make_records(4, seed=5)
    for r in records:
        r["positive_ctxs"] = []
    empty = write_json(str(tmp_path / "empty.json"), records)
    with pytest.raises(SystemExit) as e:
        train_dpr.main(argv(setup, tmp_path / "bad", train_file=empty))
    assert "0 usable questions (4 skipped)" in str(e.value)


def test_compact_data_keeps_only_what_training_reads(setup, tmp_path):
    """Other negatives are dropped when num_other_negatives is 0, except as the fallback pool of a
    question without hard negatives; the layout follows DPR's create_biencoder_input."""
    records = make_records(4, seed=6, n_hard=3, n_other=2)
    records[1]["hard_negative_ctxs"] = []
    path = write_json(str(tmp_path / "t.json"), records)
    data = BiencoderData(build_cache([path], str(tmp_path / "cache"), None, None, True))
    assert len(data) == 4 and data.meta["skipped"] == 0
    assert np.diff(data.other_ptr).tolist() == [0, 2, 0, 0]
    text = lambda p: data.passage(p)[1]  # noqa: E731
    ctxs = data.ctxs(0, num_hard=2, num_other=0)
    assert [text(p) for p in ctxs] == [
        c["text"] for c in records[0]["positive_ctxs"] + records[0]["hard_negative_ctxs"][:2]
    ]
    fallback = data.ctxs(1, num_hard=1, num_other=0)
    assert [text(p) for p in fallback] == [
        records[1]["positive_ctxs"][0]["text"],
        records[1]["negative_ctxs"][0]["text"],
    ]
    shuffled = {tuple(data.ctxs(0, 3, 0, random.Random(s))) for s in range(20)}
    assert len(shuffled) > 1 and all(
        s[0] == ctxs[0] and sorted(s) == sorted(data.ctxs(0, 3, 0)) for s in shuffled
    )
    # identical passages are stored once
    distinct = {
        (c["title"], c["text"])
        for r in records
        for k in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs")
        for c in r[k]
        if k != "negative_ctxs" or not r["hard_negative_ctxs"]
    }
    assert data.meta["passages"] == len(distinct) < sum(1 + len(r["hard_negative_ctxs"]) for r in records) + 2


def test_multi_file_batches_never_mix_files(setup, tmp_path):
    """DPR's multi-set training (NQ + adv-hn): every batch from one file, all batches full, the order a
    function of (seed, epoch)."""
    files = [write_json(str(tmp_path / f"{k}.json"), make_records(n, seed=k)) for k, n in ((1, 20), (2, 13))]
    data = BiencoderData(build_cache(files, str(tmp_path / "cache"), None, None, True))
    source = np.asarray(data.source)
    batches = epoch_batches(data, epoch=0, seed=3, batch_size=4)
    assert len(batches) == steps_per_epoch(data, 4) == 20 // 4 + 13 // 4
    assert all(len(b) == 4 and len(set(source[b])) == 1 for b in batches)
    assert len(set(np.concatenate(batches))) == len(batches) * 4
    assert {int(source[b[0]]) for b in batches} == {0, 1}
    again = epoch_batches(data, epoch=0, seed=3, batch_size=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = epoch_batches(data, epoch=1, seed=3, batch_size=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_help_lists_every_option_with_default_and_meaning():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_dpr.py"), "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for key in ("train_file", "train_batch_size", "grad_cache_chunk_size", "resume_from_checkpoint"):
        assert f"--{key} " in out.stdout
    blocks = {b.split()[0]: " ".join(b.split()[1:]) for b in out.stdout.split("\n  --")[1:]}
    for f in dataclasses.fields(train_dpr.Config):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        default = (
            "null" if default is None else " ".join(default) if isinstance(default, list) else str(default)
        )
        meaning, _, shown = (
            blocks[f.name].removeprefix("VALUE [VALUE ...] ").removeprefix("VALUE ").rpartition(" (default: ")
        )
        assert shown == default + ")" and len(meaning.split()) >= 2, f.name


# DPR's biencoder_nq.yaml (+ hf_bert.yaml, biencoder_train_cfg.yaml) on 8 GPUs: batch 16 per GPU, lr 2e-5,
# warm-up 1237, 40 epochs, one hard negative; its clipping (2.0) and Adam eps (1e-8) acted on DDP's average,
# 1/8 of the gradient we compute.
DPR_GPUS = 8
DPR_NQ = dict(
    train_batch_size=16 * DPR_GPUS,
    lr=2e-5,
    warmup_steps=1237,
    max_train_epochs=40,
    num_hard_negatives=1,
    num_other_negatives=0,
    dropout=0.1,
    max_length=256,
    weight_decay=0.0,
    seed=12345,
    val_av_rank_start_epoch=30,
    val_av_rank_hard_neg=30,
    val_av_rank_other_neg=30,
    max_grad_norm=2.0 * DPR_GPUS,
    adam_eps=1e-8 * DPR_GPUS,
    gradient_accumulation_steps=1,
)


def test_defaults_are_dpr_nq_recipe():
    cfg = train_dpr.parse_args([])
    for key, value in DPR_NQ.items():
        assert getattr(cfg, key) == pytest.approx(value, rel=1e-12), key
    assert cfg.base_model == "bert-base-uncased" and cfg.eval_steps is None  # [enc]; validate once per epoch
    # where utils/download_data.py puts DPR's files
    assert cfg.train_file == ["downloads/data/retriever/nq-train.json"]
    assert cfg.dev_file == "downloads/data/retriever/nq-dev.json"


@pytest.mark.parametrize(
    "name", ["train_dpr_nq.yaml", "train_dpr_nq_adv_hn.yaml", "train_mini_nq.yaml", "train_demo.yaml"]
)
def test_shipped_configs_parse(name):
    cfg = train_dpr.parse_args(["--config_file", os.path.join(ROOT, "config", name)])
    assert isinstance(cfg, train_dpr.Config)
    if name.startswith("train_dpr_nq"):
        for key, value in DPR_NQ.items():
            assert getattr(cfg, key) == pytest.approx(value, rel=1e-12), key
    if name == "train_dpr_nq_adv_hn.yaml":  # DPR's train_datasets=[nq_train,nq_train_hn1]
        assert cfg.train_file == [
            "downloads/data/retriever/nq-train.json",
            "downloads/data/retriever/nq-adv-hn-train.json",
        ]


def test_config_file_then_overrides(tmp_path):
    """YAML as people write it (a bare `no`, 2e-5 without a dot, a list of files), then --key value /
    --key=value (several files: --train_file a b)."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "mixed_precision: no\nlr: 2e-5\ntrain_file: [a.json, b.json]\neval_steps: 7\nreport_to: null\n"
    )
    cfg = train_dpr.parse_args(["--config_file", str(path)])
    assert (cfg.mixed_precision, cfg.lr, cfg.train_file, cfg.eval_steps, cfg.report_to) == (
        "no",
        2e-5,
        ["a.json", "b.json"],
        7,
        "none",
    )
    cfg = train_dpr.parse_args(
        ["--eval_steps", "null", "--config_file", str(path), "--lr=1e-5", "--train_file", "c.json"]
    )
    assert (cfg.eval_steps, cfg.lr, cfg.train_file, cfg.max_train_epochs) == (None, 1e-5, ["c.json"], 40)
    assert train_dpr.parse_args(["--train_file", "x.json", "y.json"]).train_file == ["x.json", "y.json"]


@pytest.mark.parametrize(
    "text, args, message",
    [
        ("lr: fast\n", [], "c.yaml: argument --lr: invalid float value: 'fast'"),
        ("train_batch_size: 0\n", [], "c.yaml: train_batch_size must be >= 1, got 0"),
        ("mixed_precision: fp8\n", [], "c.yaml: argument --mixed_precision: invalid choice: 'fp8'"),
        ("train_batch_size: 1.5\n", [], "c.yaml: argument --train_batch_size: invalid int value: '1.5'"),
        ("epochs: 3\n", [], "c.yaml: unrecognized arguments: --epochs 3"),
        ("- lr\n", [], "c.yaml: expected a mapping of config keys"),
        ("train_file: []\n", [], "c.yaml: argument --train_file: expected at least one argument"),
        ("", ["--dropout", "-0.1"], "dropout must be >= 0, got -0.1"),
        ("", ["--train_file"], "argument --train_file: expected at least one argument"),
        ("", ["--epochs=3"], "unrecognized arguments: --epochs=3"),
        ("", ["--lr"], "argument --lr: expected one argument"),
        ("", ["stray"], "unrecognized arguments: stray"),
        ("", ["--overwrite_output_dir", "maybe"], "argument --overwrite_output_dir: Truthy value expected"),
    ],
)
def test_config_errors_name_where(tmp_path, text, args, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        train_dpr.parse_args((["--config_file", str(path)] if text else []) + args)
    assert message in str(e.value)


def test_no_arguments_without_downloads_is_one_line_naming_the_download(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_dpr.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "downloads/data/retriever/nq-train.json: file not found" in lines[0]
    assert "python utils/download_data.py --resource data.retriever.nq" in lines[0]


def test_log_without_a_terminal_is_plain_lines(setup, tmp_path):
    """stderr not a TTY (a log file, CI): one plain line every log_steps instead of tqdm's carriage-return
    updates."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "train_dpr.py")] + argv(
        setup, tmp_path / "out", max_train_steps=3, dev_file=None
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("step ")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_report_to_trackers(setup, tmp_path, tracker):
    """The metrics of train_log.jsonl reach tensorboard / wandb, under output_dir. No wandb login: the run
    goes offline instead of prompting (stdin closed, HOME without a .netrc)."""
    pytest.importorskip("tensorboard" if tracker == "tensorboard" else "wandb")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "train_dpr.py")] + argv(
        setup, out, max_train_steps=3, eval_steps=3, report_to=tracker
    )
    result = subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(out)
    train_steps = [r for r in log if "loss" in r]
    dev = next(r for r in log if "dev_nll" in r)
    assert [r["step"] for r in train_steps] == [1, 2, 3]
    if tracker == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "nanodpr")).Reload()
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("loss")] == [
            (r["step"], r["loss"]) for r in train_steps
        ]
        assert [(e.step, e.value) for e in events.Scalars("dev_avg_rank")] == [
            (3, pytest.approx(dev["dev_avg_rank"], rel=1e-6))
        ]
    else:
        assert "offline" in result.stdout + result.stderr
        (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
        raw = run_file.read_bytes()  # wandb's record file: the logged values are stored as JSON text
        for r in train_steps + [dev]:
            for k, v in r.items():
                if k not in ("step", "epoch", "examples_per_s"):
                    assert k.encode() in raw and json.dumps(v).encode() in raw, (k, v)


def encoder_origin(out, checkpoint):
    """(run, step) each tower's nanodpr.json names."""
    origins = []
    for tower in ("query_encoder", "doc_encoder"):
        with open(os.path.join(out, checkpoint, tower, "nanodpr.json")) as f:
            saved = json.load(f)
        origins.append((saved["run"], saved["step"]))
    return origins


def test_second_run_into_a_used_dir_is_refused_unless_overwrite(setup, tmp_path):
    """A new run into another run's dir would append to its log, and pruning (the highest step numbers
    stay) would delete the new run's step-N/ dirs: refused before any work, unless overwrite_output_dir."""
    out = tmp_path / "run"
    common = dict(dev_file=None, eval_steps=2, log_steps=1)
    train_dpr.main(argv(setup, out, max_train_steps=4, **common))
    before = {
        name: sorted(os.listdir(out / name)) if os.path.isdir(out / name) else open(out / name).read()
        for name in os.listdir(out)
    }
    with pytest.raises(SystemExit) as e:
        train_dpr.main(argv(setup, out, max_train_steps=2, **common))
    message = str(e.value)
    assert message.startswith("error: ") and "holds another training run" in message and "\n" not in message
    assert "step-2, step-4, train_log.jsonl" in message and "--overwrite_output_dir" in message
    assert {
        name: sorted(os.listdir(out / name)) if os.path.isdir(out / name) else open(out / name).read()
        for name in os.listdir(out)
    } == before  # untouched
    (first_run, _), _ = encoder_origin(out, "step-4")

    train_dpr.main(
        argv(
            setup,
            out,
            max_train_steps=2,
            eval_steps=1,
            dev_file=None,
            log_steps=1,
            overwrite_output_dir="true",
        )
    )
    assert sorted(d for d in os.listdir(out) if d.startswith("step-")) == ["step-1", "step-2"]  # new run's
    assert [r["step"] for r in read_log(out)] == [1, 2]
    (q, p) = encoder_origin(out, "step-2")
    assert q == p == (q[0], 2) and q[0] != first_run  # both towers name this (new) run and step
    assert os.path.isdir(out / "data_cache")  # kept: keyed by its inputs


def test_processes_that_see_different_dirs_fail_fast(setup, tmp_path):
    """Two processes whose output dirs differ (two nodes without a shared filesystem; simulated by a wrapper
    that gives each rank its own dir) stop at once with one line, before the data cache is built."""
    wrapper = tmp_path / "per_rank_dir.py"
    wrapper.write_text(
        "import os, sys\nimport train_dpr\nargv = sys.argv[1:]\n"
        "argv[argv.index('--output_dir') + 1] += os.environ['RANK']\ntrain_dpr.main(argv)\n"
    )
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        str(wrapper),
    ] + argv(setup, tmp_path / "out", max_train_steps=2, train_batch_size=8)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("shared filesystem" in line for line in errors), result.stderr[-3000:]
    for rank in "01":
        assert os.listdir(tmp_path / f"out{rank}") == []  # no data_cache/, no token left behind
