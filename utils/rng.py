"""The random generators training draws from, saved and restored together: to replay a chunk's dropout
masks (gradient cache) and to resume a run exactly."""

import random

import torch


def rng_state(device):
    """Every generator training draws from: torch's (dropout on CPU), the GPU's (dropout there), Python's."""
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
