"""train_main.py's training options (docs/design.md#training-options): their flags, what they add
to the run's protocol, and the loss and ``TrainingOptions`` they give the Trainer."""

from __future__ import annotations

import torch
from torch import nn

from lib.cli import UserError, non_negative_float, non_negative_int, positive_float, positive_int
from lib.optim import (
    BALANCE,
    LR_SCHEDULES,
    SELECT_BY,
    BalancedSampler,
    TrainingOptions,
    check_schedule,
    class_weights,
    default_step_size,
    make_criterion,
    make_scheduler,
    resolved_weight_decay,
)


def add_training_option_flags(group) -> None:
    """The training options beyond the course's protocol; every default is the course's."""
    group.add_argument(
        "--weight_decay",
        default=None,
        type=non_negative_float,
        help="weight decay: L2 added to the gradient for SGD and Adam, decoupled for AdamW "
        "(default 0, the course's; for AdamW torch's 0.01)",
    )
    group.add_argument(
        "--lr_schedule",
        default="none",
        choices=LR_SCHEDULES,
        help="learning rate per epoch: constant (the course's), cosine down towards 0 over the "
        "epochs after warm-up, or step (times --lr_gamma every --lr_step_size epochs)",
    )
    group.add_argument(
        "--warmup_epochs",
        default=0,
        type=non_negative_int,
        help="first epochs at lr/(N+1), 2 lr/(N+1) ... before the schedule (default 0)",
    )
    group.add_argument(
        "--lr_step_size",
        default=None,
        type=positive_int,
        help="--lr_schedule step: epochs between drops (default a third of the epochs after warm-up)",
    )
    group.add_argument(
        "--lr_gamma", default=None, type=positive_float, help="--lr_schedule step: factor (default 0.1)"
    )
    group.add_argument(
        "--label_smoothing",
        default=0.0,
        type=non_negative_float,
        help="cross-entropy label smoothing (below 1)",
    )
    group.add_argument(
        "--clip_grad",
        default=None,
        type=positive_float,
        metavar="MAX_NORM",
        help="clip the gradients' total norm",
    )
    group.add_argument(
        "--select_by",
        default="val_acc",
        choices=SELECT_BY,
        help="validation number that picks the best checkpoint (default val_acc, the course's; "
        "val_auc or val_balanced_acc do not favour the larger class)",
    )
    group.add_argument(
        "--balance",
        default="none",
        choices=BALANCE,
        help="unbalanced classes: class-weighted loss (weights n/(2 n_class) from the training set) "
        "or a class-balanced sampler drawing with replacement (default none)",
    )
    group.add_argument(
        "--tensorboard", default=None, metavar="DIR", help="also write TensorBoard scalars under DIR"
    )


def check_training_options(args) -> None:
    """Refuse contradictory training options with a one-line ``UserError``."""
    if args.label_smoothing >= 1:
        raise UserError(f"--label_smoothing {args.label_smoothing}: must be below 1 (0.1 is usual)")
    if args.lr_schedule != "step" and (args.lr_step_size is not None or args.lr_gamma is not None):
        raise UserError("--lr_step_size and --lr_gamma: only with --lr_schedule step")
    check_schedule(args.lr_schedule, args.warmup_epochs, args.epochs)


def training_protocol(args) -> dict:
    """What the training options add to the run's protocol (so --resume refuses a change); a value
    that does not apply is None, and a cosine schedule records its length (``epochs``)."""
    step = args.lr_schedule == "step"
    return {
        "weight_decay": resolved_weight_decay(args.optimizer, args.weight_decay),
        "lr_schedule": args.lr_schedule,
        "warmup_epochs": args.warmup_epochs,
        "lr_step_size": (args.lr_step_size or default_step_size(args.epochs, args.warmup_epochs))
        if step
        else None,
        "lr_gamma": (args.lr_gamma or 0.1) if step else None,
        "epochs": args.epochs if args.lr_schedule == "cosine" else None,
        "label_smoothing": args.label_smoothing,
        "clip_grad": args.clip_grad,
        "select_by": args.select_by,
        "balance": args.balance,
    }


def training_setup(
    args, optimizer: torch.optim.Optimizer, train_dataset, validation_dataset, device, epoch_log=None
) -> tuple[nn.Module, TrainingOptions]:
    """(training loss, ``TrainingOptions``) for the flags; create it after the optimizer's settings
    are logged (the scheduler sets the first epoch's learning rate)."""
    if args.select_by != "val_acc" and len(torch.unique(validation_dataset.labels)) < 2:
        raise UserError(
            f"--select_by {args.select_by}: {getattr(validation_dataset, 'root_path', 'the validation set')} "
            "holds one class, where it is undefined; use --select_by val_acc"
        )
    weights = class_weights(train_dataset.labels) if args.balance == "weights" else None
    criterion = make_criterion(args.label_smoothing, weights, device)
    protocol = training_protocol(args)
    scheduler = make_scheduler(
        optimizer,
        args.lr_schedule,
        args.warmup_epochs,
        args.epochs,
        protocol["lr_step_size"],
        protocol["lr_gamma"],
    )
    plain = weights is not None or args.label_smoothing > 0  # validation/test loss stays comparable
    return criterion, TrainingOptions(
        scheduler=scheduler,
        clip_grad=args.clip_grad,
        select_by=args.select_by,
        eval_criterion=nn.CrossEntropyLoss() if plain else None,
        train_sampler=BalancedSampler.of_dataset if args.balance == "sampler" else None,
        epoch_log=epoch_log,
    )
