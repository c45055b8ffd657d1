"""One BERT tower as DPR uses it: load and save, tokenize, embed, encode many texts in length order.

Loading accepts our checkpoint dirs (query_encoder/, doc_encoder/), any HF BERT dir or hub name,
Hugging Face DPR encoders (facebook/dpr-*, any config with model_type "dpr"), and raw DPR
training checkpoints (*.cp, see utils/dpr_checkpoint.py).
"""

import contextlib
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from utils.dpr_checkpoint import load_dpr_checkpoint_encoder
from utils.errors import EncoderError
from utils.towers import DPR_CLASSES, ROLES, unused_by_dpr

ROLE_FILE = "nanodpr.json"  # next to our checkpoints: which tower, pooling, similarity, training run and step
NORM = "+normalize"  # pooling suffix of similarity cos: unit vectors, so inner product ranks by cosine


@contextlib.contextmanager
def quiet_transformers():
    """transformers prints a load report (the unused pooler shows up as missing) and progress bars on
    every load/save; we check the loaded keys ourselves, so keep only its errors."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@quiet_transformers()
def load_encoder(path, role, tokenizer=None, pooler=False, pooling=None, similarity=None):
    """(model, tokenizer, pooling) for `role` ('question' or 'passage'). pooling (embed's): "cls" (DPR's),
    "mean" or "pooler_output" (HF DPR models), "+normalize" for similarity cos; the model's own (our
    nanodpr.json, a sentence-transformers dir's modules, else cls and dot) unless `pooling`/`similarity` say.
    `tokenizer` (a name or dir) overrides the model's own. `pooler`: keep a BERT dir's pooler layer (random if
    the dir has none), unused by DPR; training saves it so its dirs are complete BertModels."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if os.path.isfile(path):
        model, tokenizer, own = load_dpr_checkpoint_encoder(path, role, tokenizer)
        return model, tokenizer, _pooling(path, own, "dot", pooling, similarity)
    saved = _read_json(os.path.join(path, ROLE_FILE))
    if saved is not None and saved.get("role") != role:
        raise EncoderError(f"{path} is a {saved.get('role')} encoder, but a {role} encoder is needed")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise EncoderError(f"{path}: not a model dir, hub name or DPR checkpoint file ({e})") from None
    if config.model_type == "dpr":
        arch, wanted = (config.architectures or [""])[0], DPR_CLASSES[role]
        if arch != wanted.__name__:
            raise EncoderError(
                f"{path} is a {arch or 'DPR model of unknown kind'}, "
                f"but the {role} role needs a {wanted.__name__}"
            )
        model, own = _from_pretrained(wanted, path, attn_implementation="sdpa"), ("pooler_output", "dot")
    else:
        model = _from_pretrained(AutoModel, path, add_pooling_layer=pooler, attn_implementation="sdpa")
        own = (
            _sentence_transformers(path)
            if saved is None
            else (saved.get("pooling", "cls"), saved.get("similarity", "dot"))
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or path)
    except (OSError, ValueError) as e:
        raise EncoderError(f"{path}: cannot load tokenizer {tokenizer or path!r} ({e})") from None
    return model.eval(), tokenizer, _pooling(path, *own, pooling, similarity)


def _read_json(path):
    """The JSON object in `path`, None when there is no such file."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise EncoderError(f"{path}: not valid JSON ({e})") from None


def _sentence_transformers(path):
    """(pooling, similarity) of a sentence-transformers dir (modules.json: its Pooling module's mode, cos when
    a Normalize module follows): the model is used as it was trained. Any other dir: DPR's (cls, dot)."""
    listed = _read_json(os.path.join(path, "modules.json")) or []
    modules = {m.get("type", "").rsplit(".", 1)[-1]: m for m in listed}
    if "Pooling" not in modules:
        return "cls", "dot"
    where = os.path.join(path, modules["Pooling"].get("path", ""), "config.json")
    modes = [k for k, v in (_read_json(where) or {}).items() if k.startswith("pooling_mode_") and v]
    kinds = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
    if len(modes) != 1 or modes[0] not in kinds:
        raise EncoderError(f"{where}: pooling modes {modes}; one of cls_token and mean_tokens is supported")
    return kinds[modes[0]], "cos" if "Normalize" in modules else "dot"


def _pooling(path, kind, similarity, kind_override, similarity_override):
    """embed()'s pooling value: the model's own (kind, similarity) unless overridden (None, "auto": not)."""
    if kind_override not in (None, "auto") and kind == "pooler_output":
        raise EncoderError(f"{path} is a Hugging Face DPR model: it pools pooler_output, not {kind_override}")
    kind = kind if kind_override in (None, "auto") else kind_override
    similarity = similarity if similarity_override in (None, "auto") else similarity_override
    return kind + (NORM if similarity == "cos" else "")


def _from_pretrained(cls, path, **kwargs):
    """from_pretrained, but weights the encoder needs and the files lack are an error, not random init."""
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise EncoderError(f"{path}: cannot load {cls.__name__} weights ({type(e).__name__}: {e})") from None
    missing = sorted(k for k in info["missing_keys"] if not unused_by_dpr(k))
    if missing or info.get("mismatched_keys"):
        raise EncoderError(
            f"{path}: weights do not match the {type(model).__name__} config: missing {missing[:5]}, "
            f"wrong shape {sorted(info.get('mismatched_keys') or [])[:5]}"
        )
    return model


def encoder_identity(model, path):
    """Which encoder this is, by content: {digest, run, step}. digest: sha256 over the config (less where it
    was loaded from) and every weight in key order: a model retrained in the same dir differs, one model is
    the same from a dir, a hub name or a .cp file. run, step: the training run and step that saved it (our
    checkpoints' nanodpr.json), else None. About 2 s for bert-base on a 2-core CPU."""
    volatile = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
    config = {k: v for k, v in model.config.to_dict().items() if k not in volatile}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {t.dtype} {t.numel()}\n".encode())
        h.update(t.view(torch.uint8).numpy())
    origin = (_read_json(os.path.join(path, ROLE_FILE)) if os.path.isdir(path) else None) or {}
    return {"digest": h.hexdigest(), "run": origin.get("run"), "step": origin.get("step")}


def add_pooling_args(parser):
    """--pooling and --similarity for the scripts that encode: override what the encoder's dir says."""
    own = "default: the encoder's own (nanodpr.json, a sentence-transformers dir's modules; else DPR's"
    parser.add_argument("--pooling", choices=["cls", "mean"], help=f"{own} cls)")
    parser.add_argument("--similarity", choices=["dot", "cos"], help=f"{own} dot); cos: unit vectors")


def tokenize_passages(tokenizer, titles, texts, max_length):
    """Token ids as DPR's BertTensorizer builds them: `[CLS] title [SEP] text [SEP]`, or
    `[CLS] text [SEP]` when the title is empty; text stripped; longest-first truncation.
    Unpadded: batches are padded per batch (pad_batch)."""
    texts = [t.strip() for t in texts]
    ids = [None] * len(texts)
    for titled in (True, False):
        rows = [i for i, t in enumerate(titles) if bool(t) == titled]
        if not rows:  # the tokenizer fails on an empty list
            continue
        args = (
            ([titles[i] for i in rows], [texts[i] for i in rows]) if titled else ([texts[i] for i in rows],)
        )
        enc = tokenizer(
            *args,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        for i, x in zip(rows, enc["input_ids"]):
            ids[i] = x
    return ids


def tokenize_questions(tokenizer, questions, max_length):
    """Token ids `[CLS] question [SEP]`, unpadded, of questions normalized as read
    (formats.normalize_question)."""
    return tokenizer(questions, truncation=True, max_length=max_length)["input_ids"]


def pad_batch(ids, pad_token_id, multiple=1):
    """Pad to the longest sequence in the batch, rounded up to a multiple of `multiple` (tensor-core
    friendly shapes, fewer distinct ones). token_type_ids are all zero: DPR trains and encodes that way
    (HF tokenizers would give the second segment 1s)."""
    rows = [torch.tensor(x, dtype=torch.long) for x in ids]
    input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id)
    attention_mask = pad_sequence([torch.ones_like(x) for x in rows], batch_first=True)
    if input_ids.shape[1] % multiple:
        extra = (0, -input_ids.shape[1] % multiple)
        input_ids, attention_mask = F.pad(input_ids, extra, value=pad_token_id), F.pad(attention_mask, extra)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }


def embed(model, pooling, batch):
    """Embeddings for a padded batch (pad_batch): CLS of the last layer, the mean over its real tokens
    (padding excluded, as sentence-transformers), or DPR's pooler_output; unit length when pooling ends in
    "+normalize"."""
    out, kind = model(**batch), pooling.removesuffix(NORM)
    x = out.pooler_output if kind == "pooler_output" else out.last_hidden_state[:, 0]
    if kind == "mean":  # no attention_mask: the batch has no padding
        h = out.last_hidden_state
        mask = batch.get("attention_mask", torch.ones_like(h[..., 0]))[..., None].to(h.dtype)
        x = (h * mask).sum(1) / mask.sum(1)
    return F.normalize(x, dim=-1) if pooling.endswith(NORM) else x


@quiet_transformers()
def save_encoder(model, tokenizer, out_dir, role, pooling="cls", **extra):
    """A plain HF dir (BertModel.from_pretrained works on it;
    DPRQuestionEncoder/DPRContextEncoder.from_pretrained for HF DPR models) plus nanodpr.json naming role,
    pooling and similarity (`pooling` as load_encoder's)."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    kind = "pooler_output" if model.config.model_type == "dpr" else pooling.removesuffix(NORM)
    similarity = "cos" if pooling.endswith(NORM) else "dot"
    with open(os.path.join(out_dir, ROLE_FILE), "w") as f:
        json.dump({"role": role, "pooling": kind, "similarity": similarity, **extra}, f, indent=1)


def length_batches(lengths, batch_size=None, max_tokens=None, exact_length=False):
    """Row indices per batch, longest first (an out-of-memory batch shows at once).

    Neighbours in length order share a batch, so padding is nearly zero. A batch holds batch_size
    rows, or as many as fit max_tokens counting padding (at least one). exact_length: a batch never
    mixes lengths (no padding, no attention mask), at the price of smaller batches in the tails.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    desc = -lengths[order]
    batches, i = [], 0
    while i < len(order):
        n = batch_size or max(1, max_tokens // int(lengths[order[i]]))
        if exact_length:
            n = min(n, int(np.searchsorted(desc, desc[i], side="right")) - i)
        batches.append(order[i : i + n])
        i += n
    return batches


def padded_batches(
    tokens, pad_token_id, batch_size=None, max_tokens=None, exact_length=False, always_mask=False, multiple=1
):
    """[(row indices, padded batch)] for token id lists, batched by length_batches, each padded to a multiple
    of `multiple` (pad_batch; fewer distinct shapes).

    A batch without padding goes without attention_mask unless always_mask: transformers would drop an
    all-ones mask anyway (same result), but only after checking it on the device, which makes the host wait.
    """
    lengths = np.array([len(t) for t in tokens])
    out = []
    for b in length_batches(lengths, batch_size, max_tokens, exact_length):
        batch = pad_batch([tokens[i] for i in b], pad_token_id, multiple)
        if not always_mask and lengths[b].min() == batch["input_ids"].shape[1]:
            del batch["attention_mask"]
        out.append((torch.from_numpy(b), batch))
    return out


def autocast_dtype(device):
    """The half precision a device computes in: bf16 on GPUs that have it, else fp16; None (fp32) on CPU,
    where most chips emulate half precision slowly."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def embedding_dim(model):
    """Size of the vectors `embed` returns: a DPR model's projection when it has one, else the hidden size."""
    return getattr(model.config, "projection_dim", 0) or model.config.hidden_size


@torch.inference_mode()
def encode_batches(model, pooling, batches, n, device, dtype=None, host=True):
    """(n, dim) float32 embeddings of padded_batches' output, row r where it was before sorting: numpy, or a
    tensor left on the device (host=False) for the caller to time and copy. Every text nanoDPR encodes
    outside a training step goes through here: passages, questions, validation.

    dtype: autocast to it (autocast_dtype); None runs the model in its weights' dtype (bf16 weights keep the
    residual stream in bf16 too: half the memory traffic of autocast's fp32 one). Results stay on the device
    until all batches are done, so padding the next batch on the CPU overlaps with the GPU's work.
    """
    out = torch.empty(n, embedding_dim(model), device=device)
    for rows, batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = embed(model, pooling, batch).float()
        out[rows.to(device, non_blocking=True)] = emb  # a blocking copy would wait for this batch's forward
    return out.cpu().numpy() if host else out


def encode_questions(
    model,
    pooling,
    tokenizer,
    questions,
    batch_size,
    device,
    dtype=None,
    max_length=256,
    host=True,
    progress=False,
):
    """(len(questions), dim) float32 question vectors (encode_batches). The batches are cut from the shortest
    question up and run longest first: the batch composition decides the last float digits of the scores, so
    it stays fixed (results files compare byte for byte)."""
    tokens = tokenize_questions(tokenizer, questions, max_length) if questions else []  # it fails on []
    order = np.argsort([len(x) for x in tokens], kind="stable")
    cuts = (order[i : i + batch_size] for i in range(0, len(order), batch_size))
    batches = [
        (torch.from_numpy(rows), pad_batch([tokens[i] for i in rows], tokenizer.pad_token_id))
        for rows in cuts
    ]
    batches = tqdm(batches[::-1], desc="encode questions", disable=not progress)
    return encode_batches(model, pooling, batches, len(tokens), device, dtype, host)
