"""Training checkpoints: the encoder dirs other scripts read (best/, step-N/) and last_state/, from which a
run continues exactly (weights, optimizer, schedule, loss scale, progress, every process's RNG state).

Each is written under a temp name and renamed into place (utils.data.replace_dir / atomic_write).
"""
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from utils.data import atomic_write, replace_dir
from utils.models import save_encoder

# the on-disk format doc2embedding.py and test_dpr.py read
TOWER_DIRS = {"question": "query_encoder", "passage": "doc_encoder"}
# settings that make a resumed run a different run than the one interrupted
RESUME_KEYS = ("train_file", "train_batch_size", "gradient_accumulation_steps", "seed", "num_hard_negatives",
               "num_other_negatives", "max_length", "lr", "warmup_steps", "pooling", "similarity", "scale")


@dataclass
class Progress:
    """Where training stands: saved in last_state/ and all a resumed run needs besides the weights."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of this epoch already trained on
    best: Optional[dict] = None  # {"metric", "value", "step"} of best/
    last_eval_step: Optional[int] = None


def rng_state(device):
    """Every generator training draws from: torch's (dropout on CPU), the GPU's (dropout there), Python's."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_encoders(model, tokenizers, out_dir, info):
    """out_dir/{query_encoder,doc_encoder} (HF dirs: tokenizer, role, pooling) + trainer_state.json (info)."""
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for role, name in TOWER_DIRS.items():
        tower = getattr(model, f"{role}_model")
        save_encoder(tower, tokenizers[role], os.path.join(tmp, name), role, model.pooling)
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        json.dump(info, f, indent=1)
    replace_dir(tmp, out_dir)


def prune_step_dirs(output_dir, keep):
    """Delete all but the newest `keep` step-N/ dirs."""
    steps = sorted(int(m.group(1)) for d in os.listdir(output_dir) if (m := re.fullmatch(r"step-(\d+)", d)))
    for step in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(os.path.join(output_dir, f"step-{step}"), ignore_errors=True)


def last_state_dir(resume_from, output_dir):
    """The last_state dir `resume_from` names ("last": output_dir's)."""
    if resume_from != "last":
        return resume_from
    path = os.path.join(output_dir, "last_state")
    if not os.path.isdir(path) and os.path.isdir(path + ".old"):  # stopped between replace_dir's two renames
        path += ".old"
    return path


def save_state(path, model, optimizer, scheduler, scaler, progress, config, accelerator):
    """last_state/: everything on the main process, plus one RNG file per process (each draws its own dropout)."""
    tmp = path + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    torch.save(rng_state(accelerator.device), os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "state": asdict(progress), "config": asdict(config),
                    "world_size": accelerator.num_processes}, os.path.join(tmp, "state.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, path)
    accelerator.wait_for_everyone()


def load_state(path, model, optimizer, scheduler, scaler, config, accelerator, log):
    """Restore what save_state wrote; returns the Progress. Warns when settings or process count changed.
    Records the interrupted run logged after the checkpoint are dropped from train_log.jsonl: they run again."""
    saved = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
    changed = [k for k in RESUME_KEYS if saved["config"].get(k) != getattr(config, k)]
    if changed:
        log(f"warning: resuming with changed {', '.join(changed)}: not the run that was interrupted")
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    if unexpected or any("pooler." not in k for k in missing):  # states saved before the (frozen) pooler was kept lack it
        raise RuntimeError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    rng_file = os.path.join(path, f"rng_{accelerator.process_index}.pt")
    if saved["world_size"] != accelerator.num_processes or not os.path.isfile(rng_file):
        log(f"warning: {path} was saved by {saved['world_size']} processes, now {accelerator.num_processes}: "
            "data order is the same, dropout draws are not")
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
