"""Training options beyond the course protocol (docs/design.md#training-options): the optimizer,
the learning-rate schedule with warm-up, the loss (label smoothing, class weights), the
class-balanced sampler and which validation number picks the best checkpoint. Every default is
the course's behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import lr_scheduler

from lib import distributed
from lib.batching import seeded_generator
from lib.cli import UserError

LR_SCHEDULES = ("none", "cosine", "step")
SELECT_BY = ("val_acc", "val_auc", "val_balanced_acc")
BALANCE = ("none", "weights", "sampler")
ADAMW_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, used when --weight_decay is not given


def resolved_weight_decay(optimizer: str, weight_decay: float | None) -> float:
    """The weight decay a run uses: the flag's, else 0 (the course's SGD and Adam) or AdamW's default."""
    if weight_decay is not None:
        return weight_decay
    return ADAMW_WEIGHT_DECAY if optimizer == "AdamW" else 0.0


def make_optimizer(
    name: str, params, lr: float, momentum: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW (decoupled weight decay), with the fused kernels (one pass
    per tensor: the same update up to float rounding, faster on the CPU, benchmarks/README.md).
    ``weight_decay`` is L2 added to the gradient for SGD and Adam, decoupled for AdamW."""
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def check_schedule(schedule: str, warmup_epochs: int, epochs: int) -> None:
    """Refuse a warm-up that leaves no epoch at the full learning rate (``UserError``)."""
    if warmup_epochs and warmup_epochs >= epochs:
        raise UserError(
            f"--warmup_epochs {warmup_epochs}: must be below -e {epochs}, or the run never trains "
            "at --lr; lower it or train longer"
        )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    warmup_epochs: int,
    epochs: int,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate scheduler (docs/design.md#training-options), ``None`` for
    ``none`` without warm-up. Warm-up is ``LinearLR`` from lr / (w + 1) up to lr over ``w`` epochs,
    then ``CosineAnnealingLR`` over the remaining epochs (down towards 0) or ``StepLR`` (times
    ``gamma`` every ``step_size`` epochs), chained with ``SequentialLR``. Create it after the
    optimizer's settings are logged: it sets the first epoch's learning rate."""
    check_schedule(schedule, warmup_epochs, epochs)
    main = None
    if schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs)
    elif schedule == "step":
        main = lr_scheduler.StepLR(
            optimizer, step_size=step_size or default_step_size(epochs, warmup_epochs), gamma=gamma
        )
    if not warmup_epochs:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup_epochs + 1), total_iters=warmup_epochs)
    if main is None:
        return warmup
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])


def default_step_size(epochs: int, warmup_epochs: int) -> int:
    """``--lr_step_size`` when not given: a third of the epochs after warm-up, at least 1."""
    return max(1, (epochs - warmup_epochs) // 3)


def class_weights(labels) -> torch.Tensor:
    """Per-class loss weights n / (2 n_c) from the training labels (sklearn's 'balanced'), float32."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.as_tensor(labels).cpu().numpy()
    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def make_criterion(
    label_smoothing: float = 0.0, weights: torch.Tensor | None = None, device=None
) -> nn.CrossEntropyLoss:
    """The training loss: cross-entropy, with label smoothing and class weights when asked (a
    weighted loss is the weight-weighted mean over the batch, as ``nn.CrossEntropyLoss`` defines)."""
    if weights is not None:
        weights = weights.to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)


class EpochLoss:
    """The training loss of an epoch as the criterion defines its mean: over the samples, or for
    class weights (``--balance weights``) weighted by them, whatever the batches and processes."""

    def __init__(self, criterion: nn.Module, device):
        self.class_weight = getattr(criterion, "weight", None)
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x weight, weight

    def add(self, loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count a batch's mean ``loss``; returns the loss to backpropagate (under torchrun rescaled
        to the whole batch's weights: ``distributed.global_weighted_mean``)."""
        weight = None if self.class_weight is None else self.class_weight[labels].double().sum()
        counted = labels.shape[0] if weight is None else weight  # what the batch's mean divides by
        self.sums[0] += loss.detach().double() * counted
        self.sums[1] += counted
        return distributed.global_weighted_mean(loss, weight)

    def mean(self) -> float:
        """The epoch's mean so far (of this process, or of all after ``all_reduce(sums)``)."""
        return (self.sums[0] / self.sums[1]).item()


class BalancedSampler(torch.utils.data.Sampler):
    """A class-balanced training order: ``n`` indices drawn with replacement with probability
    1 / (count of its class) by ``WeightedRandomSampler``, from a generator of (seed, epoch), so
    that every process draws the same list (and a resumed run draws it again); process ``rank`` of
    ``world_size`` takes positions rank, rank + W, ... of it, padded like ``DistributedSampler``."""

    def __init__(self, labels, rank: int = 0, world_size: int = 1, seed: int = 0):
        labels = torch.as_tensor(labels).long().cpu()
        counts = torch.bincount(labels, minlength=2).double()
        self.weights = (1.0 / counts.clamp(min=1))[labels]
        self.n, self.rank, self.world_size, self.seed, self.epoch = len(labels), rank, world_size, seed, 0
        self.per_rank = math.ceil(self.n / world_size)

    @classmethod
    def of_dataset(cls, dataset, rank: int, world_size: int, seed: int) -> BalancedSampler:
        """The sampler of a dataset with ``labels`` (the Trainer's ``train_sampler`` signature)."""
        return cls(dataset.labels, rank, world_size, seed)

    def __len__(self):
        return self.per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        drawn = torch.utils.data.WeightedRandomSampler(
            self.weights, self.n, replacement=True, generator=seeded_generator(self.seed, -1 - self.epoch)
        )
        order = list(drawn)
        order += order[: self.per_rank * self.world_size - self.n]  # pad so every process gets as many
        return iter(order[self.rank :: self.world_size])


def selection_score(select_by: str, val):
    """The number that picks the best epoch from a validation pass (an ``EvalResult``): its accuracy
    (the course's), or the AUC or balanced accuracy of P(fake); ``None`` when the pass has none."""
    if select_by == "val_acc":
        return val.accuracy
    return val.metrics().get(select_by.removeprefix("val_"))


@dataclass
class TrainingOptions:
    """What ``train_main.py``'s training options add to the course's loop (docs/design.md#training-options);
    the defaults are the course's. ``scheduler`` is stepped after every epoch and kept in ``_last.pt``;
    ``clip_grad`` is the maximum gradient norm; ``select_by`` the validation number of the best
    checkpoint; ``eval_criterion`` the validation/test loss (default: the training criterion);
    ``train_sampler(dataset, rank, world_size, seed)`` the training order (default: shuffled);
    ``epoch_log(run, json_path)`` is called after each epoch's JSON is written."""

    scheduler: object = None
    clip_grad: float | None = None
    select_by: str = "val_acc"
    eval_criterion: object = None
    train_sampler: object = None
    epoch_log: object = None
