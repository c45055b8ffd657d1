"""Shared fixtures: tiny random-init BERT encoders with a vocab written here, small DPR-format files."""

import csv
import json
import os
import socket
import string
import sys

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MINI_NQ = os.path.join(ROOT, "..", "shared", "mini_nq")

from utils.embeddings import shard_paths, write_meta  # noqa: E402
from utils.models import save_encoder  # noqa: E402


def free_port():
    """For torchrun's --master_port: a fixed port collides with another torchrun or one in TIME_WAIT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def write_vocab(path):
    """Character-level WordPiece vocab: every lower-case word tokenizes, no download needed."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["the", "of", "and", "is", "who", "what", "capital", "river", "city", "king"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def make_tiny_bert(out_dir, seed=0, role=None, **config):
    """A 2-layer BERT saved as a plain HF dir (with our role file when `role` is given)."""
    os.makedirs(out_dir, exist_ok=True)
    write_vocab(os.path.join(out_dir, "vocab.txt"))
    # from_pretrained, not BertTokenizerFast(vocab_file=...): transformers 5 ignores vocab_file and keeps 5
    # tokens
    tokenizer = BertTokenizerFast.from_pretrained(out_dir, do_lower_case=True)
    cfg = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    cfg.update(config)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**cfg), add_pooling_layer=False)
    if role:
        save_encoder(model, tokenizer, out_dir, role)
    else:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture
def tiny_bert(tmp_path):
    return make_tiny_bert(str(tmp_path / "tiny_bert"))


def write_passages_tsv(path, rows):
    """rows: [(id, text, title)] written as DPR does (text always quoted)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("id\ttext\ttitle\n")
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        for pid, text, title in rows:
            f.write(f'{pid}\t"{text.replace(chr(34), chr(34) * 2)}"\t')
            w.writerow([title])
    return path


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return path


def mini_nq_or_skip():
    if not os.path.isdir(MINI_NQ):
        pytest.skip(f"real-data check: {MINI_NQ} is absent (mini-NQ is not shipped with the repo)")
    return MINI_NQ


def write_embedding_dir(out_dir, ids, emb, tsv, num_shards=2, encoder=None):
    """An embedding dir in utils/embeddings.py's layout, written directly (independent of doc2embedding.py).
    encoder: the passage encoder it records (utils.models.encoder_identity)."""
    os.makedirs(out_dir, exist_ok=True)
    counts = [len(part) for part in np.array_split(np.arange(len(ids)), num_shards)]
    start = 0
    for rank, n in enumerate(counts):
        emb_path, ids_path = shard_paths(out_dir, rank)
        np.save(emb_path, emb[start : start + n])
        np.save(ids_path, np.asarray(ids[start : start + n], dtype=np.int64))
        start += n
    write_meta(
        out_dir,
        {
            "model": "tiny",
            "role": "passage",
            "pooling": "cls",
            "dim": emb.shape[1],
            "dtype": str(emb.dtype),
            "max_length": 256,
            "num_passages": len(ids),
            "num_shards": num_shards,
            "shard_counts": counts,
            "source": {"path": tsv, "size": os.path.getsize(tsv)},
            "encoder": encoder,
        },
    )
    return out_dir
