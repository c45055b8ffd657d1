"""The GPU check's figures in one markdown summary, from the JSON its stages wrote into WORK
(scripts/gpu_check.sh calls it; a missing file means its stage failed or was skipped and is left out).

    python scripts/gpu_figures.py WORK
"""

import json
import os
import sys


def load(work, name):
    path = os.path.join(work, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def table(title, header, rows):
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")


def encode_rows(work):
    runs = {
        "encode_1m": "new defaults",
        "encode_200k": "new defaults",
        "encode_200k_old": "old (no mask on unpadded)",
    }
    for name, label in runs.items():
        f = load(work, f"bench_{name}/encode.json")
        if f and "ours_passages_per_s" in f:
            yield (
                label,
                f"{f['n']:,}",
                f"{f['ours_passages_per_s']:.0f}",
                f"{f['ours_model_passages_per_s']:.0f}",
                f"{f['first_window_s']:.2f}",
                f["num_workers"],
                f.get("max_tokens_per_batch") or "default",
            )


def main(work):
    header = [
        "run",
        "passages",
        "passages/s whole run",
        "model passages/s",
        "first window s",
        "workers",
        "tokens",
    ]
    table("Encoding: doc2embedding.py, whole run (bench/bench_embed.py (b))", header, encode_rows(work))
    f = load(work, "bench_model_alone/encode.json")
    if f and "model_alone" in f:
        header = [
            "variant",
            "passages/s (second pass)",
            "first pass",
            "batches (unpadded)",
            "peak GiB",
            "min cosine",
        ]
        table(
            f"Encoding: the model alone, {f['model']} on {f['device']} (bench/bench_embed.py (c))",
            header,
            [
                (
                    name,
                    f"{v['passages_per_s']:.0f}",
                    f"{v['cold_passages_per_s']:.0f}",
                    f"{v['batches']} ({v['unpadded_batches']})",
                    "-" if v.get("peak_gib") is None else f"{v['peak_gib']:.2f}",
                    f"{v['min_cosine']:.6f}",
                )
                for name, v in f["model_alone"].items()
            ],
        )
    f = load(work, "bench_train/train.json")
    if f:
        table(
            f"Training step, {f['model']}, batch {f['batch_size']} + 1 hard negative, {f['device']}",
            ["variant", "steps/s", "examples/s", "peak GiB", "vs ours"],
            [
                (r["variant"], r["error"], "-", "-", "-")
                if "error" in r
                else (
                    r["variant"],
                    f"{r['steps_per_s']:.2f}",
                    f"{r['examples_per_s']:.1f}",
                    f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else "-",
                    f"{r['vs_ours']:.3f}" if "vs_ours" in r else "-",
                )
                for r in f["results"]
            ],
        )
        ours = next((r for r in f["results"] if r["variant"] == "ours"), None)
        if ours and f["batch_size"] == 128:  # DPR's NQ recipe: 40 epochs of 58,880 questions at batch 128
            print(
                f"\nAt ours' {ours['steps_per_s']:.2f} steps/s the 18,400 steps of 40 NQ epochs take "
                f"{18400 / ours['steps_per_s'] / 60:.1f} min (extrapolated)"
            )
    f = load(work, "bench_search/search.json")
    if f:
        table(
            f"Search, {f['n']:,} x {f['dim']} {f['dtype']}, {f['queries']} queries, top-{f['k']}",
            ["path", "search s", "overlap@k vs float64"],
            [(r["path"], f"{r['search_s']:.2f}", f"{r['overlap_at_k']:.4f}") for r in f["results"]],
        )
    f = load(work, "fidelity.json")
    if f:
        k = f["k"]
        rows = [
            (name, f"{r['min_cosine']:.6f}", f"{100 * r[f'top{k}_overlap']:.2f}%")
            for name, r in f["results"].items()
        ]
        table(
            f"Embedding fidelity, {f['passages']:,} passages, {f['questions']} questions (bench_fidelity.py)",
            ["encode", "min cosine to float32", f"top-{k} overlap with float32"],
            rows,
        )
        print(f"\nkeep bfloat16 weights (docs/encoding.md's rule): {f['keep_bfloat16_weights']}")
        s = f.get("search_float16")
        if s:
            print(
                f"\nSearch over that encode, flat:float16 against flat: the same ranked top-{k} for "
                f"{s['identical_lists']} of {f['questions']} questions, {100 * s['shared']:.2f}% shared"
            )


if __name__ == "__main__":
    main(sys.argv[1])
