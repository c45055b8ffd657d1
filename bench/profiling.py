"""Where the time goes, kept beside the benchmarks and off the scripts' reading path: per-stage seconds
of a loop (LoopClock: doc2embedding.py's encode loop, test_dpr.py's stages), the FLOPs of an encoder's
forward pass, and doc2embedding.py's end report, to hold against bench/bench_embed.py's model-alone
ceiling."""

import collections
import resource
import time


class LoopClock(collections.Counter):
    """Sums for a loop's report: lap(name) adds the seconds since the previous lap (or creation) to name."""

    def __init__(self):
        super().__init__()
        self.last = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self[name] += now - self.last
        self.last = now


def flop_coefficients(model):
    """(a, b) with forward FLOPs ~= a * tokens + b * sum(length^2) over a batch's real (unpadded) passages.

    a = 2 x the parameters that multiply every token (not the embedding tables, which only look up, nor
    a pooler or DPR projection, which see the [CLS] vector alone); b = 4 x layers x hidden: QK^T and
    attention x V, each 2 x length^2 x hidden per layer."""
    not_per_token = ("embeddings.", "pooler.", "encode_proj.")
    params = sum(
        p.numel() for name, p in model.named_parameters() if not any(s in name for s in not_per_token)
    )
    return 2 * params, 4 * model.config.num_hidden_layers * model.config.hidden_size


def encoding_report(clock, model, state, settings, passages, encoded_all, seconds):
    """doc2embedding.py's figures (printed on rank 0, returned): rates, the model's TFLOP/s over the real
    tokens (flop_coefficients), where rank 0's device sat idle, peak memory. `clock`: rank 0's encode loop
    (LoopClock); settings: output_dir, num_workers, compute_dtype; passages: in the shards; encoded_all: by
    this run."""
    encoded, (per_token, per_length_sq) = clock["encoded"], flop_coefficients(model)
    rate = lambda part: encoded / part if encoded else None  # noqa: E731  passages per second of a part
    idle = clock["wait_s"] + clock["copy_s"] + clock["write_wait_s"] + clock["other_s"]
    flops = per_token * clock["tokens"] + per_length_sq * clock["tokens_sq"]
    figures = {
        "passages": passages,
        "encoded": encoded_all,
        "seconds": seconds,
        **settings,
        "num_workers": settings["num_workers"] or 1,  # 0: the main process tokenizes
        "passages_per_s_per_process": encoded_all / seconds / state.num_processes,
        "model_passages_per_s": rate(clock["model_s"]),
        "tokenize_per_worker_per_s": rate(clock["prepare_s"]),
        "tflops": flops / clock["model_s"] / 1e12 if encoded else None,
        "waited_s": clock["wait_s"],
        "idle_s": idle,
        **clock,
    }
    device = state.device.type
    state.print(
        f"encoded {encoded_all} passages in {seconds:.1f}s: {figures['passages_per_s_per_process']:.1f} "
        f"passages/s per process ({state.num_processes} processes, {device})"
        + (f"; {passages - encoded_all} came from committed chunks" if passages != encoded_all else "")
    )
    if encoded:
        state.print(
            f"rank 0: model {clock['model_s']:.1f}s ({figures['model_passages_per_s']:.0f} passages/s, "
            f"{figures['tflops']:.3g} TFLOP/s, {settings['compute_dtype']}); {device} idle {idle:.1f}s: "
            f"waiting for tokenized windows {clock['wait_s']:.1f}s (first {clock['first_window_s']:.1f}s), "
            f"host copies {clock['copy_s']:.2f}s, chunk writes {clock['write_wait_s']:.2f}s; tokenizing "
            f"{figures['tokenize_per_worker_per_s']:.0f} passages/s per worker x {figures['num_workers']}"
        )
        if clock["wait_s"] - clock["first_window_s"] > 0.2 * seconds:
            state.print(
                "tokenization held the model back: more --num_workers (CPU cores) would raise the rate"
            )
    # Linux reports KiB. Workers: the largest finished child of this process (the tokenizing workers).
    own, workers = (
        resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    figures.update(peak_rss_gib=own, worker_peak_rss_gib=workers if settings["num_workers"] else None)
    state.print(
        f"peak memory (RSS) of rank 0: {own:.2f} GiB"
        + (f", of its largest tokenizing worker {workers:.2f} GiB" if settings["num_workers"] else "")
    )
    return figures
