"""Find, read and load the ImageNet weights of the Xception backbone in :mod:`xception`.

This module is the weights half of the backbone (see ``docs/design.md#xception-weights``); the
network itself lives in ``xception.py``, whose ``build_xception_backbone(pretrained=True)`` calls
:func:`load_imagenet_weights` here. The port's original download links are dead or flaky, so the
weights are looked for in this order, failing with one clear :class:`XceptionWeightsError`:

1. an explicit file: the ``weights_path`` argument, else the ``XCEPTION_WEIGHTS`` env variable;
2. a file already in ``torch.hub.get_dir()/checkpoints`` under one of :data:`KNOWN_WEIGHT_FILES`;
3. a download into that cache from :data:`WEIGHTS_MIRRORS` (skipped when ``XCEPTION_NO_DOWNLOAD=1``),
   after a quick reachability probe so that a machine without network fails in seconds.

:func:`load_xception_weights` accepts every format these files come in and always reads them
with ``torch.load(..., weights_only=True)``: pickled code in a checkpoint is never run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lib.checkpoints import CheckpointRefused, check_declared_size, load_reason, state_dict_bytes
from lib.cli import UserError, first_line

__all__ = [
    "KNOWN_WEIGHT_FILES",
    "WEIGHTS_MIRRORS",
    "WeightsInfo",
    "WeightsMirror",
    "XceptionWeightsError",
    "load_imagenet_weights",
    "load_xception_weights",
]


# --------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------


class XceptionWeightsError(UserError, RuntimeError):
    """The Xception ImageNet weights could not be found, read or matched to the model."""


@dataclass
class WeightsInfo:
    """What :func:`load_xception_weights` loaded and which format fixes it applied."""

    source: str
    """The file path, or ``"<state dict>"`` when a mapping was passed."""
    classifier_loaded: bool
    """False when the file had no (usable) classifier and ``fc`` kept its initialisation."""
    adaptations: list[str] = field(default_factory=list)
    """Human-readable format fixes, e.g. ``"renamed last_linear.* to fc.*"``."""
    origin: str = ""
    """How :func:`load_imagenet_weights` found the file (argument, env, cache, download URL)."""


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_CLASSIFIER_PREFIX = "fc."


def _describe(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _short_reason(exc: BaseException, limit: int = 300) -> str:
    """One line out of an exception (torch's weights_only errors are long and multi-line)."""
    return first_line(load_reason(exc), limit)


def _read_checkpoint(path: Path, expected_bytes: int | None = None) -> Any:
    """``torch.load`` a file safely (``weights_only=True``) once its declared size passes
    ``checkpoints.check_declared_size`` (``expected_bytes``: the model's state-dict size), turning
    failures into one clear error."""
    try:
        check_declared_size(str(path), expected_bytes)
    except CheckpointRefused as exc:
        raise XceptionWeightsError(f"Xception weights file {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise XceptionWeightsError(
            f"Could not read the Xception weights file {path} with "
            f"torch.load(weights_only=True): {_short_reason(exc)}. Only plain tensor checkpoints "
            "are accepted; code pickled into a file is never run. If the file is a partial or "
            "corrupt download, delete it and get it again."
        ) from exc


def _unwrap(obj: Any, source: str, adaptations: list[str]) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint (``{"state_dict": ...}``/``{"model": ...}`` wrappers)."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        adaptations.append(f"took the state dict from the checkpoint's {inner!r} entry")
        obj = obj[inner]
    what = (
        f"a mapping with keys {_describe(map(str, obj.keys()))}"
        if isinstance(obj, Mapping)
        else f"a {type(obj).__name__}"
    )
    raise XceptionWeightsError(
        f"{source} does not contain an Xception state dict (found {what}; expected tensors by "
        f"name, possibly inside a {' / '.join(map(repr, _WRAPPER_KEYS))} entry)."
    )


def _normalise(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], adaptations: list[str]
) -> dict[str, torch.Tensor]:
    """Apply the known format differences of the circulating files to match ``expected``."""
    # DataParallel / DistributedDataParallel prefixes.
    if any(k.startswith("module.") for k in state_dict):
        stripped = {}
        for k, v in state_dict.items():
            while k.startswith("module."):
                k = k[len("module.") :]
            stripped[k] = v
        state_dict = stripped
        adaptations.append("stripped the 'module.' prefix")

    # pretrainedmodels names the classifier last_linear.
    if any(k.startswith("last_linear.") for k in state_dict):
        state_dict = {
            ("fc." + k[len("last_linear.") :] if k.startswith("last_linear.") else k): v
            for k, v in state_dict.items()
        }
        adaptations.append("renamed last_linear.* to fc.*")

    # Some files store the 1x1 pointwise convs as 2-D matrices [out, in].
    reshaped = 0
    for k, v in list(state_dict.items()):
        target = expected.get(k)
        if target is not None and v.dim() == 2 and target.shape == (*v.shape, 1, 1):
            state_dict[k] = v.reshape(target.shape)
            reshaped += 1
    if reshaped:
        adaptations.append(f"reshaped {reshaped} 2-D 1x1 conv weights to [out, in, 1, 1]")

    # Files saved before PyTorch 0.4 have no BatchNorm num_batches_tracked buffers.
    filled = 0
    for k, target in expected.items():
        if k.endswith(".num_batches_tracked") and k not in state_dict:
            if k[: -len("num_batches_tracked")] + "running_mean" in state_dict:
                state_dict[k] = torch.zeros_like(target)
                filled += 1
    if filled:
        adaptations.append(f"filled in {filled} missing BatchNorm num_batches_tracked buffers")
    return state_dict


def _check_fit(
    source: str,
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    missing: set[str],
    unexpected: set[str],
    mismatched: set[str],
) -> None:
    """Raise :class:`XceptionWeightsError` naming the missing, unexpected and mismatched keys,
    if there are any; return nothing when ``state_dict`` fits the model."""
    classifier_keys = {k for k in expected if k.startswith(_CLASSIFIER_PREFIX)}
    problems = []
    if missing:
        hint = ""
        if missing <= classifier_keys:
            hint = (
                " (the file has no classifier: pass allow_missing_classifier=True to load a "
                "backbone-only file)"
            )
        problems.append(f"missing keys: {_describe(missing)}{hint}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mismatched:
        shown = [
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(mismatched)[:5]
        ]
        problems.append(f"shape mismatches (file vs model): {', '.join(shown)}")
    if problems:
        raise XceptionWeightsError(
            f"{source} does not match the Xception model: " + "; ".join(problems) + "."
        )


def load_xception_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    allow_missing_classifier: bool = False,
) -> WeightsInfo:
    """Load Xception weights into ``model`` (an ``xception.Xception``), whatever their file format.

    Accepted: the classifier named ``fc`` or ``last_linear``; 1x1 pointwise weights stored 2-D;
    a checkpoint dict holding the weights under ``state_dict``, ``model`` or ``model_state_dict``;
    ``module.`` prefixes; BatchNorm without ``num_batches_tracked``. Files are always read with
    ``torch.load(..., map_location="cpu", weights_only=True)``.

    Everything must match ``model`` exactly (names and shapes). The only exception, when
    ``allow_missing_classifier=True``: a backbone-only file without ``fc`` is accepted (``fc`` keeps
    its initialisation, a note goes to stderr), and a file classifier that does not fit the
    model's ``fc`` is ignored. Nothing is loaded unless the whole file fits.

    Raises :class:`XceptionWeightsError` (a ``RuntimeError``) on any problem, naming the file and
    a few of the offending keys. Returns a :class:`WeightsInfo`.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "<state dict>", path_or_state_dict
    else:
        path = Path(path_or_state_dict).expanduser()
        if not path.is_file():
            raise XceptionWeightsError(f"Xception weights file not found: {path}")
        source, obj = str(path), _read_checkpoint(path, state_dict_bytes(model))

    adaptations: list[str] = []
    expected = model.state_dict()
    state_dict = _normalise(_unwrap(obj, source, adaptations), expected, adaptations)

    classifier_keys = {k for k in expected if k.startswith(_CLASSIFIER_PREFIX)}
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = {k for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape}

    classifier_loaded = True
    file_classifier = {k for k in state_dict if k.startswith(_CLASSIFIER_PREFIX)}
    if allow_missing_classifier:
        unfit = (unexpected | mismatched) & file_classifier
        if unfit:  # a classifier of another shape or layout: ignore it rather than fail
            for k in file_classifier:
                del state_dict[k]
            missing |= file_classifier & set(expected)
            unexpected -= file_classifier
            mismatched -= file_classifier
            adaptations.append(f"ignored the file's classifier ({_describe(file_classifier)})")
        if missing and missing <= classifier_keys:
            missing = set()
            classifier_loaded = False

    _check_fit(source, state_dict, expected, missing, unexpected, mismatched)

    model.load_state_dict(state_dict, strict=classifier_loaded)
    if not classifier_loaded:
        adaptations.append("no classifier in the file: fc keeps its initialisation")
        print(
            f"note: the Xception weights in {source} have no usable classifier (fc); the "
            "backbone was loaded and fc keeps its random initialisation (XceptionBased replaces "
            "fc anyway).",
            file=sys.stderr,
        )
    return WeightsInfo(source=source, classifier_loaded=classifier_loaded, adaptations=adaptations)


# --------------------------------------------------------------------------------------------
# Finding weights
# --------------------------------------------------------------------------------------------

WEIGHTS_ENV_VAR = "XCEPTION_WEIGHTS"
NO_DOWNLOAD_ENV_VAR = "XCEPTION_NO_DOWNLOAD"

KNOWN_WEIGHT_FILES = (
    "xception-c0a72b38.pth.tar",
    "xception-43020ad28.pth",
    "xception-b5690688.pth",
)
"""File names of the port's ImageNet weights looked up in ``torch.hub.get_dir()/checkpoints``."""


@dataclass(frozen=True)
class WeightsMirror:
    """A download location and the cache file name it is stored under."""

    url: str
    file_name: str
    sha256_prefix: str | None = None
    """Checked by ``torch.hub.download_url_to_file`` when set. None of the digests could be
    confirmed from a trustworthy source (the hex in the file names is not documented to be a
    sha256 prefix), so none is pinned; a downloaded file is validated by the strict load."""


WEIGHTS_MIRRORS = [
    # The original port (tstandley/Xception-PyTorch).
    WeightsMirror(
        "https://www.dropbox.com/s/1hplpzet9d7dv29/xception-c0a72b38.pth.tar?dl=1",
        "xception-c0a72b38.pth.tar",
    ),
    # Cadene's pretrainedmodels.
    WeightsMirror(
        "http://data.lip6.fr/cadene/pretrainedmodels/xception-43020ad28.pth",
        "xception-43020ad28.pth",
    ),
    # The copy kept by pytorch-image-models (timm's legacy_xception).
    WeightsMirror(
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/"
        "xception-43020ad28.pth",
        "xception-43020ad28.pth",
    ),
    # An older pretrainedmodels file (2-D pointwise weights, classifier named fc).
    WeightsMirror(
        "http://data.lip6.fr/cadene/pretrainedmodels/xception-b5690688.pth",
        "xception-b5690688.pth",
    ),
]

PROBE_TIMEOUT_S = 3.0
"""Connect timeout of the reachability probe; all hosts are probed in parallel."""
PROBE_DEADLINE_S = 5.0
"""Overall limit of the probe, DNS lookups included."""
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
"""A download that receives nothing for this long is abandoned."""


def _downloads_disabled() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def _probe_target(url: str) -> tuple[str, int]:
    """host:port to test for ``url``: the proxy when one applies, else the URL's host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return proxy_parts.hostname or "", proxy_parts.port or 8080
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _probe(urls: Iterable[str]) -> dict[str, str | None]:
    """Check in parallel that a TCP connection can be opened for each URL.

    Returns, per URL, ``None`` when reachable or the reason it is not. Bounded by
    :data:`PROBE_DEADLINE_S` even when DNS hangs (the probes run in daemon threads).
    """
    urls = list(urls)
    targets = {url: _probe_target(url) for url in urls}
    results: dict[tuple[str, int], str | None] = {}

    def probe(target: tuple[str, int]) -> None:
        try:
            with socket.create_connection(target, timeout=PROBE_TIMEOUT_S):
                results[target] = None
        except OSError as exc:
            results[target] = f"cannot connect to {target[0]}:{target[1]} ({_short_reason(exc)})"

    threads = [threading.Thread(target=probe, args=(t,), daemon=True) for t in set(targets.values())]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PROBE_DEADLINE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    timeout_reason = f"no answer within {PROBE_DEADLINE_S:g} s (no network?)"
    return {url: results.get(t, timeout_reason) for url, t in targets.items()}


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily give sockets without an explicit timeout (urllib's) a default one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_and_load(
    model: nn.Module, cache_dir: Path, allow_missing_classifier: bool, failures: list[str]
) -> WeightsInfo | None:
    """Try each mirror in order; the first file that downloads and loads wins."""
    mirrors = list(WEIGHTS_MIRRORS)
    unreachable = _probe(m.url for m in mirrors)
    for mirror in mirrors:
        if unreachable[mirror.url]:
            failures.append(f"{mirror.url}: {unreachable[mirror.url]}")
            continue
        dst = cache_dir / mirror.file_name
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
                torch.hub.download_url_to_file(
                    mirror.url, str(dst), hash_prefix=mirror.sha256_prefix, progress=True
                )
        except Exception as exc:  # HTTPError, URLError, timeouts, hash mismatch, disk errors
            failures.append(f"{mirror.url}: download failed ({_short_reason(exc)})")
            continue
        try:
            info = load_xception_weights(model, dst, allow_missing_classifier)
        except XceptionWeightsError as exc:
            dst.unlink(missing_ok=True)
            failures.append(f"{mirror.url}: downloaded file unusable, removed it ({exc})")
            continue
        info.origin = f"downloaded from {mirror.url}"
        return info
    return None


def _no_weights_message(explicit: str, cache_dir: Path, download: list[str]) -> str:
    lines = [
        "No ImageNet weights found for the Xception backbone (pretrained=True). Tried:",
        f"  1. an explicit file: {explicit}",
        f"  2. the torch hub cache {cache_dir}: none of {', '.join(KNOWN_WEIGHT_FILES)} is there",
        "  3. downloading into that cache:",
        *[f"     - {line}" for line in download],
        "Two ways out:",
        "  * get one of those files (on a machine with internet access; the links above are the "
        "known sources) and pass --xception_weights PATH (or set XCEPTION_WEIGHTS=PATH, or copy "
        f"it into {cache_dir}); or",
        "  * train from random initialisation with --no_pretrained. Be aware that the study shows "
        "XceptionBased from random init stays near chance (50-60 % accuracy on "
        "synthetic_dataset, against 96-99 % with ImageNet weights).",
    ]
    return "\n".join(lines)


def _explicit_weights_path(weights_path: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The file asked for by ``weights_path``, else by ``XCEPTION_WEIGHTS``, and who asked;
    ``(None, "")`` when neither names one."""
    if weights_path is not None and str(weights_path) != "":
        return Path(weights_path).expanduser(), "the weights_path argument"
    if os.environ.get(WEIGHTS_ENV_VAR, "").strip():
        explicit = Path(os.environ[WEIGHTS_ENV_VAR].strip()).expanduser()
        return explicit, f"the {WEIGHTS_ENV_VAR} environment variable"
    return None, ""


def load_imagenet_weights(
    model: nn.Module,
    weights_path: str | os.PathLike | None = None,
    allow_missing_classifier: bool = False,
) -> WeightsInfo:
    """Find the ImageNet weights for ``model`` (an ``xception.Xception``) and load them into it.

    The weights come from, in order: ``weights_path`` (else the ``XCEPTION_WEIGHTS`` env
    variable; a given path that does not exist is an error); a known file name in
    ``torch.hub.get_dir()/checkpoints``; a download from :data:`WEIGHTS_MIRRORS` into that cache
    (not when ``XCEPTION_NO_DOWNLOAD=1``). If all fail, :class:`XceptionWeightsError` explains
    what was tried and how to proceed. ``allow_missing_classifier`` is passed to
    :func:`load_xception_weights`. Returns the :class:`WeightsInfo`, its ``origin`` set.
    """
    explicit, origin = _explicit_weights_path(weights_path)
    if explicit is not None:
        if not explicit.is_file():
            raise XceptionWeightsError(
                f"Xception weights file not found: {explicit} (given by {origin}). Pass an "
                "existing file with --xception_weights PATH, or use --no_pretrained."
            )
        info = load_xception_weights(model, explicit, allow_missing_classifier)
        info.origin = origin
        return info

    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for name in KNOWN_WEIGHT_FILES:
        candidate = cache_dir / name
        if candidate.is_file():
            info = load_xception_weights(model, candidate, allow_missing_classifier)
            info.origin = "the torch hub cache"
            return info

    failures: list[str] = []
    if _downloads_disabled():
        failures.extend(f"{m.url}: not tried ({NO_DOWNLOAD_ENV_VAR}=1 is set)" for m in WEIGHTS_MIRRORS)
    else:
        info = _download_and_load(model, cache_dir, allow_missing_classifier, failures)
        if info is not None:
            return info

    raise XceptionWeightsError(
        _no_weights_message(
            f"none given (no weights_path argument, {WEIGHTS_ENV_VAR} not set)", cache_dir, failures
        )
    )
