"""Ask a DPR retriever questions (docs/serving.md): Retriever loads the question encoder, the passage
embeddings, an index over them and the passage file once; search() returns each question's top-k passages.
test_dpr.py retrieves through it too, so what it answers is what the evaluation measured. Batcher answers
many threads at once (search_dpr.py --serve): the questions waiting together make one batch and one search.
"""

import os
import queue
import threading
import time

import numpy as np
import torch

from utils.embeddings import check_pooling, check_provenance, load_embeddings, read_meta
from utils.errors import ConfigError, DataError
from utils.formats import RECIPE, PassageStore, normalize_question
from utils.index import _import_faiss, open_index
from utils.models import add_pooling_args, autocast_dtype, encode_questions, load_encoder

# Retriever's arguments in order, as add_retriever_args names the options of test_dpr.py and search_dpr.py
CLI_OPTIONS = "pretrained_model_path embedding_dir wikipedia_path index index_path index_device".split()
CLI_OPTIONS += ["nprobe", "ef_search", "batch_size", "trust_encoder_pair", "pooling", "similarity"]


def add_retriever_args(p):
    """The options CLI_OPTIONS names, with the NQ recipe's paths as defaults (test_dpr.py, search_dpr.py)."""
    p.add_argument("--embedding_dir", default=RECIPE["embeddings"], help="doc2embedding.py's output")
    p.add_argument(
        "--pretrained_model_path",
        default=RECIPE["query_encoder"],
        help="question encoder: our query_encoder dir, an HF DPR question encoder, or a raw DPR checkpoint",
    )
    p.add_argument("--trust_encoder_pair", action="store_true", help="vouch for the pair (e.g. official DPR)")
    p.add_argument("--wikipedia_path", default=RECIPE["passages"], help="the passages embedded there")
    p.add_argument(
        "--index",
        default="flat",
        help="flat: exact search (DPR); flat:float16, flat:bfloat16: "
        "fast, re-scored in float32; else a faiss index_factory string, e.g. HNSW32, IVF4096,PQ64",
    )
    p.add_argument(
        "--index_path",
        help="save the built --index here (faiss format + .json sidecar) and reuse it on later runs",
    )
    p.add_argument("--nprobe", type=int, default=64, help="IVF indexes: lists searched per question")
    p.add_argument(
        "--ef_search",
        type=int,
        default=256,
        help="HNSW indexes (and IVF over an HNSW quantizer): candidate list size",
    )
    p.add_argument(
        "--index_device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="auto: exact search on the GPU(s) when the vectors fit in their free memory "
        "(float16, 80%%), else CPU; a factory --index: gpu when faiss has GPU support",
    )
    p.add_argument("--batch_size", type=int, default=128, help="questions per encoder batch")
    add_pooling_args(p)


class Retriever:
    """Question encoder + index + passages: test_dpr.py's options (CLI_OPTIONS). index: "flat" (exact, DPR's),
    "flat:float16", or a faiss index_factory string built once and reused through index_path."""

    def __init__(
        self,
        model_path,
        embedding_dir,
        passages_path,
        index="flat",
        index_path=None,
        index_device="auto",
        nprobe=64,
        ef_search=256,
        batch_size=128,
        trust_encoder_pair=False,
        pooling=None,
        similarity=None,
    ):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model_path, self.embedding_dir, self.spec, self.nprobe = model_path, embedding_dir, index, nprobe
        self.batch_size, meta = batch_size, read_meta(embedding_dir)
        # pooling and similarity: the encoder's own (nanodpr.json, a sentence-transformers dir) unless given
        self.model, self.tokenizer, self.pooling = load_encoder(
            model_path, "question", None, False, pooling, similarity
        )
        check_pooling(embedding_dir, meta, self.pooling)
        # the question encoder must belong with the passage encoder that made the embeddings
        # (docs/evaluation.md)
        check_provenance(embedding_dir, meta, passages_path, self.model, model_path, trust_encoder_pair)
        self.model.to(self.device)
        self.ids, emb = load_embeddings(embedding_dir, mmap=True)
        self.dim, self.emb_dtype = emb.shape[1], emb.dtype
        self.index, self.index_name = open_index(
            index, emb, index_device, embedding_dir, meta, index_path, nprobe, ef_search
        )
        offsets = os.path.join(embedding_dir, "passages.offsets.npz")
        if not os.path.exists(offsets):
            print(f"indexing passage offsets of {passages_path} into {offsets} (one pass, once)")
        self.store = PassageStore(passages_path, offsets)

    @classmethod
    def from_args(cls, a):
        """From test_dpr.py's (and search_dpr.py's) command-line options."""
        return cls(*(getattr(a, name) for name in CLI_OPTIONS))

    def __len__(self):
        return len(self.ids)

    def encode(self, questions, progress=False):
        """(len(questions), dim) float32 vectors of questions already normalized (normalize_question)."""
        q = encode_questions(
            self.model,
            self.pooling,
            self.tokenizer,
            questions,
            self.batch_size,
            self.device,
            autocast_dtype(self.device),
            progress=progress,
        )
        if q.shape[1] != self.dim:
            raise DataError(
                f"{self.embedding_dir}: passage embeddings are {self.dim}-d, but the question encoder "
                f"{self.model_path} gives {q.shape[1]}-d vectors (embed the passages with the matching "
                "passage encoder)"
            )
        return q

    def search_vectors(self, q, k):
        """(scores (n, k) float32, passage ids (n, k) int64), best first."""
        scores, rows = self.index.search(q, k)
        if (rows < 0).any():  # an IVF index whose probed lists hold fewer than k passages
            raise ConfigError(
                f"--index {self.spec}: fewer than {k} passages found for {int((rows < 0).any(1).sum())} "
                f"questions; raise --nprobe (now {self.nprobe})"
            )
        return scores, self.ids[rows]

    def search(self, questions, k=10):
        """Per question, its top-k passages best first: [{"id", "title", "text", "score"}]."""
        if not questions:  # the tokenizer fails on an empty list
            return []
        questions = [normalize_question(q) for q in questions]  # DPR's, as test_dpr.py does when reading
        scores, ids = self.search_vectors(self.encode(questions), min(k, len(self)))
        rows = self.store.get_passages(np.unique(ids))
        found = {pid: {"id": pid, "title": title, "text": text} for pid, text, title in rows}
        return [
            [{**found[p], "score": float(s)} for p, s in zip(r, sc)] for r, sc in zip(ids.tolist(), scores)
        ]


class Batcher:
    """search() for many threads at once. One worker thread takes the questions that are waiting, up to
    max_batch (waiting at most max_wait seconds after the first for more), and answers them with one
    Retriever.search: one encoder batch, one index search. max_batch 1: one request at a time."""

    def __init__(self, retriever, max_batch=32, max_wait=0.002):
        self.retriever, self.max_batch, self.max_wait = retriever, max_batch, max_wait
        self.jobs, self.batches, self.questions = queue.Queue(), 0, 0
        # faiss 1.15's flat search reads the corpus once per question while questions x dim < this (128,000),
        # once per batch above: a batch of 2 or more then costs one pass; a lone question keeps the fast scan
        _import_faiss().cvar.distance_compute_blas_threshold = retriever.dim + 1
        threading.Thread(target=self._work, daemon=True, name="batcher").start()

    def search(self, questions, k=10):
        job = {"questions": questions, "k": k, "done": threading.Event()}
        self.jobs.put(job)
        job["done"].wait()
        if "error" in job:
            raise job["error"]
        return job["results"]

    def _work(self):
        while True:
            jobs = [self.jobs.get()]
            size, deadline = len(jobs[0]["questions"]), time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    jobs.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                size += len(jobs[-1]["questions"])
            try:
                questions = [q for job in jobs for q in job["questions"]]
                results = iter(self.retriever.search(questions, max(job["k"] for job in jobs)))
                for job in jobs:  # each request keeps its own first k of the top max(k)
                    job["results"] = [next(results)[: job["k"]] for _ in job["questions"]]
            except Exception as e:  # noqa: BLE001 -- handed to the waiting callers; the worker keeps serving
                for job in jobs:
                    job["error"] = e
            self.batches, self.questions = self.batches + 1, self.questions + size
            for job in jobs:
                job["done"].set()
