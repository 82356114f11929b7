"""The course's helpers: the split transforms, loading a dataset split and a model, counting
parameters, and loading a trained checkpoint into its model. The names, the data root, the device
and the checkpoint readers live in ``lib/`` and are importable from here as before."""

from __future__ import annotations

import os

import torch

from faces_dataset import DEMO_HINT, DataError, FacesDataset
from lib.checkpoints import (  # noqa: F401  (re-exported)
    WrongModelError,
    checkpoint_model_name,
    checkpoint_run_name,
    default_checkpoint,
    load_checkpoint,
    model_name_of_state_dict,
    non_finite_tensor,
    state_dict_bytes,
    state_dict_mismatch,
)
from lib.cli import UserError, check_name, first_line
from lib.data_root import (  # noqa: F401  (re-exported)
    DATA_ROOT_ENV,
    DEFAULT_DATA_ROOT,
    dataset_folder,
    datasets_under,
    resolve_data_root,
)
from lib.device import get_device, resolve_channels_last, set_seed  # noqa: F401
from lib.model_specs import model_spec
from lib.names import (  # noqa: F401  (re-exported)
    DATASET_NAMES,
    DATASET_TITLES,
    FIGURE_SUFFIXES,
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    SAMPLES_FIGURE,
    SPLITS,
    cross_dataset_paths,
    figure_path,
    spectrum_paths,
)
from lib.scores import require_finite_outputs
from lib.transforms import Degradations, StudyTransform


# ----------------------------------------------------------------------------- transforms
def get_transforms(dataset_part: str, degradations: Degradations | None = None) -> StudyTransform:
    """The study's transforms, applied to a uint8 3x256x256 tensor (or a PIL image).

    train: RandomCrop(256, padding=4), RandomHorizontalFlip, to float in [0, 1], Normalize.
    val/test: to float in [0, 1], Normalize. Cropping and flipping the uint8 image before the
    float conversion gives the same numbers as the course order (ToTensor first) but is cheaper.
    ``degradations`` (train only) adds the blur and JPEG augmentation before the crop.
    """
    check_name("split", dataset_part, SPLITS)
    return StudyTransform(train=dataset_part == "train", degradations=degradations)


# ----------------------------------------------------------------------------- data
def split_path(dataset_name: str, dataset_part: str, data_root: str | None = None) -> str:
    """``<data root>/<dataset>/<split>``; an unknown dataset is an error listing those found."""
    check_name("split", dataset_part, SPLITS)
    return os.path.join(dataset_folder(dataset_name, data_root), dataset_part)


def load_dataset(
    dataset_name: str,
    dataset_part: str,
    data_root: str | None = None,
    cache_images: bool = False,
    skip_corrupt: bool = False,
    degradations: Degradations | None = None,
) -> FacesDataset:
    """The ``FacesDataset`` of one split, with the train transform for train (with ``degradations``
    when given), else the test one."""
    path = split_path(dataset_name, dataset_part, data_root)
    if not os.path.isdir(path):
        raise DataError(
            f"{path}: missing split folder; expected <data root>/{dataset_name}/"
            f"{{train,val,test}}/{{real,fake}}/; {DEMO_HINT}"
        )
    return FacesDataset(
        path,
        transform=get_transforms(dataset_part, degradations),
        cache_images=cache_images,
        skip_corrupt=skip_corrupt,
    )


# ----------------------------------------------------------------------------- models
def load_model(
    model_name: str, pretrained: bool = True, weights_path: str | None = None, head: str | None = None
) -> torch.nn.Module:
    """Build only the model asked for (``lib.model_specs``), with ``head`` (None: the model's
    default). SimpleNet never touches ImageNet weights; ``pretrained=False`` never looks for any."""
    check_name("model", model_name, MODEL_NAMES)
    import models  # late import: keeps `utils` light for scripts that only read data

    return models.build_model(model_name, head=head, pretrained=pretrained, weights_path=weights_path)


def get_nof_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_bytes(model_name: str) -> int:
    """The size of ``model_name``'s state dict, for ``load_checkpoint``'s size check (the model
    is built on the meta device: no weights are allocated or initialised)."""
    with torch.device("meta"):
        return state_dict_bytes(load_model(model_name, pretrained=False))


def load_model_from_checkpoint(
    model_name: str, checkpoint_path: str, device: torch.device | str = "cpu", checkpoint: dict | None = None
) -> torch.nn.Module:
    """Build ``model_name`` without pretrained weights, with the checkpoint's head (its ``head``
    entry, else read off its keys), load the checkpoint's ``model``, eval mode.
    ``checkpoint``: the file's content when the caller has read it already (``load_checkpoint``).

    On the CPU and CUDA the model is channels-last (its inputs may stay NCHW): the analyses run
    faster so, with the same numbers up to float rounding (benchmarks/README.md).
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(checkpoint_path, device, checkpoint_bytes(model_name))
    state_dict = checkpoint["model"]
    found = checkpoint.get("model_name") or model_name_of_state_dict(state_dict)
    if found and found != model_name:
        raise WrongModelError(checkpoint_path, found, model_name)
    head = checkpoint.get("head") or model_spec(model_name).head_of(state_dict)
    model = load_model(model_name, pretrained=False, head=head)
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
    return require_finite_outputs(model.to(device, memory_format=fast).eval(), checkpoint_path)


# ----------------------------------------------------------------------------- analysis inputs
def load_analysis_inputs(args) -> tuple[torch.device, torch.nn.Module, FacesDataset]:
    """What every analysis script starts from, given the flags of ``add_analysis_flags``: the device,
    the checkpoint's model (built without ImageNet weights, eval mode) and the test split."""
    device = get_device(args.device)
    model = load_checkpoint_model(args, device, args.dataset)
    return device, model, load_dataset(args.dataset, "test", args.data_root)


def load_checkpoint_model(args, device, dataset_name: str | None = None) -> torch.nn.Module:
    """The model of ``args.checkpoint_path`` (``default_checkpoint`` when not given) as
    ``load_model_from_checkpoint`` builds it, ``args.model`` its model (``-m``, or the one the
    checkpoint records), ``args.run_id`` the training run that saved it and, for a script with
    ``--run_name``, ``args.run_name`` the run's name (``checkpoint_run_name``); all are filled
    into ``args``."""
    run_name = getattr(args, "run_name", None)  # predict.py names no outputs after the run
    if args.checkpoint_path is None:
        args.checkpoint_path = default_checkpoint(args.model, dataset_name, run_name=run_name)
    bound = checkpoint_bytes(args.model) if args.model else max(map(checkpoint_bytes, MODEL_NAMES))
    checkpoint = load_checkpoint(args.checkpoint_path, device, bound)
    args.model = checkpoint_model_name(checkpoint, args.checkpoint_path, args.model)
    args.run_id = checkpoint.get("run_id")  # the analyses' sections say which training they are of
    if hasattr(args, "run_name"):
        args.run_name = checkpoint_run_name(checkpoint, args.checkpoint_path, run_name)
    return load_model_from_checkpoint(args.model, args.checkpoint_path, device, checkpoint)
