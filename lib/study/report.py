"""The one-page report and the summary JSON.

Python computes what the page shows (``page_context``: the numbers as tables, the figures, the facts
behind each warning); the Jinja2 templates beside this module write the page: ``report.j2`` its text
and order, ``markdown.j2`` and ``html.j2`` how a heading, paragraph, warning, table or figure looks in
each format (the HTML escapes every value and embeds every figure). A new section: its table or
figures in ``page_context``, its text in report.j2.
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import asdict, dataclass, field

import jinja2

from lib.fileio import atomic_write_json, atomic_write_text
from lib.metrics import fmt
from lib.names import DATASET_NAMES, MODEL_NAMES, SAMPLES_FIGURE, SPLITS, dataset_title
from lib.study import numbers, plan
from lib.study.data import DataChoice
from lib.study.numbers import RunNumbers, finite, range_text, study_reference
from lib.study.plan import RUNS, RunSpec, Settings
from lib.study.runner import StepFailed, StepRecord
from lib.study.weights import CHECK_COMMAND, WeightsChoice

NOT_RUN = "not run"
NUMBER_LIKE = re.compile(r"(about )?[-+]?\d|-$")  # "0.912", "76.6 % [72.1, 80.9]", "84-91 %", "-"
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Table:
    """A table of the page: its header and rows of text cells."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A figure of the page: its file and caption, and the step that makes it when that step was
    left out of this invocation (--steps/--skip)."""

    path: str
    caption: str
    left_out: str | None = None

    @property
    def exists(self) -> bool:
        return os.path.exists(self.path)

    @property
    def absent(self) -> str:
        """What the page says in the figure's place when the file is not there."""
        return (
            f"skipped (step {self.left_out} not selected)"
            if self.left_out
            else "missing (its step has not run)"
        )


@dataclass
class Status:
    """How this invocation ended: a sentence, and the failed step with its log and message."""

    text: str
    failed: str | None = None
    log: str | None = None
    message: str | None = None


@dataclass
class Study:
    """What the report shows: where the study ran, its data, the models' facts, each run's numbers
    (``numbers.collect_numbers``), how XceptionBased started, the steps, and how it ended."""

    settings: Settings
    data: DataChoice
    facts: dict
    runs: dict[str, RunNumbers]
    weights: WeightsChoice | None = None
    records: list[StepRecord] = field(default_factory=list)
    status: Status = field(default_factory=lambda: Status(""))
    total_seconds: float = 0.0
    beyond: dict | None = None  # the cross-dataset matrix and the spectra; read from the folders when None
    steps: list | None = None  # the plan (``plan.build_plan``); built from the settings when None

    def __post_init__(self):
        if self.steps is None:
            self.steps = plan.build_plan(self.settings)
        if self.beyond is None:
            self.beyond = {
                "cross_dataset": numbers.cross_dataset_numbers(self.settings),
                "spectrum": numbers.spectrum_numbers(self.settings),
            }


def _fmt(value, digits=2) -> str:
    """A table cell: the number with ``digits`` decimals; "-" for a missing or non-finite one."""
    return "-" if finite(value) is None else fmt(finite(value), digits)


def _figure(path: str, note: str = "") -> Figure:
    """The figure captioned with its file name (and ``note``)."""
    return Figure(path, os.path.basename(path) + note)


def score_label(runs: dict[str, RunNumbers], column: int) -> str:
    """What score A (column 0) or B (column 1) is, as the metrics JSONs say ('raw output column 1')."""
    key = ("auc_a", "auc_b")[column]
    said = {n.score_of.get(key) for n in runs.values() if isinstance(n.score_of, dict)} - {None}
    if len(said) == 1:
        return said.pop()
    if {n.scores for n in runs.values() if n.scores} == {"softmax"}:  # metrics JSONs of older versions
        return f"softmax column {column}"
    return f"column {column}"


# ----------------------------------------------------------------------------- tables
def data_table(data: DataChoice) -> Table:
    """The images of every split, real and fake."""
    rows = []
    for dataset in data.counts or dict.fromkeys(DATASET_NAMES):
        title = dataset_title(dataset)
        for split in SPLITS:
            c = (data.counts or {}).get(dataset, {}).get(split, {})
            counts = [
                str(c.get("real", "-")),
                str(c.get("fake", "-")),
                str(c.get("real", 0) + c.get("fake", 0)),
            ]
            rows.append([dataset if title == dataset else f"{title} ({dataset})", split, *counts])
    return Table(["dataset", "split", "real", "fake", "total"], rows)


def models_table(facts: dict) -> Table:
    """The models' parameter counts and the head's input features, beside the study's answers."""
    labels = (
        ("SimpleNet: trainable parameters", "SimpleNet"),
        ("XceptionBased: trainable parameters", "XceptionBased"),
        ("Q21: input features of the MLP head", "head_in_features"),
        ("Q22: Xception backbone parameters (with its 1000-class fc)", "backbone_params"),
        ("Q24: MLP head parameters", "head_params"),
    )
    rows = [[label, f"{facts.get(key, 0):,}", f"{numbers.STUDY_MODEL_FACTS[key]:,}"] for label, key in labels]
    others = [name for name in MODEL_NAMES if name in facts and name not in numbers.STUDY_MODEL_FACTS]
    rows += [[f"{name} (default head): trainable parameters", f"{facts[name]:,}", "-"] for name in others]
    return Table(["", "computed", "study"], rows)


def result_row(run: RunSpec, n: RunNumbers) -> list[str]:
    """One run's row of the results table, the study's figures beside its own."""
    ref = study_reference(run, n.pretrained)
    init = "-"
    if run.model == "XceptionBased" and n.pretrained is not None:
        init = "ImageNet" if n.pretrained else "RANDOM"
    gap = _fmt(n.grad_cam_faithfulness_gap, 3) + (f" (n={n.grad_cam_images})" if n.grad_cam_images else "")
    return [f"{run.model}, {run.dataset}", init, str(n.best_val_epoch or "-"),
            _fmt(n.best_val_acc), range_text(ref, "val_acc"), _fmt(n.test_acc_at_best),
            range_text(ref, "test_acc"), _fmt(n.auc, 3), _fmt(n.auc_a, 3), _fmt(n.auc_b, 3),
            range_text(ref, "auc_b"), _fmt(n.eer, 3), _fmt(n.ap, 3), _fmt(n.epoch_seconds, 1),
            _fmt(n.train_images_per_sec, 1), gap]  # fmt: skip


def results_table(runs: dict[str, RunNumbers], col_a: str, col_b: str) -> Table:
    """Each run's accuracies, detection metrics, speed and Grad-CAM faithfulness beside the study's."""
    header = ["run", "init", "best val epoch", "val acc", "study val acc", "test acc", "study test acc"]
    header += ["AUC(fake)", f"AUC A ({col_a})", f"AUC B ({col_b})", "study AUC B", "EER", "AP"]
    header += ["epoch s", "train img/s", "Grad-CAM faithfulness"]
    return Table(header, [result_row(run, runs[run.tag]) for run in RUNS])


def with_interval(entry: dict | None, digits: int, unit: str = "") -> str:
    """``76.6 % [72.1, 80.9]``: a bootstrap metric's value and its interval ('not run' without it)."""
    if entry is None:
        return NOT_RUN
    value = f"{entry['value']:.{digits}f}{unit}"
    if entry["ci"] is None:
        return f"{value} [interval undefined]"
    low, high = entry["ci"]
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def uncertainty_table(runs: dict[str, RunNumbers]) -> Table:
    """Each run's bootstrap intervals and ECE (its 'uncertainty' section)."""
    rows = []
    for run in RUNS:
        n = runs[run.tag]
        got = n.intervals or {}
        rows.append(
            [f"{run.model}, {run.dataset}", with_interval(got.get("accuracy"), 1, " %")]
            + [with_interval(got.get(key), 3) for key in ("auc", "eer", "ap")]
            + [NOT_RUN if n.ece is None else f"{n.ece:.3f}", str(n.bootstrap_resamples or "-")]
        )
    metrics = ["test acc", "AUC", "EER", "AP"]
    return Table(["run", *(f"{m} [95 % CI]" for m in metrics), "ECE", "resamples"], rows)


def _matrix_cell(cell: dict | None) -> str:
    """``AUC 0.912 / acc 85.0 % / EER 0.101``, and ``(in-distribution)`` on a checkpoint's own dataset."""
    if cell is None:
        return NOT_RUN
    text = f"AUC {fmt(cell['auc'], 3)} / acc {fmt(cell['accuracy'], 1, ' %')} / EER {fmt(cell['eer'], 3)}"
    return text + (" (in-distribution)" if cell["in_distribution"] else "")


def matrix_table(matrix: dict | None) -> Table | None:
    """The train x test matrix of AUC / accuracy / EER (out/cross_dataset.json); None when not run."""
    if matrix is None:
        return None
    columns = matrix["test_datasets"]
    rows = [[row["label"], *(_matrix_cell(row["cells"].get(c)) for c in columns)] for row in matrix["rows"]]
    return Table(["trained checkpoint", *(f"test: {name}" for name in columns)], rows)


def _harshest_cell(entry: dict | None) -> str:
    """``0.734 at 30``: the AUC at a perturbation's harshest grade, and that grade."""
    if entry is None:
        return NOT_RUN
    grade = "?" if entry["severity"] is None else f"{entry['severity']:g}"
    return f"{fmt(entry['auc'], 3)} at {grade}"


def robustness_table(runs: dict[str, RunNumbers], shown: list[RunSpec]) -> Table:
    """Per run shown: the clean AUC and the AUC at each perturbation's harshest grade."""
    from lib.perturbations import PERTURBATIONS, SEVERITY_NAMES

    rows = []
    for run in shown:
        n = runs[run.tag]
        row = [f"{run.model}, {run.dataset}"]
        if n.robustness_clean_auc is None and not n.robustness_harshest:
            rows.append(row + [NOT_RUN] * (2 + len(PERTURBATIONS)))
            continue
        row += [str(n.robustness_images or "-"), fmt(n.robustness_clean_auc, 3)]
        rows.append(row + [_harshest_cell((n.robustness_harshest or {}).get(name)) for name in PERTURBATIONS])
    harshest = [f"AUC, {SEVERITY_NAMES[name]} (harshest)" for name in PERTURBATIONS]
    return Table(["run", "images", "clean AUC", *harshest], rows)


def steps_table(records: list[StepRecord]) -> Table:
    """Every step's status and wall seconds, and its last successful run's seconds and memory."""
    rows = [
        [
            r.name,
            r.status + (f" ({r.resumed})" if r.resumed and r.status == "ran" else ""),
            _fmt(r.seconds, 1) if r.status in ("ran", "failed") else "-",
            _fmt(r.last_run_seconds, 1),
            _fmt(r.last_run_cpu_seconds, 1),
            _fmt(r.last_run_max_rss_mb, 0),
        ]
        for r in records
    ]
    header = ["step", "status", "wall s (this time)", "wall s (last run)", "CPU s (last run)"]
    return Table(header + ["peak memory MB (last run)"], rows)


# ----------------------------------------------------------------------------- figures
def extra_figures(run: RunSpec, figures_dir: str) -> list[str]:
    """Other figures of this run in the figures folder (made by hand, such as XceptionBased's
    robustness curves), sorted."""
    known = {p for paths in plan.run_figures(run, figures_dir).values() for p in paths}
    try:
        found = sorted(os.path.join(figures_dir, name) for name in os.listdir(figures_dir))
    except OSError:
        return []
    prefix = os.path.join(figures_dir, run.stem + "_")
    return [p for p in found if p.startswith(prefix) and p.endswith(".png") and p not in known]


def page_figures(s: Settings, robustness_runs: list[RunSpec]) -> dict[str, list[Figure]]:
    """The figures of each part of the page, in the page's order: the robustness ones beside their
    table, then the gallery (the samples, each run's figures, the extra ones)."""
    beside_table = [p for run in robustness_runs for p in plan.kind_figures(run, s.figures_dir, "robustness")]
    gallery = [Figure(plan.samples_figure(s.figures_dir), SAMPLES_FIGURE)]
    for run in RUNS:
        paths = [p for kind_paths in plan.run_figures(run, s.figures_dir).values() for p in kind_paths]
        gallery += [_figure(p) for p in paths if p not in beside_table]
        extra = [p for p in extra_figures(run, s.figures_dir) if p not in beside_table]
        gallery += [_figure(p, " (beyond the study)") for p in extra]
    return {
        "cross_dataset": [_figure(plan.cross_dataset_figure(s.figures_dir))],
        "robustness": [_figure(p) for p in beside_table],
        "spectrum": [_figure(plan.spectrum_figure(s.figures_dir, d)) for d in s.datasets],
        "gallery": gallery,
    }


# ----------------------------------------------------------------------------- the page
def page_context(study: Study) -> dict:
    """Everything report.j2 shows: the study, the facts behind its warnings, tables and figures."""
    runs, weights = study.runs, study.weights
    pairs = [(run, runs[run.tag]) for run in RUNS]
    col_a, col_b = score_label(runs, 0), score_label(runs, 1)
    robustness_runs = [r for r in RUNS if r.robustness or runs[r.tag].robustness_clean_auc is not None]
    demo = study.data.demo_settings or {}
    chose_random = weights is not None and not weights.pretrained
    protocols = [
        f"{r.model} on {r.dataset}: {n.protocol.text() if n.protocol else 'not trained'}" for r, n in pairs
    ]
    references = {study_reference(run, runs[run.tag].pretrained): None for run in RUNS}
    left_out = {r.name for r in study.records if r.status == "not selected"}
    made_by = {path: step.name for step in study.steps for path in step.outputs}
    figures = page_figures(study.settings, robustness_runs)
    for figure in (f for part in figures.values() for f in part):
        figure.left_out = made_by.get(figure.path) if made_by.get(figure.path) in left_out else None
    return {
        "title": "Facial manipulation detection: the study, re-run",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "study": study,
        "runs": pairs,
        "random_init": chose_random or any(n.pretrained is False for n in runs.values()),
        "random_init_reason": weights.reason
        if chose_random
        else "its training run records pretrained = false",
        "imagenet": numbers.STUDY_NUMBERS["xception-synthetic"],
        "range_text": range_text,
        "imagenet_note": numbers.imagenet_note(),
        "check_command": CHECK_COMMAND,
        "demo": demo,
        "protocols": "; ".join(protocols),
        "score_columns": (col_a, col_b),
        "spectra": list(study.beyond["spectrum"].items()),
        "not_run": lambda step: (
            f"skipped (step {step} not selected)" if step in left_out else f"{NOT_RUN} (step {step})"
        ),
        "logs": os.path.join(study.settings.out_dir, "logs"),
        "tables": {
            "data": data_table(study.data),
            "models": models_table(study.facts),
            "results": results_table(runs, col_a, col_b),
            "sources": Table(["run", "source"], [[ref.label, ref.source()] for ref in references]),
            "uncertainty": uncertainty_table(runs),
            "matrix": matrix_table(study.beyond["cross_dataset"]),
            "robustness": robustness_table(runs, robustness_runs),
            "steps": steps_table(study.records),
        },
        "figures": figures,
    }


def _data_uri(path: str) -> str:
    """The PNG at ``path`` as a data URI, to embed it in the page."""
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")


def render(context: dict, html: bool, md_dir: str = ".") -> str:
    """The page as self-contained HTML (every value escaped, every figure embedded), or as Markdown
    whose figure links are relative to ``md_dir``, where it is written."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE),
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    env.filters["relpath"] = lambda path: os.path.relpath(path, md_dir).replace(os.sep, "/")
    env.filters["data_uri"] = _data_uri
    env.tests["number_like"] = lambda cell: bool(NUMBER_LIKE.match(str(cell)))  # right-aligned in HTML
    text = env.get_template("report.j2").render(context, format="html.j2" if html else "markdown.j2")
    return text if html else re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"  # one blank line between blocks


# ----------------------------------------------------------------------------- writing
def write_report(study: Study) -> tuple[str, str, str]:
    """Write out/study_report.md, out/study_report.html and out/study_summary.json; their paths."""
    s, data, facts = study.settings, study.data, study.facts
    context = page_context(study)
    md_path, html_path = (
        os.path.join(s.out_dir, "study_report.md"),
        os.path.join(s.out_dir, "study_report.html"),
    )
    atomic_write_text(md_path, render(context, html=False, md_dir=s.out_dir))
    atomic_write_text(html_path, render(context, html=True))
    demo = {
        "demo_settings": data.demo_settings,
        "counts": data.counts,
        "demo_generation_seconds": data.generated_seconds,
    }
    protocol = {"optimizer": plan.OPTIMIZER, "lr": s.lr, "batch_size": s.batch_size, "epochs": s.epochs}
    summary = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "status": asdict(study.status),
        "total_seconds": round(study.total_seconds, 2),
        "steps_cpu_seconds": round(sum(r.cpu_seconds or 0.0 for r in study.records), 2),
        "data": {"root": data.root, "origin": data.origin, "demo": data.demo, **demo},
        "params": {name: facts[name] for name in ("SimpleNet", "XceptionBased")},
        "model_facts": facts,
        "protocol": protocol | {"device": s.device, "seed": s.seed, "precise_bn": s.precise_bn},
        "xception_init": asdict(study.weights) if study.weights else None,
        "runs": {tag: asdict(n) for tag, n in study.runs.items()},
        "beyond": study.beyond,
        "steps": [asdict(r) for r in study.records],
        # every figure the report shows, and whether it exists
        "figures": {f.path: f.exists for figures in context["figures"].values() for f in figures},
        "report": {"markdown": md_path, "html": html_path},
    }
    summary_path = os.path.join(s.out_dir, "study_summary.json")
    atomic_write_json(summary_path, summary)
    return md_path, html_path, summary_path


def outcome_status(failure: StepFailed | None, records: list[StepRecord], total: float) -> Status:
    """How this invocation ended, from the failure (or None) and the step records."""
    if failure is not None:
        log = next((r.log for r in records if r.name == failure.step), None)
        return Status(
            f"stopped: step {failure.step} failed after {total:.1f} s.", failure.step, log, str(failure)
        )
    ran = sum(r.status == "ran" for r in records)
    skipped = sum(r.status.startswith("skipped") for r in records)
    return Status(f"{ran} step(s) ran, {skipped} up to date, in {total:.1f} s.")
