"""Training data: DPR's biencoder JSON reduced to flat numpy arrays, saved once under output_dir/data_cache/
and memory-mapped, so DataLoader workers and the processes of one machine share one copy instead of each
holding Python objects (which fork's copy-on-write would duplicate). Each epoch's batches and each question's
negatives are functions of (seed, epoch, question): they do not depend on workers, processes or where a run
resumed.
"""

import json
import os
import random
import socket
from array import array

import numpy as np
import torch

from utils.files import atomic_dir
from utils.formats import iter_biencoder
from utils.models import pad_batch, tokenize_passages, tokenize_questions

ARRAYS = (
    "offsets",
    "question",
    "source",
    "positive",
    "hard_ptr",
    "hard",
    "other_ptr",
    "other",
    "passage_title",
    "passage_text",
)


class BiencoderData:
    """Questions, each with its first positive passage and the negative pools kept (see build_cache).
    Strings live in one blob: string s is blob[offsets[s]:offsets[s + 1]]; hard negatives of question i are
    hard[hard_ptr[i]:hard_ptr[i + 1]] (other negatives alike); source: which train_file a question came
    from."""

    def __init__(self, cache_dir):
        with open(os.path.join(cache_dir, "meta.json")) as f:
            self.meta = json.load(f)
        for name in ARRAYS:
            setattr(self, name, np.load(os.path.join(cache_dir, name + ".npy"), mmap_mode="r"))
        blob = os.path.join(cache_dir, "strings.bin")
        self.blob = (
            np.memmap(blob, dtype=np.uint8, mode="r") if os.path.getsize(blob) else np.zeros(0, np.uint8)
        )

    def __len__(self):
        return len(self.question)

    def string(self, s):
        return bytes(self.blob[self.offsets[s] : self.offsets[s + 1]]).decode("utf-8")

    def question_text(self, i):
        return self.string(self.question[i])

    def passage(self, p):
        """(title, text) of passage p."""
        return self.string(self.passage_title[p]), self.string(self.passage_text[p])

    def ctxs(self, i, num_hard, num_other, rng=None):
        """Passage ids for question i laid out as DPR's create_biencoder_input does:
        [positive, other negatives..., hard negatives...]. With `rng` both pools are shuffled first
        (training); a question without hard negatives takes other negatives instead (hard_neg_fallback)."""
        other = self.other[self.other_ptr[i] : self.other_ptr[i + 1]].tolist()
        hard = self.hard[self.hard_ptr[i] : self.hard_ptr[i + 1]].tolist()
        if rng is not None:
            rng.shuffle(other)
            rng.shuffle(hard)
        if not hard:
            hard = other[:num_hard]
        return [int(self.positive[i])] + other[:num_other] + hard[:num_hard]


def build_cache(files, out_dir, max_hard, max_other, other_only_without_hard):
    """Stream the JSON files once into out_dir, the arrays BiencoderData maps; returns out_dir.

    Kept per question: the text, the first positive ctx (DPR nq: shuffle_positives false), up to
    `max_hard` hard negatives and `max_other` other negatives (None: all, for per-epoch shuffling).
    With other_only_without_hard, other negatives are kept only for questions with no hard negative
    (the fallback pool). Identical passages are stored once (keyed by a 64-bit hash of title and text)."""
    os.makedirs(out_dir, exist_ok=True)
    columns = {
        name: array("q", [0] if name in ("offsets", "hard_ptr", "other_ptr") else []) for name in ARRAYS
    }
    passage_ids, title_ids, stats = {}, {}, {"skipped": 0}
    with open(os.path.join(out_dir, "strings.bin"), "wb") as blob:

        def add_string(s):  # its index
            data = s.encode("utf-8")
            blob.write(data)
            columns["offsets"].append(columns["offsets"][-1] + len(data))
            return len(columns["offsets"]) - 2

        def add_passage(ctx):  # its index
            key = hash((ctx["title"], ctx["text"]))
            if key not in passage_ids:
                if ctx["title"] not in title_ids:
                    title_ids[ctx["title"]] = add_string(ctx["title"])
                passage_ids[key] = len(columns["passage_text"])
                columns["passage_title"].append(title_ids[ctx["title"]])
                columns["passage_text"].append(add_string(ctx["text"]))
            return passage_ids[key]

        for source, path in enumerate(files):
            for rec in iter_biencoder(path, stats):
                hard = rec["hard_negative_ctxs"][:max_hard]
                other = [] if other_only_without_hard and hard else rec["negative_ctxs"][:max_other]
                columns["question"].append(add_string(rec["question"]))
                columns["source"].append(source)
                columns["positive"].append(add_passage(rec["positive_ctxs"][0]))
                columns["hard"].extend(add_passage(c) for c in hard)
                columns["other"].extend(add_passage(c) for c in other)
                columns["hard_ptr"].append(len(columns["hard"]))
                columns["other_ptr"].append(len(columns["other"]))
    for name, values in columns.items():
        np.save(
            os.path.join(out_dir, name + ".npy"),
            np.frombuffer(values, np.int64) if len(values) else np.zeros(0, np.int64),
        )
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(
            {
                "files": files,
                "questions": len(columns["question"]),
                "skipped": stats["skipped"],
                "passages": len(columns["passage_text"]),
            },
            f,
        )
    return out_dir


def load_cache(files, cache_dir, keep, accelerator, log):
    """BiencoderData for `files`, (re)built by each machine's first process when the files or `keep`
    (build_cache's options) changed."""
    files = [os.path.abspath(f) for f in files]
    key = {"files": [[f, os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files], "keep": keep}
    key_file = os.path.join(cache_dir, "key.json")
    with accelerator.local_main_process_first():
        if accelerator.is_local_main_process and not has_key(key_file, key):
            log(f"reading {', '.join(files)} into {cache_dir}")
            try:
                with atomic_dir(cache_dir, f"{cache_dir}.tmp-{socket.gethostname()}-{os.getpid()}") as tmp:
                    with open(os.path.join(build_cache(files, tmp, **keep), "key.json"), "w") as f:
                        json.dump(key, f)
            except OSError:
                # else another machine sharing output_dir renamed its copy first
                if not has_key(key_file, key):
                    raise
        return BiencoderData(cache_dir)


def has_key(key_file, key):
    if not os.path.isfile(key_file):
        return False
    with open(key_file) as f:
        return json.load(f) == key


def epoch_batches(data, epoch, seed, batch_size):
    """Global batches of one epoch, as arrays of question indices. Like DPR's MultiSetDataIterator:
    each file shuffled (seed + epoch), cut into full batches, then the batches of all files shuffled.
    The last incomplete batch of each file is dropped: every step sees exactly batch_size questions."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for source in range(len(data.meta["files"])):
        idx = np.flatnonzero(np.asarray(data.source) == source)
        idx = idx[rng.permutation(len(idx))]
        batches += [idx[s : s + batch_size] for s in range(0, len(idx) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if len(batches) > 1 else batches


def steps_per_epoch(data, batch_size):
    counts = np.bincount(np.asarray(data.source), minlength=len(data.meta["files"]))
    return int(sum(c // batch_size for c in counts))


def process_slices(batches, epoch, accumulation, rank, world):
    """This process's share of `batches` as TrainSet keys: each global batch is cut into `accumulation`
    micro-batches, each micro-batch into `world` consecutive slices, one per process."""
    slices = []
    for batch in batches:
        micro = len(batch) // accumulation
        local = micro // world
        for a in range(accumulation):
            start = a * micro + rank * local
            slices.append([(epoch, int(i)) for i in batch[start : start + local]])
    return slices


class TrainSet(torch.utils.data.Dataset):
    """Item (epoch, i): question i and its (title, text) ctxs, negatives drawn with an RNG seeded by
    (seed, epoch, i)."""

    def __init__(self, data, num_hard, num_other, seed):
        self.data, self.num_hard, self.num_other, self.seed = data, num_hard, num_other, seed

    def __getitem__(self, key):
        epoch, i = key
        ctxs = self.data.ctxs(i, self.num_hard, self.num_other, random.Random(f"{self.seed}/{epoch}/{i}"))
        return self.data.question_text(i), [self.data.passage(p) for p in ctxs]


def passage_groups(device):
    """Length groups per chunk's passages: on CPU a step is compute-bound and sorting passages into groups
    saves padded tokens; on GPU a step is bound by kernel launches, which more groups multiply."""
    return 4 if device.type == "cpu" else 1


def make_chunk(question_ids, passage_ids, question_pad, passage_pad, groups, pad_multiple=1):
    """Model input for some questions and their passages. Questions are padded to their longest;
    passages are sorted by length and padded in `groups` groups, `passage_order` restores their order.
    pad_multiple: widths rounded up to a multiple of it (a speed lever bench/bench_train.py measures)."""
    order = np.argsort([len(x) for x in passage_ids], kind="stable")
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.as_tensor(order)] = torch.arange(len(order))
    return {
        "question": pad_batch(question_ids, question_pad, pad_multiple),
        "passages": [
            pad_batch([passage_ids[k] for k in group], passage_pad, pad_multiple)
            for group in np.array_split(order, min(groups, len(order)))
        ],
        "passage_order": restore,
    }


class Collate:
    """Tokenize a micro-batch (in the DataLoader worker) into chunks (make_chunk) of `chunk_size`
    questions with their passages. `positives`: index of each question's positive passage in the
    micro-batch's passage list."""

    def __init__(self, tokenizers, max_length, chunk_size, groups, pad_multiple=1):
        self.tokenizers, self.max_length, self.chunk_size, self.groups = (
            tokenizers,
            max_length,
            chunk_size,
            groups,
        )
        self.pad_multiple = pad_multiple

    def __call__(self, items):
        question_tok, passage_tok = self.tokenizers["question"], self.tokenizers["passage"]
        chunks, positives, n = [], [], 0
        for s in range(0, len(items), self.chunk_size):
            group = items[s : s + self.chunk_size]
            question_ids = tokenize_questions(question_tok, [q for q, _ in group], self.max_length)
            ctxs = [c for _, cs in group for c in cs]
            passage_ids = tokenize_passages(
                passage_tok, [t for t, _ in ctxs], [x for _, x in ctxs], self.max_length
            )
            for _, cs in group:
                positives.append(n)
                n += len(cs)
            chunks.append(
                make_chunk(
                    question_ids,
                    passage_ids,
                    question_tok.pad_token_id,
                    passage_tok.pad_token_id,
                    self.groups,
                    self.pad_multiple,
                )
            )
        return {"chunks": chunks, "positives": torch.tensor(positives)}
