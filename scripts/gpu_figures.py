"""The GPU check's figures in one markdown summary, from the JSON its stages wrote into WORK
(scripts/gpu_check.sh calls it; a missing file means its stage failed or was skipped and is left out).

    python scripts/gpu_figures.py WORK
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.data import read_results  # noqa: E402


def load(work, name):
    path = os.path.join(work, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def main(work):
    print("\n## Encoding: doc2embedding.py, whole run (bench/bench_embed.py (b))\n")
    print("| run | passages | passages/s whole run | model passages/s | first window s | workers | tokens per batch |")
    print("|---|---|---|---|---|---|---|")
    for name, label in (("encode_1m", "new defaults"), ("encode_200k", "new defaults"),
                        ("encode_200k_old", "old defaults (no mask on unpadded batches, 65,536 tokens, 8 workers)")):
        f = load(work, f"bench_{name}/encode.json")
        if f and "ours_passages_per_s" in f:
            print(f"| {label} | {f['n']:,} | {f['ours_passages_per_s']:.0f} | {f['ours_model_passages_per_s']:.0f} | "
                  f"{f['first_window_s']:.2f} | {f['num_workers']} | {f.get('max_tokens_per_batch') or 'default'} |")
    f = load(work, "bench_model_alone/encode.json")
    if f and "model_alone" in f:
        print(f"\n## Encoding: the model alone, {f['model']} on {f['device']} (bench/bench_embed.py (c))\n")
        print("| variant | passages/s (second pass) | first pass | batches (unpadded) | peak GiB | min cosine to fp32 |")
        print("|---|---|---|---|---|---|")
        for name, v in f["model_alone"].items():
            peak = f"{v['peak_gib']:.2f}" if v.get("peak_gib") is not None else "-"
            print(f"| {name} | {v['passages_per_s']:.0f} | {v['cold_passages_per_s']:.0f} | {v['batches']} ({v['unpadded_batches']}) "
                  f"| {peak} | {v['min_cosine']:.6f} |")
    f = load(work, "bench_train/train.json")
    if f:
        print(f"\n## Training step, {f['model']} batch {f['batch_size']} + 1 hard negative, {f['device']} (bench/bench_train.py)\n")
        print("| variant | steps/s | examples/s | peak GiB | vs ours |\n|---|---|---|---|---|")
        for r in f["results"]:
            peak = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "-"
            print(f"| {r['variant']} | {r['steps_per_s']:.2f} | {r['examples_per_s']:.1f} | {peak} | {r.get('vs_ours', 1.0):.3f} |")
    f = load(work, "bench_search/search.json")
    if f:
        print(f"\n## Search, {f['n']:,} x {f['dim']} {f['dtype']}, {f['queries']} queries, k={f['k']} (bench/bench_search.py)\n")
        print("| path | search s | overlap@k vs float64 |\n|---|---|---|")
        for r in f["results"]:
            print(f"| {r['path']} | {r['search_s']:.2f} | {r['overlap_at_k']:.4f} |")
    exact, fast = (os.path.join(work, n) for n in ("results.json", "results_float16.json"))
    if os.path.isfile(exact) and os.path.isfile(fast):
        a, b = read_results(exact), read_results(fast)
        same = sum([c["id"] for c in x["ctxs"]] == [c["id"] for c in y["ctxs"]] for x, y in zip(a, b))
        print(f"\nEnd-to-end search, --index flat:float16 vs flat: identical ranked lists for {same} of {len(a)} questions")
    f = load(work, "fidelity.json")
    if f:
        print(f"\n## Embedding fidelity, {f['passages']:,} passages, {f['questions']} questions (bench/bench_fidelity.py)\n")
        overlap = f"top{f['k']}_overlap"
        print(f"| encode | min cosine to float32 | top-{f['k']} overlap with float32 |\n|---|---|---|")
        for name, r in f["results"].items():
            print(f"| {name} | {r['min_cosine']:.6f} | {100 * r[overlap]:.2f}% |")
        print(f"\nkeep bfloat16 weights (docs/encoding.md's rule): {f['keep_bfloat16_weights']}")


if __name__ == "__main__":
    main(sys.argv[1])
