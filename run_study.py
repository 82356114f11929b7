"""Run the whole study in one command and write a one-page report.

    python run_study.py                       # everything, skipping steps that are up to date
    python run_study.py --dry_run             # the plan: every step, its command, why it would run
    python run_study.py --steps train --force # redo the three trainings only
    python run_study.py --skip saliency       # everything but the saliency maps

Each step is a subprocess of this Python, its output in out/logs/<step>.log; then
out/study_report.md, out/study_report.html (self-contained) and out/study_summary.json. The steps,
the skip rule, the data and weights fallbacks: --help and docs/design.md#study-runner. The
machinery lives in lib/study/ (its __init__ lists one module per concern).
"""

from __future__ import annotations

import time

_IMPORT_TIME = time.monotonic()  # the budget counts from the start of the command, imports included

import os
import sys
from dataclasses import fields

from lib import cli
from lib.cli import ArgumentParser, UserError, run_cli
from lib.flags import add_data_root_flag, add_figure_flags, add_run_name_flag
from lib.memory import add_activation_checkpointing_flag
from lib.names import DATASET_NAMES
from lib.study.data import choose_data
from lib.study.numbers import collect_numbers
from lib.study.plan import (
    PROTOCOL,
    RUNS,
    STEP_KINDS,
    Settings,
    build_plan,
    select_steps,
    slots,
    step_names,
)
from lib.study.report import Study, outcome_status, write_report
from lib.study.runner import Console, Runner
from lib.study.stamps import RULE, Stamps
from lib.study.weights import choose_xception_weights

DEMO_PRECISE_BN = 64  # batches of BatchNorm statistics on the demo data: its whole training split

# ============================================================================= command line
# The output folders' flags: each one's folder under --workdir, and what goes there.
OUTPUT_DIRS = {
    "out_dir": ("out", "metrics JSON, logs, stamps and the report"),
    "figures_dir": ("figures", "figures"),
    "checkpoint_dir": ("checkpoints", "checkpoints"),
}


def build_parser() -> ArgumentParser:
    """run_study.py's flags, in groups: data, training, outputs, which steps."""
    parser = ArgumentParser(
        description="Run the whole study (samples figure; SimpleNet on both datasets and XceptionBased "
        "on synthetic_dataset; curves, ROC/DET, Grad-CAM, saliency; beyond the study: spectra, "
        "bootstrap intervals, robustness, cross-dataset matrix) and write a one-page report "
        f"(out/study_report.md/.html, out/study_summary.json). Skipping: {RULE}.",
        epilog=f"Steps: {', '.join(step_names())}. --steps/--skip also take a kind "
        f"({', '.join(STEP_KINDS)}), a run ({', '.join(r.tag for r in RUNS)}) or a pattern "
        "such as 'gradcam-*'.",
    )
    data = parser.add_argument_group("data")
    add_data_root_flag(data, ", else demo data (--demo_dir)")
    data.add_argument(
        "--demo_dir", type=cli.path_text, help="where demo data is generated; None: <workdir>/data/demo"
    )
    data.add_argument(
        "--demo_scale", default=1.0, type=cli.positive_float, help="demo size (1.0: ~1,300 images)"
    )
    data.add_argument("--demo_seed", default=0, type=cli.non_negative_int, help="seed of generated demo data")
    data.add_argument(
        "--remake_demo", action="store_true", help="regenerate the demo data even when it exists"
    )
    data.add_argument(
        "--datasets", nargs="+", metavar="NAME", default=DATASET_NAMES,
        help="datasets under the data root of the spectra and the cross-dataset matrix's test splits "
        f"(default: the course's {' '.join(DATASET_NAMES)})",
    )  # fmt: skip
    add_training_flags(parser.add_argument_group("training (the study's protocol by default)"))
    where = parser.add_argument_group("outputs")
    where.add_argument("--workdir", default=".", help="base of out/, figures/, checkpoints/ and data/demo/")
    for flag, (folder, what) in OUTPUT_DIRS.items():
        where.add_argument(f"--{flag}", type=cli.path_text, help=f"{what}; None: <workdir>/{folder}")
    add_run_name_flag(where, "--run_name of the three runs: their files and their analyses' carry _NAME")
    add_figure_flags(parser)  # passed on to every plotting step
    control = parser.add_argument_group("which steps")
    control.add_argument(
        "--steps", nargs="+", metavar="STEP",
        help="run only these steps (names, kinds, runs or patterns; comma or space separated); None: all",
    )  # fmt: skip
    control.add_argument("--skip", nargs="+", metavar="STEP", help="leave these steps out (also 'report')")
    control.add_argument("--force", action="store_true", help="redo the selected steps even when up to date")
    control.add_argument(
        "--dry_run", action="store_true", help="print each step, its command, whether and why it would run"
    )
    control.add_argument("--quiet", action="store_true", help="do not echo the steps' output (see out/logs/)")
    control.add_argument("--no_progress", action="store_true", help="no live progress bar")
    cli.add_debug_flag(parser)
    return parser


def add_training_flags(training) -> None:
    """The protocol's flags, and how XceptionBased starts (ImageNet weights or random)."""
    epochs = "epochs of all three runs; None: the study's 5 for SimpleNet, 2 for XceptionBased"
    training.add_argument("--epochs", "-e", type=cli.positive_int, help=epochs)
    training.add_argument("--simplenet_epochs", type=cli.positive_int, help="epochs of both SimpleNet runs")
    training.add_argument("--xception_epochs", type=cli.positive_int, help="epochs of XceptionBased")
    training.add_argument(
        "--batch_size", "-b", default=PROTOCOL["batch_size"], type=cli.positive_int, help="batch size"
    )
    training.add_argument("--lr", default=PROTOCOL["lr"], type=cli.positive_float, help="Adam learning rate")
    training.add_argument("--seed", default=0, type=cli.seed_int, help="seed of every step")
    training.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    training.add_argument(
        "--workers", "-j", dest="num_workers", type=cli.non_negative_int,
        help="training DataLoader workers (default: train_main.py's)",
    )  # fmt: skip
    training.add_argument(
        "--gradcam_max_images", default=16, type=cli.non_negative_int,
        help="test images of Grad-CAM's faithfulness test per run (0: the whole test split; the figures "
        "and mean maps always use it all)",
    )  # fmt: skip
    training.add_argument(
        "--xception_weights",
        type=cli.path_text,
        help="ImageNet weights of XceptionBased (else $XCEPTION_WEIGHTS, the torch hub cache, a download; "
        "none found: random init, said loudly)",
    )
    training.add_argument("--no_pretrained", action="store_true", help="train XceptionBased from random init")
    training.add_argument(
        "--precise_bn", type=cli.non_negative_int, metavar="N",
        help="train_main.py --precise_bn: BatchNorm statistics over N training batches before each "
        f"evaluation; default: {DEMO_PRECISE_BN} on the demo data, whose splits are small "
        "(docs/design.md#precise-batchnorm-statistics), 0 (the course's) on your datasets",
    )  # fmt: skip
    add_activation_checkpointing_flag(training)  # passed on to train_main.py for XceptionBased
    training.add_argument(
        "--require_pretrained", action="store_true",
        help="stop with an error instead of falling back to random init when no ImageNet weights are found",
    )  # fmt: skip


def resolve_dirs(args) -> None:
    """Output folders not given explicitly go under --workdir."""
    for flag, (folder, _) in OUTPUT_DIRS.items():
        setattr(args, flag, getattr(args, flag) or os.path.normpath(os.path.join(args.workdir, folder)))
    args.demo_dir = args.demo_dir or os.path.normpath(os.path.join(args.workdir, "data", "demo"))


def make_settings(args, data_root: str, xception_args: list[str], demo: bool = False) -> Settings:
    """The plan's settings from the flags, the data root (``demo``: demo data) and XceptionBased's
    train_main.py flags."""
    resolve_dirs(args)
    if args.precise_bn is None:  # the study's protocol on real data; the demo's small splits need it
        args.precise_bn = DEMO_PRECISE_BN if demo else 0
    epochs = {
        run.tag: (args.simplenet_epochs if run.model == "SimpleNet" else args.xception_epochs)
        or args.epochs
        or run.default_epochs
        for run in RUNS
    }
    if args.activation_checkpointing != "auto":
        xception_args = xception_args + ["--activation_checkpointing", args.activation_checkpointing]
    same = {f.name for f in fields(Settings)} - {"data_root", "epochs", "xception_args", "datasets"}
    return Settings(
        data_root,
        epochs=epochs,
        xception_args=xception_args,
        datasets=tuple(dict.fromkeys(args.datasets)),
        **{f: getattr(args, f) for f in same},  # the flags of the same names
    )


# ============================================================================= the study
def main(argv: list[str] | None = None) -> int:
    """Choose the steps, the data and XceptionBased's start; run the steps; write the report.
    Returns the exit code (1: a step failed, or the report could not be written)."""
    args = build_parser().parse_args(argv)
    if args.no_pretrained and (args.xception_weights or args.require_pretrained):
        raise UserError("--no_pretrained contradicts --xception_weights / --require_pretrained; choose one")
    start = _COMMAND_START or time.monotonic()
    resolve_dirs(args)
    chosen, write_the_report = select_steps(args.steps, args.skip)  # a typo fails before anything slow
    logs_dir = os.path.join(args.out_dir, "logs")
    console = Console(0, False, args.quiet)
    data = choose_data(args, console, logs_dir)
    trained = {run.model for name, kind, run in slots() if kind.name == "train" and name in chosen}
    weights = choose_xception_weights(args, console) if "XceptionBased" in trained else None
    settings = make_settings(args, data.root, weights.args if weights else [], data.demo)
    plan = build_plan(settings)
    selected = [step for step in plan if step.name in chosen]
    runner = Runner(plan, Stamps(settings.out_dir), args.force)
    if args.dry_run:
        return runner.print_plan(selected, write_the_report, console)

    records = data.records(logs_dir) + runner.records(logs_dir)
    failure = runner.run(selected, records, Console(len(selected), not args.no_progress, args.quiet))
    seconds = time.monotonic() - start  # the one total the report gives, before it is written
    status = outcome_status(failure, records, seconds)
    if write_the_report:
        try:
            runs = collect_numbers(settings, data.demo, weights.pretrained if weights else None)
            md_path, html_path, summary_path = write_report(
                Study(settings, data, model_facts(), runs, weights, records, status, seconds, steps=plan)
            )
            console.say(f"report: {md_path}, {html_path}; numbers: {summary_path}")
        except Exception as exc:  # the report must never hide the real outcome
            if args.debug:
                raise
            print(
                f"run_study.py: warning: the report could not be written ({type(exc).__name__}: {exc}); "
                "rerun with --debug",
                file=sys.stderr,
            )
            if failure is None:
                return 1
    if failure is not None:
        print(f"run_study.py: error: {failure}", file=sys.stderr)
        return 1
    console.say(f"study done: {status.text}")
    if weights and not weights.pretrained:
        reason = weights.reason[:160]
        console.say(
            f"NOTE: XceptionBased was trained from RANDOM INITIALISATION, not ImageNet weights ({reason})."
        )
    if data.demo:
        console.say(f"NOTE: this study ran on DEMO data ({data.root}), not the course datasets.")
    return 0


def model_facts() -> dict:
    """The models' numbers the study asks for, computed from freshly built (random-init) models:
    trainable parameters of both, the head's input features, the Xception backbone's parameters
    (with its 1000-class classifier, as the study counts it) and the MLP head's parameters; then
    the trainable parameters of every other model of the registry, with its default head."""
    import xception
    from utils import MODEL_NAMES, get_nof_params, load_model

    xception_based = load_model("XceptionBased", pretrained=False)
    return {
        "SimpleNet": get_nof_params(load_model("SimpleNet", pretrained=False)),
        "XceptionBased": get_nof_params(xception_based),
        "head_in_features": xception_based.fc[0].in_features,
        "backbone_params": get_nof_params(xception.Xception()),
        "head_params": get_nof_params(xception_based.fc),
        **{
            name: get_nof_params(load_model(name, pretrained=False))
            for name in MODEL_NAMES
            if name not in ("SimpleNet", "XceptionBased")
        },
    }


_COMMAND_START = None  # set when run as a command: its total time then includes the imports

if __name__ == "__main__":
    _COMMAND_START = _IMPORT_TIME
    sys.exit(run_cli(main))
