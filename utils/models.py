"""One encoder loader for all three scripts.

Accepted: our checkpoint dirs (query_encoder/, doc_encoder/), any HF BERT dir or hub name,
Hugging Face DPR encoders (facebook/dpr-*, any config with model_type "dpr"), and raw DPR
training checkpoints (*.cp, see utils/dpr_checkpoint.py).
"""
import json
import os

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder

ROLES = ("question", "passage")
ROLE_FILE = "nanodpr.json"  # written next to our checkpoints: which tower and how to pool
_DPR_CLASSES = {"question": DPRQuestionEncoder, "passage": DPRContextEncoder}


class EncoderError(ValueError):
    """The model path is not an encoder of the requested role; the message says why."""


def load_encoder(path, role, tokenizer=None):
    """Return (model, tokenizer, pooling) for `role` ('question' or 'passage').

    pooling is "cls" (last hidden state at [CLS], DPR's choice) or "pooler_output" (HF DPR
    models: CLS passed through their optional projection, so also right when projection_dim > 0).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if os.path.isfile(path):
        from utils.dpr_checkpoint import load_dpr_checkpoint_encoder

        return load_dpr_checkpoint_encoder(path, role, tokenizer)

    saved = os.path.join(path, ROLE_FILE)
    if os.path.isfile(saved):
        with open(saved) as f:
            meta = json.load(f)
        if meta.get("role") != role:
            raise EncoderError(f"{path} is a {meta.get('role')} encoder, but a {role} encoder is needed")
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise EncoderError(f"{path}: not a model dir, hub name or DPR checkpoint file ({e})") from None

    tokenizer = AutoTokenizer.from_pretrained(tokenizer or path)
    if config.model_type == "dpr":
        arch = (config.architectures or [""])[0]
        wanted = _DPR_CLASSES[role]
        if arch != wanted.__name__:
            raise EncoderError(f"{path} is a {arch or 'DPR model of unknown kind'}, but the {role} role needs a {wanted.__name__}")
        model = wanted.from_pretrained(path, attn_implementation="sdpa")
        return model.eval(), tokenizer, "pooler_output"
    model = AutoModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="sdpa")
    return model.eval(), tokenizer, "cls"


def embed(model, pooling, batch):
    """Embeddings for a padded batch (utils.data.pad_batch): CLS of the last layer, or DPR's pooler_output."""
    out = model(**batch)
    return out.pooler_output if pooling == "pooler_output" else out.last_hidden_state[:, 0]


def save_encoder(model, tokenizer, out_dir, role, **extra):
    """A plain HF dir (BertModel.from_pretrained works on it) plus nanodpr.json naming role and pooling."""
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, ROLE_FILE), "w") as f:
        json.dump({"role": role, "pooling": "cls", **extra}, f, indent=1)


def device_dtype(device):
    """Autocast dtype for inference: bf16 where the GPU has it, else fp16 on GPU, fp32 on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
