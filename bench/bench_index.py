"""Memory, time, size and recall of test_dpr.py's --index choices on a synthetic corpus, one index per
process.

    # writes the corpus and questions
    python bench/bench_index.py --dir /tmp/synth --n 1000000
    # the exact top-k (first: recall is against it)
    python bench/bench_index.py --dir /tmp/synth --index flat
    # then each index type, one process each
    python bench/bench_index.py --dir /tmp/synth --index SQfp16
    # builds + saves; run again: loads + searches
    python bench/bench_index.py --dir /tmp/synth --index IVF4096,PQ64 --nprobe 64
    # Markdown table, 21M extrapolation
    python bench/bench_index.py --dir /tmp/synth --table

The corpus is written in doc2embedding.py's layout (float16 shards, utils/embeddings.py) and read
exactly as test_dpr.py reads it (memmapped, utils.index.open_index), so build memory is the real
one. Vectors: x = (c_t + u) * s @ R with c_t one of 10,000 random topic centres, u Gaussian noise,
s_i = i^-0.5 (a decaying spectrum as in trained encoders) and R a random rotation; each question is
a noisy copy of a random passage's latent. Uniform random vectors would have no neighbourhoods and
understate every approximate index. Recall@k: overlap with the exact flat top-k (run flat first).
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from utils.embeddings import load_embeddings, shard_paths, write_meta  # noqa: E402
from utils.index import open_index  # noqa: E402

NQ_PASSAGES = 21_015_324
BLOCK = 1 << 16


def parse_args():
    p = argparse.ArgumentParser(
        description="test_dpr.py's index types on a synthetic corpus: RAM, build/search time, size, recall"
    )
    p.add_argument(
        "--dir", required=True, help="corpus dir (written on first use), index files and results.jsonl"
    )
    p.add_argument("--n", type=int, default=1_000_000, help="passages, when the corpus is written")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=3610, help="NQ test has 3,610 questions")
    p.add_argument(
        "--shards", type=int, default=2, help="embedding shards (doc2embedding writes one per process)"
    )
    p.add_argument("--k", type=int, default=100)
    p.add_argument(
        "--index",
        help="flat or a faiss index_factory string, as test_dpr.py --index (none: write the corpus)",
    )
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--ef_search", type=int, default=256)
    p.add_argument("--table", action="store_true", help="print the results so far as a Markdown table")
    return p.parse_args()


def write_corpus(out_dir, n, dim, num_queries, num_shards, seed=0):
    """float16 shards + ids + meta.json as doc2embedding.py writes them, block by block; queries.npy
    beside."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1) ** -0.5
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    topics = rng.standard_normal((10_000, dim))
    latent = lambda rows: topics[rng.integers(0, len(topics), rows)] + rng.standard_normal((rows, dim))
    os.makedirs(out_dir, exist_ok=True)
    counts = [len(c) for c in np.array_split(np.arange(n), num_shards)]
    keep, start = {}, 0  # latents of the passages the questions are made from
    picks = np.sort(rng.choice(n, num_queries, replace=False))
    for rank, count in enumerate(counts):
        emb_path, ids_path = shard_paths(out_dir, rank)
        emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float16, shape=(count, dim))
        for i in range(0, count, BLOCK):
            z = latent(min(BLOCK, count - i))
            emb[i : i + len(z)] = (z * scale) @ rotation
            for j in picks[(picks >= start + i) & (picks < start + i + len(z))]:
                keep[j] = z[j - start - i]
        emb.flush()
        np.save(ids_path, np.arange(start + 1, start + count + 1, dtype=np.int64))
        start += count
    queries = np.stack([keep[j] + 0.5 * rng.standard_normal(dim) for j in picks])
    np.save(os.path.join(out_dir, "queries.npy"), ((queries * scale) @ rotation).astype(np.float32))
    write_meta(
        out_dir,
        {
            "model": "synthetic",
            "role": "passage",
            "pooling": "cls",
            "dim": dim,
            "dtype": "float16",
            "max_length": 0,
            "num_passages": n,
            "num_shards": num_shards,
            "shard_counts": counts,
            "source": None,
        },
    )


def measure(args):
    ids, emb = load_embeddings(args.dir, mmap=True)
    queries = np.load(os.path.join(args.dir, "queries.npy"))
    path = None if args.index == "flat" else os.path.join(args.dir, args.index.replace(",", "_") + ".faiss")
    loaded = path is not None and os.path.exists(path)
    load_avg = os.getloadavg()[0]
    t = time.perf_counter()
    index, name = open_index(
        args.index, emb, "cpu", args.dir, {"model": "synthetic"}, path, args.nprobe, args.ef_search
    )
    build = time.perf_counter() - t
    print(f"{'loaded' if loaded else 'built'} in {build:.1f} s: {name}", flush=True)
    t = time.perf_counter()
    _, rows = index.search(queries, args.k)
    search = time.perf_counter() - t
    truth_path = os.path.join(args.dir, f"truth_top{args.k}.npy")
    if args.index == "flat":
        np.save(truth_path, rows)
    truth = np.load(truth_path)
    recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(rows.tolist(), truth.tolist())])
    top10 = np.mean([len(set(a) & set(b[:10])) / 10 for a, b in zip(rows.tolist(), truth.tolist())])
    built = {}
    if path and not loaded:
        with open(path + ".json") as f:
            sidecar = json.load(f)
        built = {"train_rows": sidecar["train_rows"], "train_s": sidecar["train_s"]}
    size = (
        os.path.getsize(path)
        if path
        else sum(os.path.getsize(shard_paths(args.dir, r)[0]) for r in range(args.shards))
    )
    result = {
        "index": args.index,
        "n": len(ids),
        "dim": emb.shape[1],
        "queries": len(queries),
        "k": args.k,
        "loaded": loaded,
        **built,
        "params": name.split("(")[1].split(")")[0] if "(" in name else "",
        "build_s": round(build, 1),
        "search_s": round(search, 1),
        f"recall_at_{args.k}": round(float(recall), 4),
        f"top10_in_{args.k}": round(float(top10), 4),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "disk_gib": round(size / 2**30, 3),
        "load_avg": [round(load_avg, 1), round(os.getloadavg()[0], 1)],
        "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))
    with open(os.path.join(args.dir, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


def table(out_dir):
    """Building (one row per index), searching (one row per index and search parameters), and the 21M
    extrapolation: index memory, disk and adding vectors linear in n; training constant (same sample
    size); HNSW's graph build ~ n log n and search ~ log n; flat, SQ and IVF (same nlist) search linear."""
    with open(os.path.join(out_dir, "results.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    built = {r["index"]: r for r in rows if not r["loaded"]}  # the last build of each index
    # the last search of each
    search = {(r["index"], r["params"]): r for r in rows if r["loaded"] or r["index"] == "flat"}
    print(
        "| index | build (s) | of which training (s) | peak RSS building (GiB) | on disk (GiB) |\n"
        "|:--|--:|--:|--:|--:|"
    )
    for r in built.values():
        print(
            f"| {r['index']} | {r['build_s']} | {r.get('train_s', '-')} | {r['peak_rss_gib']} | "
            f"{r['disk_gib']} |"
        )
    print(
        "\n| index | search parameters | peak RSS searching (GiB) | search (s) | recall@100 | exact top-10 "
        "in top-100 |\n|:--|:--|--:|--:|--:|--:|"
    )
    for r in search.values():
        top10 = r.get("top10_in_100", 1.0 if r["recall_at_100"] == 1 else "-")  # exact indexes keep all
        print(
            f"| {r['index']} | {r['params'] or '-'} | {r['peak_rss_gib']} | {r['search_s']} | "
            f"{r['recall_at_100']} | {top10} |"
        )
    print(f"\nExtrapolated to {NQ_PASSAGES:,} passages (not measured):\n")
    print(
        "| index | search parameters | index in RAM (GiB) | build (h) | search (s) | on disk (GiB) |\n"
        "|:--|:--|--:|--:|--:|--:|"
    )
    for r in search.values():
        f, hnsw = NQ_PASSAGES / r["n"], "HNSW" in r["index"]
        log_f = np.log(NQ_PASSAGES) / np.log(r["n"])
        b = built[r["index"]]
        build = b.get("train_s", 0) + (b["build_s"] - b.get("train_s", 0)) * f * (log_f if hnsw else 1)
        ram = r["disk_gib"] * f if r["index"] != "flat" else r["n"] * r["dim"] * 4 * f / 2**30
        print(
            f"| {r['index']} | {r['params'] or '-'} | {ram:.1f} | {build / 3600:.2f} | "
            f"{r['search_s'] * (log_f if hnsw else f):.0f} | {r['disk_gib'] * f:.1f} |"
        )


def main():
    args = parse_args()
    if args.table:
        table(args.dir)
    elif args.index:
        measure(args)
    else:
        t = time.perf_counter()
        write_corpus(args.dir, args.n, args.dim, args.queries, args.shards)
        print(
            f"wrote {args.n:,} x {args.dim} float16 vectors and {args.queries} questions to {args.dir} in "
            f"{time.perf_counter() - t:.0f} s"
        )


if __name__ == "__main__":
    main()
