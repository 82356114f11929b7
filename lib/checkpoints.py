"""Reading checkpoints safely, and saying how one does not fit a model (docs/design.md#checkpoints)."""

from __future__ import annotations

import os
import re
import zipfile

import torch

from lib.cli import UserError, first_line, note
from lib.model_specs import spec_of_state_dict
from lib.names import COURSE_CHECKPOINT, MODEL_NAMES, OPTIMIZER_NAMES, output_stem

MAX_DECLARED_BYTES = 4 * 1024**3
"""The most a checkpoint's archive may declare when the caller does not know the model's size: far
more than XceptionBased's full training state (weights and Adam's two moments)."""
MAX_PACKING = 20
"""A checkpoint's declared contents may be at most this many times its size on disk (once past
64 MiB): ``torch.save`` stores its records uncompressed, so more is a zip bomb."""
SLACK_BYTES = 16 * 1024**2
"""Room beyond the tensors in a checkpoint of a known model: the pickle, RNG states, the run dict."""


def default_checkpoint(
    model_name: str | None,
    dataset_name: str | None,
    checkpoint_dir="checkpoints",
    run_name: str | None = None,
) -> str:
    """The checkpoint of an analysis given no ``-cpp`` (docs/design.md#analysis): the course's
    ``checkpoints/XceptionBased.pt`` where it exists (and ``-m`` asks for no other model, and no
    ``--run_name`` is given), else the one checkpoint train_main.py wrote for ``-d`` (and ``-m``,
    ``--run_name``, when given) under any optimizer; the choice is said on stderr. None found, or
    several, is a ``UserError`` listing them."""
    if os.path.isfile(COURSE_CHECKPOINT) and model_name in (None, "XceptionBased") and not run_name:
        return COURSE_CHECKPOINT
    models = [model_name] if model_name else list(MODEL_NAMES)
    tried = [
        os.path.join(checkpoint_dir, output_stem(dataset_name, model, optimizer, run_name) + ".pt")
        for model in models
        for optimizer in OPTIMIZER_NAMES
    ] if dataset_name else []  # fmt: skip
    found = [path for path in tried if os.path.isfile(path)]
    if len(found) == 1:
        named = f" --run_name {run_name}" if run_name else ""
        note(f"-cpp not given: using {found[0]} (what train_main.py writes for -d {dataset_name}{named})")
        return found[0]
    if found:
        raise UserError(f"-cpp not given and several checkpoints fit: {', '.join(found)}; pass one with -cpp")
    raise UserError(
        f"-cpp not given and no checkpoint found (tried {', '.join([COURSE_CHECKPOINT, *tried])}); "
        "train one with train_main.py or pass its path with -cpp"
    )


def checkpoint_model_name(checkpoint: dict, checkpoint_path: str, model_name: str | None) -> str:
    """``-m`` when given, else the model the checkpoint records (or its keys show); a ``UserError``
    when neither tells."""
    found = checkpoint.get("model_name") or model_name_of_state_dict(checkpoint["model"])
    if model_name or found:
        return model_name or found
    raise UserError(
        f"{checkpoint_path}: cannot tell which model it holds; pass -m ({', '.join(MODEL_NAMES)})"
    )


def checkpoint_run_name(record: dict, path: str, run_name: str | None) -> str | None:
    """The run name outputs carry: ``--run_name`` when given, else the one ``record`` (a
    checkpoint, or a run of a runs JSON, read from ``path``) holds; None: the course's names.
    A ``--run_name`` that contradicts the record's is a ``UserError`` naming both."""
    found = record.get("run_name")
    if run_name and found and run_name != found:
        raise UserError(
            f"{path}: holds the run named {found!r}, but --run_name {run_name} was given; "
            f"pass --run_name {found} or leave it out"
        )
    return run_name or found


class CheckpointRefused(UserError):
    """A checkpoint that is refused before or while it is read; the message names it and why."""


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s state dict (a model on the meta device costs nothing to build)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_declared_size(path: str, expected_bytes: int | None = None) -> None:
    """Refuse (``CheckpointRefused``) a zip checkpoint whose declared uncompressed contents are
    more than a checkpoint holds, before ``torch.load`` allocates them: more than ``MAX_PACKING``
    times the file, more than ``4 x expected_bytes + SLACK_BYTES`` when the caller knows the model's
    state-dict size (weights, two optimizer moments and room), else more than
    ``MAX_DECLARED_BYTES``. A file that is not a zip archive is left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):  # legacy format or damaged
        return
    on_disk = os.path.getsize(path)
    mib = 1024**2
    if declared > 64 * mib and declared > MAX_PACKING * on_disk:
        raise CheckpointRefused(
            f"{path}: refused before loading: its archive declares {declared / 1e6:,.0f} MB of "
            f"contents in {on_disk / 1e6:,.1f} MB on disk, a zip bomb (torch.save does not "
            "compress); delete it and get the checkpoint again from its source"
        )
    bound = MAX_DECLARED_BYTES if expected_bytes is None else 4 * expected_bytes + SLACK_BYTES
    if declared > bound:
        what = "the model's checkpoint" if expected_bytes is not None else "any checkpoint of this project"
        raise CheckpointRefused(
            f"{path}: refused before loading: its archive declares {declared / 1e6:,.0f} MB, more "
            f"than {what} holds ({bound / 1e6:,.0f} MB at most); check that this is the right file"
        )


def refused_global(exc: BaseException) -> str | None:
    """The global (``posix.system``) whose call ``torch.load(weights_only=True)`` refused, if
    that is why it failed: the pickle holds code."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def load_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused or failed, on one line and without torch's
    advice to load with ``weights_only=False``."""
    name = refused_global(exc)
    if name:
        return f"its pickle calls {name}, which is not a tensor or a plain value"
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return first_line(text.split(marker, 1)[1].split(" Please use", 1)[0])
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return first_line(lines[0] if lines else type(exc).__name__)


def torch_load(path: str, device: torch.device | str = "cpu", expected_bytes: int | None = None, **kwargs):
    """``torch.load(path, weights_only=True)`` onto ``device`` once ``check_declared_size`` passes;
    any failure is a one-line ``CheckpointRefused`` naming ``path`` and the reason
    (``load_reason``). Nothing pickled in the file is ever executed."""
    check_declared_size(path, expected_bytes)
    try:
        return torch.load(path, map_location=device, weights_only=True, **kwargs)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe global ...
        name = refused_global(exc)
        if name:
            raise CheckpointRefused(
                f"{path}: refused: its pickle would call {name}, code rather than weights (nothing "
                "in the file was run); use a checkpoint from a source you trust, or train again"
            ) from None
        raise CheckpointRefused(
            f"{path}: not a readable checkpoint ({load_reason(exc)}); it may be truncated or "
            "corrupt: train again or get the file again"
        ) from None


def load_checkpoint(path: str, device: torch.device | str = "cpu", expected_bytes: int | None = None) -> dict:
    """A training checkpoint (a dict with a ``model`` state dict; a bare state dict is wrapped) read
    by ``torch_load`` onto ``device``; ``expected_bytes`` is the model's state-dict size where
    the caller knows it. A missing file, another kind of file, a zip bomb, pickled code and
    non-finite weights are one-line ``UserError``s naming ``path``."""
    if not os.path.isfile(path):
        raise UserError(
            f"{path}: no such checkpoint; train first with train_main.py or pass --checkpoint_path"
        )
    checkpoint = torch_load(path, device, expected_bytes)
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


def recorded_run_id(path: str) -> str | None:
    """The run id a checkpoint records (None: none, or no such file), read memory-mapped, its
    weights neither copied nor checked; an unreadable file is a ``UserError`` as in ``torch_load``."""
    if not os.path.isfile(path):
        return None
    checkpoint = torch_load(path, "cpu", mmap=True)
    return checkpoint.get("run_id") if isinstance(checkpoint, dict) else None


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
