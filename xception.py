"""Xception backbone (Chollet 2017) in the layout of the classic PyTorch port.

See ``docs/design.md#xception-backbone``. The network is the port whose ImageNet weights circulate
as ``xception-c0a72b38.pth.tar`` (the original port) and ``xception-43020ad28.pth`` /
``xception-b5690688.pth`` (Cadene's ``pretrainedmodels``). Module names and tensor shapes are
exactly those of that port, so its files load with ``strict=True`` (see
``tests/xception_state_dict_keys.json``: 276 keys, 22,855,952 parameters).

Differences from the port that do not touch the state dict: every ReLU is out of place and the
residual sum is ``x = x + skip``, so forward/backward hooks (pytorch-grad-cam, input-gradient
saliency) see tensors that are never overwritten afterwards; and optional activation
checkpointing for training (``Xception.set_activation_checkpointing``).

Finding, reading and downloading the ImageNet weights is the job of ``xception_weights.py``
(``docs/design.md#xception-weights``); :func:`build_xception_backbone` calls it, and its public
names are re-exported here for existing callers.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from lib.xception_weights import (
    KNOWN_WEIGHT_FILES,
    WEIGHTS_MIRRORS,
    WeightsInfo,
    WeightsMirror,
    XceptionWeightsError,
    load_imagenet_weights,
    load_xception_weights,
)

__all__ = [
    "KNOWN_WEIGHT_FILES",
    "WEIGHTS_MIRRORS",
    "Block",
    "KeepBatchNormStats",
    "SeparableConv2d",
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
            in_channels,
            in_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups=in_channels,
            bias=bias,
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
        for i in range(4, 12):  # eight identical blocks, block4 .. block11 (the weights' names)
            setattr(self, f"block{i}", Block(728, 728, 3, 1, start_with_relu=True, grow_first=True))

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

    def set_activation_checkpointing(self, enabled: bool = True) -> Xception:
        """Trade compute for memory in training: keep only the inputs of the stem and of the 12
        blocks for the backward pass, and recompute each segment there.

        Without it, training keeps every activation for the backward pass, most of them in
        ``block1`` .. ``block3`` at high resolution (benchmarks/README.md#not-met-and-why); with
        it, only the segment inputs, plus one segment's activations while it is recomputed. The
        recomputation costs about one more forward pass of the backbone. BatchNorm running
        statistics are updated once per step, as without it (:class:`KeepBatchNormStats`), so
        the weights, the statistics and the metrics are the same. Evaluation and the analysis
        scripts (eval mode) are unaffected.
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
        self.layers = [
            m
            for module in modules
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.saved: list[tuple[torch.Tensor, ...]] = []

    def __enter__(self) -> KeepBatchNormStats:
        self.saved = [
            (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in self.layers
        ]
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
        function,
        x,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), KeepBatchNormStats(*modules)),
    )


def build_xception_backbone(
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
    allow_missing_classifier: bool = False,
) -> Xception:
    """Return an :class:`Xception` (1000-class ``fc``), with ImageNet weights if ``pretrained``.

    With ``pretrained=False`` the model keeps its random initialisation and nothing is looked
    up (``weights_path`` and ``XCEPTION_WEIGHTS`` are ignored). With ``pretrained=True`` the
    weights are found and loaded by :func:`xception_weights.load_imagenet_weights` (an explicit
    file, the torch hub cache, a download), which raises :class:`XceptionWeightsError` when
    none can be used; ``weights_path`` and ``allow_missing_classifier`` are passed to it. The
    result's ``weights_info`` attribute holds the :class:`WeightsInfo` (``None`` without
    pretrained weights).
    """
    model = Xception()
    model.weights_info = None
    if pretrained:
        model.weights_info = load_imagenet_weights(model, weights_path, allow_missing_classifier)
    return model
