"""Every benchmark in one command, one table: workload, nanoDPR-style baseline, ours, ratio, device,
and each GPU figure extrapolated to the full NQ job next to the seed replication's published durations.

    # this CPU, small sizes, < 10 min on 2 cores
    python bench/run_all.py
    # one GPU, NQ scale (bert-base, 21M vectors), < 8 min
    python bench/run_all.py --device gpu --scale nq --out DIR

Each bench script also runs on its own (see its docstring); this only calls them and reads their --json.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))

NQ_PASSAGES = 21_015_324
NQ_TEST_QUESTIONS = 3_610
NQ_TRAIN_STEPS = 18_400  # 40 epochs of 58,880 questions at batch 128 (DPR's recipe)
# The seed replication's published durations: (8xV100, 4x3090)
SEED = {"encode": ("4h42m", "7h55m"), "search": ("58 s", "1h43m"), "train": ("4h29m", "6h52m")}

# (script, args) per workload and scale. CPU sizes keep the whole run < 10 minutes on 2 cores.
RUNS = {
    "cpu": {
        "train": (
            "bench_train.py",
            ["--device", "cpu", "--model", "small", "--batch_size", "8", "--chunk", "4", "--steps", "2"],
        ),
        "encode": ("bench_embed.py", ["--device", "cpu", "--model", "minilm", "--n", "256"]),
        "search": (
            "bench_search.py",
            ["--n", "100000", "--queries", "1000", "--paths", "faiss-cpu", "torch-cpu"],
        ),
        "score": ("bench_score.py", ["--questions", "200"]),
    },
    "nq": {
        "train": (
            "bench_train.py",
            ["--device", "cuda", "--model", "base", "--batch_size", "128", "--chunk", "32", "--steps", "8"],
        ),
        "encode": ("bench_embed.py", ["--device", "cuda", "--model", "bert-base", "--n", "50000"]),
        "search": (
            "bench_search.py",
            [
                "--n",
                str(NQ_PASSAGES),
                "--queries",
                str(NQ_TEST_QUESTIONS),
                "--paths",
                "torch-gpu",
                "torch-gpu:float16",
                "torch-gpu:bfloat16",
            ],
        ),
        "score": ("bench_score.py", ["--questions", "600"]),
    },
}


def hours(seconds):
    return (
        f"{seconds / 3600:.2f} h"
        if seconds >= 3600
        else f"{seconds / 60:.1f} min"
        if seconds >= 60
        else f"{seconds:.1f} s"
    )


def run(name, script, args, out_dir, extra):
    path = os.path.join(out_dir, f"{name}.json")
    cmd = [sys.executable, os.path.join(BENCH, script), *args, *extra.get(name, []), "--json", path]
    print(f"\n==> {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    with open(path) as f:
        figures = json.load(f)
    figures["wall_s"] = round(time.perf_counter() - t, 1)
    return figures


def rows_for(name, f):
    """(workload, baseline, ours, ratio, device, full-NQ extrapolation) rows from one bench's figures."""
    if name == "train":
        by = {r["variant"]: r for r in f["results"]}
        base, rows = by["nanodpr"], []
        for v in ("ours", "ours_gc"):
            r = by[v]
            nq = (
                f"{hours(NQ_TRAIN_STEPS / r['steps_per_s'])} for 40 epochs" if r["batch_size"] == 128 else "-"
            )
            mem = f", {r['peak_mem_gb']:.1f} GiB" if r.get("peak_mem_gb") else ""
            rows.append(
                (
                    f"train {f['model']} batch {r['batch_size']}{' grad-cache' if v == 'ours_gc' else ''}",
                    f"{base['examples_per_s']:.1f} ex/s",
                    f"{r['examples_per_s']:.1f} ex/s{mem}",
                    r["examples_per_s"] / base["examples_per_s"],
                    f["device"],
                    nq,
                )
            )
        return rows
    if name == "encode":
        projected = f["ours_projected_passages_per_s"]
        nq = (
            f"{hours(NQ_PASSAGES / projected)} for 21M at {projected:.0f} p/s (extrapolated: min of model "
            "and tokenizing rates)"
        )
        return [
            (
                f"encode {f['model']} ({f['n']} psgs)",
                f"{f['nanodpr_passages_per_s']:.1f} p/s",
                f"{f['ours_passages_per_s']:.1f} p/s whole run; model {f['ours_model_passages_per_s']:.1f} "
                "p/s, "
                f"tokenizing {f['tokenize_passages_per_s_per_worker']:.0f} p/s x {f['num_workers']} workers; "
                f"model alone {f['model_alone_passages_per_s']:.1f} p/s",
                f["ratio"],
                f["device"],
                nq,
            )
        ]
    if name == "search":
        res = {r["path"]: r for r in f["results"]}
        base = res.get("faiss-cpu")
        rows = []
        for path, r in res.items():
            scale = NQ_PASSAGES / f["n"] * NQ_TEST_QUESTIONS / f["queries"]
            nq = hours(r["search_s"] * scale) + (" (linear extrapolation)" if scale != 1 else " (measured)")
            rows.append(
                (
                    f"search {path} {f['n']:,}x{f['dim']} {f['dtype']}, {f['queries']} q",
                    f"{base['search_s']:.2f} s" if base else "-",
                    f"{r['search_s']:.2f} s",
                    base["search_s"] / r["search_s"] if base else None,
                    f["device"] if "gpu" in path else f["cpu"],
                    nq,
                )
            )
        return rows
    if name == "score":
        nq = hours(f["ours_s"] * NQ_TEST_QUESTIONS / f["questions"]) + " for NQ test"
        return [
            (
                f"score has_answer {f['pairs']:,} pairs",
                f"{f['baseline_s']:.2f} s (1 thread)",
                f"{f['ours_s']:.2f} s ({f['workers']} procs)",
                f["ratio"],
                f"cpu, {f['cores']} cores",
                nq,
            )
        ]
    raise ValueError(name)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument(
        "--scale", choices=["small", "nq"], default="small", help="nq: full NQ sizes, needs --device gpu"
    )
    p.add_argument(
        "--out", default="outputs/bench", help="where the per-bench JSON, table.md and figures.json go"
    )
    p.add_argument("--only", nargs="+", choices=["train", "encode", "search", "score"], help="a subset")
    p.add_argument(
        "--tokenizer",
        help="bert-base-uncased tokenizer dir for the encode bench (default: the MiniLM package's)",
    )
    args = p.parse_args()
    if args.scale == "nq" and args.device != "gpu":
        sys.exit("error: --scale nq needs --device gpu")
    runs = RUNS["nq" if args.scale == "nq" else "cpu"]
    if args.device == "gpu" and args.scale == "small":
        runs = {
            k: (s, [a.replace("cpu", "cuda") if a == "cpu" else a for a in v]) for k, (s, v) in runs.items()
        }
    extra = {"encode": ["--tokenizer", args.tokenizer]} if args.tokenizer else {}
    os.makedirs(args.out, exist_ok=True)

    figures, rows, t0 = {}, [], time.perf_counter()
    for name in args.only or list(runs):
        script, bench_args = runs[name]
        figures[name] = run(name, script, bench_args, args.out, extra)
        rows += rows_for(name, figures[name])
    total = time.perf_counter() - t0

    header = ("workload", "baseline (nanoDPR-style)", "ours", "ratio", "device", "full NQ job, ours")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for w, b, o, r, d, nq in rows:
        lines.append(f"| {w} | {b} | {o} | {f'{r:.2f}x' if r else '-'} | {d} | {nq} |")
    seed = "; ".join(f"{k} {a} on 8xV100, {b} on 4x3090" for k, (a, b) in SEED.items())
    table = "\n".join(lines) + f"\n\nSeed replication, published: {seed}.\n"
    stamp = (
        f"{datetime.date.today()}, `python bench/run_all.py {' '.join(sys.argv[1:])}`, {total:.0f} s in all"
    )
    print(f"\n{table}\n{stamp}")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n" + stamp + "\n")
    with open(os.path.join(args.out, "figures.json"), "w") as f:
        json.dump(
            {"date": str(datetime.date.today()), "argv": sys.argv[1:], "total_s": total, "figures": figures},
            f,
            indent=1,
        )
    print(f"wrote {args.out}/table.md and figures.json")


if __name__ == "__main__":
    main()
