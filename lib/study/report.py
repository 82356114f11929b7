"""The one-page report: built as blocks, rendered as Markdown and as self-contained HTML (figures
embedded), with the same numbers in the summary JSON."""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import asdict, dataclass

from lib.fileio import atomic_write_json, atomic_write_text
from lib.metrics import fmt
from lib.names import DATASET_NAMES, DATASET_TITLES, SAMPLES_FIGURE, SPLITS
from lib.study.data import DataChoice
from lib.study.numbers import (
    STUDY_MODEL_FACTS,
    STUDY_NUMBERS,
    RunNumbers,
    cross_dataset_numbers,
    finite,
    imagenet_note,
    range_text,
    run_numbers,
    spectrum_numbers,
    study_reference,
    verdict,
)
from lib.study.plan import (
    RUNS,
    Settings,
    cross_dataset_figure,
    extra_figures,
    kind_figures,
    run_figures,
    samples_figure,
    spectrum_figure,
)
from lib.study.runner import Console, StepRecord
from lib.study.weights import CHECK_COMMAND, WeightsChoice


@dataclass
class Status:
    """How this invocation ended: a sentence, and the failed step with its log and message."""

    text: str
    failed: str | None = None
    log: str | None = None
    message: str | None = None


def _fmt(value, digits=2) -> str:
    """A report cell: the number with ``digits`` decimals; "-" for a missing or non-finite one."""
    return "-" if finite(value) is None else fmt(finite(value), digits)


def score_label(runs: dict[str, RunNumbers], column: int) -> str:
    """What score A (column 0) or B (column 1) is, as the metrics JSONs say ('raw output column 1')."""
    key = ("auc_a", "auc_b")[column]
    said = {
        n.score_of.get(key) for n in runs.values() if isinstance(n.score_of, dict) and n.score_of.get(key)
    }
    if len(said) == 1:
        return said.pop()
    if {n.scores for n in runs.values() if n.scores} == {"softmax"}:  # metrics JSONs of older versions
        return f"softmax column {column}"
    return f"column {column}"


# ----------------------------------------------------------------------------- blocks
def warnings(
    data: DataChoice, weights: WeightsChoice | None, runs: dict[str, RunNumbers], status: Status
) -> list[tuple]:
    """The report's loud warnings: a stopped study, random init, unreadable JSONs, demo data."""
    blocks = []
    if status.failed:
        blocks.append(
            ("warn", f"The study stopped: {status.message}. The numbers below are what earlier steps left.")
        )
    if any(n.pretrained is False for n in runs.values()) or (weights and not weights.pretrained):
        reason = (
            weights.reason
            if weights and not weights.pretrained
            else "its training run records pretrained = false"
        )
        ref = STUDY_NUMBERS["xception-synthetic"]
        blocks.append(
            (
                "warn",
                "XceptionBased was trained from RANDOM INITIALISATION, not from ImageNet "
                f"weights ({reason}). {imagenet_note()} Not checked by this run: the "
                f"study's finding for {ref.label} (val {range_text(ref, 'val_acc')}, test "
                f"{range_text(ref, 'test_acc')}, AUC(B) {range_text(ref, 'auc_b')}; its "
                f"report {ref.report} %). The one command that checks it: "
                f"{CHECK_COMMAND} (or set XCEPTION_WEIGHTS).",
            )
        )
    for run in RUNS:
        if runs[run.tag].problem:
            blocks.append(("warn", f"{run.model} on {run.dataset}: {runs[run.tag].problem}"))
    if data.demo:
        demo = data.demo_settings or {}
        seed = "?" if demo.get("seed") is None else demo.get("seed")
        blocks.append(
            (
                "warn",
                f"DEMO DATA: no course datasets were found, so this study ran on the "
                f"procedural demo data in {data.root} (make_demo_datasets.py, scale "
                f"{demo.get('scale') or '?'}, seed {seed}). Its numbers are not those "
                "of the course datasets.",
            )
        )
    return blocks


def data_and_models(data: DataChoice, facts: dict) -> list[tuple]:
    rows = []
    for dataset in DATASET_NAMES:
        for split in SPLITS:
            c = (data.counts or {}).get(dataset, {}).get(split, {})
            rows.append(
                [
                    f"{DATASET_TITLES[dataset]} ({dataset})",
                    split,
                    str(c.get("real", "-")),
                    str(c.get("fake", "-")),
                    str(c.get("real", 0) + c.get("fake", 0)),
                ]
            )
    origin = "demo data" if data.demo else "from " + data.origin
    facts_rows = [
        [label, f"{facts.get(key, 0):,}", f"{STUDY_MODEL_FACTS[key]:,}"]
        for label, key in (
            ("SimpleNet: trainable parameters", "SimpleNet"),
            ("XceptionBased: trainable parameters", "XceptionBased"),
            ("Q21: input features of the MLP head", "head_in_features"),
            ("Q22: Xception backbone parameters (with its 1000-class fc)", "backbone_params"),
            ("Q24: MLP head parameters", "head_params"),
        )
    ]
    return [
        ("h2", "Data"),
        ("p", f"Data root: {data.root} ({origin})."),
        ("table", ["dataset", "split", "real", "fake", "total"], rows),
        ("h2", "Models"),
        ("p", "Computed from freshly built models (random initialisation), beside the study's answers."),
        ("table", ["", "computed", "study"], facts_rows),
    ]


def result_row(run, n: RunNumbers) -> list[str]:
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


def results(runs: dict[str, RunNumbers]) -> list[tuple]:
    """The results table, each run's protocol (from its own JSON entry), the study's reference
    figures with their source, and one verdict per run."""
    protocols = "; ".join(
        f"{r.model} on {r.dataset}: "
        + (runs[r.tag].protocol.text() if runs[r.tag].protocol else "not trained")
        for r in RUNS
    )
    col_a, col_b = score_label(runs, 0), score_label(runs, 1)
    header = ["run", "init", "best val epoch", "val acc", "study val acc", "test acc", "study test acc"]
    header += ["AUC(fake)", f"AUC A ({col_a})", f"AUC B ({col_b})", "study AUC B", "EER", "AP"]
    header += ["epoch s", "train img/s", "Grad-CAM faithfulness"]
    rows = [result_row(run, runs[run.tag]) for run in RUNS]
    sources = [
        [ref.label, ref.source()]
        for ref in {study_reference(run, runs[run.tag].pretrained): None for run in RUNS}
    ]
    blocks = [
        ("h2", "Results"),
        (
            "p",
            f"Protocol of each run, from its own JSON entry: {protocols}. SimpleNet has no "
            "BatchNorm layers: precise BatchNorm statistics do not change it.",
        ),
        (
            "p",
            "Accuracies in %, at the epoch of the best validation accuracy (val) and the test "
            "accuracy at that epoch. AUC(fake), EER and AP: of P(fake) (softmax) on the test "
            f"split; AUC A and B: of score A ({col_a}) and score B ({col_b}), as the metrics "
            "JSON records them. Epoch seconds and training images/s: means over the epochs. "
            "Grad-CAM faithfulness: mean drop in true-class confidence when the most "
            "Grad-CAM-relevant pixels are removed, minus the drop for random pixels (higher = "
            "more faithful). Where the study gives only 'about X', the number is shown beside "
            "it with no within/outside verdict.",
        ),
        ("table", header, rows),
        ("p", "Where the 'study' figures come from:"),
        ("table", ["run", "source"], sources),
    ]
    blocks += [("p", f"{run.model} on {run.dataset}: {runs[run.tag].verdict}") for run in RUNS]
    return blocks + uncertainty(runs)


NOT_RUN = "not run"


def with_interval(entry: dict | None, digits: int, unit: str = "") -> str:
    """``76.6 % [72.1, 80.9]``: a bootstrap metric's value and its interval ('not run' without it)."""
    if entry is None:
        return NOT_RUN
    value = f"{entry['value']:.{digits}f}{unit}"
    if entry["ci"] is None:
        return f"{value} [interval undefined]"
    low, high = entry["ci"]
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def uncertainty(runs: dict[str, RunNumbers]) -> list[tuple]:
    """Beside the results: each run's bootstrap intervals and ECE (its 'uncertainty' section)."""
    rows = []
    for run in RUNS:
        n = runs[run.tag]
        got = n.intervals or {}
        rows.append(
            [f"{run.model}, {run.dataset}", with_interval(got.get("accuracy"), 1, " %")]
            + [with_interval(got.get(key), 3) for key in ("auc", "eer", "ap")]
            + [NOT_RUN if n.ece is None else f"{n.ece:.3f}", str(n.bootstrap_resamples or "-")]
        )
    return [
        (
            "p",
            "How sure the test figures are: 95 % bootstrap intervals, value [low, high], of the "
            "accuracy at P(fake) > 0.5, AUC, EER and AP of P(fake) on the test split (stratified "
            "resamples: real images drawn from the real ones, fakes from the fakes), and the "
            "expected calibration error (ECE) of P(fake); from numerical_analysis.py's "
            "'uncertainty' section. Its reliability diagrams are among the figures.",
        ),
        (
            "table",
            [
                "run",
                "test acc [95 % CI]",
                "AUC [95 % CI]",
                "EER [95 % CI]",
                "AP [95 % CI]",
                "ECE",
                "resamples",
            ],
            rows,
        ),
    ]


def _matrix_cell(cell: dict | None) -> str:
    """``AUC 0.912 / acc 85.0 % / EER 0.101``, and ``(in-distribution)`` on a checkpoint's own dataset."""
    if cell is None:
        return NOT_RUN
    text = f"AUC {fmt(cell['auc'], 3)} / acc {fmt(cell['accuracy'], 1, ' %')} / EER {fmt(cell['eer'], 3)}"
    return text + (" (in-distribution)" if cell["in_distribution"] else "")


def cross_dataset_blocks(settings: Settings, matrix: dict | None) -> list[tuple]:
    """The train x test matrix of AUC / accuracy / EER (out/cross_dataset.json) and its heat maps."""
    blocks = [("h2", "Cross-dataset generalisation")]
    if matrix is None:
        blocks.append(("p", f"Cross-dataset matrix: {NOT_RUN} (step cross-dataset)."))
    else:
        columns = matrix["test_datasets"]
        rows = [
            [row["label"], *(_matrix_cell(row["cells"].get(name)) for name in columns)]
            for row in matrix["rows"]
        ]
        blocks += [
            (
                "p",
                "Each trained checkpoint (row) on the test split of each dataset (column): AUC, "
                "accuracy at P(fake) > 0.5 and EER of P(fake). The in-distribution cell is the "
                "checkpoint's own dataset; the others measure transfer to a manipulation it never "
                "saw. The study runs the SimpleNet checkpoints; to add XceptionBased's row, run "
                f"cross_dataset_analysis.py --checkpoint_dir {settings.checkpoint_dir} --out_dir "
                f"{settings.out_dir} --figures_dir {settings.figures_dir}, then run_study.py "
                "--skip cross-dataset (so the study keeps that matrix).",
            ),
            ("table", ["trained checkpoint", *(f"test: {name}" for name in columns)], rows),
        ]
    path = cross_dataset_figure(settings.figures_dir)
    return blocks + [("figure", path, os.path.basename(path))]


def _harshest_cell(entry: dict | None) -> str:
    """``0.734 at 30``: the AUC at a perturbation's harshest grade, and that grade."""
    if entry is None:
        return NOT_RUN
    grade = "?" if entry["severity"] is None else f"{entry['severity']:g}"
    return f"{fmt(entry['auc'], 3)} at {grade}"


def robustness_blocks(settings: Settings, runs: dict[str, RunNumbers]) -> list[tuple]:
    """Per run of the robustness step (and any other run with a 'robustness' section): the clean
    AUC and the AUC at each perturbation's harshest grade, and the figures."""
    from lib.perturbations import PERTURBATIONS, SEVERITY_NAMES

    shown = [r for r in RUNS if r.robustness or runs[r.tag].robustness_clean_auc is not None]
    rows = []
    for run in shown:
        n = runs[run.tag]
        if n.robustness_clean_auc is None and not n.robustness_harshest:
            rows.append([f"{run.model}, {run.dataset}"] + [NOT_RUN] * (2 + len(PERTURBATIONS)))
            continue
        harshest = n.robustness_harshest or {}
        cells = [_harshest_cell(harshest.get(name)) for name in PERTURBATIONS]
        rows.append(
            [
                f"{run.model}, {run.dataset}",
                str(n.robustness_images or "-"),
                fmt(n.robustness_clean_auc, 3),
                *cells,
            ]
        )
    blocks = [
        ("h2", "Robustness"),
        (
            "p",
            "AUC of P(fake) on test images perturbed before the evaluation transform "
            "(robustness_analysis.py, a seeded subset of the test split): clean, and at the "
            "harshest grade of each perturbation (the figure has every grade). XceptionBased is "
            "left out on purpose: 15 forward passes per image are too slow on a CPU.",
        ),
        (
            "table",
            [
                "run",
                "images",
                "clean AUC",
                *(f"AUC, {SEVERITY_NAMES[name]} (harshest)" for name in PERTURBATIONS),
            ],
            rows,
        ),
    ]
    return blocks + [
        ("figure", path, os.path.basename(path))
        for run in shown
        for path in kind_figures(run, settings.figures_dir, "robustness")
    ]


def spectrum_blocks(settings: Settings, spectra: dict[str, dict | None]) -> list[tuple]:
    """One line per dataset (the largest fake - real difference of the 1-D power spectra, and
    where) and its figure."""
    blocks = [
        ("h2", "Frequency spectra"),
        (
            "p",
            "Mean Fourier spectra of the grey, mean-removed test images (spectrum_analysis.py, no "
            "model): a generator's upsampling leaves peaks in the fakes' spectrum.",
        ),
    ]
    for dataset in DATASET_NAMES:
        got = spectra.get(dataset)
        if got is None:
            blocks.append(("p", f"{dataset}: {NOT_RUN} (step spectrum)."))
        else:
            blocks.append(
                (
                    "p",
                    f"{dataset}: {got['n_real']} real, {got['n_fake']} fake test images; largest "
                    f"fake - real difference {got['peak_db']:+.1f} dB at "
                    f"{got['peak_cycles_per_pixel']:.3f} cycles/pixel.",
                )
            )
    for dataset in DATASET_NAMES:
        path = spectrum_figure(settings.figures_dir, dataset)
        blocks.append(("figure", path, os.path.basename(path)))
    return blocks


def figures_and_steps(settings: Settings, records: list[StepRecord], total_seconds: float) -> list[tuple]:
    blocks = [("h2", "Figures"), ("figure", samples_figure(settings.figures_dir), SAMPLES_FIGURE)]
    for run in RUNS:
        with_table = set(kind_figures(run, settings.figures_dir, "robustness"))  # shown with its table
        for paths in run_figures(run, settings.figures_dir).values():
            blocks += [("figure", path, os.path.basename(path)) for path in paths if path not in with_table]
        blocks += [
            ("figure", path, os.path.basename(path) + " (beyond the study)")
            for path in extra_figures(run, settings.figures_dir)
            if path not in with_table
        ]
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
    return blocks + [
        ("h2", "Steps"),
        (
            "p",
            f"Total time of this invocation: {total_seconds:.1f} s. Logs: "
            f"{os.path.join(settings.out_dir, 'logs')}/STEP.log, one per step.",
        ),
        (
            "p",
            "Wall seconds of this invocation; wall seconds, CPU seconds (user + system, all threads) "
            "and peak memory of the step's last successful run.",
        ),
        (
            "table",
            [
                "step",
                "status",
                "wall s (this time)",
                "wall s (last run)",
                "CPU s (last run)",
                "peak memory MB (last run)",
            ],
            rows,
        ),
    ]


def build_report(
    settings: Settings,
    data: DataChoice,
    facts: dict,
    runs: dict[str, RunNumbers],
    weights: WeightsChoice | None,
    records: list[StepRecord],
    status: Status,
    total_seconds: float,
    beyond: dict | None = None,
) -> list[tuple]:
    """The report as blocks: ('h1'|'h2'|'p'|'warn', text), ('table', header, rows),
    ('figure', path, caption). ``beyond``: ``beyond_numbers`` (read from the settings' folders
    when not given)."""
    beyond = beyond_numbers(settings) if beyond is None else beyond
    return (
        [
            ("h1", "Facial manipulation detection: the study, re-run"),
            ("p", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by run_study.py; {status.text}"),
        ]
        + warnings(data, weights, runs, status)
        + data_and_models(data, facts)
        + results(runs)
        + cross_dataset_blocks(settings, beyond["cross_dataset"])
        + robustness_blocks(settings, runs)
        + spectrum_blocks(settings, beyond["spectrum"])
        + figures_and_steps(settings, records, total_seconds)
    )


def beyond_numbers(settings: Settings) -> dict:
    """The study-wide numbers beyond the study: the cross-dataset matrix and the spectra."""
    return {"cross_dataset": cross_dataset_numbers(settings), "spectrum": spectrum_numbers(settings)}


# ----------------------------------------------------------------------------- rendering
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple], md_dir: str) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {rest[0]}\n")
        elif kind == "p":
            out.append(f"{rest[0]}\n")
        elif kind == "warn":
            out.append(f"> **WARNING:** {rest[0]}\n")
        elif kind == "table":
            header, rows = rest
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "figure":
            path, caption = rest
            if os.path.exists(path):
                rel = os.path.relpath(os.path.abspath(path), os.path.abspath(md_dir))
                out.append(f"![{caption}]({rel.replace(os.sep, '/')})\n")
            else:
                out.append(f"*{caption}: missing (its step has not run)*\n")
    return "\n".join(out)


HTML_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}th,td{border:1px solid #bbb;padding:3px 6px}
th{background:#eee}td{text-align:right}td:first-child{text-align:left}
.warn{background:#fde2e2;border:2px solid #c00;padding:.6em;font-weight:bold;margin:.6em 0}
figure{display:inline-block;margin:.4em;vertical-align:top}figure img{max-width:560px;border:1px solid #ddd}
figcaption{font-size:80%;color:#555}.missing{color:#a00}"""


def _html_block(kind: str, rest: list) -> str:
    esc = html.escape
    if kind in ("h1", "h2"):
        return f"<{kind}>{esc(rest[0])}</{kind}>"
    if kind == "p":
        return f"<p>{esc(rest[0])}</p>"
    if kind == "warn":
        return f'<div class="warn">WARNING: {esc(rest[0])}</div>'
    if kind == "table":
        lines = ["<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in rest[0]) + "</tr>"]
        lines += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rest[1]]
        return "\n".join(lines + ["</table>"])
    path, caption = rest
    if not os.path.exists(path):
        return f'<p class="missing">{esc(caption)}: missing (its step has not run)</p>'
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def render_html(blocks: list[tuple]) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "Study report")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head><body>",
    ]
    out += [_html_block(kind, rest) for kind, *rest in blocks]
    return "\n".join(out + ["</body></html>"]) + "\n"


# ----------------------------------------------------------------------------- writing
def collect_numbers(
    settings: Settings, data: DataChoice, weights: WeightsChoice | None
) -> dict[str, RunNumbers]:
    """Every run's numbers with the study's reference and the verdict."""
    runs = {}
    for run in RUNS:
        n = run_numbers(settings, run)
        if n.pretrained is None and run.model == "XceptionBased" and weights and not n.best_val_epoch:
            n.pretrained = weights.pretrained  # not trained yet: what it will start from
        n.study = asdict(study_reference(run, n.pretrained))
        n.verdict = verdict(run, n, data.demo)
        runs[run.tag] = n
    return runs


def write_report(
    settings: Settings,
    data: DataChoice,
    weights: WeightsChoice | None,
    records: list[StepRecord],
    status: Status,
    total_seconds: float,
    console: Console,
    facts: dict,
) -> dict:
    """Write out/study_report.md, out/study_report.html and out/study_summary.json; the summary.
    ``facts``: the models' parameter counts (``run_study.model_facts``)."""
    runs = collect_numbers(settings, data, weights)
    beyond = beyond_numbers(settings)
    blocks = build_report(settings, data, facts, runs, weights, records, status, total_seconds, beyond)
    md_path = os.path.join(settings.out_dir, "study_report.md")
    html_path = os.path.join(settings.out_dir, "study_report.html")
    atomic_write_text(md_path, render_markdown(blocks, settings.out_dir))
    atomic_write_text(html_path, render_html(blocks))
    figures = [block[1] for block in blocks if block[0] == "figure"]  # every figure the report shows
    summary = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "status": asdict(status),
        "total_seconds": round(total_seconds, 2),
        "steps_cpu_seconds": round(sum(r.cpu_seconds or 0.0 for r in records), 2),
        "data": {
            "root": data.root,
            "origin": data.origin,
            "demo": data.demo,
            "demo_settings": data.demo_settings,
            "counts": data.counts,
            "demo_generation_seconds": data.generated_seconds,
        },
        "params": {name: facts[name] for name in ("SimpleNet", "XceptionBased")},
        "model_facts": facts,
        "protocol": {
            "optimizer": "Adam",
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "epochs": settings.epochs,
            "device": settings.device,
            "seed": settings.seed,
            "precise_bn": settings.precise_bn,
        },
        "xception_init": asdict(weights) if weights else None,
        "runs": {tag: asdict(n) for tag, n in runs.items()},
        "beyond": beyond,
        "steps": [asdict(r) for r in records],
        "figures": {p: os.path.exists(p) for p in figures},
        "report": {"markdown": md_path, "html": html_path},
    }
    atomic_write_json(os.path.join(settings.out_dir, "study_summary.json"), summary)
    console.say(
        f"report: {md_path}, {html_path}; numbers: {os.path.join(settings.out_dir, 'study_summary.json')}"
    )
    return summary


def outcome_status(failure, records: list[StepRecord], total: float) -> Status:
    """How this invocation ended, from the failure (or None) and the step records."""
    if failure is not None:
        log = next((r.log for r in records if r.name == failure.step), None)
        return Status(
            f"stopped: step {failure.step} failed after {total:.1f} s.", failure.step, log, str(failure)
        )
    ran = sum(r.status == "ran" for r in records)
    skipped = sum(r.status.startswith("skipped") for r in records)
    return Status(f"{ran} step(s) ran, {skipped} up to date, in {total:.1f} s.")


def closing_notes(data: DataChoice, weights: WeightsChoice | None, status: Status, console: Console) -> None:
    """The console's last lines: the outcome, and random init or demo data said again."""
    console.say(f"study done: {status.text}")
    if weights and not weights.pretrained:
        console.say(
            f"NOTE: XceptionBased was trained from RANDOM INITIALISATION, not ImageNet weights "
            f"({weights.reason[:160]}); the report says so."
        )
    if data.demo:
        console.say(f"NOTE: this study ran on DEMO data ({data.root}), not the course datasets.")
