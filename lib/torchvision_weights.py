"""Find and load the ImageNet weights of a torchvision backbone (docs/design.md#torchvision-weights).

The same order as the Xception weights (``lib/xception_weights.py``), failing with one clear
:class:`PretrainedWeightsError` that lists what was tried:

1. an explicit file (``--pretrained_weights PATH``); a given path that does not exist is an error;
2. torchvision's own cache: ``torch.hub.get_dir()/checkpoints/<file name of the weights' URL>``,
   where ``torchvision.models.<builder>(weights=...)`` would have put it;
3. a download from that URL into that cache (after a quick reachability probe; not with
   ``XCEPTION_NO_DOWNLOAD=1``, the project's switch for every weights download), checked against
   the SHA-256 prefix in torchvision's file name.

Files are read with ``torch.load(..., weights_only=True)`` and must fit the model exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lib.checkpoints import state_dict_mismatch
from lib.cli import UserError
from lib.model_specs import ModelSpec
from lib.xception_weights import (
    DOWNLOAD_SOCKET_TIMEOUT_S,
    NO_DOWNLOAD_ENV_VAR,
    WeightsInfo,
    _downloads_disabled,
    _probe,
    _short_reason,
    _socket_timeout,
)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


class PretrainedWeightsError(UserError, RuntimeError):
    """A torchvision backbone's ImageNet weights could not be found, read or matched."""


def weights_url(spec: ModelSpec) -> str:
    """The download URL of ``spec``'s torchvision weights enum member."""
    import torchvision

    return torchvision.models.get_weight(spec.weights).url


def cache_path(spec: ModelSpec) -> Path:
    """Where torchvision keeps ``spec``'s weights: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_url(spec))


def _hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix torchvision puts in its file names (``resnet50-11ad3fa6.pth``)."""
    stem = file_name.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def load_weights_file(model: nn.Module, path: Path, spec: ModelSpec) -> WeightsInfo:
    """Load a weights file (a state dict, possibly under a ``state_dict``/``model`` entry, possibly
    with ``module.`` prefixes) into ``model`` (the torchvision model with its 1000-class classifier),
    strictly; any problem is a :class:`PretrainedWeightsError` naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe global ...
        raise PretrainedWeightsError(
            f"{path}: not readable as {spec.name} weights with torch.load(weights_only=True) "
            f"({_short_reason(exc)}); delete it and get it again"
        ) from None
    adaptations = []
    inner = next((k for k in _WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if inner:
        obj = obj[inner]
        adaptations.append(f"took the state dict from the file's {inner!r} entry")
    if isinstance(obj, dict) and any(str(k).startswith("module.") for k in obj):
        obj = {str(k).removeprefix("module."): v for k, v in obj.items()}
        adaptations.append("stripped the 'module.' prefix")
    mismatch = state_dict_mismatch(model, obj)
    if mismatch:
        raise PretrainedWeightsError(
            f"{path}: not the ImageNet weights of torchvision's {spec.torchvision} ({mismatch})"
        )
    model.load_state_dict(obj)
    return WeightsInfo(source=str(path), classifier_loaded=True, adaptations=adaptations)


def _download(model: nn.Module, spec: ModelSpec, failures: list[str]) -> WeightsInfo | None:
    """Download the weights into torchvision's cache and load them; None (with the reason in
    ``failures``) when the network or the file fails."""
    url, dst = weights_url(spec), cache_path(spec)
    unreachable = _probe([url])[url]
    if unreachable:
        failures.append(f"{url}: {unreachable}")
        return None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=_hash_prefix(dst.name), progress=True)
    except Exception as exc:  # HTTPError, URLError, timeouts, hash mismatch, disk errors
        failures.append(f"{url}: download failed ({_short_reason(exc)})")
        return None
    info = load_weights_file(model, dst, spec)
    info.origin = f"downloaded from {url}"
    return info


def load_imagenet_weights(model: nn.Module, spec: ModelSpec, weights_path=None) -> WeightsInfo:
    """Find ``spec``'s ImageNet weights (explicit path, torchvision's cache, a download) and load
    them into ``model``, the torchvision model before its head is replaced. Returns the
    :class:`WeightsInfo`, its ``origin`` set; raises :class:`PretrainedWeightsError` when none fit."""
    if weights_path is not None and str(weights_path) != "":
        explicit = Path(weights_path).expanduser()
        if not explicit.is_file():
            raise PretrainedWeightsError(
                f"--pretrained_weights {explicit}: no such file; pass an existing file, or --no_pretrained"
            )
        info = load_weights_file(model, explicit, spec)
        info.origin = "the --pretrained_weights argument"
        return info
    cached = cache_path(spec)
    if cached.is_file():
        info = load_weights_file(model, cached, spec)
        info.origin = "torchvision's cache"
        return info
    failures: list[str] = []
    if _downloads_disabled():
        failures.append(f"{weights_url(spec)}: not tried ({NO_DOWNLOAD_ENV_VAR}=1 is set)")
    else:
        info = _download(model, spec, failures)
        if info is not None:
            return info
    raise PretrainedWeightsError(_no_weights_message(spec, cached, failures))


def _no_weights_message(spec: ModelSpec, cached: Path, failures: list[str]) -> str:
    return "\n".join(
        [
            f"No ImageNet weights found for {spec.name} (torchvision's {spec.weights}). Tried:",
            "  1. an explicit file: none given (--pretrained_weights)",
            f"  2. torchvision's cache: {cached} is not there",
            "  3. downloading into that cache:",
            *[f"     - {line}" for line in failures],
            "Two ways out:",
            f"  * get {cached.name} (on a machine with internet access, from the link above) and pass "
            f"--pretrained_weights PATH, or copy it into {cached.parent}; or",
            f"  * train from random initialisation with --no_pretrained (the field's {spec.name} "
            "results start from ImageNet weights).",
        ]
    )
