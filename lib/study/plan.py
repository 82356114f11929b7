"""The study's plan: its three training runs and every step, in order, as data.

To add a step kind, write a builder ``(settings, run) -> Step | None`` and add it to ``STAGES``:
the plan, ``--steps``/``--skip``, ``--help``, the skip rule and the report follow from there.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from lib import names
from lib.cli import UserError
from lib.names import (
    DATASET_NAMES,
    FIGURE_SUFFIXES,
    SAMPLES_FIGURE,
    SPLITS,
    cross_dataset_paths,
    figure_path,
    output_stem,
    spectrum_paths,
)

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
OPTIMIZER = "Adam"


@dataclass(frozen=True)
class RunSpec:
    """One of the study's three training runs."""

    tag: str
    model: str
    dataset: str
    default_epochs: int
    saliency: bool
    robustness: bool  # 15 forwards per image: SimpleNet only (XceptionBased on a CPU is too slow)
    cross_dataset: bool  # its checkpoint is a row of the study's cross-dataset matrix

    @property
    def stem(self) -> str:
        return f"{self.dataset}_{self.model}"


RUNS = (
    RunSpec(
        "simplenet-fakes", "SimpleNet", "fakes_dataset", 5,
        saliency=True, robustness=True, cross_dataset=True,
    ),
    RunSpec(
        "simplenet-synthetic", "SimpleNet", "synthetic_dataset", 5,
        saliency=False, robustness=True, cross_dataset=True,
    ),
    RunSpec(
        "xception-synthetic", "XceptionBased", "synthetic_dataset", 2,
        saliency=True, robustness=False, cross_dataset=False,
    ),
)  # fmt: skip


@dataclass
class Settings:
    """Where the study reads and writes, and the protocol its steps are given."""

    data_root: str
    out_dir: str
    figures_dir: str
    checkpoint_dir: str
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    lr: float = 0.001
    epochs: dict = field(default_factory=lambda: {r.tag: r.default_epochs for r in RUNS})
    num_workers: int | None = None
    xception_args: list[str] = field(default_factory=list)
    gradcam_max_images: int = 0
    precise_bn: int = 0


@dataclass
class Step:
    """One subprocess of the study: a script, its arguments, and the files it reads and writes."""

    name: str
    kind: str
    run: RunSpec | None
    script: str
    args: list[str]
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)  # files made by earlier steps
    data: list[str] = field(default_factory=list)  # split folders read
    # output JSON -> the section (or sections) of it the step writes
    sections: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    resume_from: str | None = None  # a training's full-state checkpoint

    @property
    def command(self) -> list[str]:
        return [self.script, *self.args]

    def argv(self, extra: list[str] = ()) -> list[str]:
        return [sys.executable, os.path.join(HERE, self.script), *self.args, *extra]


# ----------------------------------------------------------------------------- paths
def train_stem(run: RunSpec) -> str:
    """``<D>_<M>_<optimizer>``, as the Trainer names its checkpoints and runs JSON."""
    return output_stem(run.dataset, run.model, OPTIMIZER)


def checkpoint_path(s: Settings, run: RunSpec, suffix: str = "") -> str:
    return os.path.join(s.checkpoint_dir, f"{train_stem(run)}{suffix}.pt")


def runs_json_path(s: Settings, run: RunSpec) -> str:
    return os.path.join(s.out_dir, f"{train_stem(run)}.json")


def metrics_json_path(s: Settings, run: RunSpec) -> str:
    return names.metrics_json_path(s.out_dir, run.dataset, run.model)


def split_folder(s: Settings, dataset: str, split: str) -> str:
    return os.path.join(s.data_root, dataset, split)


def samples_figure(figures_dir: str) -> str:
    return os.path.join(figures_dir, SAMPLES_FIGURE)


def spectrum_figure(figures_dir: str, dataset: str) -> str:
    return spectrum_paths(figures_dir, "", dataset)[0]


def spectrum_json_path(s: Settings, dataset: str) -> str:
    return spectrum_paths("", s.out_dir, dataset)[1]


def cross_dataset_figure(figures_dir: str) -> str:
    return cross_dataset_paths(figures_dir, "")[0]


def cross_dataset_json_path(s: Settings) -> str:
    return cross_dataset_paths("", s.out_dir)[1]


def kind_figures(run: RunSpec, figures_dir: str, kind: str) -> list[str]:
    """The figures a step kind's script writes for this run, whether the study runs it or not."""
    return [figure_path(figures_dir, run.dataset, run.model, suffix) for suffix in FIGURE_SUFFIXES[kind]]


def run_figures(run: RunSpec, figures_dir: str) -> dict[str, list[str]]:
    """The study's figures of one run, by the step kind that makes them (the scripts' names)."""
    return {
        kind: kind_figures(run, figures_dir, kind)
        for kind in FIGURE_SUFFIXES
        if (kind != "saliency" or run.saliency) and (kind != "robustness" or run.robustness)
    }


def extra_figures(run: RunSpec, figures_dir: str) -> list[str]:
    """Other figures the steps wrote for this run (e.g. the mean Grad-CAM maps), sorted."""
    known = {p for paths in run_figures(run, figures_dir).values() for p in paths}
    try:
        names = sorted(os.listdir(figures_dir))
    except OSError:
        return []
    return [
        os.path.join(figures_dir, name)
        for name in names
        if name.startswith(run.stem + "_")
        and name.endswith(".png")
        and os.path.join(figures_dir, name) not in known
    ]


# ----------------------------------------------------------------------------- step builders
def samples_step(s: Settings, run: None) -> Step:
    return Step(
        "samples",
        "samples",
        None,
        "plot_samples_of_faces_datasets.py",
        ["--data_root", s.data_root, "--seed", str(s.seed), "--figures_dir", s.figures_dir],
        outputs=[samples_figure(s.figures_dir)],
        data=[split_folder(s, d, "train") for d in DATASET_NAMES],
    )


def train_step(s: Settings, run: RunSpec) -> Step:
    args = [
        "-m",
        run.model,
        "-d",
        run.dataset,
        "-o",
        OPTIMIZER,
        "--lr",
        repr(s.lr),
        "-b",
        str(s.batch_size),
        "-e",
        str(s.epochs[run.tag]),
        "--data_root",
        s.data_root,
        "--seed",
        str(s.seed),
        "--device",
        s.device,
        "--out_dir",
        s.out_dir,
        "--checkpoint_dir",
        s.checkpoint_dir,
    ]
    if s.num_workers is not None:
        args += ["--num_workers", str(s.num_workers)]
    if s.precise_bn:  # 0 is train_main.py's default: the command stays the course's
        args += ["--precise_bn", str(s.precise_bn)]
    if run.model == "XceptionBased":
        args += s.xception_args
    return Step(
        f"train-{run.tag}",
        "train",
        run,
        "train_main.py",
        args,
        outputs=[checkpoint_path(s, run), runs_json_path(s, run)],
        data=[split_folder(s, run.dataset, split) for split in SPLITS],
        resume_from=checkpoint_path(s, run, "_last"),
    )


def _io_args(s: Settings) -> list[str]:
    """Where an analysis script reads the data, runs and writes its figures."""
    return ["--data_root", s.data_root, "--device", s.device, "--figures_dir", s.figures_dir]


def _analysis_args(s: Settings, run: RunSpec) -> list[str]:
    return ["-m", run.model, "-cpp", checkpoint_path(s, run), "-d", run.dataset, *_io_args(s)]


def _analysis_step(
    s: Settings,
    run: RunSpec,
    kind: str,
    script: str,
    extra: list[str],
    section: str | tuple[str, ...] | None = None,
) -> Step:
    """A step that reads the run's best checkpoint and test split and writes ``kind``'s figures
    (and, with ``section``, that section of the run's metrics JSON)."""
    outputs = list(run_figures(run, s.figures_dir)[kind])
    sections = {}
    if section:
        sections[metrics_json_path(s, run)] = section
        outputs.append(metrics_json_path(s, run))
    return Step(
        f"{kind}-{run.tag}",
        kind,
        run,
        script,
        _analysis_args(s, run) + extra,
        outputs=outputs,
        inputs=[checkpoint_path(s, run)],
        data=[split_folder(s, run.dataset, "test")],
        sections=sections,
    )


def curves_step(s: Settings, run: RunSpec) -> Step:
    runs_json = runs_json_path(s, run)
    return Step(
        f"curves-{run.tag}",
        "curves",
        run,
        "plot_accuracy_and_loss.py",
        ["-m", run.model, "-j", runs_json, "-d", run.dataset, "--figures_dir", s.figures_dir],
        outputs=run_figures(run, s.figures_dir)["curves"],
        inputs=[runs_json],
    )


def numerical_step(s: Settings, run: RunSpec) -> Step:
    # --seed: the bootstrap intervals of its 'uncertainty' section are drawn with it
    return _analysis_step(
        s,
        run,
        "numerical",
        "numerical_analysis.py",
        ["--seed", str(s.seed), "--out_dir", s.out_dir],
        section=("numerical", "uncertainty"),
    )


def gradcam_step(s: Settings, run: RunSpec) -> Step:
    extra = ["--seed", str(s.seed), "--out_dir", s.out_dir]
    if s.gradcam_max_images:
        extra += ["--faithfulness_images", str(s.gradcam_max_images)]
    return _analysis_step(s, run, "gradcam", "grad_cam_analysis.py", extra, section="grad_cam")


def saliency_step(s: Settings, run: RunSpec) -> Step | None:
    if not run.saliency:
        return None
    return _analysis_step(s, run, "saliency", "saliency_map.py", ["--seed", str(s.seed)])


def robustness_step(s: Settings, run: RunSpec) -> Step | None:
    if not run.robustness:
        return None
    extra = ["--seed", str(s.seed), "--out_dir", s.out_dir]
    return _analysis_step(s, run, "robustness", "robustness_analysis.py", extra, section="robustness")


def spectrum_step(s: Settings, run: None) -> Step:
    """Both datasets' test splits, no model: one figure and one JSON per dataset."""
    json_paths = [spectrum_json_path(s, d) for d in DATASET_NAMES]
    return Step(
        "spectrum",
        "spectrum",
        None,
        "spectrum_analysis.py",
        ["--datasets", *DATASET_NAMES, *_io_args(s), "--seed", str(s.seed), "--out_dir", s.out_dir],
        outputs=[spectrum_figure(s.figures_dir, d) for d in DATASET_NAMES] + json_paths,
        data=[split_folder(s, d, "test") for d in DATASET_NAMES],
        sections={path: "spectrum" for path in json_paths},
    )


def cross_dataset_step(s: Settings, run: None) -> Step:
    """The checkpoints of the runs marked ``cross_dataset``, each on both datasets' test splits."""
    runs = [r for r in RUNS if r.cross_dataset]
    json_paths = [cross_dataset_json_path(s)] + [metrics_json_path(s, r) for r in runs]
    return Step(
        "cross-dataset",
        "cross-dataset",
        None,
        "cross_dataset_analysis.py",
        ["--checkpoints", *(f"{r.dataset}:{r.model}:{checkpoint_path(s, r)}" for r in runs)]
        + ["--datasets", *DATASET_NAMES, *_io_args(s), "--out_dir", s.out_dir],
        outputs=[cross_dataset_figure(s.figures_dir)] + json_paths,
        inputs=[checkpoint_path(s, r) for r in runs],
        data=[split_folder(s, d, "test") for d in DATASET_NAMES],
        sections={path: "cross_dataset" for path in json_paths},
    )


@dataclass(frozen=True)
class StepKind:
    name: str
    build: Callable[[Settings, RunSpec | None], Step | None]
    once: bool = False  # one step for the whole study instead of one per run


# The study's order: stage by stage, and within a stage run by run. A new kind goes here.
STAGES = (
    (StepKind("samples", samples_step, once=True), StepKind("spectrum", spectrum_step, once=True)),
    (StepKind("train", train_step),),
    (
        StepKind("curves", curves_step),
        StepKind("numerical", numerical_step),
        StepKind("gradcam", gradcam_step),
        StepKind("robustness", robustness_step),
    ),
    (StepKind("saliency", saliency_step),),
    (StepKind("cross-dataset", cross_dataset_step, once=True),),
)
STEP_KINDS = tuple(kind.name for stage in STAGES for kind in stage) + ("report",)


def build_plan(s: Settings) -> list[Step]:
    """Every step of the study, in order."""
    steps = []
    for stage in STAGES:
        for run in (None,) if stage[0].once else RUNS:
            steps += [step for kind in stage if (step := kind.build(s, run)) is not None]
    return steps


def step_names() -> list[str]:
    """Every step name, in the plan's order, then 'report'."""
    placeholder = Settings(
        data_root="data", out_dir="out", figures_dir="figures", checkpoint_dir="checkpoints"
    )
    return [step.name for step in build_plan(placeholder)] + ["report"]


# ----------------------------------------------------------------------------- selection
def _selectors(flag: str, values: list[str] | None) -> list[str]:
    items = [item.strip() for value in values or [] for item in value.split(",") if item.strip()]
    if values is not None and not items:
        raise UserError(f"{flag}: no step named; give at least one (see --help), or leave {flag} out")
    return items


def _matches(entry: tuple[str, str, str | None], selector: str) -> bool:
    name, kind, run_tag = entry
    return selector in (name, kind, run_tag) or fnmatch.fnmatchcase(name, selector)


def select_steps(
    plan: list[Step], steps: list[str] | None, skip: list[str] | None
) -> tuple[list[Step], bool]:
    """The steps chosen by --steps (default all) minus --skip; and whether the report is written.

    A selector is a step name, a kind (train, curves, ...), a run (simplenet-fakes, ...) or a
    shell pattern (train-*); one that matches nothing, or an empty flag, is an error.
    """
    wanted, unwanted = _selectors("--steps", steps), _selectors("--skip", skip)
    entries = [(step.name, step.kind, step.run.tag if step.run else None) for step in plan]
    entries.append(("report", "report", None))
    for flag, selectors in (("--steps", wanted), ("--skip", unwanted)):
        for selector in selectors:
            if not any(_matches(entry, selector) for entry in entries):
                raise UserError(
                    f"{flag} {selector}: matches no step; steps: {', '.join(step_names())}; "
                    f"kinds: {', '.join(STEP_KINDS)}; runs: {', '.join(r.tag for r in RUNS)}"
                )

    def chosen(entry) -> bool:
        # The report is written whenever it is not skipped explicitly.
        if wanted and entry[0] != "report" and not any(_matches(entry, sel) for sel in wanted):
            return False
        return not any(_matches(entry, sel) for sel in unwanted)

    selected = [step for step, entry in zip(plan, entries) if chosen(entry)]
    return selected, chosen(entries[-1])
