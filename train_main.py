"""Train a model (SimpleNet, XceptionBased or a torchvision backbone) on one dataset
(docs/design.md#training-protocol).

    python train_main.py -m SimpleNet -d fakes_dataset -o Adam --lr 0.001 -b 32 -e 5

Writes out/<dataset>_<model>_<optimizer>.json (runs appended), checkpoints/<...>.pt (best
validation accuracy) and checkpoints/<...>_last.pt (full state for --resume). Works under
``torchrun --nproc_per_node=N train_main.py ...`` with the same flags.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from lib import run_files
from lib.cli import (
    ArgumentParser,
    UserError,
    add_debug_flag,
    jpeg_quality,
    non_negative_float,
    non_negative_int,
    path_text,
    positive_float,
    positive_int,
    probability,
    run_cli,
    seed_int,
)
from lib.distributed import init_distributed
from lib.epoch_log import EpochLog
from lib.flags import add_data_root_flag, add_dataset_flag, add_run_name_flag
from lib.memory import add_activation_checkpointing_flag, apply_image_cache, resolve_activation_checkpointing
from lib.metrics import fmt
from lib.model_specs import HEAD_NAMES, MODEL_SPECS, model_spec, resolve_head
from lib.optim import (
    make_optimizer,
    resolved_weight_decay,
)
from lib.train_options import (
    add_training_option_flags,
    check_training_options,
    training_protocol,
    training_setup,
)
from lib.transforms import Degradations
from trainer import LoggingParameters, Trainer, check_output_paths, json_safe_optimizer_params, run_paths
from utils import (
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    get_nof_params,
    load_dataset,
    load_model,
    resolve_data_root,
    set_seed,
)


def build_parser() -> ArgumentParser:
    """The command line, in groups as --help shows them: the course's flags first."""
    parser = ArgumentParser(description="Train a real-vs-fake face classifier and log every epoch.")
    course = parser.add_argument_group("the course's flags")
    course.add_argument("--lr", default=0.001, type=positive_float, help="learning rate")
    course.add_argument("--momentum", default=0.9, type=non_negative_float, help="momentum (SGD only)")
    course.add_argument(
        "--batch_size",
        "-b",
        default=128,
        type=positive_int,
        help="training batch size (global: split across torchrun processes)",
    )
    course.add_argument("--epochs", "-e", default=2, type=positive_int, help="number of epochs")
    course.add_argument(
        "--model",
        "-m",
        default="SimpleNet",
        choices=MODEL_NAMES,
        help="model to train: the study's SimpleNet or XceptionBased, or a torchvision backbone",
    )
    course.add_argument(
        "--optimizer",
        "-o",
        default="SGD",
        choices=OPTIMIZER_NAMES,
        help="SGD (with --momentum) or Adam (lr only); AdamW is beside the course's (see --weight_decay)",
    )
    add_dataset_flag(course, "dataset to train on")
    _add_protocol_flags(parser.add_argument_group("protocol"))
    add_training_option_flags(
        parser.add_argument_group("training options (all off by default: the course's)")
    )
    _add_augmentation_flags(parser.add_argument_group("training augmentation (off by default)"))
    _add_data_flags(parser.add_argument_group("data"))
    _add_speed_flags(parser.add_argument_group("speed and memory"))
    output = parser.add_argument_group("output")
    output.add_argument("--out_dir", default="out", help="folder of the metrics JSON")
    output.add_argument("--checkpoint_dir", default="checkpoints", help="folder of the checkpoints")
    add_run_name_flag(
        output,
        "suffix to every file of this run, so that runs with other flags keep theirs: "
        "<D>_<M>_<O>_NAME.json, .csv, .pt, _last.pt (default: the course's <D>_<M>_<O>)",
    )
    output.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_debug_flag(output)
    return parser


def _add_protocol_flags(group) -> None:
    """Seed, weights, resume and precise BatchNorm: what else decides the numbers of a run."""
    group.add_argument(
        "--seed",
        default=0,
        type=seed_int,
        help="seed for weights, data order and augmentation; a CPU run repeats exactly",
    )
    group.add_argument(
        "--xception_weights",
        default=None,
        type=path_text,
        help="ImageNet weights file for XceptionBased (else $XCEPTION_WEIGHTS, the torch "
        "hub cache, then a download)",
    )
    group.add_argument(
        "--pretrained_weights",
        default=None,
        type=path_text,
        metavar="PATH",
        help="ImageNet weights file of -m (else, for a torchvision backbone, torchvision's cache "
        "$TORCH_HOME/hub/checkpoints, then a download)",
    )
    group.add_argument(
        "--no_pretrained",
        action="store_true",
        help="XceptionBased or a torchvision backbone from random initialisation instead of "
        "ImageNet weights (the study: XceptionBased then stays near chance)",
    )
    group.add_argument(
        "--head",
        default=None,
        choices=HEAD_NAMES,
        help="head of a torchvision backbone: linear (Linear(F, 2), the default, as in the "
        "field's detectors) or mlp (XceptionBased's MLP head); SimpleNet and XceptionBased keep theirs",
    )
    group.add_argument(
        "--resume", action="store_true", help="continue the interrupted run from checkpoints/<...>_last.pt"
    )
    group.add_argument(
        "--check_weights",
        action="store_true",
        help="only look for -m's ImageNet weights as training would, print one JSON line "
        '({"found": true, "source": ..., "origin": ...} or {"found": false, "error": ...}) and exit',
    )
    group.add_argument(
        "--precise_bn",
        default=0,
        type=non_negative_int,
        metavar="N",
        help="before each evaluation, recompute every BatchNorm layer's statistics "
        "over N training batches without augmentation (PreciseBN); 0 (the "
        "course's behaviour) keeps the running averages of training. Matters "
        "for XceptionBased on small datasets; SimpleNet has no BatchNorm",
    )


def _add_augmentation_flags(group) -> None:
    """CNNDetection's blur and JPEG augmentation of the training images (docs/design.md#degradations)."""
    group.add_argument(
        "--blur_prob",
        default=0.0,
        type=probability,
        help="probability of a Gaussian blur of each training image (CNNDetection: 0.5); 0: off",
    )
    group.add_argument(
        "--blur_sigma",
        nargs=2,
        default=[0.0, 3.0],
        type=non_negative_float,
        metavar=("LOW", "HIGH"),
        help="its sigma in pixels, uniform from LOW to HIGH (default 0 3)",
    )
    group.add_argument(
        "--jpeg_prob",
        default=0.0,
        type=probability,
        help="probability of a JPEG round trip of each training image, after the blur "
        "(CNNDetection: 0.5); 0: off",
    )
    group.add_argument(
        "--jpeg_quality",
        nargs=2,
        default=[30, 100],
        type=jpeg_quality,
        metavar=("LOW", "HIGH"),
        help="its quality, an integer uniform from LOW to HIGH (default 30 100)",
    )


def degradations_of(args) -> Degradations | None:
    """The training augmentation the flags ask for; None when both probabilities are 0 (the
    study's transform). A range whose LOW exceeds its HIGH is a ``UserError``."""
    for flag, (low, high) in (("--blur_sigma", args.blur_sigma), ("--jpeg_quality", args.jpeg_quality)):
        if low > high:
            raise UserError(f"{flag} {low:g} {high:g}: LOW must not exceed HIGH")
    if not (args.blur_prob or args.jpeg_prob):
        return None
    return Degradations(args.blur_prob, tuple(args.blur_sigma), args.jpeg_prob, tuple(args.jpeg_quality))


def _add_data_flags(group) -> None:
    """Where the data is and how unreadable files are treated."""
    add_data_root_flag(group)
    group.add_argument(
        "--skip_corrupt",
        action="store_true",
        help="skip unreadable images with a warning instead of stopping",
    )


def _add_speed_flags(group) -> None:
    """Flags that change speed and memory, not the results (up to float rounding)."""
    group.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    group.add_argument(
        "--workers",
        "-j",
        dest="num_workers",
        default=None,
        type=non_negative_int,
        help="DataLoader worker processes (default: 0 when images are cached in RAM, "
        "else min(4, CPU cores - 1))",
    )
    group.add_argument("--amp", action="store_true", help="bf16 mixed precision (CUDA only)")
    group.add_argument(
        "--channels_last",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="channels-last memory layout; auto: on for CPU and CUDA (measured faster "
        "for both models, benchmarks/README.md); a bare --channels_last means on",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (slow first batches; did not pay off on 2 CPU cores)",
    )
    add_activation_checkpointing_flag(group)
    group.add_argument(
        "--cache_images",
        default="auto",
        choices=("auto", "on", "off"),
        help="keep decoded uint8 images in RAM; auto caches splits while they fit in --cache_limit_gb",
    )
    group.add_argument(
        "--cache_limit_gb", default=2.2, type=positive_float, help="RAM budget of --cache_images auto"
    )
    group.add_argument(
        "--eval_batch_size",
        default=None,
        type=positive_int,
        help="batch size for validation and test (default: --batch_size, at most 16 on "
        "the CPU, where smaller eval batches measured faster)",
    )


def trainer_options(args, device: torch.device) -> dict:
    """The Trainer keyword arguments that come from the data-path and speed flags (also what
    benchmarks/bench_train.py trains with)."""
    return dict(
        device=device,
        num_workers=args.num_workers,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def weights_path(args) -> str | None:
    """The ImageNet weights file asked for: ``--pretrained_weights``, else XceptionBased's
    ``--xception_weights``. A file for a model without ImageNet weights, or XceptionBased's flag
    given for another model, is a ``UserError``."""
    if args.pretrained_weights and not model_spec(args.model).imagenet:
        raise UserError(f"--pretrained_weights: {args.model} has no ImageNet weights; drop the flag")
    if args.xception_weights and args.model != "XceptionBased" and model_spec(args.model).imagenet:
        raise UserError(
            f"--xception_weights is for XceptionBased; pass --pretrained_weights PATH for {args.model}"
        )
    return args.pretrained_weights or (args.xception_weights if args.model == "XceptionBased" else None)


def check_weights(args) -> int:
    """``--check_weights``: where the ImageNet weights of ``-m`` come from, as one JSON line."""
    from lib.torchvision_weights import PretrainedWeightsError
    from xception import XceptionWeightsError

    if not model_spec(args.model).imagenet:
        result = {"found": False, "error": f"{args.model} has no ImageNet weights (it trains from scratch)"}
    else:
        try:
            model = load_model(args.model, pretrained=True, weights_path=weights_path(args), head=args.head)
            result = {
                "found": True,
                "source": str(model.weights_info.source),
                "origin": model.weights_info.origin,
            }
        except (XceptionWeightsError, PretrainedWeightsError) as exc:
            result = {"found": False, "error": str(exc)}
    print(json.dumps(result))
    return 0


def check_model_flags(args) -> None:
    """Refuse, before anything is read, flags the model cannot take: ``--head``, a weights file,
    ``--activation_checkpointing on``, a reversed augmentation range (one-line ``UserError``)."""
    resolve_head(args.model, args.head)
    weights_path(args)
    degradations_of(args)
    if args.activation_checkpointing == "on" and not model_spec(args.model).activation_checkpointing:
        supported = ", ".join(name for name, spec in MODEL_SPECS.items() if spec.activation_checkpointing)
        torchvision = model_spec(args.model).torchvision
        why = "not implemented for torchvision backbones" if torchvision else "whose activations are small"
        raise UserError(
            f"--activation_checkpointing: only {supported} supports it, not {args.model} ({why}); "
            "drop the flag"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_weights:
        return check_weights(args)
    check_model_flags(args)
    check_training_options(args)
    epoch_log = EpochLog(args.tensorboard)  # a missing tensorboard package stops the run here
    device = init_distributed(args.device)
    try:
        return _train(args, device, epoch_log)
    finally:
        epoch_log.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(args, device: torch.device, epoch_log: EpochLog) -> int:
    is_main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    if is_main:  # a bad output path stops the run now, before the data is read
        check_output_paths(run_paths(args.out_dir, args.checkpoint_dir, logging_names(args)), create=False)
    set_seed(args.seed)
    degradations = degradations_of(args)
    datasets = [
        load_dataset(
            args.dataset,
            part,
            args.data_root,
            skip_corrupt=args.skip_corrupt,
            degradations=degradations if part == "train" else None,
        )
        for part in ("train", "val", "test")
    ]
    datasets[0].require_both_classes()  # a one-class training would learn nothing worth a word
    apply_image_cache(
        datasets, args.cache_images, args.cache_limit_gb, progress=is_main and not args.no_progress
    )
    set_seed(args.seed)  # the same initial weights whatever was read above
    model = build_model(args, is_main)
    checkpointing = _activation_checkpointing(args, device, datasets, is_main)
    if checkpointing:
        model.set_activation_checkpointing(True)
    weight_decay = resolved_weight_decay(args.optimizer, args.weight_decay)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.momentum, weight_decay)
    logging_parameters = logging_names(args, json_safe_optimizer_params(optimizer.param_groups[0]))
    run_args = {k: v for k, v in vars(args).items() if k != "debug"}
    criterion, options = training_setup(args, optimizer, datasets[0], datasets[1], device, epoch_log)
    trainer = Trainer(
        model,
        optimizer,
        criterion,
        args.batch_size,
        *datasets,
        **trainer_options(args, device),
        progress=not args.no_progress,
        out_dir=args.out_dir,
        checkpoint_dir=args.checkpoint_dir,
        precise_bn=args.precise_bn,
        options=options,
        run_info={
            "args": run_args,
            "argv": sys.argv,
            "run_name": args.run_name,
            "protocol": protocol(args),
            "precise_bn": args.precise_bn,
            "pretrained": model_spec(args.model).imagenet and not args.no_pretrained,
            "head": resolve_head(args.model, args.head),
            "n_params": get_nof_params(model),
            "activation_checkpointing": checkpointing,
        },
    )
    run = trainer.run(args.epochs, logging_parameters, resume=args.resume)
    if is_main:
        paths = trainer.paths(logging_parameters)
        best = run["best_epoch"]
        by = "" if args.select_by == "val_acc" else f" (by {args.select_by})"
        auc = run["test_auc"][best - 1] if best else None
        print(
            f"done: best val epoch {best}{by}, val acc {run['best_val_acc']:.2f}%, test acc at that epoch "
            f"{run['test_acc_at_best']:.2f}%, test AUC(fake) {fmt(auc)}; "
            f"json {paths.json}; {best_checkpoint_words(paths.best, run)}"
        )
    return 0


def logging_names(args, optimizer_params: dict | None = None) -> LoggingParameters:
    """The names of the run's files and JSON entry (``--run_name`` among them)."""
    return LoggingParameters(args.model, args.dataset, args.optimizer, optimizer_params or {}, args.run_name)


def build_model(args, is_main: bool) -> torch.nn.Module:
    """The model of ``-m`` with ``--head``, from ImageNet weights unless ``--no_pretrained``; says
    loudly when a model meant for ImageNet weights starts from random initialisation, and where a
    torchvision backbone's weights came from."""
    spec = model_spec(args.model)
    pretrained = spec.imagenet and not args.no_pretrained
    model = load_model(args.model, pretrained=pretrained, weights_path=weights_path(args), head=args.head)
    if spec.imagenet and args.no_pretrained and is_main:
        why = (
            "the study shows this stays near chance (50-60 %)"
            if args.model == "XceptionBased"
            else "the field's results with it start from ImageNet weights"
        )
        print(f"WARNING: {args.model} from random initialisation (--no_pretrained); {why}", file=sys.stderr)
    if pretrained and spec.torchvision and is_main:
        info = model.weights_info
        print(f"note: {args.model}: ImageNet weights {info.source} (from {info.origin})", file=sys.stderr)
    return model


def best_checkpoint_words(path: str, run: dict) -> str:
    """How the done: line names the run's best checkpoint: never a file that is missing or
    holds another run."""
    if run_files.run_id_of(path) == run["run_id"]:
        return f"checkpoint {path}"
    return f"no best checkpoint of this run (not in {path})"


def _activation_checkpointing(args, device: torch.device, datasets, is_main: bool) -> bool:
    """Whether the model (XceptionBased: the one that supports it) trains with activation
    checkpointing (--activation_checkpointing), saying why when 'auto' turns it on."""
    # Each process trains batch / world size images; on the CPU the processes of a node share its RAM.
    per_process_batch = max(1, args.batch_size // int(os.environ.get("WORLD_SIZE", "1")))
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    # On CUDA the Trainer copies the cached splits to the GPU after this decision (on the CPU the
    # cache is already in RAM, so no longer in the available memory).
    gpu_cache = (
        sum(d.cache_images(progress=False).nbytes for d in datasets if d.cached)
        if device.type == "cuda"
        else 0
    )
    checkpointing, note = resolve_activation_checkpointing(
        args.activation_checkpointing,
        args.model,
        device,
        per_process_batch,
        processes=processes,
        extra_bytes=gpu_cache,
    )
    if note and is_main:
        print(f"note: {note}", file=sys.stderr)
    return checkpointing


def protocol(args) -> dict:
    """The flags that define a run (flag name -> value): --resume must give the same ones. The data
    root is resolved to a real path; momentum counts for SGD only, an augmentation's range only
    when its probability is not 0."""
    return {
        "model": args.model,
        "dataset": args.dataset,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum if args.optimizer == "SGD" else None,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "precise_bn": args.precise_bn,
        "data_root": os.path.realpath(resolve_data_root(args.data_root)),
        **training_protocol(args),
        "head": resolve_head(args.model, args.head),
        "blur_prob": args.blur_prob,
        "blur_sigma": list(args.blur_sigma) if args.blur_prob else None,
        "jpeg_prob": args.jpeg_prob,
        "jpeg_quality": list(args.jpeg_quality) if args.jpeg_prob else None,
    }


if __name__ == "__main__":
    sys.exit(run_cli(main))
