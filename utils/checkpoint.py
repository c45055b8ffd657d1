"""Training checkpoints: the encoder dirs other scripts read (best/, step-N/) and last_state/, from which a
run continues exactly (weights, optimizer, schedule, loss scale, progress, every process's RNG state);
and the checks that an output dir is this run's alone and the same dir for every process.

Each is written under a temp name and renamed into place (utils.files.atomic_dir / atomic_write).
"""

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from accelerate.utils import broadcast_object_list, gather_object

from utils.errors import ConfigError
from utils.files import atomic_dir, atomic_write
from utils.models import save_encoder
from utils.rng import rng_state, set_rng_state
from utils.towers import TOWER_DIRS, unused_by_dpr

# settings that make a resumed run a different run than the one interrupted
RESUME_KEYS = (
    "train_file",
    "train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "num_hard_negatives",
    "num_other_negatives",
    "max_length",
    "lr",
    "warmup_steps",
    "pooling",
    "similarity",
    "scale",
)


@dataclass
class Progress:
    """Where training stands: saved in last_state/ and all a resumed run needs besides the weights."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of this epoch already trained on
    best: Optional[dict] = None  # {"metric", "value", "step"} of best/
    last_eval_step: Optional[int] = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept by resumes; in each encoder dir


def save_encoders(model, tokenizers, out_dir, info):
    """out_dir/{query_encoder,doc_encoder} (plain HF dirs with tokenizer, role, pooling, training run and
    step) + trainer_state.json (info). Both towers share (run, step): test_dpr.py pairs them by it."""
    with atomic_dir(out_dir) as tmp:
        for role, name in TOWER_DIRS.items():
            save_encoder(
                getattr(model, f"{role}_model"),
                tokenizers[role],
                os.path.join(tmp, name),
                role,
                model.pooling,
                run=info.get("run"),
                step=info["step"],
            )
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(info, f, indent=1)


def prune_step_dirs(output_dir, keep):
    """Delete all but the newest `keep` step-N/ dirs."""
    steps = sorted(int(m.group(1)) for d in os.listdir(output_dir) if (m := re.fullmatch(r"step-(\d+)", d)))
    for step in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(os.path.join(output_dir, f"step-{step}"), ignore_errors=True)


RUN_FILES = re.compile(r"(step-\d+|best|last_state|train_log\.jsonl)(\.tmp|\.old)?")


def run_files(output_dir):
    """A training run's checkpoints and log in output_dir; not data_cache/, which is keyed by its inputs."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if RUN_FILES.fullmatch(name))


def check_output_dir(output_dir, resume_from, overwrite):
    """A new run into a dir holding another run's files is refused: its log would mix with ours, and pruning
    would keep its higher step-N/ dirs and delete ours. Unless it resumes it, or overwrite deletes it."""
    resume = resume_from and last_state_dir(resume_from, output_dir)
    if resume and not os.path.isdir(resume):
        raise ConfigError(f"resume_from_checkpoint: {resume} does not exist")
    if resume and overwrite:
        raise ConfigError("resume_from_checkpoint continues the run that overwrite_output_dir would delete")
    found = run_files(output_dir)
    if found and not (resume or overwrite):
        raise ConfigError(
            f"{output_dir} holds another training run ({', '.join(found)}); continue it with "
            "--resume_from_checkpoint last, replace it with --overwrite_output_dir true, "
            "or pick another output_dir"
        )


def claim_output_dir(output_dir, overwrite, state):
    """Every process sees the same output dir (check_shared_dir); with overwrite, the old run's files go."""
    os.makedirs(output_dir, exist_ok=True)
    check_shared_dir(output_dir, state)
    if overwrite and state.is_main_process:
        for name in run_files(output_dir):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    state.wait_for_everyone()


def check_shared_dir(path, state):
    """Every process writes into `path` and rank 0 gathers what the others wrote, so all must see the same
    dir: rank 0 writes a random token there, every process reads it back. Seconds, before any long work."""
    if state.num_processes == 1:
        return
    token_file, token = os.path.join(path, ".rank0_token"), [uuid.uuid4().hex]
    if state.is_main_process:
        with atomic_write(token_file) as f:
            f.write(token[0])
    broadcast_object_list(token)  # rank 0's token; also a barrier: the file is there before anyone reads
    sees = os.path.isfile(token_file) and open(token_file).read() == token[0]  # rank 0 removes it only below
    blind = [rank for rank, ok in enumerate(gather_object([sees])) if not ok]
    if state.is_main_process:
        os.remove(token_file)
    if blind:
        raise ConfigError(
            f"{path}: process(es) {blind} of {state.num_processes} do not see the files that "
            "process 0 writes there; all processes (all nodes) need it on a shared filesystem"
        )


def last_state_dir(resume_from, output_dir):
    """The last_state dir `resume_from` names ("last": output_dir's)."""
    if resume_from != "last":
        return resume_from
    path = os.path.join(output_dir, "last_state")
    if not os.path.isdir(path) and os.path.isdir(path + ".old"):  # stopped between atomic_dir's two renames
        path += ".old"
    return path


def save_state(path, model, optimizer, scheduler, scaler, progress, config, accelerator):
    """last_state/: everything on the main process, plus one RNG file per process (each draws its own
    dropout)."""
    main, tmp = accelerator.is_main_process, path + ".tmp"
    # the main process creates and renames it
    with atomic_dir(path, tmp) if main else contextlib.nullcontext():
        accelerator.wait_for_everyone()
        torch.save(rng_state(accelerator.device), os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
        if main:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "state": asdict(progress),
                    "config": asdict(config),
                    "world_size": accelerator.num_processes,
                },
                os.path.join(tmp, "state.pt"),
            )
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()


def load_state(path, model, optimizer, scheduler, scaler, config, accelerator, log):
    """Restore what save_state wrote; returns the Progress. Warns when settings or process count changed.
    Records the interrupted run logged after the checkpoint are dropped from train_log.jsonl: they run
    again."""
    saved = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
    changed = [k for k in RESUME_KEYS if saved["config"].get(k) != getattr(config, k)]
    if changed:
        log(f"warning: resuming with changed {', '.join(changed)}: not the run that was interrupted")
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    if unexpected or not all(unused_by_dpr(k) for k in missing):
        raise RuntimeError(
            f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    rng_file = os.path.join(path, f"rng_{accelerator.process_index}.pt")
    if saved["world_size"] != accelerator.num_processes or not os.path.isfile(rng_file):
        log(
            f"warning: {path} was saved by {saved['world_size']} processes, now {accelerator.num_processes}: "
            "data order is the same, dropout draws are not"
        )
    else:
        set_rng_state(torch.load(rng_file, weights_only=True), accelerator.device)
    progress = Progress(**saved["state"])
    log_file = os.path.join(config.output_dir, "train_log.jsonl")
    if accelerator.is_main_process and os.path.isfile(log_file):
        with open(log_file) as f:
            kept = [line for line in f if json.loads(line)["step"] <= progress.step]
        with atomic_write(log_file) as f:
            f.writelines(kept)
    return progress
