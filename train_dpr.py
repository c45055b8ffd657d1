"""Train DPR's bi-encoder (Karpukhin et al. 2020): a question BERT and a passage BERT, [CLS] vectors,
dot-product scores, NLL of each question's positive passage against every passage in the global batch.

    accelerate launch train_dpr.py --config_file config/train_dpr_nq.yaml [--key value ...]
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_dpr.py ...      # 2 processes on CPU

Every config key can be overridden on the command line (`--lr 1e-5`, value read as YAML).
Outputs in output_dir: best/ and step-N/ ({query_encoder,doc_encoder}, plain HF dirs), last_state/
(everything `--resume_from_checkpoint last` needs to continue exactly), train_log.jsonl.

Beyond DPR's train_dense_encoder.py: gradient cache (Gao et al. 2021) so one GPU trains DPR's
8-GPU batch; bf16/fp16 autocast, SDPA attention and per-batch padding for speed; exact resume
(data order and negatives are functions of seed, epoch and position, RNG states are saved).
"""
import contextlib
import json
import os
import random
import re
import shutil
import socket
import sys
import time
from array import array

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run in DataLoader workers instead

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn

from utils.data import iter_biencoder
from utils.errors import ConfigError, DataError, EncoderError
from utils.models import embed, load_encoder, pad_batch, save_encoder, tokenize_passages, tokenize_questions

# ---------------------------------------------------------------------------------------------
# Config: defaults are DPR's NQ recipe (sources in config/train_dpr_nq.yaml); a YAML file and then
# `--key value` arguments override them.

DEFAULTS = dict(
    train_file=None,  # biencoder JSON, or a list of them (DPR's multi-set training: a batch never mixes files)
    dev_file=None,  # biencoder JSON for validation (average rank + NLL); none: no validation, no best/
    base_model="bert-base-uncased",  # both towers start from it (any form utils.models.load_encoder reads)
    output_dir=None,
    train_batch_size=128,  # questions per optimizer step, over all processes and accumulation steps
    gradient_accumulation_steps=1,  # DPR's: in-batch negatives only within each micro-batch
    max_train_epochs=40,
    max_train_steps=None,  # optional cap; the learning-rate schedule then ends there
    lr=2e-5,
    adam_eps=1e-8,
    weight_decay=0.0,
    warmup_steps=1237,
    max_grad_norm=2.0,
    dropout=0.1,
    max_length=256,  # tokens, questions and passages
    num_hard_negatives=1,
    num_other_negatives=0,
    mixed_precision="auto",  # auto: bf16 on GPUs that have it, else fp16 (loss scaling); fp32 on CPU
    grad_cache_chunk_size=None,  # questions per re-encoded chunk (gradient cache); none: plain backward
    eval_steps=None,  # validate + checkpoint every N steps; none: after every epoch (DPR)
    val_av_rank_start_epoch=30,  # average-rank validation from this epoch on, NLL only before (DPR)
    val_av_rank_hard_neg=30,
    val_av_rank_other_neg=30,
    eval_batch_size=256,  # sequences per forward pass when encoding the dev set
    save_total_limit=2,  # step-N checkpoints kept
    log_steps=10,
    num_workers=4,  # DataLoader workers (tokenization)
    report_to="none",  # none | tensorboard | wandb
    seed=12345,
    resume_from_checkpoint=None,  # "last" (output_dir/last_state) or a last_state dir
)
FLOAT_KEYS = {"lr", "adam_eps", "weight_decay", "max_grad_norm", "dropout"}
NULLABLE = {"dev_file", "max_train_steps", "grad_cache_chunk_size", "eval_steps", "resume_from_checkpoint"}
CHOICES = {"mixed_precision": ("auto", "no", "bf16", "fp16"), "report_to": ("none", "tensorboard", "wandb")}
MIN_VALUE = {"train_batch_size": 1, "gradient_accumulation_steps": 1, "max_train_epochs": 0, "max_train_steps": 0,
             "warmup_steps": 0, "max_length": 4, "num_hard_negatives": 0, "num_other_negatives": 0,
             "grad_cache_chunk_size": 1, "eval_steps": 1, "val_av_rank_start_epoch": 0, "val_av_rank_hard_neg": 0,
             "val_av_rank_other_neg": 0, "eval_batch_size": 1, "save_total_limit": 0, "log_steps": 1, "num_workers": 0,
             "lr": 0.0, "adam_eps": 0.0, "weight_decay": 0.0, "max_grad_norm": 0.0, "dropout": 0.0}


def _typed(key, value, where):
    """Check and convert one value to its key's type (PyYAML reads 2e-5 as a string: accept it)."""
    if key not in DEFAULTS:
        raise ConfigError(f"{where}: unknown config key {key!r}; known keys: {', '.join(DEFAULTS)}")
    if key == "mixed_precision" and value is False:  # YAML 1.1 reads a bare `no` as false
        value = "no"
    if value is None or (key == "report_to" and value is False):
        if key == "report_to":
            return "none"
        if key in NULLABLE or key in ("train_file", "output_dir"):
            return None
        raise ConfigError(f"{where}: {key} needs a value")
    if key == "train_file":
        files = [value] if isinstance(value, str) else value
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise ConfigError(f"{where}: train_file must be a path or a list of paths, got {value!r}")
        value = value if isinstance(value, str) else list(files)
    elif key in FLOAT_KEYS:
        try:
            assert not isinstance(value, bool)
            value = float(value)
        except (AssertionError, ValueError, TypeError):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
    elif isinstance(DEFAULTS[key], int) or key in ("max_train_steps", "grad_cache_chunk_size", "eval_steps"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in MIN_VALUE and value < MIN_VALUE[key]:
        raise ConfigError(f"{where}: {key} must be >= {MIN_VALUE[key]}, got {value!r}")
    return value


def parse_args(argv=None):
    """Config from `--config_file FILE` (YAML) and `--key value` / `--key=value` overrides, in that order."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        keys = "\n".join(f"  --{k} (default: {v})" for k, v in DEFAULTS.items())
        print(f"{__doc__.strip()}\n\nusage: train_dpr.py --config_file FILE [--key value ...]\n\nconfig keys:\n{keys}")
        sys.exit(0)
    pairs, i = [], 0
    while i < len(argv):
        if not argv[i].startswith("--") or len(argv[i]) == 2:
            raise ConfigError(f"unexpected argument {argv[i]!r}: arguments are --key value")
        key, eq, value = argv[i][2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    cfg = dict(DEFAULTS)
    for key, path in pairs:
        if key == "config_file":
            if not os.path.isfile(path):
                raise ConfigError(f"{path}: config file not found")
            with open(path, encoding="utf-8") as f:
                try:
                    values = yaml.safe_load(f) or {}
                except yaml.YAMLError as e:
                    raise ConfigError(f"{path}: invalid YAML ({e})") from None
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: expected a mapping of config keys")
            for k, v in values.items():
                cfg[k] = _typed(k, v, path)
    for key, value in pairs:
        if key != "config_file":
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            cfg[key] = _typed(key, parsed, f"--{key}")
    for key in ("train_file", "output_dir"):
        if cfg[key] is None:
            raise ConfigError(f"{key} is required (in the config file or as --{key})")
    return cfg


def check_inputs(cfg, world_size):
    """Everything that can be checked before a process group, a model or a GPU is touched."""
    for path in train_files(cfg) + ([cfg["dev_file"]] if cfg["dev_file"] else []):
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
    per_step = world_size * cfg["gradient_accumulation_steps"]
    if cfg["train_batch_size"] % per_step:
        raise ConfigError(f"train_batch_size {cfg['train_batch_size']} is not divisible by processes x "
                          f"gradient_accumulation_steps = {world_size} x {cfg['gradient_accumulation_steps']}")
    if cfg["report_to"] != "none":
        import importlib.util

        module = {"wandb": "wandb", "tensorboard": "torch.utils.tensorboard"}[cfg["report_to"]]
        need = "wandb" if cfg["report_to"] == "wandb" else "tensorboard"
        if importlib.util.find_spec(need) is None:
            raise ConfigError(f"report_to {cfg['report_to']}: the {need} package is not installed ({module})")
    if cfg["resume_from_checkpoint"] and not os.path.isdir(state_dir(cfg)):
        raise ConfigError(f"resume_from_checkpoint: {state_dir(cfg)} does not exist")


def train_files(cfg):
    return [cfg["train_file"]] if isinstance(cfg["train_file"], str) else cfg["train_file"]


def state_dir(cfg):
    path = cfg["resume_from_checkpoint"]
    if path == "last":
        path = os.path.join(cfg["output_dir"], "last_state")
        if not os.path.isdir(path) and os.path.isdir(path + ".old"):  # crashed between the two renames
            path += ".old"
    return path


# ---------------------------------------------------------------------------------------------
# Data: the biencoder JSON reduced to what training reads, as flat numpy arrays saved once under
# output_dir/data_cache/ and memory-mapped, so DataLoader workers and the processes of one machine
# share one copy instead of each holding Python objects (which fork copy-on-write would duplicate).


class BiencoderData:
    """Questions, each with its first positive passage and the negative pools kept (see build)."""

    ARRAYS = ("offsets", "question", "source", "positive", "hard_ptr", "hard", "other_ptr", "other",
              "passage_title", "passage_text")

    def __init__(self, cache_dir):
        with open(os.path.join(cache_dir, "meta.json")) as f:
            self.meta = json.load(f)
        for name in self.ARRAYS:
            setattr(self, name, np.load(os.path.join(cache_dir, name + ".npy"), mmap_mode="r"))
        blob = os.path.join(cache_dir, "strings.bin")
        self.blob = np.memmap(blob, dtype=np.uint8, mode="r") if os.path.getsize(blob) else np.zeros(0, np.uint8)

    def __len__(self):
        return len(self.question)

    def string(self, i):
        return bytes(self.blob[self.offsets[i]: self.offsets[i + 1]]).decode("utf-8")

    def passage(self, p):
        return self.string(self.passage_title[p]), self.string(self.passage_text[p])

    def passage_length(self, ids):
        """Bytes of title + text: a cheap proxy for token count, to batch similar lengths together."""
        t, x = self.passage_title[ids], self.passage_text[ids]
        return self.offsets[t + 1] - self.offsets[t] + self.offsets[x + 1] - self.offsets[x]

    def ctxs(self, i, num_hard, num_other, rng=None):
        """Passage ids for question i laid out as DPR's create_biencoder_input does:
        [positive, other negatives..., hard negatives...]. With `rng` both pools are shuffled first
        (training); a question without hard negatives takes other negatives instead (hard_neg_fallback)."""
        other = self.other[self.other_ptr[i]: self.other_ptr[i + 1]].tolist()
        hard = self.hard[self.hard_ptr[i]: self.hard_ptr[i + 1]].tolist()
        if rng is not None:
            rng.shuffle(other)
            rng.shuffle(hard)
        if not hard:
            hard = other[:num_hard]
        return [int(self.positive[i])] + other[:num_other] + hard[:num_hard]


def build_data(files, cache_dir, max_hard, max_other, other_only_without_hard):
    """Stream the JSON files once and write the arrays BiencoderData maps.

    Kept per question: the text, the first positive ctx (DPR nq: shuffle_positives false), up to
    `max_hard` hard negatives and `max_other` other negatives (None: all, for per-epoch shuffling).
    With other_only_without_hard, other negatives are kept only for questions with no hard negative
    (the fallback pool). Identical passages are stored once (keyed by a 64-bit hash of title and text)."""
    tmp = f"{cache_dir}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    a = {name: array("q") for name in BiencoderData.ARRAYS}
    a["offsets"].append(0)
    a["hard_ptr"].append(0)
    a["other_ptr"].append(0)
    passage_index, title_index, stats = {}, {}, {"skipped": 0}
    with open(os.path.join(tmp, "strings.bin"), "wb") as blob:

        def add_string(s):
            b = s.encode("utf-8")
            blob.write(b)
            a["offsets"].append(a["offsets"][-1] + len(b))
            return len(a["offsets"]) - 2

        def add_passage(ctx):
            key = hash((ctx["title"], ctx["text"]))
            if key not in passage_index:
                if ctx["title"] not in title_index:
                    title_index[ctx["title"]] = add_string(ctx["title"])
                passage_index[key] = len(a["passage_text"])
                a["passage_title"].append(title_index[ctx["title"]])
                a["passage_text"].append(add_string(ctx["text"]))
            return passage_index[key]

        for source, path in enumerate(files):
            for rec in iter_biencoder(path, stats):
                hard = rec["hard_negative_ctxs"][:max_hard]
                other = [] if other_only_without_hard and hard else rec["negative_ctxs"][:max_other]
                a["question"].append(add_string(rec["question"]))
                a["source"].append(source)
                a["positive"].append(add_passage(rec["positive_ctxs"][0]))
                a["hard"].extend(add_passage(c) for c in hard)
                a["other"].extend(add_passage(c) for c in other)
                a["hard_ptr"].append(len(a["hard"]))
                a["other_ptr"].append(len(a["other"]))
    for name, values in a.items():
        np.save(os.path.join(tmp, name + ".npy"), np.frombuffer(values, dtype=np.int64) if len(values) else np.zeros(0, np.int64))
    meta = {"files": files, "questions": len(a["question"]), "skipped": stats["skipped"],
            "passages": len(a["passage_text"])}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    return tmp


def load_data(files, cache_dir, keep, accelerator):
    """BiencoderData for `files`, building the cache on each machine's first process if it is stale."""
    files = [os.path.abspath(f) for f in files]
    key = {"files": [[f, os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files], "keep": keep}
    key_file = os.path.join(cache_dir, "key.json")
    with accelerator.local_main_process_first():
        if accelerator.is_local_main_process:
            fresh = False
            if os.path.isfile(key_file):
                with open(key_file) as f:
                    fresh = json.load(f) == key
            if not fresh:
                log(f"reading {', '.join(files)} into {cache_dir}")
                tmp = build_data(files, cache_dir, **keep)
                with open(os.path.join(tmp, "key.json"), "w") as f:
                    json.dump(key, f)
                shutil.rmtree(cache_dir, ignore_errors=True)
                try:
                    os.replace(tmp, cache_dir)
                except OSError:  # another machine sharing output_dir renamed its identical copy first
                    shutil.rmtree(tmp, ignore_errors=True)
        data = BiencoderData(cache_dir)
    return data


class TrainSet(torch.utils.data.Dataset):
    """Item (epoch, i): question i and its ctxs, negatives drawn with an RNG seeded by (seed, epoch, i),
    so the draw does not depend on workers, processes or where training was resumed."""

    def __init__(self, data, num_hard, num_other, seed):
        self.data, self.num_hard, self.num_other, self.seed = data, num_hard, num_other, seed

    def __getitem__(self, key):
        epoch, i = key
        rng = random.Random(f"{self.seed}/{epoch}/{i}")
        ctxs = self.data.ctxs(i, self.num_hard, self.num_other, rng)
        return self.data.string(self.data.question[i]), [self.data.passage(p) for p in ctxs]


def passage_groups(device):
    """Length groups per chunk's passages: on CPU a step is compute-bound and 4 groups save ~2x padded
    tokens on mini-NQ; on GPU it is bound by kernel launches and 4 groups halved throughput (H200)."""
    return 4 if device.type == "cpu" else 1


def make_chunk(q_ids, p_ids, q_pad, p_pad, groups):
    """Model input for some questions and their passages. Questions are padded to their longest;
    passages are sorted by length and padded in `groups` groups, `passage_order` restores their order."""
    order = np.argsort([len(x) for x in p_ids], kind="stable")
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.as_tensor(order)] = torch.arange(len(order))
    return {"question": pad_batch(q_ids, q_pad),
            "passages": [pad_batch([p_ids[k] for k in g], p_pad) for g in np.array_split(order, min(groups, len(order)))],
            "passage_order": restore}


class Collate:
    """Tokenize a micro-batch (in the DataLoader worker) into chunks (make_chunk) of `chunk_size`
    questions with their passages. `positives`: index of each question's positive passage in the
    micro-batch's passage list."""

    def __init__(self, q_tokenizer, p_tokenizer, max_length, chunk_size, groups):
        self.q_tok, self.p_tok, self.max_length, self.chunk_size = q_tokenizer, p_tokenizer, max_length, chunk_size
        self.groups = groups

    def __call__(self, items):
        chunks, positives, n = [], [], 0
        for s in range(0, len(items), self.chunk_size):
            group = items[s: s + self.chunk_size]
            q_ids = tokenize_questions(self.q_tok, [q for q, _ in group], self.max_length)
            ctxs = [c for _, cs in group for c in cs]
            p_ids = tokenize_passages(self.p_tok, [t for t, _ in ctxs], [x for _, x in ctxs], self.max_length)
            for _, cs in group:
                positives.append(n)
                n += len(cs)
            chunks.append(make_chunk(q_ids, p_ids, self.q_tok.pad_token_id, self.p_tok.pad_token_id, self.groups))
        return {"chunks": chunks, "positives": torch.tensor(positives)}


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return [to_device(v, device) for v in x]


def epoch_batches(data, epoch, seed, batch_size):
    """Global batches of one epoch, as arrays of question indices. Like DPR's MultiSetDataIterator:
    each file shuffled (seed + epoch), cut into full batches, then the batches of all files shuffled.
    The last incomplete batch of each file is dropped: every step sees exactly batch_size questions."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for source in range(len(data.meta["files"])):
        idx = np.flatnonzero(np.asarray(data.source) == source)
        idx = idx[rng.permutation(len(idx))]
        batches += [idx[s: s + batch_size] for s in range(0, len(idx) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if len(batches) > 1 else batches


def steps_per_epoch(data, batch_size):
    counts = np.bincount(np.asarray(data.source), minlength=len(data.meta["files"]))
    return int(sum(c // batch_size for c in counts))


# ---------------------------------------------------------------------------------------------
# Model, loss and the training step (bench/bench_train.py imports these)


class BiEncoder(nn.Module):
    """DPR's "single" bi-encoder: two separate BERTs; a text's vector is the last layer's [CLS] state."""

    def __init__(self, question_model, passage_model):
        super().__init__()
        self.question_model, self.passage_model = question_model, passage_model

    def forward(self, chunk):
        """(question vectors, passage vectors) for a make_chunk input."""
        p = torch.cat([embed(self.passage_model, "cls", group) for group in chunk["passages"]])
        return embed(self.question_model, "cls", chunk["question"]), p[chunk["passage_order"]]


def dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(x):
    """All processes' `x` concatenated in rank order (row counts may differ). The local slice stays
    in the autograd graph, so gradients flow to this process's own embeddings only."""
    rank, world = dist_info()
    if world == 1:
        return x, [x.shape[0]]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p[:s] for p, s in zip(parts, sizes)]
    parts[rank] = x
    return torch.cat(parts), sizes


def nll_loss(q, p, positives):
    """DPR's BiEncoderNllLoss: scores = q . p for every question-passage pair, mean over questions
    of -log softmax(scores)[positive]. Every passage of the other questions is an in-batch negative."""
    return F.cross_entropy(q @ p.T, positives)


def global_nll_loss(q, p, positives):
    """nll_loss over the global batch: every process computes the same value from all processes'
    embeddings (DPR's _calc_loss), differentiable in its own slice."""
    q_all, _ = gather_rows(q)
    p_all, p_sizes = gather_rows(p)
    pos_all, _ = gather_rows(positives)
    if len(p_sizes) > 1:
        q_counts = [len(positives)] * len(p_sizes)  # every process has the same number of questions
        offsets = torch.repeat_interleave(torch.tensor(np.cumsum([0] + p_sizes[:-1])), torch.tensor(q_counts))
        pos_all = pos_all + offsets.to(pos_all.device)
    return nll_loss(q_all, p_all, pos_all)


def rng_state(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state, device):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def forward_backward(model, batch, *, grad_cache, autocast, scaler, loss_weight, sync=True):
    """Forward and backward for one micro-batch (`batch` from Collate, on the device); returns the
    global loss. Gradients are accumulated into .grad, weighted by `loss_weight`.

    Plain: encode every chunk with the graph, loss, backward.
    Gradient cache (Gao et al. 2021): encode all chunks without a graph, take the loss gradient with
    respect to the embeddings, then re-encode each chunk with the graph and back-propagate that
    cached gradient through it. Each chunk's RNG state is replayed, so dropout draws the same masks
    both times and the gradients equal the plain step's; memory holds one chunk's activations.
    `sync=False` keeps DDP from all-reducing (all but the last micro-batch of a step)."""
    chunks, positives = batch["chunks"], batch["positives"]
    device = positives.device
    if not grad_cache:
        with no_sync(model, not sync):
            with autocast:
                out = [model(chunk) for chunk in chunks]
            loss = global_nll_loss(torch.cat([q for q, _ in out]).float(), torch.cat([p for _, p in out]).float(), positives)
            scaler.scale(loss * loss_weight).backward()
        return loss.detach()

    raw = model.module if hasattr(model, "module") else model
    states, q_out, p_out = [], [], []
    with torch.no_grad(), autocast:
        for chunk in chunks:
            states.append(rng_state(device))
            q, p = raw(chunk)
            q_out.append(q.float())
            p_out.append(p.float())
    q = torch.cat(q_out).requires_grad_()
    p = torch.cat(p_out).requires_grad_()
    loss = global_nll_loss(q, p, positives)
    loss.backward()
    q_grads = q.grad.split([len(x) for x in q_out])
    p_grads = p.grad.split([len(x) for x in p_out])
    after = rng_state(device)
    for j, chunk in enumerate(chunks):
        set_rng_state(states[j], device)
        with no_sync(model, not (sync and j == len(chunks) - 1)):
            with autocast:
                q, p = model(chunk)
            surrogate = (q.float() * q_grads[j]).sum() + (p.float() * p_grads[j]).sum()
            scaler.scale(surrogate * loss_weight).backward()
    set_rng_state(after, device)
    return loss.detach()


def no_sync(model, skip):
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def dpr_schedule(warmup_steps, total_steps):
    """DPR's get_schedule_linear: linear warm-up, then linear decay (floored at 1e-7)."""

    def lr_lambda(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(1e-7, (total_steps - step) / max(1, total_steps - warmup_steps))

    return lr_lambda


def load_tower(path, role, dropout):
    sub = os.path.join(path, {"question": "query_encoder", "passage": "doc_encoder"}[role])
    model, tokenizer, pooling = load_encoder(sub if os.path.isdir(sub) else path, role)  # one of our checkpoints?
    if pooling != "cls":
        raise EncoderError(f"{path}: training needs a BERT-style encoder pooled at [CLS] (a BertModel dir, one of our "
                           f"checkpoints or a DPR .cp file); this one loads as a Hugging Face DPR model ({pooling})")
    # DPR sets both dropout rates of the BERT config (hf_bert.yaml dropout: 0.1)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if hasattr(model.config, name):
            setattr(model.config, name, dropout)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return model.train(), tokenizer


# ---------------------------------------------------------------------------------------------
# Validation as DPR does it


class TextSet(torch.utils.data.Dataset):
    def __init__(self, data, ids, kind):
        self.data, self.ids, self.kind = data, ids, kind

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        i = int(self.ids[k])
        return self.data.string(self.data.question[i]) if self.kind == "question" else self.data.passage(i)


@torch.no_grad()
def encode(encoder, tokenizer, data, ids, kind, cfg, autocast, device):
    """[CLS] vectors (fp32) for questions or passages `ids`, encoded shortest first (less padding)."""
    if kind == "passage":
        order = np.argsort(data.passage_length(ids), kind="stable")
    else:
        q = data.question[ids]
        order = np.argsort(data.offsets[q + 1] - data.offsets[q], kind="stable")

    def collate(texts):
        if kind == "question":
            return pad_batch(tokenize_questions(tokenizer, texts, cfg["max_length"]), tokenizer.pad_token_id)
        return pad_batch(tokenize_passages(tokenizer, [t for t, _ in texts], [x for _, x in texts], cfg["max_length"]),
                         tokenizer.pad_token_id)

    loader = torch.utils.data.DataLoader(TextSet(data, np.asarray(ids)[order], kind), batch_size=cfg["eval_batch_size"],
                                         collate_fn=collate, num_workers=cfg["num_workers"],
                                         generator=torch.Generator().manual_seed(0))
    out = torch.empty((len(ids), encoder.config.hidden_size), device=device)
    n = 0
    for batch in loader:
        with autocast:
            vectors = embed(encoder, "cls", {k: v.to(device) for k, v in batch.items()}).float()
        out[order[n: n + len(vectors)]] = vectors
        n += len(vectors)
    return out


@torch.no_grad()
def validate(model, dev, tokenizers, cfg, epoch, autocast, device):
    """DPR's two validations on the dev set, both independent of the number of processes.

    NLL (validate_nll): dev questions in file order, in batches of train_batch_size, each question with
    the training layout of negatives (unshuffled), loss and accuracy over each batch's passages.
    Average rank (validate_average_rank, from val_av_rank_start_epoch): every question brings its
    positive + val_av_rank_other_neg other + val_av_rank_hard_neg hard negatives; the positive's
    0-based rank among ALL those passages pooled over the dev set, averaged. (DPR pools per process.)"""
    rank, world = dist_info()
    raw = model.module if hasattr(model, "module") else model
    raw.eval()
    n = len(dev)
    nll_lists = [dev.ctxs(i, cfg["num_hard_negatives"], cfg["num_other_negatives"]) for i in range(n)]
    with_rank = epoch >= cfg["val_av_rank_start_epoch"]
    rank_lists = [dev.ctxs(i, cfg["val_av_rank_hard_neg"], cfg["val_av_rank_other_neg"]) for i in range(n)] if with_rank else []
    unique = np.unique(np.concatenate(nll_lists + rank_lists))  # each distinct passage encoded once
    q_vec, _ = gather_rows(encode(raw.question_model, tokenizers[0], dev, np.array_split(np.arange(n), world)[rank],
                                  "question", cfg, autocast, device))
    p_vec, _ = gather_rows(encode(raw.passage_model, tokenizers[1], dev, np.array_split(unique, world)[rank],
                                  "passage", cfg, autocast, device))

    def as_rows(lists):  # passage ids -> rows of p_vec, concatenated; start of each question's list
        pool = np.searchsorted(unique, np.concatenate(lists))
        starts = np.cumsum([0] + [len(x) for x in lists[:-1]])
        return torch.as_tensor(pool, device=device), torch.as_tensor(starts, device=device)

    losses, correct, batch = [], 0, cfg["train_batch_size"]
    for s in range(0, n, batch):
        pool, starts = as_rows(nll_lists[s: s + batch])
        scores = q_vec[s: s + batch] @ p_vec[pool].T
        losses.append(F.cross_entropy(scores, starts).item())
        correct += (scores.argmax(1) == starts).sum().item()
    metrics = {"dev_nll": float(np.mean(losses)), "dev_accuracy": correct / n}
    if with_rank:
        pool, starts = as_rows(rank_lists)
        total = 0
        for s in range(0, n, 64):
            scores = (q_vec[s: s + 64] @ p_vec.T)[:, pool]  # questions x pooled passages
            gold = scores.gather(1, starts[s: s + 64, None])
            total += (scores > gold).sum().item()
        metrics["dev_avg_rank"] = total / n
    raw.train()
    return metrics


# ---------------------------------------------------------------------------------------------
# Checkpoints


def replace_dir(tmp, final):
    """Put a finished temp dir in place; at no moment is a half-written dir at the final name."""
    old = final + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_encoders(raw, tokenizers, out_dir, info):
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_encoder(raw.question_model, tokenizers[0], os.path.join(tmp, "query_encoder"), "question")
    save_encoder(raw.passage_model, tokenizers[1], os.path.join(tmp, "doc_encoder"), "passage")
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump(info, f, indent=1)
    replace_dir(tmp, out_dir)


def save_state(path, raw, optimizer, scheduler, scaler, state, cfg, accelerator):
    """last_state/: models, optimizer, scheduler, scaler, progress (main process) + each process's RNG."""
    tmp = path + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    device = accelerator.device
    torch.save({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "python": random.getstate()}, os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        torch.save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "state": state, "config": cfg, "world_size": accelerator.num_processes},
                   os.path.join(tmp, "state.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, path)
    accelerator.wait_for_everyone()


def load_state(path, raw, optimizer, scheduler, scaler, cfg, accelerator):
    saved = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
    changed = [k for k in ("train_file", "train_batch_size", "gradient_accumulation_steps", "seed", "num_hard_negatives",
                           "num_other_negatives", "max_length", "lr", "warmup_steps") if saved["config"].get(k) != cfg[k]]
    if changed:
        log(f"warning: resuming with changed {', '.join(changed)}: not the run that was interrupted")
    raw.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    rng_file = os.path.join(path, f"rng_{accelerator.process_index}.pt")
    if saved["world_size"] != accelerator.num_processes or not os.path.isfile(rng_file):
        log(f"warning: {path} was saved by {saved['world_size']} processes, now {accelerator.num_processes}: "
            "data order is the same, dropout draws are not")
    else:
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and accelerator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], accelerator.device)
        random.setstate(rng["python"])
    return saved["state"]


# ---------------------------------------------------------------------------------------------

master_process = True


def log(msg):
    if master_process:
        print(msg, flush=True)


def main(argv=None):
    try:
        cfg = parse_args(argv)
        check_inputs(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        train(cfg)
    except (ConfigError, DataError, EncoderError) as e:
        sys.exit(f"error: {e}")


def train(cfg):
    global master_process
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    out = cfg["output_dir"]
    if cfg["report_to"] == "wandb" and not os.environ.get("WANDB_API_KEY"):
        netrc = os.path.expanduser("~/.netrc")
        if not (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()):
            os.environ.setdefault("WANDB_MODE", "offline")  # never prompt for a login
    # mixed precision is ours (explicit autocast), not accelerate's: forward and backward are split up here
    accelerator = Accelerator(mixed_precision="no", project_dir=out,
                              log_with=None if cfg["report_to"] == "none" else cfg["report_to"],
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    master_process = accelerator.is_main_process
    device, world = accelerator.device, accelerator.num_processes
    precision = cfg["mixed_precision"]
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "no"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 or no on CPU")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    os.makedirs(out, exist_ok=True)
    set_seed(cfg["seed"])

    h, o = cfg["num_hard_negatives"], cfg["num_other_negatives"]
    train_data = load_data(train_files(cfg), os.path.join(out, "data_cache", "train"),
                           dict(max_hard=None, max_other=None, other_only_without_hard=o == 0), accelerator)
    meta = train_data.meta
    log(f"train: {meta['questions']} questions, {meta['passages']} distinct passages, "
        f"{meta['skipped']} records skipped (no positive ctx)")
    batch, accumulation = cfg["train_batch_size"], cfg["gradient_accumulation_steps"]
    per_epoch = steps_per_epoch(train_data, batch)
    if per_epoch == 0:
        raise DataError(f"{', '.join(train_files(cfg))}: {meta['questions']} usable questions "
                        f"({meta['skipped']} skipped), fewer than one batch of train_batch_size {batch}")
    dev = None
    if cfg["dev_file"]:
        keep_hard = max(cfg["val_av_rank_hard_neg"], h)
        dev = load_data([cfg["dev_file"]], os.path.join(out, "data_cache", "dev"),
                        dict(max_hard=keep_hard, max_other=max(cfg["val_av_rank_other_neg"], o, keep_hard),
                             other_only_without_hard=False), accelerator)
        log(f"dev: {len(dev)} questions, {dev.meta['skipped']} records skipped (no positive ctx)")
        if len(dev) == 0:
            raise DataError(f"{cfg['dev_file']}: no usable dev questions")
    total_steps = per_epoch * cfg["max_train_epochs"]
    if cfg["max_train_steps"] is not None:
        total_steps = min(total_steps, cfg["max_train_steps"])

    q_model, q_tok = load_tower(cfg["base_model"], "question", cfg["dropout"])
    p_model, p_tok = load_tower(cfg["base_model"], "passage", cfg["dropout"])
    tokenizers = (q_tok, p_tok)
    model = BiEncoder(q_model, p_model).to(device)
    no_decay = ("bias", "LayerNorm.weight")  # DPR's get_hf_model_param_grouping
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": cfg["weight_decay"]},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], eps=cfg["adam_eps"], fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, dpr_schedule(cfg["warmup_steps"], total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    raw = model
    model = accelerator.prepare_model(model)  # DDP over processes; loss and gradient scaling below

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "last_eval_step": None}
    if cfg["resume_from_checkpoint"]:
        path = state_dir(cfg)
        state = load_state(path, raw, optimizer, scheduler, scaler, cfg, accelerator)
        log(f"resumed from {path}: step {state['step']}, epoch {state['epoch']}, batch {state['batch_in_epoch']}")
    if cfg["report_to"] != "none":  # both write under output_dir: tensorboard to nanodpr/, wandb (also offline runs) to wandb/
        accelerator.init_trackers("nanodpr", config={k: v if isinstance(v, (int, float, str)) else str(v) for k, v in cfg.items()},
                                  init_kwargs={"wandb": {"dir": out}})
        log(f"{cfg['report_to']} logs: {os.path.join(out, 'nanodpr' if cfg['report_to'] == 'tensorboard' else 'wandb')}"
            + (" (offline: `wandb sync` them)" if os.environ.get("WANDB_MODE") == "offline" else ""))
    log(f"{world} process(es) on {device.type}, precision {precision}, {per_epoch} steps/epoch, {total_steps} steps, "
        f"batch {batch} questions x {1 + h + o} passages, grad cache "
        f"{'chunks of %d questions' % cfg['grad_cache_chunk_size'] if cfg['grad_cache_chunk_size'] else 'off'}")
    log(f"outputs: {out}/{{best,step-N,last_state}}, log {out}/train_log.jsonl")

    local = batch // (world * accumulation)  # questions per process per micro-batch
    collate = Collate(q_tok, p_tok, cfg["max_length"], cfg["grad_cache_chunk_size"] or local, passage_groups(device))
    train_set = TrainSet(train_data, h, o, cfg["seed"])
    rank = accelerator.process_index
    # each process scales its loss by the world size: DDP averages gradients, the global loss needs their sum
    loss_weight = world / accumulation
    log_file = os.path.join(out, "train_log.jsonl")
    if cfg["resume_from_checkpoint"] and master_process and os.path.isfile(log_file):
        with open(log_file) as f:  # drop what was logged after the checkpoint: those steps run again
            kept = [line for line in f if json.loads(line)["step"] <= state["step"]]
        with open(log_file, "w") as f:
            f.writelines(kept)

    def write_log(record):
        if master_process:
            with open(log_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if cfg["report_to"] != "none":
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def evaluate_and_save():
        info = {"step": state["step"], "epoch": state["epoch"]}
        if dev is not None:
            metrics = validate(model, dev, tokenizers, cfg, state["epoch"], autocast, device)
            info.update(metrics)
            write_log(dict(info))
            log(f"step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            name = "dev_avg_rank" if "dev_avg_rank" in metrics else "dev_nll"
            best = state["best"]
            is_best = best is None or best["metric"] != name or metrics[name] < best["value"]
            if is_best:  # DPR: best by NLL until average rank starts, then by average rank
                state["best"] = {"metric": name, "value": metrics[name], "step": state["step"]}
        state["last_eval_step"] = state["step"]
        if master_process:
            save_encoders(raw, tokenizers, os.path.join(out, f"step-{state['step']}"), info)
            if dev is not None and is_best:
                save_encoders(raw, tokenizers, os.path.join(out, "best"), info)
                log(f"new best {name} {metrics[name]:.4f}: {out}/best")
            steps = sorted(int(m.group(1)) for d in os.listdir(out) if (m := re.fullmatch(r"step-(\d+)", d)))
            for s in steps[: max(0, len(steps) - cfg["save_total_limit"])]:
                shutil.rmtree(os.path.join(out, f"step-{s}"), ignore_errors=True)
        save_state(os.path.join(out, "last_state"), raw, optimizer, scheduler, scaler, state, cfg, accelerator)

    bar = tqdm(total=total_steps, initial=state["step"], disable=not master_process, desc="train")
    window = {"loss": torch.zeros((), device=device), "steps": 0, "t": time.time()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    while state["step"] < total_steps and state["epoch"] < cfg["max_train_epochs"]:
        epoch = state["epoch"]
        batches = epoch_batches(train_data, epoch, cfg["seed"], batch)
        micro = []  # this process's slice of each micro-batch, from the first global batch not yet trained on
        for g in batches[state["batch_in_epoch"]:]:
            for a in range(accumulation):
                start = a * (batch // accumulation) + rank * local
                micro.append([(epoch, int(i)) for i in g[start: start + local]])
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=micro, collate_fn=collate,
                                             num_workers=cfg["num_workers"], pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(cfg["seed"] + epoch))
        loader_iter = iter(loader)
        for _ in range(len(batches) - state["batch_in_epoch"]):
            step_loss = 0.0
            for a in range(accumulation):
                mb = to_device(next(loader_iter), device)
                step_loss += forward_backward(model, mb, grad_cache=bool(cfg["grad_cache_chunk_size"]), autocast=autocast,
                                              scaler=scaler, loss_weight=loss_weight, sync=a == accumulation - 1)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg["max_grad_norm"] or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += 1
            window["loss"] += step_loss / accumulation
            window["steps"] += 1
            bar.update(1)
            if state["step"] % cfg["log_steps"] == 0 or state["step"] == total_steps:
                elapsed = time.time() - window["t"]
                record = {"step": state["step"], "epoch": epoch, "loss": window["loss"].item() / window["steps"],
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                          "examples_per_s": window["steps"] * batch / elapsed}
                if device.type == "cuda":
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                write_log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                window = {"loss": torch.zeros((), device=device), "steps": 0, "t": time.time()}
            if (cfg["eval_steps"] and state["step"] % cfg["eval_steps"] == 0) or state["step"] == total_steps:
                evaluate_and_save()
                window["t"] = time.time()  # examples/s measures training only
            if state["step"] >= total_steps:
                break
        else:
            del loader_iter, loader
            if state["last_eval_step"] != state["step"] and not cfg["eval_steps"]:
                evaluate_and_save()  # DPR validates after every epoch
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    if state["last_eval_step"] != state["step"]:
        evaluate_and_save()  # e.g. max_train_steps 0: the untrained model's dev metrics
    bar.close()
    best = state["best"]
    log(f"done: {state['step']} steps; " + (f"best {best['metric']} {best['value']:.4f} at step {best['step']} in {out}/best"
                                            if best else f"checkpoints in {out}"))
    accelerator.end_training()


if __name__ == "__main__":
    main()
