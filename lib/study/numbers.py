"""The report's numbers of each run (from its runs JSON and metrics JSON), the study's documented
results they are compared with, and the one-sentence verdict."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from lib.checkpoints import load_checkpoint, recorded_run_id
from lib.cli import UserError
from lib.fileio import read_json_object, read_runs
from lib.metrics import HEADLINE_METRICS
from lib.model_specs import resolve_head
from lib.spectrum import largest_difference
from lib.study import plan
from lib.study.plan import PROTOCOL, RUNS, RunSpec, Settings

# The training options of a run's protocol (train_main.py) that the study's course training did not have
OPTIONS = ("weight_decay", "lr_schedule", "warmup_epochs", "label_smoothing", "clip_grad", "select_by",
           "balance", "blur_prob", "jpeg_prob")  # fmt: skip
STUDY_SOURCE = (
    "the study's results (docs/design.md, Reference results: best val acc, test acc at that epoch, AUC of "
    "score B)"
)


@dataclass(frozen=True)
class Reference:
    """What the study documents for one run. ``about``: the study gives only "about X %": the
    number is shown beside it, with no within/outside verdict."""

    label: str
    val_acc: tuple | None
    test_acc: tuple | None
    auc_b: tuple | None
    report: str | None = None  # the study report's own best val / test accuracy
    note: str | None = None
    about: float | None = None
    about_auc: float | None = None

    def source(self) -> str:
        """Where the figures come from, for the report's table of sources."""
        return f"{STUDY_SOURCE}, {self.label}" + (f"; its report: {self.report} %" if self.report else "")


STUDY_NUMBERS = {  # run: label, best val acc, test acc at that epoch, AUC of score B; the report's own
    "simplenet-fakes": Reference("SimpleNet, fakes_dataset", (84, 91), (81, 88), (0.88, 0.95),
                                 "83.95 / 76.57"),
    "simplenet-synthetic": Reference("SimpleNet, synthetic_dataset", None, None, None, "50.12 / 49.95",
                                     note="a constant classifier", about=50, about_auc=0.5),
    "xception-synthetic": Reference("XceptionBased (ImageNet init), synthetic_dataset", (96, 99), (96, 99),
                                    (0.995, 1.0), "98.72 / 98.82"),
    "xception-synthetic-random": Reference("XceptionBased from random init, synthetic_dataset", (50, 60),
                                           (50, 60), None),
}  # fmt: skip
# The study's answers about the models (its questions Q21, Q22, Q24) and its parameter counts.
STUDY_MODEL_FACTS = {"SimpleNet": 16_901_762, "XceptionBased": 23_128_786, "head_in_features": 2048,
                     "backbone_params": 22_855_952, "head_params": 2_321_834}  # fmt: skip


def finite(value) -> float | None:
    """The value as a finite float; None for a missing, non-numeric or non-finite one (or a bool)."""
    try:
        value = None if isinstance(value, bool) or value is None else float(value)
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _mean(values) -> float | None:
    """The mean of the finite values; None when there are none."""
    values = [v for v in map(finite, values or []) if v is not None]
    return sum(values) / len(values) if values else None


def _section(content, name: str) -> dict:
    """The named section of a JSON object; {} when missing or not an object."""
    value = content.get(name) if isinstance(content, dict) else None
    return value if isinstance(value, dict) else {}


def _g(value) -> str:
    """A protocol value as the report writes it ('?' when unknown)."""
    return "?" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Protocol:
    """How one run was trained, as its own JSON entry records it."""

    optimizer: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    precise_bn: int | None = None  # None: the run does not record it
    options: dict = field(default_factory=dict)  # the non-course training options that are on
    head: tuple | None = None  # (its head, the model's default head) when the two differ

    @classmethod
    def of_run(cls, run: dict) -> Protocol:
        """The protocol a runs-JSON entry records (its ``args``, else its optimizer's params)."""
        args, optimizer, recorded = (_section(run, key) for key in ("args", "optimizer", "protocol"))
        return cls(
            optimizer=args.get("optimizer", optimizer.get("name")),
            lr=args.get("lr", _section(optimizer, "params").get("lr")),
            batch_size=args.get("batch_size"),
            epochs=args.get("epochs"),
            precise_bn=run.get("precise_bn", args.get("precise_bn")),
            options={key: recorded[key] for key in OPTIONS if _is_on(key, recorded.get(key))},
            head=_other_head(recorded),
        )

    def text(self) -> str:
        """``Adam, lr 0.001, batch 32, 5 epochs, precise BatchNorm ...`` for the report."""
        bn = {None: "statistics not recorded", 0: "off"}.get(
            self.precise_bn, f"over {self.precise_bn} training batches"
        )
        return (
            f"{self.optimizer or '?'}, lr {_g(self.lr)}, batch {self.batch_size or '?'}, "
            f"{self.epochs or '?'} epochs, precise BatchNorm {bn}"
        )

    def differences(self, has_batchnorm: bool) -> list[str]:
        """How it differs from the study's protocol (precise BatchNorm only changes a model that
        has BatchNorm layers)."""
        out = [
            f"{key.replace('_size', '')} {_g(getattr(self, key))} instead of {_g(value)}"
            for key, value in PROTOCOL.items()
            if getattr(self, key) not in (None, value)
        ]
        if self.precise_bn and has_batchnorm:
            out.append(
                f"precise BatchNorm statistics ({self.precise_bn} batches), which the study did not use"
            )
        out += [f"{key} {_g(value)}, which the study did not use" for key, value in self.options.items()]
        return out + ([f"head {self.head[0]} instead of {self.head[1]}"] if self.head else [])


def _is_on(key: str, value) -> bool:
    """Whether a training option of the run's protocol is on (the study used none of them)."""
    return value not in (None, 0, "none") and not (key == "select_by" and value == "val_acc")


def _other_head(recorded: dict) -> tuple | None:
    """(the run's head, the model's default head) when the run records another head than its
    model's default; None otherwise, or for a model this version does not know."""
    head, model = recorded.get("head"), recorded.get("model")
    try:
        default = resolve_head(model, None) if head is not None and isinstance(model, str) else head
    except UserError:
        default = head
    return (head, default) if head != default else None


@dataclass
class RunNumbers:
    """The report's numbers of one run: the training run of its best checkpoint, and its analysis
    sections."""

    model: str
    dataset: str
    json: str
    metrics_json: str
    problem: str | None = None
    n_runs_in_json: int = 0
    epochs: int = 0
    pretrained: bool | None = None
    n_params_trained: int | None = None
    best_val_epoch: int | None = None
    best_val_acc: float | None = None
    test_acc_at_best: float | None = None
    epoch_seconds: float | None = None
    train_images_per_sec: float | None = None
    eval_images_per_sec: float | None = None
    device: str | None = None
    activation_checkpointing: bool | None = None
    run_started: str | None = None
    run_id: str | None = None
    protocol: Protocol | None = None
    auc: float | None = None  # of P(fake)
    auc_a: float | None = None  # of score A (column 0; what it is: ``score_of``)
    auc_b: float | None = None
    scores: str | None = None  # older metrics JSONs: "softmax" when A and B were probabilities
    score_of: dict | None = None  # metric -> the score it uses, as the metrics JSON says
    eer: float | None = None
    ap: float | None = None
    test_accuracy_analysis: float | None = None
    n_test: int | None = None
    grad_cam_faithfulness_gap: float | None = None
    grad_cam_images: int | None = None
    # the 'uncertainty' section: metric -> {"value", "ci": [low, high] or None}, its resamples, ECE
    intervals: dict | None = None
    bootstrap_resamples: int | None = None
    ece: float | None = None
    # the 'robustness' section: clean AUC, and per perturbation its harshest grade and AUC there
    robustness_images: int | None = None
    robustness_clean_auc: float | None = None
    robustness_harshest: dict | None = None
    other_run_sections: list = field(default_factory=list)  # analyses of another training run: left out
    study: dict = field(default_factory=dict)
    verdict: str = ""


def _checkpoint_run(n: RunNumbers, checkpoint: str) -> dict:
    """The JSON's entry of the run that saved ``checkpoint`` (the model the analyses read), by the
    run id the checkpoint records; {} when not trained yet, or when that run cannot be found (the
    problem noted: another run's numbers are never shown in its place)."""
    if not os.path.exists(n.json):  # absent: not trained yet
        return {}
    leave_out = "its training numbers are left out (another run's would not match its analyses)"
    runs = []
    try:
        runs = read_runs(n.json)
        if runs and not os.path.exists(checkpoint):
            raise UserError(f"{checkpoint}: missing, so which run of {n.json} to show is unknown")
        n.run_id = load_checkpoint(checkpoint).get("run_id") if runs else None
    except UserError as exc:  # names the file and says what to do
        n.problem = f"{exc}; {leave_out}" if runs else str(exc)
        return {}
    n.n_runs_in_json = len(runs)
    found = [run for run in runs if n.run_id is not None and run.get("run_id") == n.run_id]
    if runs and not found:
        what = f"the run {n.run_id}" if n.run_id else "no run id (an older train_main.py)"
        n.problem = f"{checkpoint} records {what}, not among the {len(runs)} runs of {n.json}; {leave_out}"
    return found[-1] if found else {}


def read_training(n: RunNumbers, last: dict) -> None:
    """The numbers of the training run (its runs-JSON entry ``last``) at its best epoch."""
    val_acc, test_acc = last.get("val_acc") or [], last.get("test_acc") or []
    best = last.get("best_epoch")
    if best is None and val_acc:  # older runs without the key: first epoch of the best val acc
        best = 1 + max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))

    def at_best(values: list):
        return values[best - 1] if best and len(values) >= best else None

    n.epochs, n.best_val_epoch = len(val_acc), best
    n.pretrained = last.get("pretrained") if n.model == "XceptionBased" else None
    n.n_params_trained, n.device = last.get("n_params"), last.get("device")
    n.best_val_acc = finite(last.get("best_val_acc", at_best(val_acc)))
    n.test_acc_at_best = finite(last.get("test_acc_at_best", at_best(test_acc)))
    n.epoch_seconds, n.train_images_per_sec, n.eval_images_per_sec = (
        _mean(last.get(key)) for key in ("epoch_seconds", "train_images_per_sec", "eval_images_per_sec")
    )
    n.activation_checkpointing, n.run_started = last.get("activation_checkpointing"), last.get("started")
    n.protocol = Protocol.of_run(last) if last else None


def run_numbers(settings: Settings, run: RunSpec) -> RunNumbers:
    """The numbers of one run, each from the JSON entry or section that holds it."""
    n = RunNumbers(
        run.model, run.dataset, plan.runs_json_path(settings, run), plan.metrics_json_path(settings, run)
    )
    read_training(n, _checkpoint_run(n, plan.checkpoint_path(settings, run)))
    metrics = _own_sections(n, read_json_object(n.metrics_json))
    numerical, grad_cam = _section(metrics, "numerical"), _section(metrics, "grad_cam")
    n.auc_a, n.auc_b, n.eer, n.ap = (finite(numerical.get(key)) for key in ("auc_a", "auc_b", "eer", "ap"))
    n.auc = finite(numerical.get("auc", numerical.get("auc_b")))
    n.scores, n.score_of = numerical.get("scores"), numerical.get("score_of")
    n.test_accuracy_analysis, n.n_test = finite(numerical.get("accuracy")), numerical.get("n_samples")
    n.grad_cam_faithfulness_gap = finite(grad_cam.get("faithfulness_gap"))
    n.grad_cam_images = grad_cam.get("n_images")
    read_uncertainty(n, _section(metrics, "uncertainty"))
    read_robustness(n, _section(metrics, "robustness"))
    return n


def _own_sections(n: RunNumbers, metrics: dict) -> dict:
    """The metrics JSON without the analysis sections of another training run than the one that
    saved the checkpoint (retrained, its analyses not run again), named in ``other_run_sections``;
    a section without a run id (an older version) is kept."""
    other = {name for name, section in metrics.items() if n.run_id is not None
             and isinstance(section, dict) and section.get("run_id") not in (None, n.run_id)}  # fmt: skip
    n.other_run_sections = sorted(other)
    return {name: section for name, section in metrics.items() if name not in other}


def _interval(entry) -> dict | None:
    """``{"value", "ci"}`` of one bootstrap metric, finite numbers or None; None when unusable."""
    if not isinstance(entry, dict) or finite(entry.get("value")) is None:
        return None
    ci = entry.get("ci")
    ci = [finite(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None
    return {"value": finite(entry["value"]), "ci": None if ci is None or None in ci else ci}


def _int(section: dict, key: str) -> int | None:
    """An integer entry of a section; None when missing or not an integer."""
    return section.get(key) if isinstance(section.get(key), int) else None


def read_uncertainty(n: RunNumbers, section: dict) -> None:
    """The bootstrap intervals and the ECE of numerical_analysis.py's 'uncertainty' section."""
    boot = _section(section, "bootstrap")
    intervals = {name: _interval(boot.get(name)) for name in HEADLINE_METRICS}
    n.intervals = intervals if any(intervals.values()) else None
    n.bootstrap_resamples = _int(boot, "n_resamples")
    n.ece = finite(_section(section, "calibration").get("ece"))


def read_robustness(n: RunNumbers, section: dict) -> None:
    """The clean AUC and, per perturbation, the AUC at its harshest (last) grade, from
    robustness_analysis.py's 'robustness' section."""
    n.robustness_clean_auc = finite(_section(section, "clean").get("auc"))
    harshest = {}
    for name, entry in _section(section, "perturbations").items():
        severities, aucs = (
            entry.get(key) if isinstance(entry, dict) else None for key in ("severities", "auc")
        )
        # grades run mildest first (robustness_analysis.py): the last is the harshest
        if isinstance(severities, list) and isinstance(aucs, list) and 0 < len(severities) == len(aucs):
            harshest[name] = {"severity": finite(severities[-1]), "auc": finite(aucs[-1])}
    n.robustness_harshest = harshest or None
    n.robustness_images = _int(section, "n_images")


def cross_dataset_numbers(settings: Settings) -> dict | None:
    """The cross-dataset matrix of out/cross_dataset.json: its test datasets and, per checkpoint,
    AUC, accuracy (%), EER and whether in-distribution per test dataset; None when not run."""
    section = _section(read_json_object(plan.cross_dataset_json_path(settings)), "cross_dataset")
    columns, rows = section.get("test_datasets"), []
    for row in section.get("rows") if isinstance(section.get("rows"), list) else []:
        if not (results := _section(row, "results")) or not isinstance(row.get("label"), str):
            continue
        cells = {
            name: {key: finite(value.get(key)) for key in ("auc", "accuracy", "eer")}
            | {"in_distribution": value.get("in_distribution") is True}
            for name, value in results.items()
            if isinstance(value, dict)
        }
        label = row["label"]
        if _retrained_since(row):  # its numbers are of a model the checkpoint no longer holds
            label, cells = f"{label} [left out: an earlier training run than its checkpoint's]", {}
        rows.append({"label": label, "train_dataset": row.get("train_dataset"), "cells": cells})
    if not rows or not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        return None
    return {"test_datasets": columns, "rows": rows}


def _retrained_since(row: dict) -> bool:
    """Whether a cross-dataset row's checkpoint now holds another training run than the row's."""
    checkpoint, run_id = row.get("checkpoint"), row.get("run_id")
    if not (isinstance(checkpoint, str) and run_id):
        return False
    try:
        return recorded_run_id(checkpoint) not in (None, run_id)
    except UserError:
        return False


def spectrum_numbers(settings: Settings) -> dict[str, dict | None]:
    """Per dataset of the study's spectra, from out/<D>_spectrum.json: the class counts and the largest
    |fake - real| difference of the 1-D power spectra (dB) and its frequency (cycles/pixel); None
    when not run."""
    out = {}
    for dataset in settings.datasets:
        section = _section(read_json_object(plan.spectrum_json_path(settings, dataset)), "spectrum")
        diff, freq = section.get("fake_minus_real_db"), section.get("cycles_per_pixel")
        usable = isinstance(diff, list) and isinstance(freq, list) and 0 < len(diff) <= len(freq)
        values = [finite(v) for v in diff] if usable else []
        out[dataset] = None
        if values and None not in values and None not in map(finite, freq[: len(values)]):
            peak = largest_difference(values)
            out[dataset] = {"n_real": section.get("n_real"), "n_fake": section.get("n_fake"),
                            "peak_db": values[peak], "peak_cycles_per_pixel": finite(freq[peak])}  # fmt: skip
    return out


def study_reference(run: RunSpec, pretrained) -> Reference:
    """What the study documents for the run (the random-init row for a random-init XceptionBased)."""
    random_init = run.model == "XceptionBased" and pretrained is False
    return STUDY_NUMBERS["xception-synthetic-random" if random_init else run.tag]


def range_text(ref: Reference, key: str) -> str:
    """The study's figure for ``key`` (val_acc, test_acc, auc_b) as it documents it."""
    unit = "" if key == "auc_b" else " %"
    about, rng = (ref.about_auc if key == "auc_b" else ref.about), getattr(ref, key)
    if about is not None:
        return f"about {about:g}{unit}"
    return "-" if rng is None else f"{rng[0]}-{rng[1]}{unit}"


def imagenet_note() -> str:
    """What the study saw with and without ImageNet weights for XceptionBased."""
    imagenet, random_init = (
        range_text(STUDY_NUMBERS[tag], "val_acc")
        for tag in ("xception-synthetic", "xception-synthetic-random")
    )
    return (
        f"The study's {imagenet} needs ImageNet weights; "
        f"from random initialisation the study saw {random_init}."
    )


def _position(n: RunNumbers, ref: Reference, qualifier: str = "") -> str:
    """Where the run lies against the study's documented ranges, judged on the values as the
    sentence shows them (``verdict``'s rounding); only a range gives a verdict."""
    values = (
        (n.best_val_acc, ref.val_acc, 1),
        (n.test_acc_at_best, ref.test_acc, 1),
        (n.auc_b, ref.auc_b, 2),
    )
    where = {
        "within" if lo <= round(value, digits) <= hi else "below" if value < lo else "above"
        for value, (lo, hi), digits in ((v, r, d) for v, r, d in values if v is not None and r is not None)
    }
    labels = (("val", "val_acc"), ("test", "test_acc"), ("AUC(B)", "auc_b"))
    study = ", ".join(
        f"{label} {range_text(ref, key)}" for label, key in labels if range_text(ref, key) != "-"
    )
    if not where:  # "about X": shown beside, no verdict
        return f"beside the study's {qualifier}{study}" + (f" ({ref.note})" if ref.note else "")
    if len(where) == 1:
        position = where.pop()
    else:
        position = "partly within, partly outside" if "within" in where else "partly below, partly above"
    return f"{position} the study's {qualifier}{study}"


def _why(run: RunSpec, n: RunNumbers, demo: bool) -> list[str]:
    """How this run differs from the study's, as far as its records tell."""
    why = ["demo data, not the course datasets"] if demo else []
    if run.model == "XceptionBased" and n.pretrained is False:
        imagenet = range_text(STUDY_NUMBERS["xception-synthetic"], "val_acc")
        why.append(f"RANDOM initialisation, no ImageNet weights (the study's {imagenet} needs them)")
    if n.epochs and n.epochs != run.default_epochs:
        why.append(f"{n.epochs} epoch{'s' if n.epochs != 1 else ''} instead of {run.default_epochs}")
    return why + (n.protocol.differences(run.model == "XceptionBased") if n.protocol else [])


def verdict(run: RunSpec, n: RunNumbers, demo: bool) -> str:
    """One short, honest sentence: how this run compares with the study, and why where known."""
    if n.best_val_acc is None:
        if n.problem:
            return f"Its training results are not shown: {n.problem}."
        return "Not trained yet (no run in its metrics JSON): nothing to compare."
    got = [f"val {n.best_val_acc:.1f} %"]
    got += [f"test {n.test_acc_at_best:.1f} %"] if n.test_acc_at_best is not None else []
    got += [f"AUC(B) {n.auc_b:.2f}"] if n.auc_b is not None else []
    qualifier = "random-init " if run.model == "XceptionBased" and n.pretrained is False else ""
    sentence = f"{', '.join(got)}: {_position(n, study_reference(run, n.pretrained), qualifier)}"
    if why := _why(run, n, demo):
        sentence += f"; differences from the study: {'; '.join(why)}"
    if n.other_run_sections:
        sentence += (
            f". Its {', '.join(n.other_run_sections)} numbers are left out: they are of an earlier training "
            "run than its checkpoint's (run their steps again)"
        )
    if n.activation_checkpointing:
        rate = (
            f": {n.train_images_per_sec:.1f} training images/s in this run" if n.train_images_per_sec else ""
        )
        sentence += (
            f". Trained with activation checkpointing to fit the memory (the same numbers, slower{rate})"
        )
    return sentence + "."


def collect_numbers(settings: Settings, demo: bool, pretrained: bool | None) -> dict[str, RunNumbers]:
    """Every run's numbers, by run tag, with the study's reference and the verdict.
    ``pretrained``: how XceptionBased starts in this invocation (None: not decided)."""
    runs = {}
    for run in RUNS:
        n = runs[run.tag] = run_numbers(settings, run)
        if n.pretrained is None and run.model == "XceptionBased" and not n.best_val_epoch:
            n.pretrained = pretrained  # not trained yet: what it will start from
        n.study, n.verdict = asdict(study_reference(run, n.pretrained)), verdict(run, n, demo)
    return runs
