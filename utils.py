"""Shared helpers: names, transforms, data-root resolution, model building, checkpoints, safe
file writes and the command-line error handling used by every script."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torchvision.transforms import v2

from batching import CROP_PADDING, NORMALIZE_MEAN, NORMALIZE_STD
from cli import UserError, check_name, first_line
from faces_dataset import DEMO_HINT, DataError, FacesDataset

DATASET_NAMES = ("fakes_dataset", "synthetic_dataset")
SPLITS = ("train", "val", "test")
MODEL_NAMES = ("SimpleNet", "XceptionBased")
OPTIMIZER_NAMES = ("SGD", "Adam")
DATASET_TITLES = {"fakes_dataset": "Deepfakes dataset", "synthetic_dataset": "Synthetic images dataset"}


DATA_ROOT_ENV = "FACES_DATA_ROOT"
DEFAULT_DATA_ROOT = os.path.join("..", "Assignment4_datasets")


# ----------------------------------------------------------------------------- transforms
class StudyTransform(v2.Compose):
    """The study's transform of one split (docs/design.md#transforms); ``train`` says whether it augments.

    The Trainer recognises it and runs the same arithmetic batched (``augment_uint8`` then
    ``normalize_batch``), so a dataset built by ``load_dataset`` trains identically either way.
    """

    takes_uint8_tensor = True  # FacesDataset hands it the uint8 tensor, not a PIL image

    def __init__(self, train: bool):
        steps = [v2.ToImage()]
        if train:
            steps += [v2.RandomCrop(256, padding=CROP_PADDING), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
        super().__init__(steps)
        self.train = train


def get_transforms(dataset_part: str) -> StudyTransform:
    """The study's transforms, applied to a uint8 3x256x256 tensor (or a PIL image).

    train: RandomCrop(256, padding=4), RandomHorizontalFlip, to float in [0, 1], Normalize.
    val/test: to float in [0, 1], Normalize. Cropping and flipping the uint8 image before the
    float conversion gives the same numbers as the course order (ToTensor first) but is cheaper.
    """
    check_name("split", dataset_part, SPLITS)
    return StudyTransform(train=dataset_part == "train")


# ----------------------------------------------------------------------------- data
def resolve_data_root(data_root: str | None = None) -> str:
    """Where the datasets are: ``--data_root``, else $FACES_DATA_ROOT, else ../Assignment4_datasets.

    An explicit choice (flag or environment variable) that does not exist is an error; so is the
    default when nothing was chosen. The message lists what was tried.
    """
    if data_root:
        if not os.path.isdir(data_root):
            raise UserError(f"--data_root {data_root}: no such folder; {DEMO_HINT}")
        return data_root
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        if not os.path.isdir(env):
            raise UserError(f"${DATA_ROOT_ENV}={env}: no such folder; {DEMO_HINT}")
        return env
    if os.path.isdir(DEFAULT_DATA_ROOT):
        return DEFAULT_DATA_ROOT
    raise UserError(
        f"no datasets found: tried --data_root (not given), ${DATA_ROOT_ENV} (not set) and "
        f"{os.path.abspath(DEFAULT_DATA_ROOT)} (missing); point --data_root at a folder holding "
        f"fakes_dataset/ and synthetic_dataset/, or {DEMO_HINT}"
    )


def split_path(dataset_name: str, dataset_part: str, data_root: str | None = None) -> str:
    check_name("dataset", dataset_name, DATASET_NAMES)
    check_name("split", dataset_part, SPLITS)
    return os.path.join(resolve_data_root(data_root), dataset_name, dataset_part)


def load_dataset(
    dataset_name: str,
    dataset_part: str,
    data_root: str | None = None,
    cache_images: bool = False,
    skip_corrupt: bool = False,
) -> FacesDataset:
    """The ``FacesDataset`` of one split, with the train transform for train, else the test one."""
    path = split_path(dataset_name, dataset_part, data_root)
    if not os.path.isdir(path):
        raise DataError(
            f"{path}: missing split folder; expected <data root>/{dataset_name}/"
            f"{{train,val,test}}/{{real,fake}}/; {DEMO_HINT}"
        )
    return FacesDataset(
        path, transform=get_transforms(dataset_part), cache_images=cache_images, skip_corrupt=skip_corrupt
    )


# ----------------------------------------------------------------------------- models
def load_model(model_name: str, pretrained: bool = True, weights_path: str | None = None) -> torch.nn.Module:
    """Build only the model asked for. SimpleNet never touches Xception weights."""
    check_name("model", model_name, MODEL_NAMES)
    import models  # late import: keeps `utils` light for scripts that only read data

    if model_name == "SimpleNet":
        return models.SimpleNet()
    return models.get_xception_based_model(pretrained=pretrained, weights_path=weights_path)


def get_nof_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


# ----------------------------------------------------------------------------- checkpoints
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
    """Which of our models a state dict belongs to, from its keys."""
    keys = set(state_dict)
    if "fc1.weight" in keys and "conv1.weight" in keys:
        return "SimpleNet"
    if "block1.skip.weight" in keys:
        return "XceptionBased"
    return None


class WrongModelError(UserError):
    """A checkpoint holds another model than the one asked for; ``found`` names it."""

    def __init__(self, checkpoint_path: str, found: str, given: str):
        super().__init__(
            f"{checkpoint_path}: holds a {found} model, but -m {given} was given; "
            f"pass -m {found} (models: {', '.join(MODEL_NAMES)})"
        )
        self.found = found


def load_model_from_checkpoint(
    model_name: str, checkpoint_path: str, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """Build ``model_name`` without pretrained weights, load the checkpoint's ``model``, eval mode.

    On the CPU and CUDA the model is channels-last (its inputs may stay NCHW): the analysis runs
    faster so (saliency 1.7x, Grad-CAM 1.2x for SimpleNet on 2 CPU cores; benchmarks/README.md),
    with the same numbers up to float rounding.
    """
    checkpoint = load_checkpoint(checkpoint_path, device)
    state_dict = checkpoint["model"]
    found = checkpoint.get("model_name") or model_name_of_state_dict(state_dict)
    if found and found != model_name:
        raise WrongModelError(checkpoint_path, found, model_name)
    model = load_model(model_name, pretrained=False)
    mismatch = state_dict_mismatch(model, state_dict)
    if mismatch:
        raise UserError(
            f"{checkpoint_path}: does not fit a {model_name} model ({mismatch}); "
            f"models: {', '.join(MODEL_NAMES)}"
        )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserError(
            f"{checkpoint_path}: does not fit a {model_name} model "
            f"({first_line(exc)}); models: {', '.join(MODEL_NAMES)}"
        ) from None
    fast = torch.channels_last if resolve_channels_last("auto", device) else torch.contiguous_format
    return model.to(device, memory_format=fast).eval()


def resolve_channels_last(setting, device: torch.device) -> bool:
    """``channels_last`` of the Trainer and of the analysis scripts' models: True/'on',
    False/'off', or 'auto' (the default): on for CPU and CUDA, where it measured faster for both
    models (benchmarks/README.md), else off."""
    if setting in ("auto", None):
        return torch.device(device).type in ("cpu", "cuda")
    if setting in ("on", "off"):
        return setting == "on"
    return bool(setting)


# ----------------------------------------------------------------------------- output names
SAMPLES_FIGURE = "datasets_samples.png"
"""The samples figure of plot_samples_of_faces_datasets.py (in the figures folder)."""

FIGURE_SUFFIXES = {
    "curves": ("losses_plot", "accuracies_plot"),  # plot_accuracy_and_loss.py
    "numerical": ("roc_curve", "det_curve", "reliability_diagram"),  # numerical_analysis.py
    "gradcam": ("Real_Image_grad_cam", "Fake_Image_grad_cam"),  # grad_cam_analysis.py (label 0, 1)
    "saliency": ("saliency_maps_and_images_pairs", "mean_saliency_maps"),  # saliency_map.py
    "robustness": ("robustness",),  # robustness_analysis.py
}
"""The figures of one run, ``<D>_<M>_<suffix>.png``, by the script that writes them: the study's
figures (docs/design.md#output-names), the reliability diagram of P(fake) and the robustness curves."""


def figure_path(figures_dir: str, dataset_name: str, model_name: str, suffix: str) -> str:
    """``<figures_dir>/<D>_<M>_<suffix>.png`` (docs/design.md#output-names)."""
    return os.path.join(figures_dir, f"{dataset_name}_{model_name}_{suffix}.png")


def spectrum_paths(figures_dir: str, out_dir: str, dataset_name: str) -> tuple[str, str]:
    """(figure, JSON) that spectrum_analysis.py writes for one dataset: ``<D>_spectrum.png`` and
    ``<D>_spectrum.json`` (no model: the spectra belong to the data)."""
    return (os.path.join(figures_dir, f"{dataset_name}_spectrum.png"),
            os.path.join(out_dir, f"{dataset_name}_spectrum.json"))  # fmt: skip


def cross_dataset_paths(figures_dir: str, out_dir: str) -> tuple[str, str]:
    """(figure, JSON) of the whole matrix that cross_dataset_analysis.py writes."""
    return os.path.join(figures_dir, "cross_dataset.png"), os.path.join(out_dir, "cross_dataset.json")


def load_analysis_inputs(args) -> tuple[torch.device, torch.nn.Module, FacesDataset]:
    """What every analysis script starts from, given the flags of ``add_analysis_flags``: the device,
    the checkpoint's model (built without ImageNet weights, eval mode) and the test split."""
    device = get_device(args.device)
    model = load_model_from_checkpoint(args.model, args.checkpoint_path, device)
    return device, model, load_dataset(args.dataset, "test", args.data_root)
