"""Precise BatchNorm statistics (PreciseBN, as in pycls and Detectron2; Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm").

During training a BatchNorm layer keeps an exponential moving average of its batch statistics
(momentum 0.1). After a few hundred steps that average describes the current network. After the
16 Adam steps of a small dataset it still mixes in the statistics of the starting weights: an
ImageNet-initialised Xception then classifies well in training mode and badly in eval mode.
``recompute_bn_statistics`` replaces the running mean and variance of every BatchNorm layer by the
exact per-channel mean and (unbiased) variance of that layer's inputs over a set of training
batches, forwarded in training mode (so each layer sees what it sees in training) without gradients.
See docs/design.md#precise-batchnorm-statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (empty for SimpleNet)."""
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


class _ChannelMoments:
    """Per-channel count, sum and sum of squares (float64) of one layer's inputs."""

    def __init__(self, channels: int, device: torch.device):
        self.sums = torch.zeros(3, channels, dtype=torch.float64, device=device)

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
        self.sums[0] += x.numel() // x.shape[1]
        self.sums[1] += x.sum(dims)
        self.sums[2] += (x * x).sum(dims)

    def mean_and_unbiased_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        count, total, squares = self.sums
        mean = total / count
        # BatchNorm's running_var is unbiased (n - 1), as in its own update
        var = (squares - count * mean * mean).clamp_min(0) / (count - 1).clamp_min(1)
        return mean, var


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> int:
    """Set the running statistics of every BatchNorm layer of ``model`` to the exact statistics of
    its inputs over ``batches`` (input tensors, already normalised and on the model's device).

    ``all_reduce`` sums a tensor over processes in place (torch.distributed): every process
    forwards its own share of the batches and all end with the statistics of the union. The model
    is left in the training/eval mode it was in. Returns the number of images this process forwarded
    (0, and nothing changed, for a model without BatchNorm).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    device = layers[0].running_mean.device
    moments = [_ChannelMoments(layer.num_features, device) for layer in layers]
    handles = [layer.register_forward_pre_hook(m) for layer, m in zip(layers, moments)]
    was_training = model.training
    seen = 0
    try:
        model.train()  # batch statistics in the forward pass, as in training
        for images in batches:
            model(images)
            seen += images.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for layer, m in zip(layers, moments):
        if all_reduce is not None:
            all_reduce(m.sums)
        if m.sums[0, 0] == 0:  # no batch at all: keep what the layer had
            continue
        mean, var = m.mean_and_unbiased_var()
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return seen


def precise_bn_batches(
    n: int, n_batches: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This process's share of ``n_batches`` batches of ``batch_size`` images out of ``n``: a random
    subset drawn from ``generator`` (so a resumed run draws it again), of which process ``rank``
    of ``world_size`` forwards every ``world_size``-th image, in batches of batch_size / world_size."""
    order = torch.randperm(n, generator=generator)[: n_batches * batch_size]
    mine = order[rank::world_size].tolist()
    per_rank = batch_size // world_size
    return [mine[i : i + per_rank] for i in range(0, len(mine), per_rank)]
