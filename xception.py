"""Xception backbone (Chollet 2017) and a robust loader for its ImageNet weights.

The network is the classic PyTorch port whose ImageNet weights circulate as
``xception-c0a72b38.pth.tar`` (the original port) and ``xception-43020ad28.pth`` /
``xception-b5690688.pth`` (Cadene's ``pretrainedmodels``). Module names and tensor shapes are
exactly those of that port, so its files load with ``strict=True`` (see
``tests/xception_state_dict_keys.json``: 276 keys, 22,855,952 parameters).

Differences from the port that do not touch the state dict: every ReLU is out of place and the
residual sum is ``x = x + skip``, so forward/backward hooks (pytorch-grad-cam, input-gradient
saliency) see tensors that are never overwritten afterwards; and optional activation
checkpointing for training (``Xception.set_activation_checkpointing``).

The original download links are dead or flaky, so ``build_xception_backbone(pretrained=True)``
looks for the weights in this order and fails with one clear :class:`XceptionWeightsError`:

1. an explicit file: the ``weights_path`` argument, else the ``XCEPTION_WEIGHTS`` env variable;
2. a file already in ``torch.hub.get_dir()/checkpoints`` under one of :data:`KNOWN_WEIGHT_FILES`;
3. a download into that cache from :data:`WEIGHTS_MIRRORS` (skipped when ``XCEPTION_NO_DOWNLOAD=1``),
   after a quick reachability probe so that a machine without network fails in seconds.

:func:`load_xception_weights` accepts every format these files come in and always reads them
with ``torch.load(..., weights_only=True)``: pickled code in a checkpoint is never run.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = [
    "KNOWN_WEIGHT_FILES",
    "WEIGHTS_MIRRORS",
    "Block",
    "SeparableConv2d",
    "KeepBatchNormStats",
    "WeightsInfo",
    "WeightsMirror",
    "Xception",
    "XceptionWeightsError",
    "build_xception_backbone",
    "load_xception_weights",
]

NUM_FEATURES = 2048
"""Channels of the last feature map (and input size of ``fc``)."""


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class SeparableConv2d(nn.Module):
    """Depthwise ``conv1`` (groups = in_channels) followed by a 1x1 ``pointwise`` conv, no biases."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation,
            groups=in_channels, bias=bias,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """Xception block: ``reps`` x (ReLU, SeparableConv2d 3x3, BatchNorm) plus a residual path.

    ``rep`` holds the layers (a MaxPool2d(3, strides, 1) at the end when ``strides != 1``);
    ``skip``/``skipbn`` (a strided 1x1 conv and BatchNorm) exist only when the shape changes.
    ``grow_first`` chooses whether the channel count grows at the first or at the last rep;
    ``start_with_relu=False`` drops the leading ReLU (used by ``block1``).
    """

    def __init__(
        self,
        in_filters: int,
        out_filters: int,
        reps: int,
        strides: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_filters != in_filters or strides != 1:
            self.skip = nn.Conv2d(in_filters, out_filters, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(out_filters)
        else:
            self.skip = None
            self.skipbn = None

        # Channel pairs of the separable convs, in order.
        if grow_first:
            channels = [(in_filters, out_filters)] + [(out_filters, out_filters)] * (reps - 1)
        else:
            channels = [(in_filters, in_filters)] * (reps - 1) + [(in_filters, out_filters)]

        layers: list[nn.Module] = []
        for cin, cout in channels:
            # Out of place: the first ReLU must not overwrite the block input, which the skip
            # path reads, and no ReLU may overwrite a tensor that a hook has captured.
            layers.append(nn.ReLU(inplace=False))
            layers.append(SeparableConv2d(cin, cout, 3, stride=1, padding=1, bias=False))
            layers.append(nn.BatchNorm2d(cout))
        if not start_with_relu:
            layers = layers[1:]
        if strides != 1:
            layers.append(nn.MaxPool2d(3, strides, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.rep(inp)
        skip = self.skipbn(self.skip(inp)) if self.skip is not None else inp
        return x + skip


class Xception(nn.Module):
    """Xception for ImageNet-style inputs (the port's architecture and state-dict layout).

    ``features(x)`` returns the last feature map before the final ReLU (2048 x 8 x 8 for a
    256 x 256 input, 2048 x 10 x 10 at 299); ``logits(features)`` applies ReLU, global average
    pooling and ``fc``. Global pooling makes any input of at least about 71 x 71 work.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes

        # Entry flow.
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=False)

        self.block1 = Block(64, 128, 2, 2, start_with_relu=False, grow_first=True)
        self.block2 = Block(128, 256, 2, 2, start_with_relu=True, grow_first=True)
        self.block3 = Block(256, 728, 2, 2, start_with_relu=True, grow_first=True)

        # Middle flow.
        self.block4 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block5 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block6 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block7 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block8 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block9 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block10 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)
        self.block11 = Block(728, 728, 3, 1, start_with_relu=True, grow_first=True)

        # Exit flow.
        self.block12 = Block(728, 1024, 2, 2, start_with_relu=True, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.relu3 = nn.ReLU(inplace=False)
        self.conv4 = SeparableConv2d(1536, NUM_FEATURES, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(NUM_FEATURES)
        self.relu4 = nn.ReLU(inplace=False)

        self.fc = nn.Linear(NUM_FEATURES, num_classes)
        self.activation_checkpointing = False

        # Initialisation of the original port (He-normal convs, unit BatchNorm).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The two plain convolutions of the entry flow (``conv1`` .. ``relu2``)."""
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))

    def blocks(self) -> list[nn.Module]:
        """``block1`` .. ``block12`` in order."""
        return [getattr(self, f"block{i}") for i in range(1, 13)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input images ``[N, 3, H, W]`` -> last feature map ``[N, 2048, h, w]`` (before ReLU).

        With ``activation_checkpointing`` on, in training mode with gradients enabled, the stem
        and each of the 12 blocks is a checkpointed segment: only the segment inputs are kept for
        the backward pass and each segment is run again there (see
        :meth:`set_activation_checkpointing`). The result and the gradients are the same.
        """
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            x = _checkpointed(self.stem, x, self.bn1, self.bn2)
            for block in self.blocks():
                x = _checkpointed(block, x, block)
        else:
            x = self.stem(x)
            for block in self.blocks():
                x = block(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.bn4(self.conv4(x))
        return x

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map from :meth:`features` -> ReLU, global average pooling, ``fc``."""
        x = self.relu4(features)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    def set_activation_checkpointing(self, enabled: bool = True) -> "Xception":
        """Trade compute for memory in training: keep only the inputs of the stem and of the 12
        blocks for the backward pass, and recompute each segment there.

        At 256 x 256 the activations that training keeps are about 180 MB per image (5.6 GiB for
        a batch of 32, most of it in ``block1`` .. ``block3``); with checkpointing about a tenth
        of that, plus one segment's activations while it is recomputed. The recomputation costs
        about one more forward pass of the backbone. BatchNorm running statistics are updated
        once per step, as without it (:class:`KeepBatchNormStats`), so the weights, the
        statistics and the metrics are the same. Evaluation and the analysis scripts (eval mode)
        are unaffected.
        """
        self.activation_checkpointing = bool(enabled)
        return self


class KeepBatchNormStats:
    """Context manager: the BatchNorm running statistics (and batch counters) in ``modules`` are
    the same on exit as on entry.

    A checkpointed segment runs its forward twice per training step; in training mode each
    BatchNorm forward updates the running statistics, so the recomputation in the backward
    pass would update them a second time. Used as the recomputation context of
    ``torch.utils.checkpoint`` (its ``context_fn``), it undoes that second update exactly.
    """

    def __init__(self, *modules: nn.Module) -> None:
        self.layers = [m for module in modules for m in module.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.saved: list[tuple[torch.Tensor, ...]] = []

    def __enter__(self) -> "KeepBatchNormStats":
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.layers]
        return self

    def __exit__(self, *exc_info) -> bool:
        with torch.no_grad():
            for m, (mean, var, count) in zip(self.layers, self.saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        self.saved = []
        return False


def _checkpointed(function, x: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
    """``function(x)`` as a non-reentrant checkpoint whose recomputation keeps the BatchNorm
    statistics of ``modules`` (the ones ``function`` runs; :class:`KeepBatchNormStats`).

    Under ``torch.compile`` (``--compile``) a plain checkpoint: the compiled graph updates the
    statistics once, recomputation or not, and TorchDynamo takes no ``context_fn`` of this kind.
    """
    if torch.compiler.is_compiling():
        return torch.utils.checkpoint.checkpoint(function, x, use_reentrant=False)
    return torch.utils.checkpoint.checkpoint(
        function, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), KeepBatchNormStats(*modules)))


# --------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------


class XceptionWeightsError(RuntimeError):
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
    """How :func:`build_xception_backbone` found the file (argument, env, cache, download URL)."""


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_CLASSIFIER_PREFIX = "fc."


def _describe(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _short_reason(exc: BaseException, limit: int = 300) -> str:
    """One line out of an exception (torch's weights_only errors are long and multi-line)."""
    text = str(exc).strip() or type(exc).__name__
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
        text = text.split(" Please use", 1)[0]
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_checkpoint(path: Path) -> Any:
    """``torch.load`` a file safely (``weights_only=True``), turning failures into one clear error."""
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
                k = k[len("module."):]
            stripped[k] = v
        state_dict = stripped
        adaptations.append("stripped the 'module.' prefix")

    # pretrainedmodels names the classifier last_linear.
    if any(k.startswith("last_linear.") for k in state_dict):
        state_dict = {
            ("fc." + k[len("last_linear."):] if k.startswith("last_linear.") else k): v
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


def load_xception_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    allow_missing_classifier: bool = False,
) -> WeightsInfo:
    """Load Xception weights into ``model`` (an :class:`Xception`), whatever their file format.

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
        source, obj = str(path), _read_checkpoint(path)

    adaptations: list[str] = []
    expected = model.state_dict()
    state_dict = _normalise(_unwrap(obj, source, adaptations), expected, adaptations)

    classifier_keys = {k for k in expected if k.startswith(_CLASSIFIER_PREFIX)}
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = {
        k for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape
    }

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
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
            for k in sorted(mismatched)[:5]
        ]
        problems.append(f"shape mismatches (file vs model): {', '.join(shown)}")
    if problems:
        raise XceptionWeightsError(
            f"{source} does not match the Xception model: " + "; ".join(problems) + "."
        )

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

    threads = [
        threading.Thread(target=probe, args=(t,), daemon=True) for t in set(targets.values())
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PROBE_DEADLINE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    timeout_reason = "no answer within {:g} s (no network?)".format(PROBE_DEADLINE_S)
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


def build_xception_backbone(
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
    allow_missing_classifier: bool = False,
) -> Xception:
    """Return an :class:`Xception` (1000-class ``fc``), with ImageNet weights if ``pretrained``.

    With ``pretrained=False`` the model keeps its random initialisation and nothing is looked
    up (``weights_path`` and ``XCEPTION_WEIGHTS`` are ignored). With ``pretrained=True`` the
    weights come from, in order: ``weights_path`` (else the ``XCEPTION_WEIGHTS`` env variable;
    a given path that does not exist is an error); a known file name in
    ``torch.hub.get_dir()/checkpoints``; a download from :data:`WEIGHTS_MIRRORS` into that cache
    (not when ``XCEPTION_NO_DOWNLOAD=1``). If all fail, :class:`XceptionWeightsError` explains
    what was tried and how to proceed. ``allow_missing_classifier`` is passed to
    :func:`load_xception_weights`. The result's ``weights_info`` attribute holds the
    :class:`WeightsInfo` (``None`` without pretrained weights).
    """
    model = Xception()
    model.weights_info = None
    if not pretrained:
        return model

    if weights_path is not None and str(weights_path) != "":
        explicit, origin = Path(weights_path).expanduser(), "the weights_path argument"
    elif os.environ.get(WEIGHTS_ENV_VAR, "").strip():
        explicit = Path(os.environ[WEIGHTS_ENV_VAR].strip()).expanduser()
        origin = f"the {WEIGHTS_ENV_VAR} environment variable"
    else:
        explicit, origin = None, ""
    if explicit is not None:
        if not explicit.is_file():
            raise XceptionWeightsError(
                f"Xception weights file not found: {explicit} (given by {origin}). Pass an "
                "existing file with --xception_weights PATH, or use --no_pretrained."
            )
        model.weights_info = load_xception_weights(model, explicit, allow_missing_classifier)
        model.weights_info.origin = origin
        return model

    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for name in KNOWN_WEIGHT_FILES:
        candidate = cache_dir / name
        if candidate.is_file():
            model.weights_info = load_xception_weights(model, candidate, allow_missing_classifier)
            model.weights_info.origin = "the torch hub cache"
            return model

    failures: list[str] = []
    if _downloads_disabled():
        failures.extend(
            f"{m.url}: not tried ({NO_DOWNLOAD_ENV_VAR}=1 is set)" for m in WEIGHTS_MIRRORS
        )
    else:
        info = _download_and_load(model, cache_dir, allow_missing_classifier, failures)
        if info is not None:
            model.weights_info = info
            return model

    raise XceptionWeightsError(
        _no_weights_message(
            f"none given (no weights_path argument, {WEIGHTS_ENV_VAR} not set)", cache_dir, failures
        )
    )
