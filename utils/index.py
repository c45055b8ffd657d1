"""Top-k inner-product search over passage embeddings for test_dpr.py (open_index): exact, or a faiss
index_factory index that needs less memory or time. search() returns (scores, rows), rows the positions
in `emb`, best first. Exact ("flat") backends return the same rows as CPU faiss up to score ties:
  FaissIndex(emb)            faiss.IndexFlatIP on CPU, all cores, float32: DPR's index
  FaissIndex(emb, gpu=True)  faiss's GPU flat index, sharded over all visible GPUs (faiss built with GPU
                             support)
  TorchIndex(emb, devices)   chunked matmul + top-k in torch: the GPU path when faiss has no GPU support
Factory indexes ("HNSW32", "SQfp16", "IVF4096,PQ64", ...) are trained on a seeded random sample and
saved to / reused from an index file whose JSON sidecar names the embeddings it holds.
"""

import functools
import hashlib
import json
import os
import re
import time

import numpy as np
import torch
from tqdm import tqdm

from utils.errors import ConfigError, DataError
from utils.files import atomic_write

COPY_ROWS = 1 << 18  # rows converted/copied at a time while building: never a full-size temporary
# Training sample of trained indexes (IVF, PQ, SQ8, OPQ): 64 vectors per IVF list (faiss's k-means wants
# 39-256 per centroid: it warns below and subsamples above), at least 65,536 (256 per centroid of the
# 256-entry PQ/SQ codebooks), at most 2^20 (a 3 GiB float32 sample at 768-d), drawn with a fixed seed.
TRAIN_PER_LIST, TRAIN_MIN, TRAIN_MAX, TRAIN_SEED = 64, 1 << 16, 1 << 20, 0


def _import_faiss():
    """faiss, with its bundled OpenBLAS told the CPU's kernel family (only when OPENBLAS_CORETYPE is unset):
    the faiss-cpu wheel's OpenBLAS (0.3.15) does not know recent Xeons by model and falls back to its
    generic 'Prescott' kernels, which search several times slower (docs/benchmarks.md)."""
    if "OPENBLAS_CORETYPE" not in os.environ and os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
            os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
        elif {"avx2", "fma"} <= set(flags):
            os.environ["OPENBLAS_CORETYPE"] = "Haswell"
    import faiss

    return faiss


def faiss_gpu_count():
    """GPUs faiss can use: 0 for faiss-cpu builds and when faiss is not installed (the torch path needs no
    faiss)."""
    try:
        return getattr(_import_faiss(), "get_num_gpus", lambda: 0)()
    except ImportError:
        return 0


def _float32_fits(n, d, devices):
    """Whether a float32 copy of the corpus, split evenly over `devices`, fits in 80% of their free memory."""
    return all(n * d * 4 / len(devices) < 0.8 * torch.cuda.mem_get_info(dev)[0] for dev in devices)


def exact_search_device(n, d, free):
    """("gpu" or "cpu", why) for --index_device auto: the GPUs (free: bytes free on each) when a float16
    copy of the n x d corpus, split evenly over them, fits in 80% of each one's free memory (the GPU paths
    store float16 when float32 does not fit; the rest is room for the search); else faiss on CPU (float32)."""
    need, gib = n * d * 2, 1 << 30
    if not free:
        return "cpu", None
    if all(need / len(free) < 0.8 * f for f in free):
        return "gpu", None
    free_gib = " + ".join(f"{f / gib:.1f}" for f in free)
    return "cpu", (
        f"index: {n:,} x {d} vectors take {need / gib:.1f} GiB in float16, more than 80% of the "
        f"{free_gib} GiB free on the GPU(s): exact search on CPU (faiss, float32, "
        f"{2 * need / gib:.1f} GiB of RAM); --index_device gpu forces the GPU"
    )


class FaissIndex:
    def __init__(self, emb, gpu=False):
        faiss = _import_faiss()
        n, d = emb.shape
        if not gpu:
            self.index = faiss.IndexFlatIP(d)
            # Size the index once and fill it chunk by chunk: no float32 copy of a float16 corpus and
            # no reallocation while it grows (at 21M x 768 the index alone is 64 GB).
            self.index.codes.resize(n * d * 4)
            xb = faiss.rev_swig_ptr(self.index.get_xb(), n * d).reshape(n, d)
            for i in range(0, n, COPY_ROWS):
                xb[i : i + COPY_ROWS] = emb[i : i + COPY_ROWS]
            self.index.ntotal = n
            threads, core = faiss.omp_get_max_threads(), os.environ.get("OPENBLAS_CORETYPE", "auto")
            self.name = f"faiss IndexFlatIP, CPU float32, {threads} threads, OpenBLAS core {core}"
            return
        # One contiguous slice per GPU, filled chunk by chunk, then joined: IndexShards numbers the
        # rows of shard g after those of shards < g (adding through IndexShards would interleave them).
        num_gpus = faiss.get_num_gpus()
        # float16 storage also rounds the queries to float16 inside faiss, so use it only when needed.
        float16 = not _float32_fits(n, d, [torch.device("cuda", g) for g in range(num_gpus)])
        self.index = faiss.IndexShards(d, True, True)  # threaded, successive ids
        self._keep = []  # the GPU resources must outlive the shards
        for g in range(num_gpus):
            lo, hi = n * g // num_gpus, n * (g + 1) // num_gpus
            res, cfg = faiss.StandardGpuResources(), faiss.GpuIndexFlatConfig()
            cfg.device, cfg.useFloat16 = g, float16
            shard = faiss.GpuIndexFlatIP(res, d, cfg)
            shard.reserveMemory(hi - lo)
            for i in range(lo, hi, COPY_ROWS):
                shard.add(np.ascontiguousarray(emb[i : min(i + COPY_ROWS, hi)], dtype=np.float32))
            self.index.add_shard(shard)
            self._keep += [res, shard]
        self.name = f"faiss GPU flat IP, {num_gpus} GPU(s), {'float16' if float16 else 'float32'} storage"

    def search(self, queries, k):
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class TorchIndex:
    """Exact top-k by chunked matmul + top-k in torch. The corpus is split into contiguous shards, one per
    device, kept resident in `dtype` (float16: 32 GB at 21M x 768). Each chunk is upcast to float32 for the
    product, so scores are float32 inner products of the stored vectors, as in faiss.

    search_dtype float16/bfloat16 (opt-in, ours): the chunks are scored in that dtype (tensor cores, no
    float32 copy of each chunk), each keeps its top k' = max(2k, k + 64) candidates, and those are re-scored
    in float32, then cut to k: the same scores as the exact path, the same rows unless a passage of the
    true top-k fell below k' in the rounded scores."""

    def __init__(self, emb, devices, dtype=None, chunk_rows=1 << 16, search_dtype="float32"):
        n, d = emb.shape
        self.devices, self.chunk_rows = [torch.device(x) for x in devices], chunk_rows
        self.search_dtype = getattr(torch, search_dtype)
        # the embeddings' own dtype (float16 is lossless for float16 files), while float32 fits
        if dtype is None:
            fits = self.devices[0].type != "cuda" or _float32_fits(n, d, self.devices)
            dtype = torch.float32 if str(emb.dtype).endswith("float32") and fits else torch.float16
        self.shards, self.starts = [], []
        for g, dev in enumerate(self.devices):
            lo, hi = n * g // len(self.devices), n * (g + 1) // len(self.devices)
            if torch.is_tensor(emb) and self.devices == [emb.device] and emb.dtype == dtype:
                shard = (
                    emb  # already resident on the one device (bench_search generates the corpus on the GPU)
                )
            else:
                shard = torch.empty((hi - lo, d), dtype=dtype, device=dev)
                for i in range(lo, hi, COPY_ROWS):
                    # numpy rows through a copy: memmapped shards are read-only
                    rows = emb[i : min(i + COPY_ROWS, hi)]
                    shard[i - lo : i - lo + len(rows)] = torch.as_tensor(
                        rows if torch.is_tensor(rows) else np.array(rows)
                    ).to(dev)
            self.shards.append(shard)
            self.starts.append(lo)
        kinds = ", ".join(sorted({str(dev) for dev in self.devices}))
        self.name = (
            f"torch matmul+topk, {len(self.devices)} shard(s) on {kinds}, {str(dtype).split('.')[-1]} storage"
        )
        if search_dtype != "float32":
            self.name += f", {search_dtype} scores re-scored in float32"

    @torch.inference_mode()
    def search(self, queries, k, batch_size=4096):
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # no TF32: scores must be float32-exact
        try:
            batches = (queries[i : i + batch_size] for i in range(0, len(queries), batch_size))
            scores, rows = zip(*(self._search_batch(batch, k) for batch in batches))
        finally:
            torch.set_float32_matmul_precision(precision)
        return np.concatenate(scores), np.concatenate(rows)

    def _search_batch(self, queries, k):
        """Each chunk's top-k is merged into a running top-k per shard, and the shards' top-k at the end."""
        queries = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        q = [queries.to(dev) for dev in self.devices]
        exact = self.search_dtype == torch.float32
        wanted = k if exact else max(2 * k, k + 64)  # candidates per shard, re-scored in float32 if not exact
        low = q if exact else [x.to(self.search_dtype) for x in q]
        best = [None] * len(self.shards)
        # Chunks interleaved over the shards: kernels queue on every GPU at once.
        for start in range(0, max(len(s) for s in self.shards), self.chunk_rows):
            for g, shard in enumerate(self.shards):
                if start < len(shard):
                    chunk = shard[start : start + self.chunk_rows]
                    if exact:
                        scores = q[g] @ chunk.float().T
                    elif chunk.is_cuda:  # float32 out: a float16 score near 100 would be rounded to 1/16, a
                        # bfloat16 one to 1/2, enough to push true top-k passages out (cuBLAS sums in float32)
                        scores = torch.mm(low[g], chunk.to(self.search_dtype).T, out_dtype=torch.float32)
                    else:  # CPUs have no out_dtype matmul: a correctness path, not a fast one
                        scores = (low[g] @ chunk.to(self.search_dtype).T).float()
                    top = scores.topk(min(wanted, scores.shape[1]), dim=1)
                    found = (top.values, top.indices + (self.starts[g] + start))
                    best[g] = found if best[g] is None else _merge(best[g], found, wanted)
        if not exact:
            best = [self._rescore(q[g], g, rows, k) for g, (_, rows) in enumerate(best)]
        scores, rows = functools.reduce(lambda a, b: _merge(a, b, k), [(s.cpu(), r.cpu()) for s, r in best])
        return scores.numpy(), rows.numpy()

    def _rescore(self, q, g, rows, k, queries_at_once=256):
        """float32 scores of shard g's candidate rows (global ids, per query), and the top k of them."""
        at_once = range(0, len(q), queries_at_once)
        vectors = (self.shards[g][rows[i : i + queries_at_once] - self.starts[g]].float() for i in at_once)
        scores = torch.cat(
            [torch.einsum("qd,qcd->qc", q[i : i + queries_at_once], v) for i, v in zip(at_once, vectors)]
        )
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return top.values, rows.gather(1, top.indices)


def _merge(a, b, k):
    """Top-k of two (scores, rows) candidate lists, per query."""
    scores, rows = torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=1)
    scores, pick = scores.topk(min(k, scores.shape[1]), dim=1)
    return scores, rows.gather(1, pick)


def build_index(emb, device, search_dtype="float32"):
    """Exact search. device "cpu": faiss on CPU. "gpu": faiss's GPU index when faiss has GPU support,
    else the torch path on every visible GPU. search_dtype float16/bfloat16: the torch path's re-scored
    low-precision search (TorchIndex), on the CPU or every visible GPU."""
    if search_dtype != "float32":
        devices = ["cpu"] if device == "cpu" else [f"cuda:{g}" for g in range(torch.cuda.device_count())]
        return TorchIndex(emb, devices, search_dtype=search_dtype)
    if device == "cpu":
        return FaissIndex(emb)
    if faiss_gpu_count() > 0:
        return FaissIndex(emb, gpu=True)
    return TorchIndex(emb, [f"cuda:{g}" for g in range(torch.cuda.device_count())])


def open_index(spec, emb, device, embedding_dir, meta, path=None, nprobe=None, ef_search=None):
    """(index, description) for test_dpr.py. A factory index is read from `path` when that was built
    from these embeddings with this spec, else built (and saved to `path`); device "gpu" (or "auto"
    with faiss-gpu) copies it onto every GPU, each holding a slice. "flat:float16" / "flat:bfloat16": exact
    search's scores in that dtype, the best candidates re-scored in float32 (TorchIndex)."""
    flat = spec in ("flat", "flat:float16", "flat:bfloat16")
    if device == "auto" and flat:
        gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
        device, why = exact_search_device(*emb.shape, [torch.cuda.mem_get_info(g)[0] for g in gpus])
        if why:
            print(why)
    elif device == "auto":
        device = "gpu" if faiss_gpu_count() > 0 else "cpu"
    if flat:
        if path:
            raise ConfigError(
                f"--index_path saves a faiss index_factory index; --index {spec} searches the "
                "embeddings as they are"
            )
        index = build_index(emb, device, spec.partition(":")[2] or "float32")
        return index, index.name
    faiss = _import_faiss()
    if device == "gpu" and not faiss_gpu_count():
        raise ConfigError(
            f"--index {spec} on --index_device gpu needs faiss with GPU support (faiss-gpu); this faiss has "
            "none: use --index_device cpu, or --index flat (exact search on GPU through torch)"
        )
    record = {"spec": spec, **_source(embedding_dir, meta, emb)}
    if path and os.path.exists(path):
        index, how = _load(path, record), f"loaded from {path}"
    else:
        index, built = build_factory_index(emb, spec)
        how = "built" + (f", saved to {path}" if path else "")
        if path:
            _save(index, path, {**record, **built})
    if device == "gpu":
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds 1/n of the index: the point is to fit
        options.useFloat16 = (
            True  # IVF-PQ lookup tables in float16: GPU IVF-PQ needs it beyond 48 bytes per code
        )
        try:
            index = faiss.index_cpu_to_all_gpus(index, options)
        except RuntimeError as e:
            raise ConfigError(
                f"--index {spec}: faiss has no GPU version of it ({_faiss_message(e)}); "
                "use --index_device cpu"
            ) from None
    space, params = faiss.GpuParameterSpace() if device == "gpu" else faiss.ParameterSpace(), []
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        try:
            space.set_index_parameter(index, name, value)
            params.append(f"{name} {value}")
        except (RuntimeError, TypeError):
            # not a parameter of this index (nprobe of HNSW, efSearch of IVF over a flat quantizer), or None
            pass
    return (
        index,
        f"faiss {spec}, inner product, on {device} ({', '.join(params) or 'no search parameters'}), {how}",
    )


def build_factory_index(emb, spec, seed=TRAIN_SEED):
    """(faiss index, {train_rows, train_s, build_s}): trained on a random sample, then filled COPY_ROWS
    at a time, so the float32 copy in memory is one chunk, never the corpus."""
    faiss, start = _import_faiss(), time.perf_counter()
    try:
        index = faiss.index_factory(emb.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        inner = faiss.downcast_index(ivf or index)
        # faiss's default for PQ: it only serves Hamming-filtered
        if hasattr(inner, "do_polysemous_training"):
            inner.do_polysemous_training = (
                False  # search, never used here, and takes minutes; same results without
            )
        wanted = max(TRAIN_MIN, TRAIN_PER_LIST * (ivf.nlist if ivf else 0))
        size = 0 if index.is_trained else min(len(emb), TRAIN_MAX, wanted)
        if size:
            print(f"training {spec} on {size:,} of {len(emb):,} passages (random, seed {seed})")
            rows = np.sort(np.random.default_rng(seed).choice(len(emb), size, replace=False))
            index.train(np.asarray(emb[rows], dtype=np.float32))
    except RuntimeError as e:
        raise ConfigError(f"--index {spec!r}: {_faiss_message(e)}") from None
    trained = time.perf_counter()
    with tqdm(total=len(emb), desc=f"add to {spec}", unit="passage") as bar:
        for i in range(0, len(emb), COPY_ROWS):
            index.add(np.ascontiguousarray(emb[i : i + COPY_ROWS], dtype=np.float32))
            bar.update(min(COPY_ROWS, len(emb) - i))
    return index, {
        "train_rows": size,
        "train_s": round(trained - start, 1),
        "build_s": round(time.perf_counter() - start, 1),
    }


def _faiss_message(e):
    """faiss's error without its C++ location ("Error in ... at index_factory.cpp:1228: ")."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip().splitlines()[0])


def _source(embedding_dir, meta, emb):
    """What a saved index must match: the embedding dir, model, count, dim, dtype, and a hash of 16 of
    the vectors (embeddings re-made in the same dir by a retrained encoder differ there)."""
    probe = np.unique(np.linspace(0, len(emb) - 1, 16).astype(np.int64))
    return {
        "embedding_dir": os.path.abspath(embedding_dir),
        "model": meta.get("model"),
        "num_passages": len(emb),
        "dim": int(emb.shape[1]),
        "dtype": str(emb.dtype),
        "vectors_sha1": hashlib.sha1(np.asarray(emb[probe]).tobytes()).hexdigest(),
    }


def _load(path, record):
    try:
        with open(path + ".json") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: cannot read {path}.json, which says what the index was built from ({e}); "
            f"delete {path} to rebuild it"
        ) from None
    differ = [f"{k} {saved.get(k)!r}, now {v!r}" for k, v in record.items() if saved.get(k) != v]
    if differ:
        raise DataError(
            f"{path} was built from other embeddings or with another --index ({'; '.join(differ)}): "
            "delete it or give another --index_path"
        )
    try:
        return _import_faiss().read_index(path)
    except RuntimeError as e:
        raise DataError(
            f"{path}: not a readable faiss index ({_faiss_message(e)}); delete it to rebuild it"
        ) from None


def _save(index, path, record):
    """faiss's own format, through atomic_write; the sidecar is removed first and written last, so an
    index file without one (a killed save) is refused, never trusted."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path + ".json"):
        os.remove(path + ".json")
    faiss = _import_faiss()
    with atomic_write(path, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
    with atomic_write(path + ".json") as f:
        json.dump(record, f, indent=1)
