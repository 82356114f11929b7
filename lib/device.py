"""The device a script runs on, its memory layout, and the seed of every RNG."""

from __future__ import annotations

import random

import numpy as np
import torch

from lib.cli import UserError


def get_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else the CPU; 'cuda' without a GPU is an error, and so is
    any other device (mps, meta, ...): the code paths are made and tested for CPU and CUDA only."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise UserError(f"--device {name}: not supported; use auto, cpu or cuda (cuda:N for GPU N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 to cuda:N-1"
        )
    return device


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_channels_last(setting, device: torch.device) -> bool:
    """``channels_last`` of the Trainer and of the analysis scripts' models: True/'on',
    False/'off', or 'auto' (the default): on for CPU and CUDA, where it measured faster for both
    models (benchmarks/README.md), else off."""
    if setting in ("auto", None):
        return torch.device(device).type in ("cpu", "cuda")
    if setting in ("on", "off"):
        return setting == "on"
    return bool(setting)
