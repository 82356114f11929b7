"""Reading checkpoints safely, and saying how one does not fit a model (docs/design.md#checkpoints)."""

from __future__ import annotations

import os

import torch

from lib.cli import UserError, first_line
from lib.model_specs import spec_of_state_dict
from lib.names import MODEL_NAMES


def load_checkpoint(path: str, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` a checkpoint safely (``weights_only=True``) onto ``device``."""
    if not os.path.isfile(path):
        raise UserError(
            f"{path}: no such checkpoint; train first with train_main.py or pass --checkpoint_path"
        )
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe global ...
        raise UserError(
            f"{path}: not a readable checkpoint ({first_line(exc)}); it may be truncated, "
            "corrupt, or hold code (refused: only weights are loaded)"
        ) from None
    if (
        isinstance(checkpoint, dict)
        and "model" not in checkpoint
        and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    ):
        checkpoint = {"model": checkpoint}  # a bare state dict
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserError(f"{path}: not a training checkpoint (no 'model' entry)")
    bad = non_finite_tensor(checkpoint["model"])
    if bad:
        raise UserError(
            f"{path}: holds non-finite weights (NaN/inf in {bad}), so every score would be "
            "NaN; its training diverged: train again with a lower --lr"
        )
    return checkpoint


def non_finite_tensor(state_dict) -> str | None:
    """The first key of ``state_dict`` whose floating-point tensor holds a NaN or an inf; ``None``
    when every one is finite."""
    for key, value in state_dict.items() if isinstance(state_dict, dict) else ():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return str(key)
    return None


def state_dict_mismatch(model: torch.nn.Module, state_dict) -> str | None:
    """How ``state_dict`` does not fit ``model``, naming the first missing, unexpected or wrongly
    shaped key (torch's own message lists every key and is cut off before the first); ``None``
    when it fits."""
    if not isinstance(state_dict, dict):
        return f"its 'model' entry is a {type(state_dict).__name__}, not a state dict"
    expected = model.state_dict()
    parts = []
    for what, keys in (
        ("missing key", [k for k in expected if k not in state_dict]),
        ("unexpected key", [k for k in state_dict if k not in expected]),
    ):
        if keys:
            parts.append(f"{what} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else ""))
    for key, value in expected.items():
        found = state_dict.get(key)
        if not parts and isinstance(found, torch.Tensor) and found.shape != value.shape:
            parts.append(
                f"{key} has shape {list(found.shape)} in the checkpoint, {list(value.shape)} in the model"
            )
    return "; ".join(parts) or None


def model_name_of_state_dict(state_dict: dict) -> str | None:
    """Which of our models a state dict belongs to, from its keys (``lib.model_specs``)."""
    spec = spec_of_state_dict(state_dict)
    return spec.name if spec else None


class WrongModelError(UserError):
    """A checkpoint holds another model than the one asked for; ``found`` names it."""

    def __init__(self, checkpoint_path: str, found: str, given: str):
        super().__init__(
            f"{checkpoint_path}: holds a {found} model, but -m {given} was given; "
            f"pass -m {found} (models: {', '.join(MODEL_NAMES)})"
        )
        self.found = found
