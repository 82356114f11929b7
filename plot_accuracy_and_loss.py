"""Plot train/val/test loss and accuracy over epochs from a metrics JSON (docs/design.md#output-names).

    python plot_accuracy_and_loss.py -m SimpleNet -j out/fakes_dataset_SimpleNet_Adam.json -d fakes_dataset

Writes figures/<D>_<M>_losses_plot.png and figures/<D>_<M>_accuracies_plot.png from the last run
in the JSON, or the run --run N, --run_id ID, or the run whose best checkpoint --checkpoint_path is
(what run_study.py passes, so the curves are of the model its analyses use).
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lib.checkpoints import checkpoint_run_name, load_checkpoint
from lib.cli import ArgumentParser, UserError, add_debug_flag, path_text, run_cli
from lib.figure_output import write_figure
from lib.fileio import read_runs
from lib.flags import add_figure_flags, add_run_name_flag
from lib.names import dataset_title
from utils import FIGURE_SUFFIXES, MODEL_NAMES, figure_path

SPLITS = ("train", "val", "test")


def select_run(runs: list, path: str, run: int | None = None, run_id: str | None = None) -> dict:
    """The run with id ``run_id``, else run ``run`` (1-based; negative counts from the end), else
    the last run."""
    if not runs:
        raise UserError(f"{path}: holds no runs")
    if run_id is not None:
        found = [r for r in runs if r.get("run_id") == run_id]
        if not found:
            raise UserError(
                f"{path}: holds no run with id {run_id} (its {len(runs)} runs: "
                f"{', '.join(str(r.get('run_id')) for r in runs)}); pass the JSON that run wrote, or --run N"
            )
        return found[-1]
    if run is None:
        return runs[-1]
    index = run - 1 if run > 0 else run
    if run == 0 or not -len(runs) <= index < len(runs):
        raise UserError(f"--run {run}: {path} holds runs 1..{len(runs)}")
    return runs[index]


def checkpoint_run_id(path: str) -> str:
    """The id of the training run that saved the best checkpoint at ``path``."""
    run_id = load_checkpoint(path).get("run_id")
    if not isinstance(run_id, str):
        raise UserError(
            f"{path}: records no run id (saved by an older train_main.py); choose the run with --run N"
        )
    return run_id


def plot_metric(run: dict, metric: str, ylabel: str, title: str, path: str, args) -> str:
    """One curve per split of ``<split>_<metric>`` over epochs 1..N."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split in SPLITS:
        values = run.get(f"{split}_{metric}")
        if not values:
            raise UserError(f"metrics JSON run has no '{split}_{metric}' values")
        ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    n_epochs = len(run[f"train_{metric}"])
    ax.set_xticks(range(1, n_epochs + 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return write_figure(fig, path, args)


def run_names(run: dict, model: str | None, dataset: str | None, path: str) -> tuple[str, str]:
    """The run's (model, dataset), which name its figures: what the run records, ``-m``/``-d``
    where it records none (else the course's defaults). A run of another model or dataset than
    ``-m``/``-d`` is refused (its figures would carry wrong names)."""
    found = (run.get("model") or model or "SimpleNet", run.get("dataset") or dataset or "fakes_dataset")
    if (model or found[0], dataset or found[1]) != found:
        given = " ".join(f"{flag} {value}" for flag, value in (("-m", model), ("-d", dataset)) if value)
        raise UserError(
            f"{path}: the run holds {found[0]} on {found[1]}, but {given} was given; "
            f"pass -m {found[0]} -d {found[1]}, or leave them out (or another --json)"
        )
    return found


def check_run(run: dict, path: str) -> str:
    """The title suffix of ``run``: empty, or an unfinished-run notice (also on stderr)."""
    if run.get("completed") is False:
        why = f", {run['diverged']}" if run.get("diverged") else ""
        n_epochs = len(run.get("train_loss") or [])
        print(
            f"WARNING: {path}: the plotted run is UNFINISHED (completed: false, {n_epochs} epoch(s){why})",
            file=sys.stderr,
        )
        return f"\nUNFINISHED run: {n_epochs} epoch(s)"
    return ""


def plot_run(run: dict, model: str, dataset: str, args, note: str = "") -> list[str]:
    """The loss and the accuracy figure of ``run`` (in ``args.figures_dir``, ``args.figure_format``);
    returns their paths."""
    title = f"{model} model on {dataset_title(dataset)}{note}"  # the course's titles
    losses, accuracies = (
        figure_path(args.figures_dir, dataset, model, suffix, args.run_name)
        for suffix in FIGURE_SUFFIXES["curves"]
    )
    return [
        plot_metric(run, "loss", "loss", f"loss vs epoch for {title}", losses, args),
        plot_metric(run, "acc", "accuracy [%]", f"accuracy vs epoch for {title}", accuracies, args),
    ]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Plot loss and accuracy curves of a training run.")
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        choices=MODEL_NAMES,
        help="model name in titles and file names (default: the run's; another is an error)",
    )
    parser.add_argument("--json", "-j", required=True, help="metrics JSON written by train_main.py")
    parser.add_argument(
        "--dataset",
        "-d",
        default=None,
        metavar="NAME",
        help="dataset name in titles and file names (default: the run's; another is an error)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--run",
        type=int,
        default=None,
        help="which run of the JSON to plot, 1-based (negative: from the end); default: the last",
    )
    which.add_argument("--run_id", help="plot the run with this id (its 'run_id' in the JSON)")
    which.add_argument(
        "--checkpoint_path",
        "-cpp",
        metavar="PATH",
        type=path_text,
        help="plot the run that saved this best checkpoint (the run id it records)",
    )
    parser.add_argument("--figures_dir", default="figures", help="where the figures are written")
    add_run_name_flag(
        parser, "the run's name in the file names, <D>_<M>_NAME_...; default: the one it records"
    )
    add_figure_flags(parser)
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_id = checkpoint_run_id(args.checkpoint_path) if args.checkpoint_path else args.run_id
    run = select_run(read_runs(args.json, missing_ok=False), args.json, args.run, run_id)
    model, dataset = run_names(run, args.model, args.dataset, args.json)
    args.run_name = checkpoint_run_name(run, args.json, args.run_name)
    note = check_run(run, args.json)
    for path in plot_run(run, model, dataset, args, note):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
