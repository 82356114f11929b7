"""The study's steps beyond the course study (spectrum, robustness, cross-dataset) in the plan, and
their part of the report, from small hand-made JSON sections: no training, no subprocess."""

from __future__ import annotations

import base64
import json
import os

import pytest

import run_study
from lib.study import plan as study_plan
from lib.study.data import DataChoice
from lib.study.numbers import collect_numbers
from lib.study.report import Status, Study, page_context, render

TAGS = ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic")
SIMPLENET = {"simplenet-fakes": "fakes_dataset", "simplenet-synthetic": "synthetic_dataset"}


def _settings(work, *flags):
    args = run_study.build_parser().parse_args(["--workdir", str(work), *flags])
    return run_study.make_settings(args, str(work / "data"), [])


def _names(steps):
    return [step.name for step in steps]


def _write_json(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(content, handle)


# ----------------------------------------------------------------------------- the plan
def test_plan_has_the_new_steps_in_order(tmp_path):
    plan = study_plan.build_plan(_settings(tmp_path))
    per_run = []
    for tag in TAGS:
        per_run += [f"curves-{tag}", f"numerical-{tag}", f"gradcam-{tag}"]
        per_run += [f"robustness-{tag}"] if tag in SIMPLENET else []  # XceptionBased: too slow on a CPU
    assert _names(plan) == (
        ["samples", "spectrum"]
        + [f"train-{tag}" for tag in TAGS]
        + per_run
        + ["saliency-simplenet-fakes", "saliency-xception-synthetic", "cross-dataset"]
    )
    assert study_plan.step_names() == _names(plan) + ["report"]
    kinds = study_plan.STEP_KINDS
    assert kinds[:6] == ("samples", "spectrum", "train", "curves", "numerical", "gradcam")
    assert kinds[6:] == ("robustness", "saliency", "cross-dataset", "report")


def test_spectrum_step_reads_both_test_splits_and_declares_its_jsons(tmp_path):
    s = _settings(tmp_path, "--seed", "7")
    step = {st.name: st for st in study_plan.build_plan(s)}["spectrum"]
    out, figures, data = str(tmp_path / "out"), str(tmp_path / "figures"), str(tmp_path / "data")
    jsons = [os.path.join(out, f"{d}_spectrum.json") for d in ("fakes_dataset", "synthetic_dataset")]
    assert step.script == "spectrum_analysis.py" and step.run is None and step.inputs == []
    assert step.outputs == {
        os.path.join(figures, "fakes_dataset_spectrum.png"): (),
        os.path.join(figures, "synthetic_dataset_spectrum.png"): (),
    } | {path: ("spectrum",) for path in jsons}
    assert step.data == [os.path.join(data, d, "test") for d in ("fakes_dataset", "synthetic_dataset")]
    command = " ".join(step.command)
    assert "--datasets fakes_dataset synthetic_dataset " in command and "--seed 7 " in command
    assert f"--out_dir {out}" in command and f"--figures_dir {figures}" in command


def test_robustness_steps_for_simplenet_only(tmp_path):
    s = _settings(tmp_path, "--seed", "7")
    steps = {st.name: st for st in study_plan.build_plan(s)}
    out, figures = str(tmp_path / "out"), str(tmp_path / "figures")
    for tag, dataset in SIMPLENET.items():
        step = steps[f"robustness-{tag}"]
        metrics = os.path.join(out, f"{dataset}_SimpleNet_metrics.json")
        checkpoint = os.path.join(str(tmp_path / "checkpoints"), f"{dataset}_SimpleNet_Adam.pt")
        assert step.script == "robustness_analysis.py"
        figure = os.path.join(figures, f"{dataset}_SimpleNet_robustness.png")
        assert step.outputs == {figure: (), metrics: ("robustness",)} and step.inputs == [checkpoint]
        assert step.data == [os.path.join(str(tmp_path / "data"), dataset, "test")]
        assert " -cpp " + checkpoint in " ".join(step.command) and "--seed 7" in " ".join(step.command)
    assert "robustness-xception-synthetic" not in steps
    xception = next(r for r in study_plan.RUNS if r.model == "XceptionBased")
    assert "robustness" not in study_plan.run_figures(xception, s)
    # numerical_analysis.py writes two sections; its step declares both, and gets the seed
    metrics = os.path.join(out, "fakes_dataset_SimpleNet_metrics.json")
    numerical = steps["numerical-simplenet-fakes"]
    assert numerical.outputs[metrics] == ("numerical", "uncertainty")
    assert "--seed 7" in " ".join(numerical.command)


def test_cross_dataset_step_takes_the_simplenet_checkpoints(tmp_path):
    s = _settings(tmp_path)
    step = study_plan.build_plan(s)[-1]
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "checkpoints")
    checkpoints = [os.path.join(ckpt, f"{d}_SimpleNet_Adam.pt") for d in SIMPLENET.values()]
    jsons = [os.path.join(out, "cross_dataset.json")] + [
        os.path.join(out, f"{d}_SimpleNet_metrics.json") for d in SIMPLENET.values()
    ]
    assert step.name == step.kind == "cross-dataset" and step.script == "cross_dataset_analysis.py"
    assert step.inputs == checkpoints
    figure = os.path.join(str(tmp_path / "figures"), "cross_dataset.png")
    assert step.outputs == {figure: ()} | {path: ("cross_dataset",) for path in jsons}
    assert len(step.data) == 2 and all(path.endswith(os.sep + "test") for path in step.data)
    args = step.args
    at = args.index("--checkpoints")
    assert args[at + 1 : at + 3] == [
        f"fakes_dataset:SimpleNet:{checkpoints[0]}",
        f"synthetic_dataset:SimpleNet:{checkpoints[1]}",
    ]
    assert args[at + 3] == "--datasets" and "XceptionBased" not in " ".join(args)


def test_new_steps_can_be_selected_and_skipped(tmp_path):
    plan = study_plan.build_plan(_settings(tmp_path))
    select = study_plan.select_steps
    selected, report = select(["spectrum"], None)
    assert selected == ["spectrum"] and report
    assert select(["cross-dataset"], None)[0] == ["cross-dataset"]
    assert select(["robustness-*"], None)[0] == [
        "robustness-simplenet-fakes",
        "robustness-simplenet-synthetic",
    ]
    selected, _ = select(None, ["robustness,cross-dataset", "spectrum"])
    assert len(selected) == len(plan) - 4
    assert not any(s.kind in ("robustness", "cross-dataset", "spectrum") for s in plan if s.name in selected)
    # a run selects its own steps; the study-wide ones are not any run's
    assert "robustness-simplenet-fakes" in select(["simplenet-fakes"], None)[0]
    assert "cross-dataset" not in select(["simplenet-fakes"], None)[0]


# ----------------------------------------------------------------------------- the report
def _boot(value, low, high):
    return {"value": value, "ci": [low, high]}


def _fill(s, png: bytes):
    """Hand-made sections: uncertainty and robustness of SimpleNet on fakes_dataset only, the
    cross-dataset matrix, the spectrum of fakes_dataset only; and their figures."""
    fakes = next(r for r in study_plan.RUNS if r.tag == "simplenet-fakes")
    bootstrap = {
        "n_resamples": 1000,
        "accuracy": _boot(76.56, 72.14, 80.93),
        "auc": _boot(0.8514, 0.8107, 0.8899),
        "eer": _boot(0.2205, 0.1802, 0.2611),
        "ap": _boot(0.8391, 0.7902, 0.8833),
    }
    grades = {"jpeg": [90, 70, 50, 30], "blur": [0.5, 1.0, 2.0, 3.0], "resize": [0.75, 0.5, 0.25]}
    grades["noise"] = [2.0, 5.0, 10.0]
    aucs = {"jpeg": [0.84, 0.8, 0.75, 0.7012], "blur": [0.85, 0.8, 0.7, 0.6234]}
    aucs |= {"resize": [0.83, 0.7, 0.5561], "noise": [0.85, 0.84, 0.8166]}
    robustness = {
        "n_images": 60,
        "clean": {"auc": 0.8523, "accuracy": 75.0, "eer": 0.2, "ap": 0.84},
        "perturbations": {n: {"severities": grades[n], "auc": aucs[n]} for n in grades},
    }
    _write_json(
        study_plan.metrics_json_path(s, fakes),
        {
            "numerical": {"auc": 0.85},
            "uncertainty": {"bootstrap": bootstrap, "calibration": {"ece": 0.0734}},
            "robustness": robustness,
        },
    )
    cell = {"auc": 0.9123, "accuracy": 85.04, "eer": 0.1011, "in_distribution": True}
    away = {"auc": 0.4987, "accuracy": 50.0, "eer": 0.4988, "in_distribution": False}
    rows = [
        {"label": "SimpleNet, Adam, trained on fakes_dataset", "train_dataset": "fakes_dataset",
         "results": {"fakes_dataset": cell, "synthetic_dataset": away}},
        {"label": "SimpleNet, Adam, trained on synthetic_dataset", "train_dataset": "synthetic_dataset",
         "results": {"fakes_dataset": away, "synthetic_dataset": dict(cell, auc=0.6)}},
    ]  # fmt: skip
    matrix = {"test_datasets": ["fakes_dataset", "synthetic_dataset"], "rows": rows}
    _write_json(study_plan.cross_dataset_json_path(s), {"cross_dataset": matrix})
    spectrum = {"n_real": 30, "n_fake": 20, "cycles_per_pixel": [1 / 256, 2 / 256, 3 / 256]}
    spectrum["fake_minus_real_db"] = [0.5, -3.31, 1.0]
    _write_json(study_plan.spectrum_json_path(s, "fakes_dataset"), {"spectrum": spectrum})
    figures = [
        study_plan.cross_dataset_figure(s),
        study_plan.spectrum_figure(s, "fakes_dataset"),
        *study_plan.run_figures(fakes, s)["robustness"],
    ]
    os.makedirs(s.figures_dir, exist_ok=True)
    for path in figures:
        with open(path, "wb") as handle:
            handle.write(png + os.path.basename(path).encode())  # each figure its own bytes
    return figures


def _study(s) -> Study:
    runs = collect_numbers(s, demo=False, pretrained=None)
    return Study(s, DataChoice("root", "--data_root", False), {}, runs, status=Status("done."))


def _report(s) -> tuple[dict, str]:
    """The page's context (its tables and figures) and the page as Markdown."""
    context = page_context(_study(s))
    return context, render(context, html=False, md_dir=s.out_dir)


def test_report_shows_intervals_matrix_robustness_and_spectra(tmp_path):
    s = _settings(tmp_path)
    png = b"\x89PNG\r\n\x1a\n"
    figures = _fill(s, png)
    context, md = _report(s)
    tables = context["tables"]
    header, rows = tables["uncertainty"].header, tables["uncertainty"].rows
    assert "How sure the test figures are: 95 % bootstrap intervals" in md
    assert (
        " | ".join(header[1:])
        == "test acc [95 % CI] | AUC [95 % CI] | EER [95 % CI] | AP [95 % CI] | ECE | resamples"
    )
    assert rows[0] == [
        "SimpleNet, fakes_dataset",
        "76.6 % [72.1, 80.9]",
        "0.851 [0.811, 0.890]",
        "0.221 [0.180, 0.261]",
        "0.839 [0.790, 0.883]",
        "0.073",
        "1000",
    ]
    assert rows[1][1:6] == ["not run"] * 5 and rows[2][1:6] == ["not run"] * 5
    header, rows = tables["matrix"].header, tables["matrix"].rows
    assert header == ["trained checkpoint", "test: fakes_dataset", "test: synthetic_dataset"]
    assert rows == [
        [
            "SimpleNet, Adam, trained on fakes_dataset",
            "AUC 0.912 / acc 85.0 % / EER 0.101 (in-distribution)",
            "AUC 0.499 / acc 50.0 % / EER 0.499",
        ],
        [
            "SimpleNet, Adam, trained on synthetic_dataset",
            "AUC 0.499 / acc 50.0 % / EER 0.499",
            "AUC 0.600 / acc 85.0 % / EER 0.101 (in-distribution)",
        ],
    ]
    header, rows = tables["robustness"].header, tables["robustness"].rows
    assert header[:3] == ["run", "images", "clean AUC"] and "JPEG quality" in header[3]
    assert rows == [
        [
            "SimpleNet, fakes_dataset",
            "60",
            "0.852",
            "0.701 at 30",
            "0.623 at 3",
            "0.556 at 0.25",
            "0.817 at 10",
        ],
        ["SimpleNet, synthetic_dataset"] + ["not run"] * 6,
    ]
    assert (
        "\nfakes_dataset: 30 real, 20 fake test images; largest fake - real difference -3.3 dB at "
        "0.008 cycles/pixel.\n" in md
    )
    assert "\nsynthetic_dataset: not run (step spectrum).\n" in md
    # each figure once, embedded in the HTML; the missing spectrum figure is said to be missing
    shown = [f.path for part in context["figures"].values() for f in part]
    for path in figures:
        assert shown.count(path) == 1 and md.count(f"![{os.path.basename(path)}](") == 1, path
    page = render(context, html=True)
    for path in figures:
        with open(path, "rb") as handle:
            assert base64.b64encode(handle.read()).decode() in page, path
    assert "synthetic_dataset_spectrum.png: missing (its step has not run)" in page


def test_missing_or_broken_sections_read_not_run(tmp_path):
    s = _settings(tmp_path)
    _, md = _report(s)  # nothing run at all
    assert "Cross-dataset matrix: not run (step cross-dataset)." in md
    assert "fakes_dataset: not run (step spectrum)." in md
    assert "| SimpleNet, fakes_dataset | not run | not run | not run | not run | not run | - |" in md
    fakes = next(r for r in study_plan.RUNS if r.tag == "simplenet-fakes")
    broken = {
        "uncertainty": {"bootstrap": [1, 2], "calibration": "x"},
        "robustness": {"clean": 3, "perturbations": {"jpeg": 5, "blur": {"severities": "x"}}},
    }
    _write_json(study_plan.metrics_json_path(s, fakes), broken)
    _write_json(study_plan.cross_dataset_json_path(s), {"cross_dataset": {"rows": "x"}})
    _write_json(study_plan.spectrum_json_path(s, "fakes_dataset"), {"spectrum": {"fake_minus_real_db": "x"}})
    with open(study_plan.spectrum_json_path(s, "synthetic_dataset"), "w") as handle:
        handle.write("{not json")
    assert _study(s).beyond == {"cross_dataset": None, "spectrum": dict.fromkeys(SIMPLENET.values())}
    context, md = _report(s)
    assert "Cross-dataset matrix: not run" in md and "synthetic_dataset: not run (step spectrum)." in md
    rows = context["tables"]["robustness"].rows
    assert rows[0] == ["SimpleNet, fakes_dataset"] + ["not run"] * 6


@pytest.mark.parametrize(
    "ci, shown", [(None, "0.500 [interval undefined]"), ([0.25, 0.75], "0.500 [0.250, 0.750]")]
)
def test_an_undefined_interval_is_said(tmp_path, ci, shown):
    s = _settings(tmp_path)
    fakes = next(r for r in study_plan.RUNS if r.tag == "simplenet-fakes")
    section = {"bootstrap": {"auc": {"value": 0.5, "ci": ci}}, "calibration": {}}
    _write_json(study_plan.metrics_json_path(s, fakes), {"uncertainty": section})
    rows = _report(s)[0]["tables"]["uncertainty"].rows
    assert rows[0][1:6] == ["not run", shown, "not run", "not run", "not run"]


def test_a_robustness_run_by_hand_for_xception_is_shown_once(tmp_path):
    s = _settings(tmp_path)
    xception = next(r for r in study_plan.RUNS if r.model == "XceptionBased")
    section = {"n_images": 16, "clean": {"auc": 0.625}, "perturbations": {}}
    _write_json(study_plan.metrics_json_path(s, xception), {"robustness": section})
    figure = os.path.join(s.figures_dir, "synthetic_dataset_XceptionBased_robustness.png")
    os.makedirs(s.figures_dir)
    with open(figure, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
    context, md = _report(s)
    assert (
        context["tables"]["robustness"].rows[-1]
        == ["XceptionBased, synthetic_dataset", "16", "0.625"] + ["not run"] * 4
    )
    assert [f.path for part in context["figures"].values() for f in part].count(figure) == 1
    assert md.count("![synthetic_dataset_XceptionBased_robustness.png](") == 1


def test_datasets_choose_the_spectra_and_the_matrix_columns(tmp_path):
    s = _settings(tmp_path, "--datasets", "celebdf", "fakes_dataset", "celebdf")
    steps = {st.name: st for st in study_plan.build_plan(s)}
    data = str(tmp_path / "data")
    spectrum, cross = steps["spectrum"], steps["cross-dataset"]
    for step in (spectrum, cross):
        at = step.args.index("--datasets")
        assert step.args[at + 1 : at + 4] == ["celebdf", "fakes_dataset", "--data_root"]  # once each
        assert step.data == [os.path.join(data, d, "test") for d in ("celebdf", "fakes_dataset")]
    figure = os.path.join(s.figures_dir, "celebdf_spectrum.png")
    assert spectrum.outputs[figure] == () and spectrum.outputs[study_plan.spectrum_json_path(s, "celebdf")]
    assert not any("synthetic_dataset" in path for path in spectrum.outputs)
    # the trainings, and the checkpoints of the matrix, stay the course's
    at = cross.args.index("--checkpoints")
    assert [spec.split(":")[0] for spec in cross.args[at + 1 : at + 3]] == [
        "fakes_dataset",
        "synthetic_dataset",
    ]
    assert "celebdf" not in " ".join(steps["train-simplenet-fakes"].args)
    assert list(_study(s).beyond["spectrum"]) == ["celebdf", "fakes_dataset"]
