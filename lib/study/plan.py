"""The study's plan: its three training runs and every step, in order, as data.

To add a step kind, write a builder ``(settings, run) -> Step`` and add a ``StepKind`` to
``STAGES``: the plan, ``--steps``/``--skip``, ``--help``, the skip rule and the report follow.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from lib import names
from lib.cli import UserError
from lib.epoch_log import csv_path
from lib.figure_output import DEFAULT_DPI, DEFAULT_FIGURE_FORMAT, figure_file
from lib.names import (
    DATASET_NAMES,
    FIGURE_SUFFIXES,
    MANIFEST,
    SAMPLES_FIGURE,
    SPLITS,
    figure_path,
    output_stem,
)

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
OPTIMIZER = "Adam"
PROTOCOL = {"optimizer": OPTIMIZER, "lr": 0.001, "batch_size": 32}  # the study's, beside each run's epochs


@dataclass(frozen=True)
class RunSpec:
    """One of the study's three training runs, and which of the optional steps it gets."""

    tag: str
    model: str
    dataset: str
    default_epochs: int
    saliency: bool
    robustness: bool  # 15 forwards per image: SimpleNet only (XceptionBased on a CPU is too slow)
    cross_dataset: bool  # its checkpoint is a row of the study's cross-dataset matrix

    @property
    def stem(self) -> str:
        """``<D>_<M>``: the start of the run's figure names."""
        return f"{self.dataset}_{self.model}"


RUNS = (  # tag, model, dataset, default_epochs, saliency, robustness, cross_dataset
    RunSpec("simplenet-fakes", "SimpleNet", "fakes_dataset", 5, True, True, True),
    RunSpec("simplenet-synthetic", "SimpleNet", "synthetic_dataset", 5, False, True, True),
    RunSpec("xception-synthetic", "XceptionBased", "synthetic_dataset", 2, True, False, False),
)


@dataclass
class Settings:
    """Where the study reads and writes, and the protocol its steps are given."""

    data_root: str
    out_dir: str
    figures_dir: str
    checkpoint_dir: str
    seed: int = 0
    device: str = "auto"
    batch_size: int = PROTOCOL["batch_size"]
    lr: float = PROTOCOL["lr"]
    epochs: dict = field(default_factory=lambda: {r.tag: r.default_epochs for r in RUNS})
    num_workers: int | None = None
    xception_args: list[str] = field(default_factory=list)
    gradcam_max_images: int = 0
    precise_bn: int = 0
    datasets: tuple[str, ...] = DATASET_NAMES  # of the spectra and the cross-dataset matrix's columns
    run_name: str | None = None  # train_main.py's --run_name of all three runs
    figure_format: str = DEFAULT_FIGURE_FORMAT
    dpi: int = DEFAULT_DPI

    def figure(self, path: str) -> str:
        """A figure's path (named .png by lib/names) in the study's figure format."""
        return figure_file(path, self.figure_format)

    def split(self, dataset: str, split: str) -> str:
        """``<data root>/<dataset>/<split>``: the folder holding that split's real/ and fake/."""
        return os.path.join(self.data_root, dataset, split)


@dataclass
class Step:
    """One subprocess of the study: a script, its arguments, and the files it reads and writes.

    ``outputs`` is every file the step writes, each with the sections of that JSON it writes (an
    empty tuple: the whole file is the step's own); the skip rule checks exactly these.
    """

    script: str
    args: list[str]
    outputs: dict[str, tuple[str, ...]]
    inputs: list[str] = field(default_factory=list)  # files made by earlier steps
    data: list[str] = field(default_factory=list)  # split folders read
    files: list[str] = field(default_factory=list)  # other files read, when they exist (weights, manifest)
    resume_from: str | None = None  # a training's full-state checkpoint
    name: str = ""  # these three are set by build_plan
    kind: str = ""
    run: RunSpec | None = None

    @property
    def command(self) -> list[str]:
        """The script and its arguments: what the stamp compares (the interpreter left out)."""
        return [self.script, *self.args]

    def argv(self, extra: list[str] = ()) -> list[str]:
        """The full command line: this Python, the script in the repository, its arguments."""
        return [sys.executable, os.path.join(HERE, self.script), *self.args, *extra]


def whole(*paths: str) -> dict[str, tuple[str, ...]]:
    """Outputs that are whole files of the step's own (figures, checkpoints)."""
    return dict.fromkeys(paths, ())


# ----------------------------------------------------------------------------- paths
def checkpoint_path(s: Settings, run: RunSpec, suffix: str = "") -> str:
    """``<checkpoints>/<D>_<M>_Adam[_<run name>]<suffix>.pt``, as the Trainer names them."""
    return os.path.join(
        s.checkpoint_dir, f"{output_stem(run.dataset, run.model, OPTIMIZER, s.run_name)}{suffix}.pt"
    )


def runs_json_path(s: Settings, run: RunSpec) -> str:
    """``<out>/<D>_<M>_Adam[_<run name>].json``: the run's training runs, as the Trainer names it."""
    return os.path.join(s.out_dir, f"{output_stem(run.dataset, run.model, OPTIMIZER, s.run_name)}.json")


def metrics_json_path(s: Settings, run: RunSpec) -> str:
    """``<out>/<D>_<M>[_<run name>]_metrics.json``: the analyses' sections of the run."""
    return names.metrics_json_path(s.out_dir, run.dataset, run.model, s.run_name)


def samples_figure(s: Settings) -> str:
    """The samples figure of plot_samples_of_faces_datasets.py."""
    return s.figure(os.path.join(s.figures_dir, SAMPLES_FIGURE))


def spectrum_figure(s: Settings, dataset: str) -> str:
    """The spectrum figure of one dataset (spectrum_analysis.py)."""
    return s.figure(names.spectrum_paths(s.figures_dir, "", dataset)[0])


def spectrum_json_path(s: Settings, dataset: str) -> str:
    """The spectrum JSON of one dataset (spectrum_analysis.py)."""
    return names.spectrum_paths("", s.out_dir, dataset)[1]


def cross_dataset_figure(s: Settings) -> str:
    """The heat maps of the cross-dataset matrix (cross_dataset_analysis.py)."""
    return s.figure(names.cross_dataset_paths(s.figures_dir, "")[0])


def cross_dataset_json_path(s: Settings) -> str:
    """The JSON of the whole cross-dataset matrix (cross_dataset_analysis.py)."""
    return names.cross_dataset_paths("", s.out_dir)[1]


def kind_figures(run: RunSpec, s: Settings, kind: str) -> list[str]:
    """The figures a step kind's script writes for this run, whether the study runs it or not."""
    stem = partial(figure_path, s.figures_dir, run.dataset, run.model)
    return [s.figure(stem(suffix, s.run_name)) for suffix in FIGURE_SUFFIXES[kind]]


def run_figures(run: RunSpec, s: Settings) -> dict[str, list[str]]:
    """The study's figures of one run, by the step kind that makes them."""
    left_out = {"saliency": not run.saliency, "robustness": not run.robustness}
    return {kind: kind_figures(run, s, kind) for kind in FIGURE_SUFFIXES if not left_out.get(kind)}


# ----------------------------------------------------------------------------- step builders
# Each returns the step of its kind for the run (None for a study-wide kind), named by build_plan.
def _figure_args(s: Settings) -> list[str]:
    """Where a plotting script writes its figures, and in which format (said only when not the
    default, so that the commands, and with them the skip rule, stay as they were)."""
    args = ["--figures_dir", s.figures_dir]
    if s.figure_format != DEFAULT_FIGURE_FORMAT:
        args += ["--figure_format", s.figure_format]
    return args + (["--dpi", str(s.dpi)] if s.dpi != DEFAULT_DPI else [])


def _io_args(s: Settings) -> list[str]:
    """Where an analysis script reads the data and writes its figures, and on which device."""
    return ["--data_root", s.data_root, "--device", s.device, *_figure_args(s)]


def _run_name_args(s: Settings) -> list[str]:
    """``--run_name`` of a step of one run, when the study names its runs."""
    return ["--run_name", s.run_name] if s.run_name else []


def samples_step(s: Settings, run: None) -> Step:
    """One real and one fake training image of each dataset."""
    args = ["--data_root", s.data_root, "--seed", str(s.seed), *_figure_args(s)]
    data = [s.split(d, "train") for d in DATASET_NAMES]
    return Step("plot_samples_of_faces_datasets.py", args, whole(samples_figure(s)), data=data)


def spectrum_step(s: Settings, run: None) -> Step:
    """The test splits of the datasets (--datasets), no model: one figure and one JSON per dataset."""
    args = ["--datasets", *s.datasets, *_io_args(s), "--seed", str(s.seed), "--out_dir", s.out_dir]
    outputs = whole(*(spectrum_figure(s, d) for d in s.datasets))
    outputs |= {spectrum_json_path(s, d): ("spectrum",) for d in s.datasets}
    return Step("spectrum_analysis.py", args, outputs, data=[s.split(d, "test") for d in s.datasets])


def train_step(s: Settings, run: RunSpec) -> Step:
    """train_main.py with the study's protocol; it resumes from ``_last.pt`` (``--resume``)."""
    args = ["-m", run.model, "-d", run.dataset, "-o", OPTIMIZER, "--lr", repr(s.lr), "-b", str(s.batch_size)]
    args += ["-e", str(s.epochs[run.tag]), "--data_root", s.data_root, "--seed", str(s.seed)]
    args += ["--device", s.device, "--out_dir", s.out_dir, "--checkpoint_dir", s.checkpoint_dir]
    args += _run_name_args(s)
    if s.num_workers is not None:
        args += ["--num_workers", str(s.num_workers)]
    if s.precise_bn:  # 0 is train_main.py's default: the command stays the course's
        args += ["--precise_bn", str(s.precise_bn)]
    weights = []  # the ImageNet weights file it starts from, read as an input
    if run.model == "XceptionBased":
        args += s.xception_args
        flags = s.xception_args
        weights = [flags[flags.index("--xception_weights") + 1]] if "--xception_weights" in flags else []
    return Step(
        "train_main.py",
        args,
        whole(checkpoint_path(s, run), runs_json_path(s, run), csv_path(runs_json_path(s, run))),
        data=[s.split(run.dataset, split) for split in SPLITS],
        resume_from=checkpoint_path(s, run, "_last"),
        files=weights,
    )


def curves_step(s: Settings, run: RunSpec) -> Step:
    """The loss and accuracy curves of the training run whose best checkpoint the analyses read."""
    runs_json, checkpoint = runs_json_path(s, run), checkpoint_path(s, run)
    args = ["-m", run.model, "-j", runs_json, "-d", run.dataset, "-cpp", checkpoint, *_run_name_args(s)]
    figures = whole(*kind_figures(run, s, "curves"))
    return Step("plot_accuracy_and_loss.py", args + _figure_args(s), figures, [runs_json, checkpoint])


# kind: the script, and the sections of the run's metrics JSON it writes (then it takes --out_dir)
ANALYSES = {
    "numerical": ("numerical_analysis.py", ("numerical", "uncertainty")),
    "gradcam": ("grad_cam_analysis.py", ("grad_cam",)),
    "robustness": ("robustness_analysis.py", ("robustness",)),
    "saliency": ("saliency_map.py", ()),
}


def analysis_step(s: Settings, run: RunSpec, kind: str) -> Step:
    """An ``ANALYSES`` step: it reads the run's best checkpoint and test split and writes the kind's
    figures and sections (numerical: ROC/DET, reliability, bootstrap intervals and the scores CSV;
    gradcam: the two figures, the mean maps and the faithfulness test; robustness: the AUC under
    each perturbation; saliency: the pairs and the mean maps), seeded with --seed."""
    script, sections = ANALYSES[kind]
    outputs = whole(*kind_figures(run, s, kind))
    args = ["-m", run.model, "-cpp", checkpoint_path(s, run), "-d", run.dataset, *_run_name_args(s)]
    args += [*_io_args(s), "--seed", str(s.seed)]
    if sections:
        outputs[metrics_json_path(s, run)] = sections
        args += ["--out_dir", s.out_dir]
    files = []
    if kind == "numerical":  # a prepared video dataset's manifest groups the frames into videos
        outputs |= whole(names.scores_csv_path(s.out_dir, run.dataset, run.model, s.run_name))
        files.append(os.path.join(s.data_root, run.dataset, MANIFEST))
    if kind == "gradcam" and s.gradcam_max_images:
        args += ["--faithfulness_images", str(s.gradcam_max_images)]
    return Step(script, args, outputs, [checkpoint_path(s, run)], [s.split(run.dataset, "test")], files)


def cross_dataset_step(s: Settings, run: None) -> Step:
    """The checkpoints of the runs marked ``cross_dataset``, each on the test split of every dataset
    (--datasets)."""
    runs = [r for r in RUNS if r.cross_dataset]
    args = ["--checkpoints", *(f"{r.dataset}:{r.model}:{checkpoint_path(s, r)}" for r in runs)]
    args += ["--datasets", *s.datasets, *_io_args(s), "--out_dir", s.out_dir]
    jsons = [cross_dataset_json_path(s)] + [metrics_json_path(s, r) for r in runs]
    outputs = whole(cross_dataset_figure(s)) | dict.fromkeys(jsons, ("cross_dataset",))
    return Step(
        "cross_dataset_analysis.py",
        args,
        outputs,
        [checkpoint_path(s, r) for r in runs],
        [s.split(d, "test") for d in s.datasets],
    )


@dataclass(frozen=True)
class StepKind:
    """A kind of step: its builder, and whether it is one step for the study or one per run
    (those runs for which ``applies`` holds)."""

    name: str
    build: Callable[[Settings, RunSpec | None], Step]
    once: bool = False
    applies: Callable[[RunSpec], bool] = lambda run: True


# The study's order: stage by stage, and within a stage run by run. A new kind goes here.
STAGES = (
    (StepKind("samples", samples_step, once=True), StepKind("spectrum", spectrum_step, once=True)),
    (StepKind("train", train_step),),
    (
        StepKind("curves", curves_step),
        StepKind("numerical", partial(analysis_step, kind="numerical")),
        StepKind("gradcam", partial(analysis_step, kind="gradcam")),
        StepKind("robustness", partial(analysis_step, kind="robustness"), applies=lambda run: run.robustness),
    ),
    (StepKind("saliency", partial(analysis_step, kind="saliency"), applies=lambda run: run.saliency),),
    (StepKind("cross-dataset", cross_dataset_step, once=True),),
)
STEP_KINDS = tuple(kind.name for stage in STAGES for kind in stage) + ("report",)


def slots() -> list[tuple[str, StepKind, RunSpec | None]]:
    """Every step's name, kind and run (None: study-wide), in the plan's order; nothing is built."""
    return [
        (kind.name if run is None else f"{kind.name}-{run.tag}", kind, run)
        for stage in STAGES
        for run in ((None,) if stage[0].once else RUNS)
        for kind in stage
        if run is None or kind.applies(run)
    ]


def build_plan(s: Settings) -> list[Step]:
    """Every step of the study, in order, with the settings' folders and protocol."""
    return [replace(kind.build(s, run), name=name, kind=kind.name, run=run) for name, kind, run in slots()]


def step_names() -> list[str]:
    """Every step name, in the plan's order, then 'report'."""
    return [name for name, _, _ in slots()] + ["report"]


# ----------------------------------------------------------------------------- selection
def _selectors(flag: str, values: list[str] | None, steps: list[tuple]) -> list[str]:
    """The selectors of --steps or --skip (comma or space separated), each checked to match a step
    of ``steps``; an empty flag, or a selector that matches nothing, is an error."""
    items = [item.strip() for value in values or [] for item in value.split(",") if item.strip()]
    if values is not None and not items:
        raise UserError(f"{flag}: no step named; give at least one (see --help), or leave {flag} out")
    for selector in items:
        if not any(_matches(step, selector) for step in steps):
            raise UserError(
                f"{flag} {selector}: matches no step; steps: {', '.join(step_names())}; "
                f"kinds: {', '.join(STEP_KINDS)}; runs: {', '.join(r.tag for r in RUNS)}"
            )
    return items


def _matches(step: tuple, selector: str) -> bool:
    """Whether the selector names this (name, kind, run) step, its kind or its run, or is a pattern
    matching its name."""
    name, kind, run = step
    return selector in (name, kind, run and run.tag) or fnmatch.fnmatchcase(name, selector)


def select_steps(steps: list[str] | None, skip: list[str] | None) -> tuple[list[str], bool]:
    """The names of the steps chosen by --steps (default all) minus --skip, in order; and whether
    the report is written (unless skipped explicitly, it is).

    A selector is a step name, a kind (train, curves, ...), a run (simplenet-fakes, ...) or a
    shell pattern (train-*); one that matches nothing, or an empty flag, is an error.
    """
    every = [(name, kind.name, run) for name, kind, run in slots()] + [("report", "report", None)]
    wanted, unwanted = _selectors("--steps", steps, every), _selectors("--skip", skip, every)
    chosen = [
        step
        for step in every
        if (not wanted or step[0] == "report" or any(_matches(step, sel) for sel in wanted))
        and not any(_matches(step, sel) for sel in unwanted)
    ]
    return [step[0] for step in chosen if step[0] != "report"], chosen[-1:] == [every[-1]]
