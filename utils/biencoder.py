"""DPR's bi-encoder: question and passage towers (two BERTs, [CLS] vectors, dot-product scores; or the base
model's own pooling and cosine), the NLL of each question's positive among all passages of the global batch,
the training step (plain, or with a gradient cache), DPR's optimizer groups and learning-rate schedule, and
DPR's validation (NLL and average rank).

Shapes, for B questions per batch, h hard and o other negatives per question, d the vector size:
q [B, d] question vectors, p [B·(1+h+o), d] passage vectors, scores = q @ p.T [B, B·(1+h+o)].
"""

import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError, EncoderError
from utils.models import (
    NORM,
    autocast_dtype,
    embed,
    embedding_dim,
    encode_batches,
    load_encoder,
    padded_batches,
    tokenize_passages,
    tokenize_questions,
)
from utils.rng import rng_state, set_rng_state
from utils.towers import TOWER_DIRS


class BiEncoder(nn.Module):
    """DPR's "single" bi-encoder: two separate BERTs; a text's vector is the last layer's [CLS] state (or
    another models.embed pooling). scale: None for DPR's inner product, else scale x cosine (see scores)."""

    def __init__(self, question_model, passage_model, pooling="cls", scale=None):
        super().__init__()
        self.question_model, self.passage_model = question_model, passage_model
        self.pooling, self.scale = pooling, scale if pooling.endswith(NORM) else None

    def forward(self, chunk):
        """(q [B, d], p [B·(1+h+o), d]) for a train_data.make_chunk input of B questions; p in question
        order, each question's positive first."""
        passages = torch.cat([embed(self.passage_model, self.pooling, group) for group in chunk["passages"]])
        return embed(self.question_model, self.pooling, chunk["question"]), passages[chunk["passage_order"]]


def load_biencoder(path, dropout, pooling=None, similarity=None, scale=20.0):
    """(BiEncoder, {role: tokenizer}): both towers from a BERT dir, hub name, DPR .cp file or one of our
    checkpoint dirs, with DPR's dropout; pooling and similarity the base model's own unless given
    (load_encoder), `scale` for cos. BERT's pooler is kept, frozen, only so the saved dirs are complete: DPR
    never uses it."""
    towers, tokenizers, poolings = {}, {}, set()
    for role, name in TOWER_DIRS.items():
        sub = os.path.join(path, name)
        # a base without pooler weights gets a random one: keep the seed's draws
        with torch.random.fork_rng(devices=[]):
            model, tokenizers[role], own = load_encoder(
                sub if os.path.isdir(sub) else path, role, pooler=True, pooling=pooling, similarity=similarity
            )
        poolings.add(own)
        if getattr(model, "pooler", None) is not None:
            model.pooler.requires_grad_(False)
        # DPR sets both (hf_bert.yaml dropout)
        for attr in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if hasattr(model.config, attr):
                setattr(model.config, attr, dropout)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
        towers[role] = model.train()
    if len(poolings) > 1 or min(poolings).startswith("pooler_output"):  # HF DPR models: no [CLS] to train
        raise EncoderError(
            f"{path}: training needs BERT-style towers pooled alike (a BertModel dir, one of "
            f"our checkpoints or a DPR .cp file); these pool {sorted(poolings)}"
        )
    return BiEncoder(towers["question"], towers["passage"], poolings.pop(), scale), tokenizers


def make_optimizer(model, lr, eps, weight_decay, warmup_steps, total_steps):
    """(AdamW, DPR's schedule). Biases and LayerNorm weights are never decayed (DPR's
    get_hf_model_param_grouping)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [any(k in n for k in ("bias", "LayerNorm.weight")) for n, _ in named]
    groups = [
        {"params": [p for (_, p), skip in zip(named, no_decay) if not skip], "weight_decay": weight_decay},
        {"params": [p for (_, p), skip in zip(named, no_decay) if skip], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr, eps=eps, fused=next(model.parameters()).is_cuda)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, dpr_schedule(warmup_steps, total_steps))


def dpr_schedule(warmup_steps, total_steps):
    """DPR's get_schedule_linear, as a LambdaLR factor: linear warm-up, then linear decay (floored at
    1e-7)."""
    return lambda step: (
        step / max(1, warmup_steps)
        if step < warmup_steps
        else max(1e-7, (total_steps - step) / max(1, total_steps - warmup_steps))
    )


def training_precision(precision, device):
    """(precision, autocast dtype or None) for mixed_precision: auto is the device's (models.autocast_dtype;
    fp16 comes with loss scaling). Autocast is explicit, not accelerate's: the gradient cache splits forward
    and backward."""
    if precision == "auto":
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[autocast_dtype(device)]
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 or no on CPU")
    return precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


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
    count = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(sizes, count)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[:size] for part, size in zip(parts, sizes)]
    parts[rank] = x
    return torch.cat(parts), sizes


def scores(questions, passages, scale=None):
    """DPR's q . p for every question-passage pair, [B, B·(1+h+o)]; with `scale` (similarity cos), scale x
    cos(q, p): the temperature of sentence-transformers' MultipleNegativesRankingLoss (cosines alone: too flat
    a softmax)."""
    if scale is None:
        return questions @ passages.T
    return scale * (F.normalize(questions, dim=-1) @ F.normalize(passages, dim=-1).T)


def nll_loss(questions, passages, positives, scale=None):
    """DPR's BiEncoderNllLoss: mean over questions of -log softmax(scores)[positive]. Every passage of the
    other questions is an in-batch negative."""
    return F.cross_entropy(scores(questions, passages, scale), positives)


def global_nll_loss(questions, passages, positives, scale=None):
    """nll_loss over the global batch: every process computes the same value from all processes'
    vectors (DPR's _calc_loss), differentiable in its own slice."""
    all_questions, _ = gather_rows(questions)
    all_passages, passage_counts = gather_rows(passages)
    all_positives, _ = gather_rows(positives)
    if len(passage_counts) > 1:  # positives index each process's passages: shift them into the concatenation
        # same question count everywhere
        offsets = np.repeat(np.cumsum([0] + passage_counts[:-1]), len(positives))
        all_positives = all_positives + torch.as_tensor(offsets, device=all_positives.device)
    return nll_loss(all_questions, all_passages, all_positives, scale)


def no_sync(model, skip):
    return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()


def plain_step(model, batch, autocast, scaler, loss_weight, sync=True):
    """Forward and backward of one micro-batch (`batch` from train_data.Collate, on the device): encode every
    chunk with the autograd graph, the global loss, backward. Gradients accumulate into .grad, weighted by
    `loss_weight`; `sync=False` keeps DDP from all-reducing (all but a step's last micro-batch).
    Returns the loss."""
    with no_sync(model, not sync):
        with autocast:
            vectors = [model(chunk) for chunk in batch["chunks"]]
        questions = torch.cat([q for q, _ in vectors]).float()
        passages = torch.cat([p for _, p in vectors]).float()
        scale = (model.module if hasattr(model, "module") else model).scale  # None: DPR's inner product
        loss = global_nll_loss(questions, passages, batch["positives"], scale)
        scaler.scale(loss * loss_weight).backward()
    return loss.detach()


def grad_cache_step(model, batch, autocast, scaler, loss_weight, sync=True):
    """plain_step's gradients with one chunk's activations in memory (gradient cache, Gao et al. 2021): encode
    all chunks without a graph, take the loss gradient with respect to the vectors, then re-encode each chunk
    with the graph and back-propagate that cached gradient through it. Each chunk's RNG state is replayed, so
    dropout draws the same masks both times and the gradients equal the plain step's."""
    chunks, device = batch["chunks"], batch["positives"].device
    bare = model.module if hasattr(model, "module") else model  # no DDP hooks for the graph-free pass
    chunk_rng, questions, passages = [], [], []
    with torch.no_grad(), autocast:
        for chunk in chunks:
            chunk_rng.append(rng_state(device))
            q, p = bare(chunk)
            questions.append(q.float())
            passages.append(p.float())
    all_questions = torch.cat(questions).requires_grad_()
    all_passages = torch.cat(passages).requires_grad_()
    loss = global_nll_loss(all_questions, all_passages, batch["positives"], bare.scale)
    loss.backward()
    question_grads = all_questions.grad.split([len(q) for q in questions])
    passage_grads = all_passages.grad.split([len(p) for p in passages])
    after = rng_state(device)
    for j, chunk in enumerate(chunks):
        set_rng_state(chunk_rng[j], device)
        with no_sync(model, not (sync and j == len(chunks) - 1)):
            with autocast:
                q, p = model(chunk)
            surrogate = (q.float() * question_grads[j]).sum() + (p.float() * passage_grads[j]).sum()
            scaler.scale(surrogate * loss_weight).backward()
    set_rng_state(after, device)
    return loss.detach()


@torch.no_grad()
def encode(tower, pooling, tokenizer, read, ids, cfg, dtype, device):
    """Vectors (fp32, on the device) of texts read(i) for i in ids (a question, or a passage's (title,
    text)). DataLoader workers read and tokenize windows of texts; each window is encoded in length-sorted
    batches (encode_batches)."""
    window = 16 * cfg.eval_batch_size

    def tokenize_window(start):
        texts = [read(int(i)) for i in ids[start : start + window]]
        tokens = (
            tokenize_questions(tokenizer, texts, cfg.max_length)
            if isinstance(texts[0], str)
            else tokenize_passages(tokenizer, [t for t, _ in texts], [x for _, x in texts], cfg.max_length)
        )
        return start, len(texts), padded_batches(tokens, tokenizer.pad_token_id, cfg.eval_batch_size)

    loader = torch.utils.data.DataLoader(
        range(0, len(ids), window),
        batch_size=None,
        collate_fn=tokenize_window,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    out = torch.empty((len(ids), embedding_dim(tower)), device=device)
    for start, n, batches in loader:
        out[start : start + n] = encode_batches(tower, pooling, batches, n, device, dtype, host=False)
    return out


@torch.no_grad()
def validate(model, tokenizers, dev, cfg, with_rank, dtype, device):
    """DPR's two validations on the dev set (a train_data.BiencoderData), both independent of the number of
    processes.

    NLL (validate_nll): dev questions in file order, in batches of train_batch_size, each question with
    the training layout of negatives (unshuffled), loss and accuracy over each batch's passages.
    Average rank (validate_average_rank, `with_rank`): every question brings its positive +
    val_av_rank_other_neg other + val_av_rank_hard_neg hard negatives; the positive's 0-based rank among ALL
    those passages pooled over the dev set, averaged. (DPR pools per process.)"""
    rank, world = dist_info()
    model.eval()
    n = len(dev)
    nll_lists = [dev.ctxs(i, cfg.num_hard_negatives, cfg.num_other_negatives) for i in range(n)]
    rank_lists = (
        [dev.ctxs(i, cfg.val_av_rank_hard_neg, cfg.val_av_rank_other_neg) for i in range(n)]
        if with_rank
        else []
    )
    unique = np.unique(np.concatenate(nll_lists + rank_lists))  # each distinct passage encoded once
    question_vectors, _ = gather_rows(
        encode(
            model.question_model,
            model.pooling,
            tokenizers["question"],
            dev.question_text,
            np.array_split(np.arange(n), world)[rank],
            cfg,
            dtype,
            device,
        )
    )
    passage_vectors, _ = gather_rows(
        encode(
            model.passage_model,
            model.pooling,
            tokenizers["passage"],
            dev.passage,
            np.array_split(unique, world)[rank],
            cfg,
            dtype,
            device,
        )
    )

    # passage ids -> rows of passage_vectors, concatenated; where each question's list starts
    def pooled(lists):
        rows = np.searchsorted(unique, np.concatenate(lists))
        starts = np.cumsum([0] + [len(x) for x in lists[:-1]])
        return torch.as_tensor(rows, device=device), torch.as_tensor(starts, device=device)

    losses, correct, size = [], 0, cfg.train_batch_size
    for start in range(0, n, size):
        rows, positives = pooled(nll_lists[start : start + size])
        batch_scores = scores(question_vectors[start : start + size], passage_vectors[rows], model.scale)
        losses.append(F.cross_entropy(batch_scores, positives).item())
        correct += (batch_scores.argmax(1) == positives).sum().item()
    metrics = {"dev_nll": float(np.mean(losses)), "dev_accuracy": correct / n}
    if with_rank:
        rows, positives = pooled(rank_lists)
        higher = 0
        for start in range(0, n, 64):  # questions x pooled passages
            pooled_scores = scores(question_vectors[start : start + 64], passage_vectors, model.scale)[
                :, rows
            ]
            higher += (
                (pooled_scores > pooled_scores.gather(1, positives[start : start + 64, None])).sum().item()
            )
        metrics["dev_avg_rank"] = higher / n
    model.train()
    return metrics
