"""Search speed of test_dpr.py's index paths: exact top-k inner product over random vectors.

    python bench/bench_search.py --n 200000 --dim 768 --queries 3610 --k 100 \\
        [--dtype float16|float32] [--json OUT]
    python bench/bench_search.py --n 21015324 --paths torch-gpu \\
        --json OUT  # NQ scale on one GPU (32 GB float16)

Paths: faiss-cpu (faiss.IndexFlatIP, all cores: what DPR and nanoDPR use), torch-cpu, and on a GPU faiss-gpu
(when faiss has GPU support) and torch-gpu; torch-gpu:float16, torch-gpu:bfloat16 and torch-cpu:bfloat16 are
the opt-in low-precision search (test_dpr.py --index flat:float16 ...: scores in that dtype, the best max(2k,
k+64) re-scored in float32). Build = loading the vectors into the index; search = all queries at once after
one small warm-up search. Each path's ids are checked against a float64 brute-force top-k of the first 16
queries (overlap@k; below 1 only through near-ties).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from utils.index import FaissIndex, TorchIndex, faiss_gpu_count  # noqa: E402

CHECK_QUERIES = 16


def parse_args():
    p = argparse.ArgumentParser(
        description="exact top-k search speed: CPU faiss vs the torch path (and GPU paths)"
    )
    p.add_argument("--n", type=int, default=200_000, help="corpus vectors (NQ: 21,015,324)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=3610, help="NQ test has 3,610 questions")
    p.add_argument("--k", type=int, default=100)
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="of the stored embeddings (doc2embedding's default: float16)",
    )
    p.add_argument(
        "--paths",
        nargs="+",
        choices=[
            "faiss-cpu",
            "torch-cpu",
            "faiss-gpu",
            "torch-gpu",
            "torch-gpu:float16",
            "torch-gpu:bfloat16",
            "torch-cpu:bfloat16",
        ],
        help="default: faiss-cpu and torch-cpu, plus the GPU paths when a GPU is present",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here (for bench/run_all.py)")
    return p.parse_args()


def random_corpus(n, dim, dtype, device, seed):
    """Standard-normal vectors made in blocks on `device` (the GPU makes 21M x 768 in seconds)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    corpus = torch.empty((n, dim), dtype=dtype, device=device)
    for i in range(0, n, 1 << 20):
        rows = min(1 << 20, n - i)
        corpus[i : i + rows] = torch.randn((rows, dim), generator=gen, device=device)
    return corpus


def reference_topk(corpus, queries, k):
    """float64 brute-force top-k rows, in blocks on the corpus's device."""
    q = queries.to(corpus.device, torch.float64)
    best_s, best_r = None, None
    for i in range(0, len(corpus), 1 << 18):
        s = q @ corpus[i : i + (1 << 18)].double().T
        s, r = s.topk(min(k, s.shape[1]), dim=1)
        s, r = (s, r + i) if best_s is None else (torch.cat([best_s, s], 1), torch.cat([best_r, r + i], 1))
        best_s, pick = s.topk(min(k, s.shape[1]), dim=1)
        best_r = r.gather(1, pick)
    return best_r.cpu().numpy()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    args = parse_args()
    gpu = torch.cuda.is_available()
    paths = args.paths or ["faiss-cpu", "torch-cpu"] + (["faiss-gpu"] if faiss_gpu_count() else []) + (
        ["torch-gpu"] if gpu else []
    )
    if any("gpu" in p for p in paths) and not gpu:
        raise SystemExit("error: a GPU path was asked for, but torch sees no CUDA device")
    if "faiss-gpu" in paths and not faiss_gpu_count():
        raise SystemExit("error: faiss-gpu was asked for, but this faiss has no GPU support")
    dtype = getattr(torch, args.dtype)
    device = "cuda:0" if gpu and any("gpu" in p for p in paths) else "cpu"
    t = time.perf_counter()
    corpus = random_corpus(args.n, args.dim, dtype, device, args.seed)
    queries = torch.randn((args.queries, args.dim), generator=torch.Generator().manual_seed(args.seed + 1))
    reference = reference_topk(corpus, queries[:CHECK_QUERIES], args.k)
    corpus_np = corpus.cpu().numpy() if any("cpu" in p for p in paths) else None
    print(
        f"{args.n:,} x {args.dim} {args.dtype} random vectors "
        f"({corpus.numel() * corpus.element_size() / 2**30:.1f} GiB) "
        f"on {device}, {args.queries} queries, k={args.k}: made in {time.perf_counter() - t:.1f} s"
    )

    results = []
    for path in paths:
        t = time.perf_counter()
        if path == "faiss-cpu":
            index = FaissIndex(corpus_np)
        elif path == "faiss-gpu":
            index = FaissIndex(corpus_np if corpus_np is not None else corpus.cpu().numpy(), gpu=True)
        elif path.startswith("torch-cpu"):
            index = TorchIndex(
                corpus_np if corpus.device.type == "cuda" else corpus,
                ["cpu"],
                search_dtype=path[10:] or "float32",
            )
        else:
            index = TorchIndex(
                corpus,
                [f"cuda:{g}" for g in range(torch.cuda.device_count())],
                search_dtype=path[10:] or "float32",
            )
        sync()
        build = time.perf_counter() - t
        index.search(queries[:8].numpy(), args.k)  # warm-up: BLAS / cuBLAS / faiss initialisation
        sync()
        t = time.perf_counter()
        _, rows = index.search(queries.numpy(), args.k)
        search = time.perf_counter() - t
        overlap = np.mean(
            [len(set(a) & set(b)) / args.k for a, b in zip(rows[:CHECK_QUERIES].tolist(), reference.tolist())]
        )
        results.append(
            {
                "path": path,
                "index": index.name,
                "build_s": round(build, 3),
                "search_s": round(search, 3),
                "queries_per_s": round(args.queries / search, 1),
                "overlap_at_k": round(float(overlap), 4),
            }
        )
        print(
            f"{path:18s}  build {build:8.2f} s  search {search:8.2f} s  {args.queries / search:10.1f} q/s  "
            f"overlap@{args.k} vs float64 {overlap:.4f}  [{index.name}]"
        )
        del index
        if gpu:
            torch.cuda.empty_cache()

    cpu_desc = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    figures = {
        "workload": "search",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "cpu": cpu_desc,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
