"""Encoder loading: our dirs, HF DPR encoders and raw DPR .cp checkpoints give the embeddings their weights
define.

Expectations come from a direct BertModel forward on the original weights (and CLS @ W.T + b by hand for a
projection), never from the loader under test. Raw checkpoints are built here with DPR's exact layout.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    DPRConfig,
    DPRContextEncoder,
    DPRQuestionEncoder,
)

from conftest import ROOT, make_tiny_bert
from utils.convert_dpr_checkpoint import main as convert
from utils.errors import EncoderError
from utils.models import (
    embed,
    load_encoder,
    pad_batch,
    quiet_transformers,
    tokenize_passages,
    tokenize_questions,
)

QUESTIONS = ["who is the king of the city", "what river?", "capital"]
PASSAGES = [("the river city", "the king of the river is the capital"), ("", "who and what"), ("king", "of")]
PREFIX = {"question": "question_model.", "passage": "ctx_model."}


def batch_for(tokenizer, role):
    if role == "question":
        ids = tokenize_questions(tokenizer, QUESTIONS, 32)
    else:
        ids = tokenize_passages(tokenizer, [t for t, _ in PASSAGES], [x for _, x in PASSAGES], 32)
    batch = pad_batch(ids, tokenizer.pad_token_id)
    assert batch["token_type_ids"].eq(0).all() and batch["attention_mask"].eq(0).any()  # DPR's input, padded
    return batch


def reference(bert_dir, weights, batch, proj=None):
    """CLS of a plain BertModel carrying `weights` (DPR's HFBertEncoder), then DPR's encode_proj by hand."""
    model = BertModel(BertConfig.from_pretrained(bert_dir), add_pooling_layer=False).eval()
    model.load_state_dict(
        {
            k: v
            for k, v in weights.items()
            if not k.startswith(("pooler.", "encode_proj.")) and k != "embeddings.position_ids"
        }
    )
    with torch.no_grad():
        cls = model(**batch).last_hidden_state[:, 0]
    return cls if proj is None else cls @ proj[0].T + proj[1]


def our_embedding(path, role, tokenizer=None):
    model, tok, pooling = load_encoder(path, role, tokenizer)
    with torch.no_grad():
        return embed(model, pooling, batch_for(tok, role)), model, pooling


def tower_weights(bert_dir, seed, pooler=True, position_ids=True, proj_dim=0):
    """One tower's weights as DPR's HFBertEncoder state_dict has them (BERT + pooler [+ encode_proj])."""
    torch.manual_seed(seed)
    with quiet_transformers():  # pooler: random (missing from the dir), as DPR never trains it
        model = BertModel.from_pretrained(bert_dir, add_pooling_layer=True)
    w = dict(model.state_dict())
    hidden = model.config.hidden_size
    if not pooler:
        w = {k: v for k, v in w.items() if not k.startswith("pooler.")}
    if position_ids:
        w["embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings).unsqueeze(0)
    if proj_dim:
        w["encode_proj.weight"], w["encode_proj.bias"] = torch.randn(proj_dim, hidden), torch.randn(proj_dim)
    return w


def dpr_checkpoint(path, towers, encoder_params, legacy=False):
    """torch.save(CheckpointState._asdict()) exactly as DPR's train_dense_encoder._save_checkpoint does."""
    model_dict = {PREFIX[role] + k: v for role, w in towers.items() for k, v in w.items()}
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    params[0].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = dict(
        model_dict=model_dict,
        optimizer_dict=optimizer.state_dict(),
        scheduler_dict=scheduler.state_dict(),
        offset=1200,
        epoch=39,
        encoder_params=encoder_params,
    )
    torch.save(state, path, **({"_use_new_zipfile_serialization": False} if legacy else {}))
    return str(path)


def hydra_encoder_params(pretrained_model_cfg, projection_dim=0):
    """DPR's get_encoder_params_state_from_cfg: {do_lower_case, encoder: cfg.encoder}, a genuine DictConfig
    (child of the whole hydra config, which pickles along with it)."""
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {
            "encoder": {
                "encoder_model_type": "hf_bert",
                "pretrained_model_cfg": pretrained_model_cfg,
                "pretrained_file": None,
                "model_file": None,
                "projection_dim": projection_dim,
                "sequence_length": 256,
                "dropout": 0.1,
                "fix_ctx_encoder": False,
                "pretrained": True,
            },
            "train": {"batch_size": 16, "learning_rate": 2e-5, "num_train_epochs": 40, "eval_per_epoch": 1},
            "datasets": {
                "nq_train": {
                    "_target_": "dpr.data.biencoder_data.JsonQADataset",
                    "file": "data.retriever.nq-train",
                }
            },
            "train_datasets": ["nq_train"],
            "do_lower_case": True,
            "local_rank": -1,
            "output_dir": "${train.batch_size}",
        }
    )
    omegaconf.OmegaConf.set_struct(cfg, True)
    return {"do_lower_case": cfg.do_lower_case, "encoder": cfg.encoder}


@pytest.fixture
def towers(tmp_path):
    q_dir, c_dir = make_tiny_bert(str(tmp_path / "q"), seed=1), make_tiny_bert(str(tmp_path / "c"), seed=2)
    return {"question": (q_dir, tower_weights(q_dir, 1)), "passage": (c_dir, tower_weights(c_dir, 2))}


@pytest.fixture
def hydra_cp(tmp_path, towers):
    params = hydra_encoder_params(towers["question"][0])  # a local dir, as DPR users often pass
    return dpr_checkpoint(tmp_path / "dpr_biencoder.39.cp", {r: w for r, (_, w) in towers.items()}, params)


# ---------------------------------------------------------------------------------------------
# raw DPR checkpoints


@pytest.mark.parametrize("role", ["question", "passage"])
def test_raw_checkpoint_matches_direct_bert_forward(hydra_cp, towers, role):
    bert_dir, weights = towers[role]
    got, model, pooling = our_embedding(hydra_cp, role)
    assert pooling == "cls" and type(model) is BertModel and not model.training
    tok = AutoTokenizer.from_pretrained(bert_dir)  # DPR's tokenizer comes from encoder.pretrained_model_cfg
    want = reference(bert_dir, weights, batch_for(tok, role))
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_raw_checkpoint_loads_without_omegaconf_and_runs_no_pickled_code(hydra_cp, towers):
    code = f"""
import sys, torch
sys.modules["omegaconf"] = None; sys.modules["hydra"] = None  # importing either now raises ImportError
sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
from test_models import our_embedding
torch.save(our_embedding({hydra_cp!r}, "question")[0], sys.argv[1])
assert sys.modules["omegaconf"] is None and sys.modules["hydra"] is None
"""
    out = os.path.join(os.path.dirname(hydra_cp), "q.pt")
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", code, out], check=True, env=env, cwd=ROOT, timeout=120)
    bert_dir, weights = towers["question"]
    want = reference(bert_dir, weights, batch_for(AutoTokenizer.from_pretrained(bert_dir), "question"))
    assert torch.allclose(torch.load(out), want, atol=1e-6, rtol=0)


def test_pre_hydra_legacy_format_no_pooler_no_position_ids(tmp_path):
    """Flat encoder_params without pretrained_model_cfg, old torch format: the architecture comes from the
    weights (heads = hidden / 64, as in every Google BERT), the tokenizer from the caller."""
    bert_dir = make_tiny_bert(
        str(tmp_path / "b"),
        seed=3,
        hidden_size=128,
        num_attention_heads=2,
        intermediate_size=96,
        num_hidden_layers=3,
    )
    w = {
        r: tower_weights(bert_dir, s, pooler=False, position_ids=False)
        for r, s in (("question", 3), ("passage", 4))
    }
    cp = dpr_checkpoint(tmp_path / "old.cp", w, {"do_lower_case": True, "sequence_length": 256}, legacy=True)
    for role in ("question", "passage"):
        got, model, _ = our_embedding(cp, role, tokenizer=bert_dir)
        assert model.config.num_hidden_layers == 3 and model.config.num_attention_heads == 2
        want = reference(bert_dir, w[role], batch_for(AutoTokenizer.from_pretrained(bert_dir), role))
        assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_raw_checkpoint_with_projection(tmp_path):
    bert_dir = make_tiny_bert(str(tmp_path / "b"), seed=5)
    w = {r: tower_weights(bert_dir, s, proj_dim=8) for r, s in (("question", 5), ("passage", 6))}
    cp = dpr_checkpoint(tmp_path / "proj.cp", w, hydra_encoder_params(bert_dir, projection_dim=8))
    for role, cls in (("question", DPRQuestionEncoder), ("passage", DPRContextEncoder)):
        got, model, pooling = our_embedding(cp, role)
        assert type(model) is cls and pooling == "pooler_output" and got.shape[1] == 8
        proj = (w[role]["encode_proj.weight"], w[role]["encode_proj.bias"])
        want = reference(bert_dir, w[role], batch_for(AutoTokenizer.from_pretrained(bert_dir), role), proj)
        assert torch.allclose(got, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# converter


@pytest.mark.parametrize("hf_dpr", [False, True])
def test_converter_output_gives_the_same_embeddings(hydra_cp, towers, tmp_path, hf_dpr):
    out = str(tmp_path / "converted")
    convert(["--checkpoint", hydra_cp, "--output_dir", out] + (["--hf_dpr"] if hf_dpr else []))
    assert sorted(os.listdir(out)) == ["doc_encoder", "query_encoder"]
    for role, name, dpr_cls in (
        ("question", "query_encoder", DPRQuestionEncoder),
        ("passage", "doc_encoder", DPRContextEncoder),
    ):
        bert_dir, weights = towers[role]
        path = os.path.join(out, name)
        want = reference(bert_dir, weights, batch_for(AutoTokenizer.from_pretrained(bert_dir), role))
        batch = batch_for(AutoTokenizer.from_pretrained(path), role)
        with torch.no_grad():
            if hf_dpr:  # transformers' own DPR class on the converted dir
                direct = dpr_cls.from_pretrained(path).eval()(**batch).pooler_output
            else:
                bert = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
                direct = bert(**batch).last_hidden_state[:, 0]
        assert torch.allclose(direct, want, atol=1e-6, rtol=0)
        got, _, pooling = our_embedding(path, role)
        assert pooling == ("pooler_output" if hf_dpr else "cls")
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
        assert json.load(open(os.path.join(path, "nanodpr.json")))["role"] == role
    with pytest.raises(EncoderError, match="passage encoder, but a question encoder"):
        load_encoder(os.path.join(out, "doc_encoder"), "question")


def test_converter_reports_errors_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.cp"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as e:
        convert(["--checkpoint", str(bad), "--output_dir", str(tmp_path / "out")])
    assert str(e.value.code).startswith("error: ") and str(bad) in str(e.value.code)
    assert not os.path.exists(tmp_path / "out" / "query_encoder")


# ---------------------------------------------------------------------------------------------
# Hugging Face DPR encoders


@pytest.mark.parametrize("projection_dim", [0, 8])
def test_hf_dpr_encoders_give_their_own_pooler_output(tmp_path, projection_dim):
    bert_dir = make_tiny_bert(str(tmp_path / "b"))
    tok = AutoTokenizer.from_pretrained(bert_dir)
    cfg = BertConfig.from_pretrained(bert_dir).to_dict()
    sizes = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
    config = DPRConfig(**{k: cfg[k] for k in sizes}, projection_dim=projection_dim)
    dirs = {}
    for role, cls in (("question", DPRQuestionEncoder), ("passage", DPRContextEncoder)):
        torch.manual_seed(7)
        model = cls(config).eval()
        dirs[role] = str(tmp_path / role)
        model.save_pretrained(dirs[role])
        tok.save_pretrained(dirs[role])
        with torch.no_grad():
            want = model(**batch_for(tok, role)).pooler_output
        got, loaded, pooling = our_embedding(dirs[role], role)
        assert type(loaded) is cls and pooling == "pooler_output"
        assert got.shape[1] == (projection_dim or cfg["hidden_size"])
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
    with pytest.raises(
        EncoderError, match="DPRContextEncoder, but the question role needs a DPRQuestionEncoder"
    ):
        load_encoder(dirs["passage"], "question")
    with pytest.raises(
        EncoderError, match="DPRQuestionEncoder, but the passage role needs a DPRContextEncoder"
    ):
        load_encoder(dirs["question"], "passage")


def test_our_dir_and_plain_bert_dir(tmp_path):
    ours = make_tiny_bert(str(tmp_path / "doc_encoder"), seed=8, role="passage")
    got, model, pooling = our_embedding(ours, "passage")
    weights = BertModel.from_pretrained(ours, add_pooling_layer=False).state_dict()
    assert pooling == "cls"
    assert torch.allclose(
        got,
        reference(ours, weights, batch_for(AutoTokenizer.from_pretrained(ours), "passage")),
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(EncoderError, match="is a passage encoder, but a question encoder is needed"):
        load_encoder(ours, "question")
    plain = make_tiny_bert(str(tmp_path / "plain"), seed=9)  # no role file: a generic init, either role
    assert load_encoder(plain, "question")[2] == load_encoder(plain, "passage")[2] == "cls"


# ---------------------------------------------------------------------------------------------
# bad input


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused(tmp_path, towers):
    marker = tmp_path / "pwned"
    params = {"do_lower_case": True, "encoder": {"projection_dim": _Exploit(marker)}}
    cp = dpr_checkpoint(tmp_path / "evil.cp", {r: w for r, (_, w) in towers.items()}, params)
    with pytest.raises(EncoderError, match=r"evil\.cp: refusing to load '(posix|os|nt)\.system'"):
        load_encoder(cp, "question", tokenizer=towers["question"][0])
    assert not marker.exists()


def test_corrupt_and_foreign_files(tmp_path, towers):
    bert_dir, weights = towers["question"]
    good = dpr_checkpoint(tmp_path / "good.cp", {r: w for r, (_, w) in towers.items()}, {})
    truncated = tmp_path / "truncated.cp"
    truncated.write_bytes(open(good, "rb").read()[: os.path.getsize(good) // 2])
    garbage = tmp_path / "garbage.cp"
    garbage.write_bytes(os.urandom(4096))
    # a pickle FRAME opcode whose 8-byte length says 2^62 bytes: a reader that trusts it allocates 4 EiB
    huge_frame = tmp_path / "huge_frame.cp"
    huge_frame.write_bytes(b"\x80\x04\x95" + (1 << 62).to_bytes(8, "little") + bytes(64))
    for path in (truncated, garbage, huge_frame):
        with pytest.raises(EncoderError, match=f"{path.name}: not a readable torch checkpoint"):
            load_encoder(str(path), "question", tokenizer=bert_dir)
    state_dict_only = tmp_path / "pytorch_model.bin"
    torch.save(weights, state_dict_only)
    with pytest.raises(
        EncoderError, match="pytorch_model.bin: not a DPR training checkpoint: no 'model_dict'"
    ):
        load_encoder(str(state_dict_only), "question", tokenizer=bert_dir)
    with pytest.raises(EncoderError, match="not a model dir, hub name or DPR checkpoint file"):
        load_encoder(str(tmp_path / "no_such_dir"), "question")
    os.remove(os.path.join(bert_dir, "model.safetensors"))
    with pytest.raises(EncoderError, match="cannot load BertModel weights|cannot load .* weights"):
        load_encoder(bert_dir, "question")


def test_missing_weights_are_named(tmp_path, towers):
    bert_dir = towers["question"][0]
    w = {r: dict(wt) for r, (_, wt) in towers.items()}
    del w["question"]["encoder.layer.1.output.dense.weight"]
    cp = dpr_checkpoint(tmp_path / "missing.cp", w, {})
    missing = r"missing\.cp: .*missing \['question_model\.encoder\.layer\.1\.output\.dense\.weight'\]"
    with pytest.raises(EncoderError, match=missing):
        load_encoder(cp, "question", tokenizer=bert_dir)
    assert load_encoder(cp, "passage", tokenizer=bert_dir)[2] == "cls"  # the other tower is intact
    only_q = dpr_checkpoint(tmp_path / "only_q.cp", {"question": towers["question"][1]}, {})
    with pytest.raises(EncoderError, match=r"no 'ctx_model\.\*' weights for the passage encoder"):
        load_encoder(only_q, "passage", tokenizer=bert_dir)
