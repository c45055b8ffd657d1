"""Embedding fidelity of the low-precision encode paths: min cosine and top-100 overlap against float32.

    python bench/bench_fidelity.py --doc_encoder D --query_encoder Q --wikipedia_path psgs.tsv
        --qa_file test.qa.csv [--limit 50000] [--json OUT]

The first --limit passages are tokenized once and encoded three ways in the same length-sorted batches
(doc2embedding's, a mask on every batch): float32 weights (the reference), bfloat16 weights
(doc2embedding.py's GPU default) and autocast to bfloat16 over float32 weights; the questions once, in
float32. For each of the two: the min cosine of a passage's vector to its float32 one, and the mean share of
each question's exact top-100 (inner product) that its float32 top-100 holds too. The rule (docs/encoding.md):
keep bfloat16 weights unless their overlap is more than 0.5 point below autocast's. Also: test_dpr.py's
exact search (--index flat) against flat:float16 over the bf16 encode stored as float16, as doc2embedding
stores it: how many questions get the same ranked top-k. On a CPU autocast does
nothing here (encode_batches autocasts on GPUs only), so that row equals float32: the run checks the plumbing,
not the figures.
"""

import argparse
import copy
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from utils.formats import iter_passages, normalize_question, read_qas  # noqa: E402
from utils.index import TorchIndex  # noqa: E402
from utils.models import (  # noqa: E402  # noqa: E402
    autocast_dtype,
    encode_batches,
    load_encoder,
    padded_batches,
    tokenize_passages,
    tokenize_questions,
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--doc_encoder", required=True)
    p.add_argument("--query_encoder", required=True)
    p.add_argument("--wikipedia_path", required=True)
    p.add_argument("--qa_file", required=True)
    p.add_argument("--limit", type=int, default=50000, help="the first N passages (float32 encoding is slow)")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--max_tokens_per_batch", type=int, default=65536)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args()


def main():
    args = parse_args()
    device, t0 = torch.device(args.device), time.perf_counter()
    model, tokenizer, pooling = load_encoder(args.doc_encoder, "passage")
    rows = list(itertools.islice(iter_passages(args.wikipedia_path), args.limit))
    tokens = tokenize_passages(tokenizer, [r[3] for r in rows], [r[2] for r in rows], 256)
    batches = padded_batches(
        tokens, tokenizer.pad_token_id, max_tokens=args.max_tokens_per_batch, always_mask=True
    )
    model.to(device)
    ways = {
        "float32 weights": (model, False),
        "bfloat16 weights (default)": (copy.deepcopy(model).to(torch.bfloat16), False),
        "autocast over float32 weights": (model, True),
    }
    emb = {
        name: encode_batches(
            m, pooling, batches, len(tokens), device, autocast_dtype(device) if amp else None, host=False
        )
        for name, (m, amp) in ways.items()
    }
    qmodel, qtokenizer, qpooling = load_encoder(args.query_encoder, "question")
    questions = [normalize_question(q) for q, _ in read_qas(args.qa_file)]
    qtokens = tokenize_questions(qtokenizer, questions, 256)
    q = encode_batches(
        qmodel.to(device),
        qpooling,
        padded_batches(qtokens, qtokenizer.pad_token_id, batch_size=256),
        len(qtokens),
        device,
        host=False,
    )
    k = min(args.k, len(rows))
    top = {name: (q @ e.T).topk(k, dim=1).indices.cpu() for name, e in emb.items()}
    ref = emb["float32 weights"]
    figures = {
        "passages": len(rows),
        "questions": len(questions),
        "k": k,
        "device": str(device),
        "results": {},
    }
    for name in list(ways)[1:]:
        cos = torch.nn.functional.cosine_similarity(emb[name], ref, dim=1)
        overlap = sum(
            len(set(a) & set(b)) for a, b in zip(top[name].tolist(), top["float32 weights"].tolist())
        )
        figures["results"][name] = {
            "min_cosine": cos.min().item(),
            f"top{k}_overlap": overlap / (k * len(questions)),
        }
        print(
            f"{name}: min cosine to float32 {cos.min().item():.6f}, top-{k} overlap with float32 "
            f"{100 * overlap / (k * len(questions)):.2f}% ({len(questions)} questions, {len(rows):,} "
            "passages)"
        )
    # test_dpr.py's --index flat against --index flat:float16 over the default encode, stored as float16
    stored, queries = emb["bfloat16 weights (default)"].half(), q.cpu().numpy()
    exact, fast = (
        TorchIndex(stored, [device], search_dtype=d).search(queries, k)[1] for d in ("float32", "float16")
    )
    same = sum(a == b for a, b in zip(exact.tolist(), fast.tolist()))
    shared = sum(len(set(a) & set(b)) for a, b in zip(exact.tolist(), fast.tolist())) / (k * len(questions))
    figures["search_float16"] = {"identical_lists": same, "shared": shared}
    print(
        f"search, flat:float16 against flat: the same ranked top-{k} for {same} of {len(questions)} "
        f"questions; {100 * shared:.2f}% shared"
    )
    bf16, amp = (figures["results"][n][f"top{k}_overlap"] for n in list(ways)[1:])
    # no verdict on a CPU: encode_batches autocasts on GPUs only
    figures["keep_bfloat16_weights"] = bf16 >= amp - 0.005 if device.type == "cuda" else None
    verdict = {True: "keep", False: "drop", None: "no verdict on a CPU:"}[figures["keep_bfloat16_weights"]]
    print(
        f"rule (docs/encoding.md): {verdict} bfloat16 weights ({100 * (bf16 - amp):+.2f} points against "
        f"autocast; dropped below -0.50); {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
