"""Run the whole study in one command and write a one-page report.

    python run_study.py                       # everything, skipping steps that are up to date
    python run_study.py --dry_run             # the plan: every step, its command, why it would run
    python run_study.py --steps train --force # redo the three trainings only
    python run_study.py --skip saliency       # everything but the saliency maps

Steps, in order (each one a subprocess of this Python, its output in out/logs/<step>.log):

    samples                          plot_samples_of_faces_datasets.py
    spectrum                         spectrum_analysis.py       (both datasets' test splits, no model)
    train-simplenet-fakes            train_main.py, SimpleNet on fakes_dataset        (5 epochs)
    train-simplenet-synthetic        train_main.py, SimpleNet on synthetic_dataset    (5 epochs)
    train-xception-synthetic         train_main.py, XceptionBased on synthetic_dataset (2 epochs)
                                     (all three: Adam, lr 0.001, batch 32)
    curves-<run>                     plot_accuracy_and_loss.py  (for each of the three runs)
    numerical-<run>                  numerical_analysis.py      (for each of the three runs)
    gradcam-<run>                    grad_cam_analysis.py       (for each of the three runs)
    robustness-simplenet-<dataset>   robustness_analysis.py     (the two SimpleNet runs)
    saliency-simplenet-fakes         saliency_map.py
    saliency-xception-synthetic      saliency_map.py
    cross-dataset                    cross_dataset_analysis.py  (the two SimpleNet checkpoints)

numerical_analysis.py also writes the bootstrap intervals and the ECE (section 'uncertainty').
XceptionBased has no robustness step and no row in the cross-dataset matrix: on a CPU they cost
more than the rest of its analyses. --skip spectrum,robustness,cross-dataset leaves out all three.

Then out/study_report.md, out/study_report.html (one self-contained page, figures embedded) and
out/study_summary.json (the same numbers, and each step's seconds).

Data: --data_root, else $FACES_DATA_ROOT, else ../Assignment4_datasets; when none of them is there,
demo data is generated once into data/demo (make_demo_datasets.py) and used, and the report says so.

XceptionBased starts from ImageNet weights when xception.py can find them (--xception_weights,
$XCEPTION_WEIGHTS, the torch hub cache, a download). If it cannot, it trains from random
initialisation and the console and the report say so loudly.

Training uses precise BatchNorm statistics over --precise_bn batches (64 by default; 0 is the
course's behaviour): the demo's splits are about 40 times smaller than the course's, so after a few
Adam steps the running statistics of XceptionBased's BatchNorm layers have not settled. SimpleNet
has no BatchNorm, so the flag does not change it.

Skipping: a step is skipped when it last finished with the same command, its outputs are still the
ones it wrote, and its inputs (data, earlier steps' files, its code) are older than that run;
--force runs it anyway. A training step interrupted earlier (Ctrl-C, a crash) continues from its
_last.pt checkpoint when that holds the unfinished run of the same command. Nothing is deleted:
training runs append to their runs JSON, logs are appended to. A failing step stops the study with a
message naming the step and its log; what earlier steps wrote is kept. The machinery lives in the
study/ package (its __init__ lists one module per concern).

Time: the report's step table (and out/study_summary.json) gives the wall and CPU seconds of every
step. XceptionBased dominates on a CPU; --gradcam_max_images bounds the Grad-CAM faithfulness test.
"""

from __future__ import annotations

import time

_IMPORT_TIME = time.monotonic()  # the budget counts from the start of the command, imports included

import os
import sys

from lib.cli import (
    ArgumentParser,
    UserError,
    add_debug_flag,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    seed_int,
)
from lib.flags import add_data_root_flag
from lib.memory import add_activation_checkpointing_flag
from lib.study.data import choose_data, data_counts
from lib.study.plan import RUNS, STEP_KINDS, Settings, build_plan, select_steps, step_names
from lib.study.report import closing_notes, outcome_status, write_report
from lib.study.runner import Console, StepRecord, new_records, print_plan, run_steps
from lib.study.stamps import RULE, Stamps
from lib.study.weights import choose_xception_weights


# ============================================================================= command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Run the whole study (samples figure; SimpleNet on both datasets and XceptionBased "
        "on synthetic_dataset; curves, ROC/DET, Grad-CAM, saliency; beyond the study: spectra, "
        "bootstrap intervals, robustness, cross-dataset matrix) and write a one-page "
        "report (out/study_report.md/.html, out/study_summary.json). Skipping: "
        f"{RULE}.",
        epilog=f"Steps: {', '.join(step_names())}. --steps/--skip also take a kind "
        f"({', '.join(STEP_KINDS)}), a run ({', '.join(r.tag for r in RUNS)}) or a pattern "
        "such as 'gradcam-*'.",
    )
    data = parser.add_argument_group("data")
    add_data_root_flag(data, ", else demo data (--demo_dir)")
    data.add_argument(
        "--demo_dir",
        default=None,
        help="where demo data is generated when no datasets are found; None: <workdir>/data/demo",
    )
    data.add_argument(
        "--demo_scale",
        default=1.0,
        type=positive_float,
        help="size of generated demo data (1.0: about 1,300 images; see make_demo_datasets.py)",
    )
    data.add_argument("--demo_seed", default=0, type=non_negative_int, help="seed of generated demo data")
    data.add_argument(
        "--remake_demo", action="store_true", help="regenerate the demo data even when it exists"
    )

    add_training_flags(parser.add_argument_group("training (the study's protocol by default)"))
    where = parser.add_argument_group("outputs")
    where.add_argument(
        "--workdir", default=".", help="base folder of out/, figures/, checkpoints/ and data/demo/"
    )
    where.add_argument(
        "--out_dir", default=None, help="metrics JSON, logs, stamps and the report; None: <workdir>/out"
    )
    where.add_argument("--figures_dir", default=None, help="figures; None: <workdir>/figures")
    where.add_argument("--checkpoint_dir", default=None, help="checkpoints; None: <workdir>/checkpoints")

    control = parser.add_argument_group("which steps")
    control.add_argument(
        "--steps",
        nargs="+",
        default=None,
        metavar="STEP",
        help="run only these steps (names, kinds, runs or patterns; comma or space "
        "separated); None: all; an empty list is an error",
    )
    control.add_argument(
        "--skip",
        nargs="+",
        default=None,
        metavar="STEP",
        help="leave these steps out ('report' leaves the report out)",
    )
    control.add_argument(
        "--force", action="store_true", help="redo the selected steps even when their outputs are up to date"
    )
    control.add_argument(
        "--dry_run",
        action="store_true",
        help="print the plan (each step, its command, whether and why it would run); run nothing",
    )
    control.add_argument(
        "--quiet",
        action="store_true",
        help="do not echo the steps' output (it is always in out/logs/<step>.log)",
    )
    control.add_argument("--no_progress", action="store_true", help="no live progress bar")
    add_debug_flag(parser)
    return parser


def add_training_flags(training) -> None:
    """The protocol and the ImageNet-weights flags."""
    training.add_argument(
        "--epochs",
        "-e",
        default=None,
        type=positive_int,
        help="epochs of all three runs; None: the study's 5 for SimpleNet, 2 for XceptionBased",
    )
    training.add_argument(
        "--simplenet_epochs",
        default=None,
        type=positive_int,
        help="epochs of the two SimpleNet runs (overrides --epochs)",
    )
    training.add_argument(
        "--xception_epochs",
        default=None,
        type=positive_int,
        help="epochs of the XceptionBased run (overrides --epochs)",
    )
    training.add_argument("--batch_size", "-b", default=32, type=positive_int, help="training batch size")
    training.add_argument("--lr", default=0.001, type=positive_float, help="Adam learning rate")
    training.add_argument("--seed", default=0, type=seed_int, help="seed of every step")
    training.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu or cuda, for training and analysis"
    )
    training.add_argument(
        "--num_workers",
        default=None,
        type=non_negative_int,
        help="DataLoader workers for training; None: train_main.py's default",
    )
    training.add_argument(
        "--gradcam_max_images",
        default=16,
        type=non_negative_int,
        help="test images (both classes, chosen with --seed) of Grad-CAM's "
        "faithfulness test, per run; 0: the whole test split (about 10 "
        "forward passes per image: XceptionBased on 2 CPU cores needs ~2 s an "
        "image). The study's two Grad-CAM figures and the mean maps always "
        "use the whole test split",
    )
    training.add_argument(
        "--xception_weights",
        default=None,
        help="ImageNet weights file for XceptionBased (else $XCEPTION_WEIGHTS, the "
        "torch hub cache, a download; none found: random init, said loudly)",
    )
    training.add_argument(
        "--no_pretrained",
        action="store_true",
        help="train XceptionBased from random initialisation (the study: near chance)",
    )
    training.add_argument(
        "--precise_bn",
        default=64,
        type=non_negative_int,
        metavar="N",
        help="recompute BatchNorm statistics over N training batches before each "
        "evaluation (train_main.py --precise_bn); on by default because the "
        "demo splits are about 40x smaller than the course's, so the running "
        "statistics have not settled; 0: the course's behaviour. SimpleNet has "
        "no BatchNorm",
    )
    add_activation_checkpointing_flag(training)  # passed on to train_main.py for XceptionBased
    training.add_argument(
        "--require_pretrained",
        action="store_true",
        help="stop with an error instead of falling back to random initialisation "
        "when no ImageNet weights are found",
    )


def resolve_dirs(args) -> None:
    """Output folders not given explicitly go under --workdir."""
    under = lambda *parts: os.path.normpath(os.path.join(args.workdir, *parts))  # noqa: E731
    args.out_dir = args.out_dir or under("out")
    args.figures_dir = args.figures_dir or under("figures")
    args.checkpoint_dir = args.checkpoint_dir or under("checkpoints")
    args.demo_dir = args.demo_dir or under("data", "demo")


def make_settings(args, data_root: str, xception_args: list[str]) -> Settings:
    resolve_dirs(args)
    epochs = {}
    for run in RUNS:
        specific = args.simplenet_epochs if run.model == "SimpleNet" else args.xception_epochs
        epochs[run.tag] = specific or args.epochs or run.default_epochs
    if args.activation_checkpointing != "auto":
        xception_args = xception_args + ["--activation_checkpointing", args.activation_checkpointing]
    return Settings(
        data_root=data_root,
        out_dir=args.out_dir,
        figures_dir=args.figures_dir,
        checkpoint_dir=args.checkpoint_dir,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        lr=args.lr,
        epochs=epochs,
        num_workers=args.num_workers,
        xception_args=xception_args,
        gradcam_max_images=args.gradcam_max_images,
        precise_bn=args.precise_bn,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_pretrained and (args.xception_weights or args.require_pretrained):
        raise UserError("--no_pretrained contradicts --xception_weights / --require_pretrained; choose one")
    start = _COMMAND_START or time.monotonic()
    resolve_dirs(args)
    # Which steps, before anything slow happens (a typo in --steps fails at once); step names do
    # not depend on the data or the weights.
    picked, write_the_report = select_steps(
        build_plan(make_settings(args, "<data>", [])), args.steps, args.skip
    )
    chosen = {step.name for step in picked}
    logs_dir = os.path.join(args.out_dir, "logs")
    console = Console(0, False, args.quiet)

    # 1. data
    data = choose_data(args, console, logs_dir)
    if not data.missing:
        data.counts = data_counts(data.root)
        console.say(f"data: {data.describe_counts()}")
    # 2. weights: how XceptionBased starts
    weights = choose_xception_weights(args, console) if "train-xception-synthetic" in chosen else None
    settings = make_settings(args, data.root, weights.args if weights else [])
    plan = build_plan(settings)
    selected = [step for step in plan if step.name in chosen]
    stamps = Stamps(settings.out_dir)
    if args.dry_run:
        return print_plan(plan, selected, stamps, args.force, write_the_report, console)

    # 3. steps
    records = new_records(plan, stamps, logs_dir)
    if data.generated_seconds is not None:  # the one-time demo data, made by this call
        records.insert(
            0,
            StepRecord(
                "demo-data",
                ["make_demo_datasets.py", "--out", data.root],
                os.path.join(logs_dir, "demo-data.log"),
                status="ran",
                seconds=data.generated_seconds,
                last_run_seconds=data.generated_seconds,
            ),
        )
    done = run_steps(
        plan, selected, stamps, records, args.force, Console(len(selected), not args.no_progress, args.quiet)
    )
    status = outcome_status(done.failure, records, time.monotonic() - start)

    # 4. report
    if write_the_report:
        try:
            write_report(
                settings, data, weights, records, status, time.monotonic() - start, console, model_facts()
            )
        except Exception as exc:  # the report must never hide the real outcome
            if args.debug:
                raise
            print(
                f"run_study.py: warning: the report could not be written ({type(exc).__name__}: "
                f"{exc}); rerun with --debug",
                file=sys.stderr,
            )
            if done.failure is None:
                return 1
    if done.failure is not None:
        print(f"run_study.py: error: {done.failure}", file=sys.stderr)
        return 1
    closing_notes(data, weights, status, console)
    return 0


def model_facts() -> dict:
    """The models' numbers the study asks for, computed from freshly built (random-init) models:
    trainable parameters of both, the head's input features, the Xception backbone's parameters
    (with its 1000-class classifier, as the study counts it) and the MLP head's parameters."""
    import xception
    from utils import get_nof_params, load_model

    xception_based = load_model("XceptionBased", pretrained=False)
    return {
        "SimpleNet": get_nof_params(load_model("SimpleNet", pretrained=False)),
        "XceptionBased": get_nof_params(xception_based),
        "head_in_features": xception_based.fc[0].in_features,
        "backbone_params": get_nof_params(xception.Xception()),
        "head_params": get_nof_params(xception_based.fc),
    }


_COMMAND_START = None  # set when run as a command: its total time then includes the imports

if __name__ == "__main__":
    _COMMAND_START = _IMPORT_TIME
    sys.exit(run_cli(main))
