"""Train DPR's bi-encoder (Karpukhin et al. 2020): a question BERT and a passage BERT, [CLS] vectors,
dot-product scores, NLL of each question's positive passage against every passage in the global batch.
With no options it trains DPR's NQ recipe (Config's defaults; data: utils/download_data.py).

    python train_dpr.py                                                   # one GPU (or the CPU)
    accelerate launch train_dpr.py                                        # all local GPUs (accelerate config)
    accelerate launch train_dpr.py --grad_cache_chunk_size 32             # one small GPU, the same batch of 128
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_dpr.py ...     # 2 processes on CPU (gloo)
    accelerate launch --num_machines 2 --num_processes 16 --machine_rank RANK --main_process_ip HOST \\
        --main_process_port 29500 train_dpr.py                            # several nodes: on each, with its rank
    python train_dpr.py --config_file config/train_mini_nq.yaml --base_model PATH --lr=1e-5   # file, then overrides
    ... --resume_from_checkpoint last                                     # continue exactly where it stopped

Outputs in output_dir: best/ and step-N/ ({query_encoder,doc_encoder}, plain HF dirs), last_state/, train_log.jsonl.
Beyond DPR's train_dense_encoder.py: gradient cache (Gao et al. 2021) so one GPU trains DPR's 8-GPU batch;
bf16/fp16 autocast, SDPA attention and per-batch padding for speed; exact resume.
"""
import argparse
import contextlib
import functools
import importlib.util
import json
import os
import sys
import time
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields
from typing import List, Literal, Optional, Union, get_args, get_origin, get_type_hints

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from utils.biencoder import forward_backward, load_biencoder, make_optimizer, optimizer_step, training_autocast, validate
from utils.checkpoint import Progress, last_state_dir, load_state, prune_step_dirs, save_encoders, save_state
from utils.errors import ConfigError, DataError, NanoDPRError
from utils.train_data import (Collate, TrainSet, epoch_batches, load_cache, passage_groups, process_slices,
                              steps_per_epoch, to_device)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers run in DataLoader workers instead


def opt(default, meaning, least=None):
    """One option: its default, the line --help shows, the smallest valid value."""
    return field(default=default, metadata={"help": meaning, "min": least})


DOWNLOADS = "downloads/data/retriever/"  # where utils/download_data.py puts DPR's biencoder files


@dataclass
class Config:
    """DPR's NQ bi-encoder recipe ("single" model, in-batch + 1 BM25 hard negative). Sources:
    [paper] Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain Question Answering", Sec. 5 (Training)
    [nq] facebookresearch/DPR conf/train/biencoder_nq.yaml     [enc] conf/encoder/hf_bert.yaml
    [cfg] conf/biencoder_train_cfg.yaml     [code] train_dense_encoder.py, dpr/models/{biencoder,hf_models}.py
    x 8: DPR clips and adds Adam's eps to DDP's average over its 8 GPUs of each GPU's share of the global loss's
    gradient ([code] _calc_loss), 1/8 of the gradient computed here."""
    train_file: Union[str, List[str]] = opt(DOWNLOADS + "nq-train.json", "biencoder JSON, or a list (a batch never mixes files)")
    dev_file: Optional[str] = opt(DOWNLOADS + "nq-dev.json", "biencoder JSON for validation; null: none, no best/")
    base_model: str = opt("bert-base-uncased", "both towers start from it (BERT dir, hub name, DPR .cp, our checkpoint)")  # [enc]
    pooling: Literal["auto", "cls", "mean"] = opt("auto", "auto: base_model's own, else cls")  # as it trained
    similarity: Literal["auto", "dot", "cos"] = opt("auto", "auto: base_model's own, else dot")  # MiniLM: cos
    scale: float = opt(20.0, "similarity cos: scores = scale x cosine", 0.0)  # as sentence-transformers' MNRL
    output_dir: str = opt("outputs/dpr_nq", "checkpoints, last_state/, train_log.jsonl, data_cache/")
    train_batch_size: int = opt(128, "questions per optimizer step, all processes and micro-batches", 1)  # [paper]; [nq] 16 x 8 GPUs
    gradient_accumulation_steps: int = opt(1, "micro-batches per step; in-batch negatives within each (DPR's)", 1)  # [nq]
    max_train_epochs: int = opt(40, "passes over the training set", 0)  # [paper] "up to 40 epochs" (NQ); [nq] num_train_epochs
    max_train_steps: Optional[int] = opt(None, "optional cap on steps; the learning-rate schedule then ends there", 0)
    lr: float = opt(2e-5, "peak learning rate", 0.0)  # [nq] learning_rate (the paper's text says 1e-5)
    adam_eps: float = opt(8e-8, "AdamW epsilon; betas are torch's (0.9, 0.999)", 0.0)  # [nq] adam_eps 1e-8 x 8 (see above)
    weight_decay: float = opt(0.0, "AdamW weight decay (never on biases and LayerNorm)", 0.0)  # [nq]; [code] param grouping
    warmup_steps: int = opt(1237, "linear warm-up steps, then linear decay", 0)  # [nq]; [paper]; [code] get_schedule_linear
    max_grad_norm: float = opt(16.0, "gradient clipping norm; 0: no clipping", 0.0)  # [nq] max_grad_norm 2.0 x 8 (see above)
    dropout: float = opt(0.1, "BERT's hidden and attention dropout", 0.0)  # [paper] "dropout rate 0.1"; [enc] dropout
    max_length: int = opt(256, "tokens per question and per passage", 4)  # [enc] sequence_length
    num_hard_negatives: int = opt(1, "hard (BM25) negatives per question", 0)  # [paper] "one additional BM25 negative"; [nq]
    num_other_negatives: int = opt(0, "other (random) negatives per question", 0)  # [nq] other_negatives
    val_av_rank_start_epoch: int = opt(30, "average-rank validation from this epoch on, NLL only before", 0)  # [cfg]
    val_av_rank_hard_neg: int = opt(30, "hard negatives per dev question for the average rank", 0)  # [nq]
    val_av_rank_other_neg: int = opt(30, "other negatives per dev question for the average rank", 0)  # [nq]
    eval_steps: Optional[int] = opt(None, "validate and checkpoint every N steps; null: every epoch", 1)  # [nq] eval_per_epoch 1
    eval_batch_size: int = opt(512, "sequences per forward pass encoding the dev set (no effect on results)", 1)  # DPR: 128
    seed: int = opt(12345, "seeds dropout, data order and negatives")  # [cfg]
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = opt("auto", "auto: bf16 (else fp16) on GPU, fp32 on CPU")  # [cfg] fp32
    grad_cache_chunk_size: Optional[int] = opt(None, "questions per re-encoded chunk (gradient cache); null: plain backward", 1)
    save_total_limit: int = opt(2, "step-N checkpoints kept", 0)
    log_steps: int = opt(10, "steps between log records", 1)  # [nq] log_batch_step
    num_workers: int = opt(4, "DataLoader workers (tokenization)", 0)
    report_to: Literal["none", "tensorboard", "wandb"] = opt("none", "none, or also log to tensorboard or wandb (pip install it)")
    resume_from_checkpoint: Optional[str] = opt(None, "'last' (output_dir/last_state) or a last_state dir")


FIELDS = {f.name: f for f in fields(Config)}
TYPES = get_type_hints(Config)


def typed(key, value, where):
    """`value` as YAML read it, checked and converted to option `key`'s type; a ConfigError names `where`."""
    if key not in FIELDS:
        raise ConfigError(f"{where}: unknown config key {key!r}; known keys: {', '.join(FIELDS)}")
    kind, least, choices = TYPES[key], FIELDS[key].metadata["min"], get_args(TYPES[key])
    origins = [get_origin(t) for t in (kind, *choices)]
    if Literal in origins and (value is None or value is False):  # YAML reads a bare `no` as false
        value = "no" if "no" in choices else "none"
    if value is None and type(None) in choices:
        return None
    base = next(t for t in choices or [kind] if t is not type(None))  # int for Optional[int]
    base = Literal if Literal in origins else list if list in origins else base
    if base is float and isinstance(value, str):  # YAML reads 2e-5 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    paths = isinstance(value, str) or isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)
    ok, expected = {float: (number, "a number"), int: (number and isinstance(value, int), "an integer"),
                    str: (number or isinstance(value, str), "a string"), list: (paths, "a path or a list of paths"),
                    Literal: (value in choices, "one of " + ", ".join(map(str, choices)))}[base]
    if not ok:
        raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")
    value = base(value) if base in (float, int, str) else value
    if least is not None and value < least:
        raise ConfigError(f"{where}: {key} must be >= {least}, got {value!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one ConfigError line like every other bad setting, not argparse's usage + exit 2
        raise ConfigError(message)


def parse_args(argv=None):
    """Config: the defaults, then `--config_file FILE` (YAML), then `--key value` / `--key=value` overrides."""
    parser = _Parser(usage="train_dpr.py [--config_file FILE] [--key value ...]", description=__doc__, allow_abbrev=False,
                     formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=118),
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config_file", metavar="FILE", help="YAML file of options (those that differ from the defaults)")
    for f in fields(Config):
        default = "null" if f.default is None else f.default
        parser.add_argument(f"--{f.name}", metavar="VALUE", help=f"{f.metadata['help']} (default: {default})")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if unknown[0].startswith("--"):  # typed() says which keys exist
            typed(unknown[0][2:].partition("=")[0], None, unknown[0])
        raise ConfigError(f"unexpected argument {unknown[0]!r}: arguments are --key value")
    values, config = vars(args), {}
    if "config_file" in values:
        path = values.pop("config_file")
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        with open(path, encoding="utf-8") as f:
            try:
                from_file = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: invalid YAML ({e})") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        config = {key: typed(key, value, path) for key, value in from_file.items()}
    for key, text in values.items():
        try:
            config[key] = typed(key, yaml.safe_load(text), f"--{key}")
        except yaml.YAMLError:
            config[key] = typed(key, text, f"--{key}")
    return Config(**config)


def train_files(cfg):
    return [cfg.train_file] if isinstance(cfg.train_file, str) else cfg.train_file


def check_inputs(cfg, world_size):
    """Everything that can be checked before a process group, a model or a GPU is touched."""
    for path in train_files(cfg) + ([cfg.dev_file] if cfg.dev_file else []):
        if not os.path.isfile(path):
            resource = "data.retriever." + os.path.basename(path).removesuffix(".json")  # at downloads/data/retriever/
            hint = f"; DPR's file: python utils/download_data.py --resource {resource}" if path.startswith(DOWNLOADS) else ""
            raise DataError(f"{path}: file not found{hint}")
    per_step = world_size * cfg.gradient_accumulation_steps
    if cfg.train_batch_size % per_step:
        raise ConfigError(f"train_batch_size {cfg.train_batch_size} is not divisible by processes x "
                          f"gradient_accumulation_steps = {world_size} x {cfg.gradient_accumulation_steps}")
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        raise ConfigError(f"report_to {cfg.report_to}: the {cfg.report_to} package is not installed (pip install it)")
    resume = cfg.resume_from_checkpoint and last_state_dir(cfg.resume_from_checkpoint, cfg.output_dir)
    if resume and not os.path.isdir(resume):
        raise ConfigError(f"resume_from_checkpoint: {resume} does not exist")


# --- Load: processes and precision, data, model ---------------------------------------------------


def make_accelerator(cfg):
    """(accelerator with its trackers, precision, autocast)."""
    if cfg.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        netrc = os.path.expanduser("~/.netrc")
        if not (os.path.isfile(netrc) and "api.wandb.ai" in open(netrc).read()):
            os.environ.setdefault("WANDB_MODE", "offline")  # never prompt for a login
    accelerator = Accelerator(mixed_precision="no", project_dir=cfg.output_dir,
                              log_with=None if cfg.report_to == "none" else cfg.report_to,
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    os.makedirs(cfg.output_dir, exist_ok=True)
    precision, autocast = training_autocast(cfg.mixed_precision, accelerator.device)
    if cfg.report_to != "none":  # both write under output_dir: tensorboard to nanodpr/, wandb (offline too) to wandb/
        config = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in asdict(cfg).items()}
        accelerator.init_trackers("nanodpr", config=config, init_kwargs={"wandb": {"dir": cfg.output_dir}})
    return accelerator, precision, autocast


def load_data(cfg, accelerator, log):
    """(train set, dev set or None), each a memory-mapped cache under output_dir/data_cache/."""
    cache = os.path.join(cfg.output_dir, "data_cache")
    train_data = load_cache(train_files(cfg), os.path.join(cache, "train"),
                            dict(max_hard=None, max_other=None, other_only_without_hard=cfg.num_other_negatives == 0),
                            accelerator, log)
    meta = train_data.meta
    log(f"train: {meta['questions']} questions, {meta['passages']} distinct passages, "
        f"{meta['skipped']} records skipped (no positive ctx)")
    if steps_per_epoch(train_data, cfg.train_batch_size) == 0:
        raise DataError(f"{', '.join(train_files(cfg))}: {meta['questions']} usable questions ({meta['skipped']} "
                        f"skipped), fewer than one batch of train_batch_size {cfg.train_batch_size}")
    if not cfg.dev_file:
        return train_data, None
    keep_hard = max(cfg.val_av_rank_hard_neg, cfg.num_hard_negatives)  # both validations' layouts; other: fallback
    dev = load_cache([cfg.dev_file], os.path.join(cache, "dev"),
                     dict(max_hard=keep_hard, max_other=max(cfg.val_av_rank_other_neg, cfg.num_other_negatives, keep_hard),
                          other_only_without_hard=False), accelerator, log)
    log(f"dev: {len(dev)} questions, {dev.meta['skipped']} records skipped (no positive ctx)")
    if len(dev) == 0:
        raise DataError(f"{cfg.dev_file}: no usable dev questions")
    return train_data, dev


# What the loop and the checkpoints work on, passed explicitly (ddp: the BiEncoder `model`, wrapped for DDP).
Run = namedtuple("Run", "cfg accelerator model ddp tokenizers optimizer scheduler scaler autocast dev log")


def load_run(cfg, accelerator, precision, autocast, dev, total_steps, log):
    """Both towers, AdamW, DPR's schedule, the fp16 loss scaler; DDP over processes (loss scaling is ours)."""
    model, tokenizers = load_biencoder(cfg.base_model, cfg.dropout, cfg.pooling, cfg.similarity, cfg.scale)
    model.to(accelerator.device)
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.adam_eps, cfg.weight_decay, cfg.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=precision == "fp16")
    return Run(cfg, accelerator, model, accelerator.prepare_model(model), tokenizers, optimizer, scheduler, scaler,
               autocast, dev, log)


# --- The loop -------------------------------------------------------------------------------------


def train_loop(run, train_data, progress, total_steps):
    """Epochs of global batches (DPR's order), one optimizer step per batch over gradient_accumulation_steps
    micro-batches; validation and checkpoints after every epoch or every eval_steps."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.accelerator.device
    world, accumulation = accelerator.num_processes, cfg.gradient_accumulation_steps
    local = cfg.train_batch_size // (world * accumulation)  # questions per process per micro-batch
    collate = Collate(run.tokenizers, cfg.max_length, cfg.grad_cache_chunk_size or local, passage_groups(device))
    dataset = TrainSet(train_data, cfg.num_hard_negatives, cfg.num_other_negatives, cfg.seed)
    loss_weight = world / accumulation  # DDP averages gradients over processes; the global loss needs their sum
    # a progress bar on a terminal; elsewhere (logs, pipes) the log lines alone
    bar = tqdm(total=total_steps, initial=progress.step, desc="train",
               disable=not (accelerator.is_main_process and sys.stderr.isatty()))
    window = new_window(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.ddp.train()
    while progress.step < total_steps and progress.epoch < cfg.max_train_epochs:
        batches = epoch_batches(train_data, progress.epoch, cfg.seed, cfg.train_batch_size)[progress.batch_in_epoch:]
        slices = process_slices(batches, progress.epoch, accumulation, accelerator.process_index, world)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=slices, collate_fn=collate, num_workers=cfg.num_workers,
                                             pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(cfg.seed + progress.epoch))
        micro_batches = iter(loader)
        for _ in batches:
            loss = sum(forward_backward(run.ddp, to_device(next(micro_batches), device), autocast=run.autocast,
                                        grad_cache=bool(cfg.grad_cache_chunk_size), scaler=run.scaler,
                                        loss_weight=loss_weight, sync=a == accumulation - 1) for a in range(accumulation))
            grad_norm = optimizer_step(run.model, run.optimizer, run.scheduler, run.scaler, cfg.max_grad_norm)
            progress.step += 1
            progress.batch_in_epoch += 1
            window["loss"] += loss / accumulation
            window["steps"] += 1
            bar.update(1)
            if progress.step % cfg.log_steps == 0 or progress.step == total_steps:
                log_progress(run, progress, window, grad_norm, total_steps, bar)
                window = new_window(device)
            if (cfg.eval_steps and progress.step % cfg.eval_steps == 0) or progress.step == total_steps:
                evaluate_and_save(run, progress)
                window["start"] = time.time()  # examples/s measures training only
            if progress.step >= total_steps:
                break
        else:
            del micro_batches, loader
            if progress.last_eval_step != progress.step and not cfg.eval_steps:
                evaluate_and_save(run, progress)  # DPR validates after every epoch
            progress.epoch += 1
            progress.batch_in_epoch = 0
    bar.close()


def new_window(device):
    """Loss sum (kept on the device: no sync per step), steps and start time since the last log record."""
    return {"loss": torch.zeros((), device=device), "steps": 0, "start": time.time()}


def log_progress(run, progress, window, grad_norm, total_steps, bar):
    cfg, device = run.cfg, run.accelerator.device
    record = {"step": progress.step, "epoch": progress.epoch, "loss": window["loss"].item() / window["steps"],
              "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
              "examples_per_s": window["steps"] * cfg.train_batch_size / (time.time() - window["start"])}
    if device.type == "cuda":
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    write_log(run, record)
    if bar.disable:
        run.log(f"step {progress.step}/{total_steps}: loss {record['loss']:.4f}, lr {record['lr']:.2e}, "
                f"grad norm {record['grad_norm']:.3f}, {record['examples_per_s']:.1f} examples/s")
    else:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")


# --- Save: validation, checkpoints, logs ----------------------------------------------------------


def evaluate_and_save(run, progress):
    """Validate (with a dev set), save step-N/ and, when validation improved, best/; then last_state/."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.cfg.output_dir
    info, improved = {"step": progress.step, "epoch": progress.epoch}, False
    if run.dev is not None:
        metrics = validate(run.model, run.tokenizers, run.dev, cfg, progress.epoch >= cfg.val_av_rank_start_epoch,
                           run.autocast, accelerator.device)
        info.update(metrics)
        write_log(run, dict(info))
        run.log(f"step {progress.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        name = "dev_avg_rank" if "dev_avg_rank" in metrics else "dev_nll"  # DPR: NLL until average rank starts
        best = progress.best or {"metric": None}
        improved = best["metric"] != name or metrics[name] < best["value"]
        if improved:
            progress.best = {"metric": name, "value": metrics[name], "step": progress.step}
    progress.last_eval_step = progress.step
    if accelerator.is_main_process:
        save_encoders(run.model, run.tokenizers, os.path.join(out, f"step-{progress.step}"), info)
        if improved:
            save_encoders(run.model, run.tokenizers, os.path.join(out, "best"), info)
            run.log(f"new best {name} {metrics[name]:.4f}: {out}/best")
        prune_step_dirs(out, cfg.save_total_limit)
    save_state(os.path.join(out, "last_state"), run.model, run.optimizer, run.scheduler, run.scaler, progress, cfg,
               accelerator)


def write_log(run, record):
    """One record to output_dir/train_log.jsonl (main process) and to the tracker, if any."""
    if run.accelerator.is_main_process:
        with open(os.path.join(run.cfg.output_dir, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
    if run.cfg.report_to != "none":
        run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def train(cfg):
    accelerator, precision, autocast = make_accelerator(cfg)
    log = functools.partial(print, flush=True) if accelerator.is_main_process else lambda *args: None
    out = cfg.output_dir
    set_seed(cfg.seed)
    train_data, dev = load_data(cfg, accelerator, log)
    per_epoch = steps_per_epoch(train_data, cfg.train_batch_size)
    total_steps = per_epoch * cfg.max_train_epochs
    if cfg.max_train_steps is not None:
        total_steps = min(total_steps, cfg.max_train_steps)
    run = load_run(cfg, accelerator, precision, autocast, dev, total_steps, log)
    progress = Progress()
    if cfg.resume_from_checkpoint:
        path = last_state_dir(cfg.resume_from_checkpoint, out)
        progress = load_state(path, run.model, run.optimizer, run.scheduler, run.scaler, cfg, accelerator, log)
        log(f"resumed from {path}: step {progress.step}, epoch {progress.epoch}, batch {progress.batch_in_epoch}")
    if cfg.report_to != "none":
        log(f"{cfg.report_to} logs: {os.path.join(out, 'nanodpr' if cfg.report_to == 'tensorboard' else 'wandb')}"
            + (" (offline: `wandb sync` them)" if os.environ.get("WANDB_MODE") == "offline" else ""))
    chunks = f"chunks of {cfg.grad_cache_chunk_size} questions" if cfg.grad_cache_chunk_size else "off"
    log(f"{accelerator.num_processes} process(es) on {accelerator.device.type}, precision {precision}, {per_epoch} "
        f"steps/epoch, {total_steps} steps, batch {cfg.train_batch_size} questions x "
        f"{1 + cfg.num_hard_negatives + cfg.num_other_negatives} passages, grad cache {chunks}")
    log(f"outputs: {out}/{{best,step-N,last_state}}, log {out}/train_log.jsonl")
    train_loop(run, train_data, progress, total_steps)
    if progress.last_eval_step != progress.step:
        evaluate_and_save(run, progress)  # e.g. max_train_steps 0: the untrained model's dev metrics
    best = progress.best
    log(f"done: {progress.step} steps; " + (f"best {best['metric']} {best['value']:.4f} at step {best['step']} in "
                                            f"{out}/best" if best else f"checkpoints in {out}"))
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
