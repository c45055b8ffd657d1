"""Train DPR's bi-encoder (Karpukhin et al. 2020): a question BERT and a passage BERT, [CLS] vectors,
dot-product scores, NLL of each question's positive passage against every passage in the global batch.
With no options it trains DPR's NQ recipe (Config's defaults; data: utils/download_data.py).

    python train_dpr.py                                                # one GPU (or the CPU)
    accelerate launch train_dpr.py                                     # all local GPUs (accelerate config)
    accelerate launch train_dpr.py --grad_cache_chunk_size 32          # one small GPU, the same batch of 128
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_dpr.py ...  # 2 processes on CPU (gloo)
    accelerate launch --num_machines 2 --num_processes 16 --machine_rank RANK --main_process_ip HOST \\
        --main_process_port 29500 train_dpr.py                         # several nodes: on each, with its rank
    python train_dpr.py --config_file config/train_mini_nq.yaml \\
        --base_model PATH --lr=1e-5                                    # file, then overrides
    ... --resume_from_checkpoint last                                  # continue exactly where it stopped

Outputs in output_dir: best/ and step-N/ ({query_encoder,doc_encoder}, plain HF dirs), last_state/,
train_log.jsonl. Beyond DPR's train_dense_encoder.py: gradient cache (Gao et al. 2021) so one GPU trains DPR's
8-GPU batch; bf16/fp16 autocast, SDPA attention and per-batch padding for speed; exact resume.
"""

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields
from typing import List, Literal, Optional, get_args, get_type_hints

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, send_to_device, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from utils.biencoder import (
    grad_cache_step,
    load_biencoder,
    make_optimizer,
    plain_step,
    training_precision,
    validate,
)
from utils.checkpoint import (
    Progress,
    check_output_dir,
    claim_output_dir,
    last_state_dir,
    load_state,
    prune_step_dirs,
    save_encoders,
    save_state,
)
from utils.errors import ConfigError, DataError, NanoDPRError
from utils.train_data import (
    Collate,
    TrainSet,
    epoch_batches,
    load_cache,
    passage_groups,
    process_slices,
    steps_per_epoch,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run in DataLoader workers instead


def option(default, meaning):
    """One option: its default (a list: a fresh copy per Config) and the line --help shows."""
    fresh = {"default_factory": default.copy} if isinstance(default, list) else {"default": default}
    return field(**fresh, metadata={"help": meaning})


DOWNLOADS = "downloads/data/retriever/"  # where utils/download_data.py puts DPR's biencoder files


@dataclass
class Config:
    """DPR's NQ bi-encoder recipe ("single" model, in-batch + 1 BM25 hard negative). Sources:
    [paper] Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain Question Answering",
            Sec. 5 (Training)
    [nq] facebookresearch/DPR conf/train/biencoder_nq.yaml     [enc] conf/encoder/hf_bert.yaml
    [cfg] conf/biencoder_train_cfg.yaml     [code] train_dense_encoder.py, dpr/models/{biencoder,hf_models}.py
    x 8: DPR's 8 GPUs stepped on 1/8 of the gradient computed here (docs/faithfulness.md, Gradient scale)."""

    train_file: List[str] = option(
        [DOWNLOADS + "nq-train.json"], "biencoder JSON file(s) (a batch never mixes files)"
    )
    dev_file: Optional[str] = option(
        DOWNLOADS + "nq-dev.json", "biencoder JSON for validation; null: none, no best/"
    )
    # [enc]
    base_model: str = option(
        "bert-base-uncased", "both towers start from it (BERT dir, hub name, DPR .cp, our checkpoint)"
    )
    # as it trained
    pooling: Literal["auto", "cls", "mean"] = option("auto", "auto: base_model's own, else cls")
    # MiniLM: cos
    similarity: Literal["auto", "dot", "cos"] = option("auto", "auto: base_model's own, else dot")
    scale: float = option(20.0, "similarity cos: scores = scale x cosine")  # as sentence-transformers' MNRL
    output_dir: str = option("outputs/dpr_nq", "checkpoints, last_state/, train_log.jsonl, data_cache/")
    # [paper]; [nq] 16 x 8 GPUs
    train_batch_size: int = option(128, "questions per optimizer step, all processes and micro-batches")
    # [nq]
    gradient_accumulation_steps: int = option(
        1, "micro-batches per step; in-batch negatives within each (DPR's)"
    )
    # [paper] "up to 40 epochs" (NQ); [nq] num_train_epochs
    max_train_epochs: int = option(40, "passes over the training set")
    max_train_steps: Optional[int] = option(
        None, "optional cap on steps; the learning-rate schedule then ends there"
    )
    lr: float = option(2e-5, "peak learning rate")  # [nq] learning_rate (the paper's text says 1e-5)
    adam_eps: float = option(8e-8, "AdamW epsilon; betas are torch's (0.9, 0.999)")  # [nq] adam_eps 1e-8 x 8
    # [nq]; [code] param grouping
    weight_decay: float = option(0.0, "AdamW weight decay (never on biases and LayerNorm)")
    # [nq]; [paper]; [code] get_schedule_linear
    warmup_steps: int = option(1237, "linear warm-up steps, then linear decay")
    # [nq] max_grad_norm 2.0 x 8
    max_grad_norm: float = option(16.0, "gradient clipping norm; 0: no clipping")
    # [paper] "dropout rate 0.1"; [enc] dropout
    dropout: float = option(0.1, "BERT's hidden and attention dropout")
    max_length: int = option(256, "tokens per question and per passage")  # [enc] sequence_length
    # [paper] "one additional BM25 negative"; [nq]
    num_hard_negatives: int = option(1, "hard (BM25) negatives per question")
    num_other_negatives: int = option(0, "other (random) negatives per question")  # [nq] other_negatives
    # [cfg]
    val_av_rank_start_epoch: int = option(30, "average-rank validation from this epoch on, NLL only before")
    val_av_rank_hard_neg: int = option(30, "hard negatives per dev question for the average rank")  # [nq]
    val_av_rank_other_neg: int = option(30, "other negatives per dev question for the average rank")  # [nq]
    # [nq] eval_per_epoch 1
    eval_steps: Optional[int] = option(None, "validate and checkpoint every N steps; null: every epoch")
    # DPR: 128
    eval_batch_size: int = option(
        512, "sequences per forward pass encoding the dev set (no effect on results)"
    )
    seed: int = option(12345, "seeds dropout, data order and negatives")  # [cfg]
    # [cfg] fp32
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = option(
        "auto", "auto: bf16 (else fp16) on GPU, fp32 on CPU"
    )
    grad_cache_chunk_size: Optional[int] = option(
        None, "questions per re-encoded chunk (gradient cache); null: plain backward"
    )
    save_total_limit: int = option(2, "step-N checkpoints kept")
    log_steps: int = option(10, "steps between log records")  # [nq] log_batch_step
    num_workers: int = option(4, "DataLoader workers (tokenization)")
    report_to: Literal["none", "tensorboard", "wandb"] = option(
        "none", "none, or also log to tensorboard or wandb (pip install it)"
    )
    resume_from_checkpoint: Optional[str] = option(None, "'last' (output_dir/last_state) or a last_state dir")
    overwrite_output_dir: bool = option(False, "true: delete another run's checkpoints and log first")

    def __post_init__(self):
        """Minimums (the parser checked the types): counts >= 0, sizes >= 1, max_length >= 4 ([CLS] x [SEP]
        y)."""
        sizes = (
            "train_batch_size",
            "gradient_accumulation_steps",
            "eval_steps",
            "eval_batch_size",
            "grad_cache_chunk_size",
            "log_steps",
        )
        for name, value in asdict(self).items():
            least = 4 if name == "max_length" else 1 if name in sizes else 0
            if name != "seed" and type(value) in (int, float) and value < least:
                raise ConfigError(f"{name} must be >= {least}, got {value!r}")


class ArgumentParser(HfArgumentParser):
    # one ConfigError line like every other bad setting, not argparse's usage + exit 2
    def error(self, message):
        raise ConfigError(message)


def make_parser():
    """`--key value` for every Config field (type, choices or list from its annotation), `null` for None."""
    parser = ArgumentParser(
        Config,
        usage="train_dpr.py [--config_file FILE] [--key value ...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config_file", metavar="FILE", help="YAML file of options (those that differ from the defaults)"
    )
    hints = get_type_hints(Config)
    for action in parser._actions:
        if action.dest in hints:
            if type(None) in get_args(hints[action.dest]):  # Optional: `null` is None
                action.type = functools.partial(
                    lambda kind, text: None if text == "null" else kind(text), action.type
                )
            default = " ".join(action.default) if isinstance(action.default, list) else action.default
            action.help = f"{action.help} (default: {'null' if default is None else default})"
            # --help: no --key-name alias
            action.option_strings, action.metavar = (action.option_strings[:1], "VALUE")
    return parser


def parse_args(argv=None):
    """Config: the defaults, then `--config_file FILE` (YAML), then `--key value` / `--key=value`."""
    parser = make_parser()
    path = parser.parse_args(argv).config_file
    if path:
        try:
            from_file = {
                f.name: getattr(parser.parse_args(yaml_arguments(path)), f.name) for f in fields(Config)
            }
            parser.set_defaults(**from_file)
            Config(**from_file)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    options = vars(parser.parse_args(argv))
    return Config(**{f.name: options[f.name] for f in fields(Config)})


def yaml_arguments(path):
    """A YAML file of options as the `--key value` arguments it stands for."""
    if not os.path.isfile(path):
        raise ConfigError("config file not found")
    with open(path, encoding="utf-8") as f:
        try:
            options = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(options, dict):
        raise ConfigError("expected a mapping of config keys")
    arguments = []
    for key, value in options.items():
        if value is None or value is False:  # YAML reads `null`, and a bare `no` as false
            value = {"mixed_precision": "no", "report_to": "none"}.get(key, "null")
        arguments += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return arguments


def check_inputs(cfg, world_size):
    """Everything that can be checked before a process group, a model or a GPU is touched."""
    for path in cfg.train_file + ([cfg.dev_file] if cfg.dev_file else []):
        if not os.path.isfile(path):
            # at downloads/data/retriever/
            resource = "data.retriever." + os.path.basename(path).removesuffix(".json")
            hint = (
                f"; DPR's file: python utils/download_data.py --resource {resource}"
                if path.startswith(DOWNLOADS)
                else ""
            )
            raise DataError(f"{path}: file not found{hint}")
    if cfg.train_batch_size % (world_size * cfg.gradient_accumulation_steps):
        raise ConfigError(
            f"train_batch_size {cfg.train_batch_size} is not divisible by processes x "
            f"gradient_accumulation_steps = {world_size} x {cfg.gradient_accumulation_steps}"
        )
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        raise ConfigError(
            f"report_to {cfg.report_to}: the {cfg.report_to} package is not installed (pip install it)"
        )
    check_output_dir(cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)


# --- Load: processes and precision, data, model ---------------------------------------------------


def make_accelerator(cfg):
    """(accelerator with its trackers, precision, autocast dtype or None)."""
    if cfg.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        netrc = os.path.expanduser("~/.netrc")
        if not (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()):
            os.environ.setdefault("WANDB_MODE", "offline")  # never prompt for a login
    accelerator = Accelerator(
        mixed_precision="no",
        project_dir=cfg.output_dir,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    claim_output_dir(cfg.output_dir, cfg.overwrite_output_dir, accelerator)  # before the data cache
    precision, dtype = training_precision(cfg.mixed_precision, accelerator.device)
    # both write under output_dir: tensorboard to nanodpr/, wandb (offline too) to wandb/
    if cfg.report_to != "none":
        config = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in asdict(cfg).items()}
        accelerator.init_trackers("nanodpr", config=config, init_kwargs={"wandb": {"dir": cfg.output_dir}})
    return accelerator, precision, dtype


def load_data(cfg, accelerator, log):
    """(train set, dev set or None), each a memory-mapped cache under output_dir/data_cache/."""
    cache = os.path.join(cfg.output_dir, "data_cache")
    train_data = load_cache(
        cfg.train_file,
        os.path.join(cache, "train"),
        dict(max_hard=None, max_other=None, other_only_without_hard=cfg.num_other_negatives == 0),
        accelerator,
        log,
    )
    meta = train_data.meta
    log(
        f"train: {meta['questions']} questions, {meta['passages']} distinct passages, "
        f"{meta['skipped']} records skipped (no positive ctx)"
    )
    if steps_per_epoch(train_data, cfg.train_batch_size) == 0:
        raise DataError(
            f"{', '.join(cfg.train_file)}: {meta['questions']} usable questions ({meta['skipped']} "
            f"skipped), fewer than one batch of train_batch_size {cfg.train_batch_size}"
        )
    if not cfg.dev_file:
        return train_data, None
    # both validations' layouts; other: fallback
    keep_hard = max(cfg.val_av_rank_hard_neg, cfg.num_hard_negatives)
    keep_other = max(cfg.val_av_rank_other_neg, cfg.num_other_negatives, keep_hard)
    dev = load_cache(
        [cfg.dev_file],
        os.path.join(cache, "dev"),
        dict(max_hard=keep_hard, max_other=keep_other, other_only_without_hard=False),
        accelerator,
        log,
    )
    log(f"dev: {len(dev)} questions, {dev.meta['skipped']} records skipped (no positive ctx)")
    if len(dev) == 0:
        raise DataError(f"{cfg.dev_file}: no usable dev questions")
    return train_data, dev


# What the loop and the checkpoints work on. model: the BiEncoder as trained (wrapped for DDP over processes);
# biencoder: the same BiEncoder unwrapped, which validation and the checkpoints read.
Run = namedtuple("Run", "cfg accelerator model biencoder tokenizers optimizer scheduler scaler dtype dev log")


def load_run(cfg, accelerator, precision, dtype, dev, total_steps, log):
    """Both towers, AdamW, DPR's schedule, the fp16 loss scaler; DDP over processes (loss scaling is ours)."""
    biencoder, tokenizers = load_biencoder(
        cfg.base_model, cfg.dropout, cfg.pooling, cfg.similarity, cfg.scale
    )
    biencoder.to(accelerator.device)
    optimizer, scheduler = make_optimizer(
        biencoder, cfg.lr, cfg.adam_eps, cfg.weight_decay, cfg.warmup_steps, total_steps
    )
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=precision == "fp16")
    return Run(
        cfg,
        accelerator,
        accelerator.prepare_model(biencoder),
        biencoder,
        tokenizers,
        optimizer,
        scheduler,
        scaler,
        dtype,
        dev,
        log,
    )


# --- The loop -------------------------------------------------------------------------------------


def train_loop(run, train_data, progress, total_steps):
    """Epochs of global batches (DPR's order), one optimizer step per batch over gradient_accumulation_steps
    micro-batches; validation and checkpoints after every epoch or every eval_steps."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.accelerator.device
    world, accumulation = accelerator.num_processes, cfg.gradient_accumulation_steps
    local = cfg.train_batch_size // (world * accumulation)  # questions per process per micro-batch
    collate = Collate(
        run.tokenizers, cfg.max_length, cfg.grad_cache_chunk_size or local, passage_groups(device)
    )
    dataset = TrainSet(train_data, cfg.num_hard_negatives, cfg.num_other_negatives, cfg.seed)
    # DDP averages gradients over processes; the global loss needs their sum
    loss_weight = world / accumulation
    step = grad_cache_step if cfg.grad_cache_chunk_size else plain_step
    amp = torch.autocast(device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None)
    # a progress bar on a terminal; elsewhere (logs, pipes) the log lines alone
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc="train",
        disable=not (accelerator.is_main_process and sys.stderr.isatty()),
    )
    interval = new_interval(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.model.train()
    while progress.step < total_steps and progress.epoch < cfg.max_train_epochs:
        batches = epoch_batches(train_data, progress.epoch, cfg.seed, cfg.train_batch_size)[
            progress.batch_in_epoch :
        ]
        batches = batches[: total_steps - progress.step]  # the last epoch may end early
        slices = process_slices(batches, progress.epoch, accumulation, accelerator.process_index, world)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=slices,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + progress.epoch),
        )
        micro_batches = iter(loader)
        for _ in batches:
            # accumulate: the micro-batches' gradients add up in .grad; DDP all-reduces after the last one
            loss = 0
            for micro in range(accumulation):
                batch = send_to_device(next(micro_batches), device, non_blocking=True)
                loss += step(run.model, batch, amp, run.scaler, loss_weight, sync=micro == accumulation - 1)
            # clip and step: unscale (fp16), clip the gradient norm (0: no clipping), AdamW, schedule
            run.scaler.unscale_(run.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                run.biencoder.parameters(), cfg.max_grad_norm or float("inf")
            )
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batch_in_epoch += 1
            interval["loss"] += loss / accumulation
            interval["steps"] += 1
            bar.update(1)
            if progress.step % cfg.log_steps == 0 or progress.step == total_steps:
                log_progress(run, progress, interval, grad_norm, total_steps, bar)
                interval = new_interval(device)
            if (cfg.eval_steps and progress.step % cfg.eval_steps == 0) or progress.step == total_steps:
                evaluate_and_save(run, progress)
                interval["start"] = time.time()  # examples/s measures training only
        if progress.step == total_steps:
            break  # validated and saved above
        del micro_batches, loader
        if progress.last_eval_step != progress.step and not cfg.eval_steps:
            evaluate_and_save(run, progress)  # DPR validates after every epoch
        progress.epoch += 1
        progress.batch_in_epoch = 0
    bar.close()


def new_interval(device):
    """Loss sum (kept on the device: no sync per step), steps and start time since the last log record."""
    return {"loss": torch.zeros((), device=device), "steps": 0, "start": time.time()}


def log_progress(run, progress, interval, grad_norm, total_steps, bar):
    cfg, device = run.cfg, run.accelerator.device
    record = {
        "step": progress.step,
        "epoch": progress.epoch,
        "loss": interval["loss"].item() / interval["steps"],
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": grad_norm.item(),
        "examples_per_s": interval["steps"] * cfg.train_batch_size / (time.time() - interval["start"]),
    }
    if device.type == "cuda":
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    write_log(run, record)
    if bar.disable:
        run.log(
            f"step {progress.step}/{total_steps}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
            f"grad norm {record['grad_norm']:.3f}, {record['examples_per_s']:.1f} examples/s"
        )
    else:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")


# --- Save: validation, checkpoints, logs ----------------------------------------------------------


def evaluate_and_save(run, progress):
    """Validate (with a dev set), save step-N/ and, when validation improved, best/; then last_state/."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.cfg.output_dir
    info, improved = {"step": progress.step, "epoch": progress.epoch}, False
    if run.dev is not None:
        metrics = validate(
            run.biencoder,
            run.tokenizers,
            run.dev,
            cfg,
            progress.epoch >= cfg.val_av_rank_start_epoch,
            run.dtype,
            accelerator.device,
        )
        info.update(metrics)
        write_log(run, dict(info))
        run.log(f"step {progress.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        # DPR: NLL until average rank starts
        name = "dev_avg_rank" if "dev_avg_rank" in metrics else "dev_nll"
        best = progress.best or {"metric": None}
        improved = best["metric"] != name or metrics[name] < best["value"]
        if improved:
            progress.best = {"metric": name, "value": metrics[name], "step": progress.step}
    progress.last_eval_step = progress.step
    if accelerator.is_main_process:
        saved = {"run": progress.run_id, **info}  # test_dpr.py pairs the towers by run and step
        save_encoders(run.biencoder, run.tokenizers, os.path.join(out, f"step-{progress.step}"), saved)
        if improved:
            save_encoders(run.biencoder, run.tokenizers, os.path.join(out, "best"), saved)
            run.log(f"new best {name} {metrics[name]:.4f}: {out}/best")
        prune_step_dirs(out, cfg.save_total_limit)
    save_state(
        os.path.join(out, "last_state"),
        run.biencoder,
        run.optimizer,
        run.scheduler,
        run.scaler,
        progress,
        cfg,
        accelerator,
    )


def write_log(run, record):
    """One record to output_dir/train_log.jsonl (main process) and to the tracker, if any."""
    if run.accelerator.is_main_process:
        with open(os.path.join(run.cfg.output_dir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    if run.cfg.report_to != "none":
        run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def train(cfg):
    accelerator, precision, dtype = make_accelerator(cfg)
    log = functools.partial(print, flush=True) if accelerator.is_main_process else lambda *args: None
    out = cfg.output_dir
    set_seed(cfg.seed)
    train_data, dev = load_data(cfg, accelerator, log)
    per_epoch = steps_per_epoch(train_data, cfg.train_batch_size)
    total_steps = per_epoch * cfg.max_train_epochs
    if cfg.max_train_steps is not None:
        total_steps = min(total_steps, cfg.max_train_steps)
    run = load_run(cfg, accelerator, precision, dtype, dev, total_steps, log)
    progress = Progress()
    if cfg.resume_from_checkpoint:
        path = last_state_dir(cfg.resume_from_checkpoint, out)
        progress = load_state(
            path, run.biencoder, run.optimizer, run.scheduler, run.scaler, cfg, accelerator, log
        )
        log(
            f"resumed from {path}: step {progress.step}, epoch {progress.epoch}, batch "
            f"{progress.batch_in_epoch}"
        )
    if cfg.report_to != "none":
        log(
            f"{cfg.report_to} logs: "
            f"{os.path.join(out, 'nanodpr' if cfg.report_to == 'tensorboard' else 'wandb')}"
            + (" (offline: `wandb sync` them)" if os.environ.get("WANDB_MODE") == "offline" else "")
        )
    chunks = f"chunks of {cfg.grad_cache_chunk_size} questions" if cfg.grad_cache_chunk_size else "off"
    log(
        f"{accelerator.num_processes} process(es) on {accelerator.device.type}, precision {precision}, "
        f"{per_epoch} "
        f"steps/epoch, {total_steps} steps, batch {cfg.train_batch_size} questions x "
        f"{1 + cfg.num_hard_negatives + cfg.num_other_negatives} passages, grad cache {chunks}"
    )
    log(f"outputs: {out}/{{best,step-N,last_state}}, log {out}/train_log.jsonl")
    train_loop(run, train_data, progress, total_steps)
    if progress.last_eval_step != progress.step:
        evaluate_and_save(run, progress)  # e.g. max_train_steps 0: the untrained model's dev metrics
    best = progress.best
    log(
        f"done: {progress.step} steps; "
        + (
            f"best {best['metric']} {best['value']:.4f} at step {best['step']} in {out}/best"
            if best
            else f"checkpoints in {out}"
        )
    )
    accelerator.end_training()


def main(argv=None):
    try:
        cfg = parse_args(argv)
        check_inputs(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        train(cfg)
    except NanoDPRError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
