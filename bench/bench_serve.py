"""search_dpr.py --serve under load, on loopback: latency of one client, throughput of 1 and 8 clients, with
micro-batching (--max_batch 32) and one request at a time (--max_batch 1), and the server's memory over a
long run. Each request is one question (GET /search?q=...&k=10); the server runs as its own process.

    python bench/bench_serve.py --embedding_dir E --pretrained_model_path Q --wikipedia_path P --qa_file Q.csv
    python bench/bench_serve.py ... --index HNSW32 --index_path E/HNSW32.faiss   # any test_dpr.py index
    python bench/bench_serve.py --synthetic DIR ...   # a bench_index.py corpus; writes DIR/psgs.tsv
    python bench/bench_serve.py ... --load_requests 2000                          # + memory, 2,000 requests

Prints one JSON line per measurement (with the load average, `uptime`'s first figure, before and after)
and a Markdown table; --json appends the lines to a file.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere
from utils.data import read_qas  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description="latency, throughput and memory of search_dpr.py --serve")
    p.add_argument("--embedding_dir")
    p.add_argument("--pretrained_model_path", required=True)
    p.add_argument("--wikipedia_path")
    p.add_argument(
        "--synthetic", help="a bench_index.py corpus dir: embeddings there, passages written to DIR/psgs.tsv"
    )
    p.add_argument("--qa_file", required=True, help="questions to ask (cycled)")
    p.add_argument("--index", default="flat")
    p.add_argument("--index_path")
    p.add_argument("--requests", type=int, default=200, help="per measurement")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument(
        "--max_batch", type=int, nargs="+", default=[32, 1], help="server settings to compare; 1: no batching"
    )
    p.add_argument(
        "--load_requests",
        type=int,
        default=0,
        help="memory test: this many requests from 8 clients (batched server)",
    )
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", help="append the measurements here")
    return p.parse_args()


def write_synthetic_passages(path, n):
    """DPR's TSV layout, ids 1..n as bench_index.py numbers its vectors, ~100 bytes a passage."""
    with open(path + ".tmp", "w") as f:
        f.write("id\ttext\ttitle\n")
        for i in range(1, n + 1):
            f.write(
                f'{i}\t"Synthetic passage number {i}, a stand-in for a hundred words of text."\tPassage {i}\n'
            )
    os.replace(path + ".tmp", path)


def start_server(args, max_batch, log_path):
    """search_dpr.py --serve on a free loopback port: (process, port), once it says it is serving."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "search_dpr.py"),
        "--serve",
        "--port",
        "0",
        "--index_device",
        "cpu",
        "--embedding_dir",
        args.embedding_dir,
        "--pretrained_model_path",
        args.pretrained_model_path,
        "--wikipedia_path",
        args.wikipedia_path,
        "--index",
        args.index,
        "--max_batch",
        str(max_batch),
    ]
    cmd += ["--index_path", args.index_path] if args.index_path else []
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log_path) as f:
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", f.read())
        if found:
            return proc, int(found.group(1))
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"error: the server did not start (see {log_path})")


def ask(port, question, k):
    """Seconds for one GET /search; raises unless 200 with k passages."""
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/search?" + urllib.parse.urlencode({"q": question, "k": k}))
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    if resp.status != 200 or len(data["results"][0]) != k:
        raise RuntimeError(f"HTTP {resp.status}: {data}")
    return time.perf_counter() - t


def run_clients(port, questions, clients, requests, k):
    """(wall seconds, per-request seconds): `clients` threads share `requests` requests."""
    times, errors, counter, lock = [], [], iter(range(requests)), threading.Lock()

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None or errors:
                return
            try:
                times.append(ask(port, questions[i % len(questions)], k))
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    if errors:
        raise errors[0]
    return time.perf_counter() - start, np.array(times)


def batches(port):
    """(batches, questions) the server has answered so far (GET /health)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    health = json.loads(conn.getresponse().read())
    conn.close()
    return health["batches"], health["questions"]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def main():
    args = parse_args()
    if args.synthetic:
        args.embedding_dir = args.embedding_dir or args.synthetic
        args.wikipedia_path = args.wikipedia_path or os.path.join(args.synthetic, "psgs.tsv")
        if not os.path.exists(args.wikipedia_path):
            with open(os.path.join(args.embedding_dir, "meta.json")) as f:
                write_synthetic_passages(args.wikipedia_path, json.load(f)["num_passages"])
    questions = [q for q, _ in read_qas(args.qa_file)]
    rows, base = (
        [],
        {"corpus": args.embedding_dir, "index": args.index, "k": args.k, "date": time.strftime("%Y-%m-%d")},
    )
    for max_batch in args.max_batch:
        log_path = os.path.join(args.embedding_dir, f"bench_serve_{max_batch}.log")
        proc, port = start_server(args, max_batch, log_path)
        try:
            run_clients(port, questions, 1, 10, args.k)  # warm up
            for clients in args.clients:
                load = os.getloadavg()[0]
                before = batches(port)
                wall, times = run_clients(port, questions, clients, args.requests, args.k)
                (b, q), (b0, q0) = batches(port), before
                rows.append(
                    {
                        **base,
                        "max_batch": max_batch,
                        "clients": clients,
                        "requests": args.requests,
                        "questions_per_s": round(args.requests / wall, 1),
                        "p50_ms": round(1000 * np.percentile(times, 50), 1),
                        "p99_ms": round(1000 * np.percentile(times, 99), 1),
                        "mean_batch": round((q - q0) / (b - b0), 2),
                        "load_avg": [round(load, 1), round(os.getloadavg()[0], 1)],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            if args.load_requests and max_batch > 1:  # memory: RSS after each tenth of the requests
                load, rss, wall = os.getloadavg()[0], [round(rss_mib(proc.pid), 1)], 0.0
                for _ in range(10):
                    wall += run_clients(port, questions, 8, args.load_requests // 10, args.k)[0]
                    rss.append(round(rss_mib(proc.pid), 1))
                rows.append(
                    {
                        **base,
                        "max_batch": max_batch,
                        "clients": 8,
                        "requests": args.load_requests,
                        "load_test": True,
                        "questions_per_s": round(args.load_requests / wall, 1),
                        "rss_mib": rss,
                        "load_avg": [round(load, 1), round(os.getloadavg()[0], 1)],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n| server | clients | questions/s | p50 (ms) | p99 (ms) | questions per batch | load avg |")
    print("|:--|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        name = "one at a time" if r["max_batch"] == 1 else f"micro-batching ({r['max_batch']})"
        load = r["load_avg"][0]
        if r.get("load_test"):
            rss = r["rss_mib"]
            name += (
                f", {r['requests']} requests: RSS {rss[0]} -> {rss[-1]} MiB (min {min(rss)}, max {max(rss)})"
            )
            print(f"| {name} | 8 | {r['questions_per_s']} | - | - | - | {load} |")
        else:
            speed = f"{r['questions_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']}"
            print(f"| {name} | {r['clients']} | {speed} | {load} |")


if __name__ == "__main__":
    main()
