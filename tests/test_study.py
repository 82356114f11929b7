"""The study runner (run_study.py) and its set-up scripts.

End to end on a tiny generated tree (1 epoch, batch 4, XceptionBased from random init, everything
under tmp_path); then re-runs (skips), --force, a failing step, step selection, the ImageNet-weights
decision, the demo-data fallback and the shell set-up.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import run_study
from browser import check_page, find_chromium
from conftest import ROOT, make_tree
from lib.study import plan as study_plan
from lib.study.data import DataChoice
from lib.study.numbers import RunNumbers, run_numbers, verdict
from lib.study.report import Status, Study, page_context, render
from lib.study.runner import Console, clean_line

# Tiny splits: both classes everywhere (AUC, EER and Grad-CAM need them), few images (XceptionBased
# is about 0.3 s per image forward on a 2-core CPU).
COUNTS = {"train": (3, 2), "val": (1, 1), "test": (2, 2)}
RUNS = (
    ("SimpleNet", "fakes_dataset"),
    ("SimpleNet", "synthetic_dataset"),
    ("XceptionBased", "synthetic_dataset"),
)
# The study's figures (docs/design.md#output-names), written out here (not taken from run_study)
# so the test checks the runner.
STUDY_FIGURES = ["datasets_samples.png"]
for _model, _dataset in RUNS:
    STUDY_FIGURES += [
        f"{_dataset}_{_model}_{suffix}.png"
        for suffix in (
            "losses_plot",
            "accuracies_plot",
            "roc_curve",
            "det_curve",
            "Real_Image_grad_cam",
            "Fake_Image_grad_cam",
        )
    ]
STUDY_FIGURES += [
    f"{d}_{m}_{suffix}.png"
    for m, d in (RUNS[0], RUNS[2])
    for suffix in ("saliency_maps_and_images_pairs", "mean_saliency_maps")
]
# Beyond the study: reliability diagrams (numerical), spectra, robustness (SimpleNet), the matrix.
BEYOND_FIGURES = [f"{d}_{m}_reliability_diagram.png" for m, d in RUNS]
BEYOND_FIGURES += ["fakes_dataset_spectrum.png", "synthetic_dataset_spectrum.png", "cross_dataset.png"]
BEYOND_FIGURES += [f"{d}_SimpleNet_robustness.png" for d in ("fakes_dataset", "synthetic_dataset")]
STEPS = (
    ["samples", "spectrum"]
    + [f"train-{t}" for t in ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic")]
    + [
        f"{k}-{t}"
        for t in ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic")
        for k in ("curves", "numerical", "gradcam", "robustness")
        if (k, t) != ("robustness", "xception-synthetic")
    ]
    + ["saliency-simplenet-fakes", "saliency-xception-synthetic", "cross-dataset"]
)
NUMBER_KEYS = (
    "best_val_acc",
    "test_acc_at_best",
    "auc",
    "auc_a",
    "auc_b",
    "eer",
    "ap",
    "epoch_seconds",
    "train_images_per_sec",
    "grad_cam_faithfulness_gap",
)


def call(argv) -> tuple[int, str]:
    """run_study.main(argv) with its console output (stdout and stderr) captured."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = run_study.run_cli(run_study.main, list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, buffer.getvalue()


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def summary_of(work) -> dict:
    return load_json(os.path.join(work, "out", "study_summary.json"))


def statuses(work) -> dict:
    return {s["name"]: s["status"] for s in summary_of(work)["steps"]}


def parse_plan(plan: str) -> dict:
    """{step: state} from the lines '[ n] <step> <state>' of a --dry_run."""
    return dict(re.findall(r"^\[\s*\d+\] (\S+)\s+(.*)$", plan, flags=re.M))


def read(path) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def study(module_tmp):
    tmp = module_tmp("study")
    data = make_tree(str(tmp / "data"), COUNTS, seed=3)
    work = str(tmp / "work")
    args = [
        "--data_root",
        data,
        "--workdir",
        work,
        "--epochs",
        "1",
        "-b",
        "4",
        "--no_pretrained",
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--gradcam_max_images",
        "2",
        "--no_progress",
        "--precise_bn",
        "2",
    ]
    code, output = call(args)
    assert code == 0, output
    return SimpleNamespace(
        tmp=tmp,
        data=data,
        work=work,
        args=args,
        output=output,
        out=os.path.join(work, "out"),
        figures=os.path.join(work, "figures"),
    )


# ----------------------------------------------------------------------------- end to end
RUN_STEMS = ("fakes_dataset_SimpleNet", "synthetic_dataset_SimpleNet", "synthetic_dataset_XceptionBased")


def test_every_figure_report_and_summary(study):
    for name in STUDY_FIGURES + BEYOND_FIGURES:
        path = os.path.join(study.figures, name)
        assert os.path.isfile(path), f"missing figure {name}"
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name
    for name in ("study_report.md", "study_report.html", "study_summary.json"):
        assert os.path.isfile(os.path.join(study.out, name))
    listed = summary_of(study.work)["figures"]  # the report's figures, each existing
    mean_maps = [f"{stem}_mean_grad_cam.png" for stem in RUN_STEMS]  # Grad-CAM's, beyond the study
    assert {os.path.basename(p) for p in listed} == set(STUDY_FIGURES + BEYOND_FIGURES + mean_maps)
    assert all(listed.values())
    assert statuses(study.work) == {name: "ran" for name in STEPS}
    for name in STEPS:  # each step's output went to its own log
        assert "exit code 0" in read(os.path.join(study.out, "logs", f"{name}.log"))
    assert "[19/19] cross-dataset: done" in study.output
    summary = summary_of(study.work)  # one total: the status line's is the page's and the summary's
    total = re.search(r" in (\d+\.\d) s\.$", summary["status"]["text"]).group(1)
    assert f"study done: {summary['status']['text']}" in study.output
    assert f"Total time of this invocation: {total} s." in read(os.path.join(study.out, "study_report.md"))
    assert abs(summary["total_seconds"] - float(total)) <= 0.051


def test_summary_numbers_are_finite_and_match_their_sources(study):
    summary = summary_of(study.work)
    assert summary["params"] == {"SimpleNet": 16_901_762, "XceptionBased": 23_128_786}
    assert summary["data"]["counts"]["fakes_dataset"]["train"] == {"real": 3, "fake": 2}
    assert summary["data"]["counts"]["synthetic_dataset"]["test"] == {"real": 2, "fake": 2}
    assert summary["data"]["demo"] is False
    for step in summary["steps"]:  # wall and CPU seconds, peak memory of every step
        assert step["seconds"] > 0 and step["cpu_seconds"] > 0 and step["max_rss_mb"] > 50, step
    for (model, dataset), tag in zip(RUNS, ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic")):
        numbers = summary["runs"][tag]
        for key in NUMBER_KEYS:
            assert isinstance(numbers[key], float) and math.isfinite(numbers[key]), (tag, key)
        assert numbers["best_val_epoch"] == 1
        # The training JSON (last run) is the source of the accuracies ...
        run = load_json(os.path.join(study.out, f"{dataset}_{model}_Adam.json"))[-1]
        assert numbers["best_val_acc"] == pytest.approx(run["val_acc"][0])
        assert numbers["test_acc_at_best"] == pytest.approx(run["test_acc"][0])
        # ... 4 test images, 2 per class: an accuracy is a multiple of 25 %.
        assert numbers["test_acc_at_best"] % 25 == pytest.approx(0)
        # ... and the metrics JSON of the analysis steps the source of the detection numbers.
        numerical = load_json(os.path.join(study.out, f"{dataset}_{model}_metrics.json"))["numerical"]
        for key in ("auc", "auc_a", "auc_b", "eer", "ap"):
            assert numbers[key] == numerical[key], key
        assert numbers["protocol"] == {
            "optimizer": "Adam",
            "lr": 0.001,
            "batch_size": 4,
            "epochs": 1,
            "precise_bn": 2,
            "options": {},  # no training option beyond the course's
            "head": None,  # the model's default head
        }
        assert run["precise_bn"] == 2  # passed on to train_main.py, recorded in the run's JSON
        assert 0 <= numbers["eer"] <= 1 and 0 < numbers["ap"] <= 1
    assert summary["runs"]["xception-synthetic"]["pretrained"] is False
    # beyond the study: the same checkpoint, test split and P(fake) give the same AUC everywhere
    # (robustness: 4 test images, fewer than its 60, so the whole split)
    matrix = summary["beyond"]["cross_dataset"]
    assert [row["train_dataset"] for row in matrix["rows"]] == ["fakes_dataset", "synthetic_dataset"]
    for row, tag in zip(matrix["rows"], ("simplenet-fakes", "simplenet-synthetic")):
        numbers = summary["runs"][tag]
        own = row["cells"][row["train_dataset"]]
        assert own["in_distribution"] and own["auc"] == pytest.approx(numbers["auc"], abs=1e-9)
        assert numbers["robustness_clean_auc"] == pytest.approx(numbers["auc"], abs=1e-9)
        assert set(numbers["robustness_harshest"]) == {"jpeg", "blur", "resize", "noise"}
    for numbers in summary["runs"].values():
        assert numbers["intervals"]["auc"]["value"] == pytest.approx(numbers["auc"], abs=1e-9)
        assert 0 <= numbers["ece"] <= 1 and numbers["bootstrap_resamples"] == 1000
    assert summary["runs"]["xception-synthetic"]["robustness_clean_auc"] is None  # not run for it
    for dataset in ("fakes_dataset", "synthetic_dataset"):
        assert summary["beyond"]["spectrum"][dataset]["n_real"] == 2
    # auto: a batch of 4 fits in memory, so no activation checkpointing, and the JSON says so
    assert summary["runs"]["xception-synthetic"]["activation_checkpointing"] is False


def test_verdict_names_activation_checkpointing_with_this_runs_speed():
    run = next(r for r in study_plan.RUNS if r.model == "XceptionBased")
    numbers = RunNumbers(
        run.model,
        run.dataset,
        "j",
        "m",
        pretrained=True,
        best_val_acc=97.0,
        test_acc_at_best=98.0,
        auc_b=0.99,
        epochs=run.default_epochs,
    )
    assert "activation checkpointing" not in verdict(run, numbers, demo=False)
    numbers.activation_checkpointing, numbers.train_images_per_sec = True, 3.25
    assert verdict(run, numbers, demo=False).endswith(
        "Trained with activation checkpointing to fit the memory (the same numbers, slower: 3.2 "
        "training images/s in this run)."
    )


def test_unreadable_training_json_is_named_not_called_untrained(tmp_path):
    settings = run_study.make_settings(
        run_study.build_parser().parse_args(["--workdir", str(tmp_path)]), "root", []
    )
    run = study_plan.RUNS[0]
    assert verdict(run, run_numbers(settings, run), demo=False).startswith("Not trained yet")
    path = study_plan.runs_json_path(settings, run)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("[{not json")
    numbers = run_numbers(settings, run)
    numbers.verdict = verdict(run, numbers, demo=False)
    assert numbers.verdict.startswith("Its training results are not shown:") and path in numbers.verdict
    runs = {r.tag: run_numbers(settings, r) for r in study_plan.RUNS} | {run.tag: numbers}
    data = DataChoice("root", "--data_root", False)
    md = render(page_context(Study(settings, data, {}, runs, status=Status("done."))), html=False)
    assert f"\n> **WARNING:** {run.model} on {run.dataset}: {numbers.problem}\n" in md
    assert os.path.exists(path)  # the report only reads: the file is left for the user


def test_auc_agrees_with_an_independent_evaluation(study):
    """Recompute the SimpleNet/fakes test AUC from its checkpoint with sklearn."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    import utils

    model = utils.load_model_from_checkpoint(
        "SimpleNet", os.path.join(study.work, "checkpoints", "fakes_dataset_SimpleNet_Adam.pt")
    )
    dataset = utils.load_dataset("fakes_dataset", "test", study.data)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = [dataset[i][1] for i in range(len(dataset))]
    with torch.no_grad():
        p_fake = torch.softmax(model(images).double(), dim=1)[:, 1].numpy()
    numbers = summary_of(study.work)["runs"]["simplenet-fakes"]
    assert numbers["auc"] == pytest.approx(roc_auc_score(labels, p_fake), abs=1e-6)
    assert numbers["ap"] == pytest.approx(average_precision_score(labels, p_fake), abs=1e-6)


def test_report_is_one_self_contained_page(study):
    md = read(os.path.join(study.out, "study_report.md"))
    page = read(os.path.join(study.out, "study_report.html"))
    # The random-init XceptionBased run is announced, in both formats.
    assert "RANDOM INITIALISATION" in md and "RANDOM INITIALISATION" in page
    for model, dataset in RUNS:
        assert f"| {model}, {dataset} |" in md
    # the study's model questions, computed beside the study's answers
    for label, number in (
        ("SimpleNet: trainable parameters", "16,901,762"),
        ("XceptionBased: trainable parameters", "23,128,786"),
        ("Q21: input features of the MLP head", "2,048"),
        ("Q22: Xception backbone parameters (with its 1000-class fc)", "22,855,952"),
        ("Q24: MLP head parameters", "2,321,834"),
    ):
        assert f"| {label} | {number} | {number} |" in md, label
    assert (
        "Protocol of each run, from its own JSON entry: SimpleNet on fakes_dataset: Adam, lr 0.001, "
        "batch 4, 1 epochs, precise BatchNorm over 2 training batches" in md
    )
    # offline: the findings this run could not check, and the command that checks them
    assert "Not checked by this run: the study's finding for XceptionBased (ImageNet init)" in md
    assert "./run_me.sh --xception_weights PATH" in md
    assert "AUC A (raw output column 0)" in md and "AUC B (raw output column 1)" in md
    # Markdown links resolve to the figures; the HTML embeds each one, byte for byte.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    for name in STUDY_FIGURES + BEYOND_FIGURES:
        assert any(link.endswith("/" + name) for link in links), name
    for link in links:
        assert os.path.isfile(os.path.join(study.out, link)), link
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"(href|src)=\"(https?:|file:|/|\.)", page)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in sources}
    for name in STUDY_FIGURES + BEYOND_FIGURES:
        with open(os.path.join(study.figures, name), "rb") as handle:
            assert handle.read() in embedded, name


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")
def test_the_study_page_reads_well_in_a_browser(study):
    """The real page in headless Chromium at 1280 and 800 px (browser.check_page): every figure
    loads at its natural width or the page's, nothing is wider than the page, no console errors."""
    measured = check_page(os.path.join(study.out, "study_report.html"))
    assert len(measured[800]["images"]) == len(summary_of(study.work)["figures"])


# ----------------------------------------------------------------------------- re-runs
def test_rerun_skips_finished_steps(study):
    logs = {name: read(os.path.join(study.out, "logs", f"{name}.log")) for name in STEPS}
    json_path = os.path.join(study.out, "fakes_dataset_SimpleNet_Adam.json")
    before = load_json(json_path)
    code, output = call(study.args)
    assert code == 0, output
    assert statuses(study.work) == {name: "skipped (up to date)" for name in STEPS}
    assert output.count("up to date, skipped") == len(STEPS)
    assert load_json(json_path) == before  # no training ran: no run appended
    for name in STEPS:
        assert read(os.path.join(study.out, "logs", f"{name}.log")) == logs[name]


def test_an_edited_library_module_makes_only_its_importers_stale(study, monkeypatch):
    """lib/uncertainty.py is imported (through lib/) by numerical_analysis.py alone: an edit of it
    (its file signature changed; the real file is left alone, as its ctime cannot be put back)
    makes the three numerical steps stale and leaves every other step up to date."""
    from lib.study import stamps as study_stamps

    module = os.path.join(ROOT, "lib", "uncertainty.py")
    signature = study_stamps.file_signature
    monkeypatch.setattr(
        study_stamps,
        "file_signature",
        lambda path: signature(path) and signature(path) + ("edited" if path == module else ""),
    )
    code, plan = call(study.args + ["--dry_run"])
    monkeypatch.setattr(study_stamps, "file_signature", signature)
    assert code == 0, plan
    lines = parse_plan(plan)
    stale = {name for name, state in lines.items() if state != "up to date, would skip"}
    assert stale == {
        f"numerical-{tag}" for tag in ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic")
    }
    assert {lines[name] for name in stale} == {"would run (code lib/uncertainty.py changed)"}
    code, plan = call(study.args + ["--dry_run"])  # the module as it was: up to date again
    assert set(parse_plan(plan).values()) == {"up to date, would skip"}


def test_force_redoes_a_step_and_downstream_steps_become_stale(study):
    json_path = os.path.join(study.out, "fakes_dataset_SimpleNet_Adam.json")
    before = load_json(json_path)
    code, output = call(study.args + ["--force", "--steps", "train-simplenet-fakes"])
    assert code == 0, output
    status = statuses(study.work)
    assert status["train-simplenet-fakes"] == "ran"
    assert all(s == "not selected" for n, s in status.items() if n != "train-simplenet-fakes")
    after = load_json(json_path)
    assert len(after) == len(before) + 1 and after[:-1] == before  # appended, earlier run kept
    log = read(os.path.join(study.out, "logs", "train-simplenet-fakes.log"))
    assert log.count("===== exit code 0") == 2  # the log is appended to, not replaced
    # The new checkpoint makes the steps reading it stale; the other runs stay up to date.
    code, plan = call(study.args + ["--dry_run"])
    assert code == 0, plan
    lines = parse_plan(plan)
    assert len(lines) == len(STEPS)
    for kind in ("curves", "numerical", "gradcam", "robustness", "saliency"):
        assert "would run" in lines[f"{kind}-simplenet-fakes"], lines[f"{kind}-simplenet-fakes"]
    assert "would run (input " in lines["cross-dataset"]
    for name in (
        "samples",
        "spectrum",
        "train-simplenet-fakes",
        "curves-simplenet-synthetic",
        "robustness-simplenet-synthetic",
        "gradcam-xception-synthetic",
        "saliency-xception-synthetic",
    ):
        assert "up to date" in lines[name], lines[name]


def test_changed_data_makes_its_steps_stale(study):
    fake_dir = os.path.join(study.data, "synthetic_dataset", "test", "fake")
    dir_times = os.stat(fake_dir)
    added = os.path.join(fake_dir, "img009.png")
    shutil.copy2(os.path.join(fake_dir, "img001.png"), added)  # an old mtime: the folder's counts
    try:
        code, plan = call(study.args + ["--dry_run"])
    finally:
        os.remove(added)
        os.utime(fake_dir, ns=(dir_times.st_atime_ns, dir_times.st_mtime_ns))
    assert code == 0, plan
    lines = parse_plan(plan)
    test_split = os.path.join(study.data, "synthetic_dataset", "test")
    for name in (
        "spectrum",
        "train-xception-synthetic",
        "numerical-xception-synthetic",
        "gradcam-simplenet-synthetic",
        "robustness-simplenet-synthetic",
        "saliency-xception-synthetic",
    ):
        assert lines[name] == f"would run (data in {test_split} changed)", lines[name]
    # (its SimpleNet-fakes checkpoint may be newer too: test_force retrained it)
    assert lines["cross-dataset"].startswith("would run ("), lines["cross-dataset"]
    assert lines["samples"] == "up to date, would skip", lines["samples"]
    for run in (
        "xception-synthetic",
        "simplenet-synthetic",
    ):  # their data did not change, their checkpoint will
        assert lines[f"curves-{run}"] == f"would run (after train-{run}, which rewrites its input)"
    code, plan = call(study.args + ["--dry_run"])  # the folder as it was: up to date again
    assert parse_plan(plan)["numerical-xception-synthetic"] == "up to date, would skip"


def test_failing_step_stops_the_study_and_names_step_and_log(study, tmp_path):
    broken = make_tree(str(tmp_path / "broken"), COUNTS, seed=5)
    fake_dir = os.path.join(broken, "synthetic_dataset", "train", "fake")
    for name in os.listdir(fake_dir):  # no fake training image: the samples figure cannot be made
        os.remove(os.path.join(fake_dir, name))
    figure = os.path.join(study.figures, "datasets_samples.png")
    with open(figure, "rb") as handle:
        figure_bytes = handle.read()
    json_path = os.path.join(study.out, "fakes_dataset_SimpleNet_Adam.json")
    runs_before = load_json(json_path)
    args = [a if a != study.data else broken for a in study.args]
    code, output = call(args + ["--steps", "samples", "train-simplenet-fakes"])
    assert code == 1
    log = os.path.join(study.out, "logs", "samples.log")
    assert "step samples failed (exit code" in output and f"see its log {log}" in output
    assert re.search(
        r"===== exit code [1-9]\d* after [\d.]+ s \(CPU [\d.]+ s, peak memory \d+ MB\)\n$", read(log)
    )
    status = statuses(study.work)
    assert status["samples"] == "failed" and status["train-simplenet-fakes"] == "not reached"
    assert load_json(json_path) == runs_before  # the study stopped before training
    with open(figure, "rb") as handle:
        assert handle.read() == figure_bytes  # earlier outputs are kept
    summary = summary_of(study.work)
    assert summary["status"]["failed"] == "samples" and summary["status"]["log"] == log
    assert "step samples failed" in read(os.path.join(study.out, "study_report.md"))


def test_a_hand_run_into_the_workdir_is_not_up_to_date(study):
    """A training run by hand into the study's folders (another lr and batch) makes the study's
    training step stale, and the report gives that run's own protocol (run last: it changes the
    study's folders)."""
    hand = [
        sys.executable,
        os.path.join(ROOT, "train_main.py"),
        "-m",
        "SimpleNet",
        "-d",
        "fakes_dataset",
        "-o",
        "Adam",
        "--lr",
        "0.01",
        "-b",
        "8",
        "-e",
        "1",
        "--data_root",
        study.data,
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--no_progress",
        "--out_dir",
        study.out,
        "--checkpoint_dir",
        os.path.join(study.work, "checkpoints"),
    ]
    done = subprocess.run(hand, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    code, plan = call(study.args + ["--dry_run"])
    assert code == 0, plan
    lines = parse_plan(plan)
    json_path = os.path.join(study.out, "fakes_dataset_SimpleNet_Adam.json")
    assert lines["train-simplenet-fakes"].startswith("would run (output ") and lines[
        "train-simplenet-fakes"
    ].endswith("was changed since this step made it)")
    assert lines["curves-simplenet-fakes"] == f"would run (input {json_path} changed)"
    assert lines["train-simplenet-synthetic"] == "up to date, would skip"
    code, output = call(study.args + ["--steps", "report"])
    assert code == 0, output
    md = read(os.path.join(study.out, "study_report.md"))
    assert "SimpleNet on fakes_dataset: Adam, lr 0.01, batch 8, 1 epochs" in md
    assert "SimpleNet on fakes_dataset: val " in md
    assert "lr 0.01 instead of 0.001; batch 8 instead of 32" in md
    assert "SimpleNet on synthetic_dataset: Adam, lr 0.001, batch 4, 1 epochs, precise BatchNorm over 2" in md
    assert "SimpleNet on fakes_dataset: Adam, lr 0.01, batch 8, 1 epochs, precise BatchNorm off" in md


def test_interrupted_training_is_resumed_not_restarted(tiny_root, tmp_path, monkeypatch):
    """Ctrl-C while the training step runs (after its first epoch is logged), then a re-run: the
    study continues the same run from _last.pt, and leaves no other checkpoint behind."""
    work = str(tmp_path / "w")
    args = [
        "--data_root",
        tiny_root,
        "--workdir",
        work,
        "--steps",
        "train-simplenet-fakes",
        "--simplenet_epochs",
        "2",
        "-b",
        "4",
        "--device",
        "cpu",
        "--num_workers",
        "0",
        "--no_progress",
        "--precise_bn",
        "0",
    ]
    shown = Console.output

    def interrupt_after_epoch_1(self, line):
        shown(self, line)
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Console, "output", interrupt_after_epoch_1)
    code, output = call(args)
    assert code == 130, output
    json_path = os.path.join(work, "out", "fakes_dataset_SimpleNet_Adam.json")
    [first] = load_json(json_path)
    assert len(first["val_acc"]) == 1 and first["completed"] is False
    monkeypatch.setattr(Console, "output", shown)
    code, output = call(args)
    assert code == 0, output
    assert "running (resuming its interrupted training after epoch 1)" in output
    [run] = load_json(json_path)  # the same run, continued: not a second one
    assert run["run_id"] == first["run_id"] and len(run["val_acc"]) == 2 and run["completed"] is True
    assert run["val_acc"][0] == first["val_acc"][0]
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == [
        "fakes_dataset_SimpleNet_Adam.pt",
        "fakes_dataset_SimpleNet_Adam_last.pt",
    ]
    assert (
        torch.load(os.path.join(work, "checkpoints", "fakes_dataset_SimpleNet_Adam.pt"), weights_only=True)[
            "run_id"
        ]
        == run["run_id"]
    )
    code, output = call(args)
    assert code == 0 and statuses(work)["train-simplenet-fakes"] == "skipped (up to date)"


def test_missing_prerequisite_names_the_step_that_makes_it(tiny_root, tmp_path):
    code, output = call(
        [
            "--data_root",
            tiny_root,
            "--workdir",
            str(tmp_path),
            "--no_progress",
            "--steps",
            "numerical-simplenet-fakes",
        ]
    )
    assert code == 1
    assert "step numerical-simplenet-fakes needs" in output and "train-simplenet-fakes" in output
    assert statuses(str(tmp_path))["numerical-simplenet-fakes"] == "not run (missing input)"
    report = read(os.path.join(str(tmp_path), "out", "study_report.md"))
    assert "The study stopped: step numerical-simplenet-fakes needs" in report and "see its log" not in report


# ----------------------------------------------------------------------------- selection
def _names(selected):
    return [step.name for step in selected]


def test_step_selection_by_name_kind_run_and_pattern():
    settings = run_study.make_settings(run_study.build_parser().parse_args([]), "root", [])
    plan = study_plan.build_plan(settings)
    assert _names(plan) == STEPS
    # what --help and the selection errors list is the plan itself
    assert study_plan.step_names() == _names(plan) + ["report"]
    assert set(study_plan.STEP_KINDS) == {step.kind for step in plan} | {"report"}
    selected, report = study_plan.select_steps(["train"], None)
    assert selected == STEPS[2:5] and report
    assert study_plan.select_steps(["gradcam-*"], None)[0] == [
        "gradcam-simplenet-fakes",
        "gradcam-simplenet-synthetic",
        "gradcam-xception-synthetic",
    ]
    assert study_plan.select_steps(["xception-synthetic"], None)[0] == [
        "train-xception-synthetic",
        "curves-xception-synthetic",
        "numerical-xception-synthetic",
        "gradcam-xception-synthetic",
        "saliency-xception-synthetic",
    ]
    selected, report = study_plan.select_steps(None, ["saliency,report", "samples"])
    assert len(selected) == len(STEPS) - 3 and not report
    with pytest.raises(run_study.UserError, match="--skip trian: matches no step"):
        study_plan.select_steps(None, ["trian"])
    for flag in ("--steps", "--skip"):  # an empty list is not 'every step'
        code, output = call([flag, "", "--dry_run"])
        lines = output.strip().splitlines()
        assert (
            code == 2
            and len(lines) == 1
            and lines[0].endswith(
                f": error: {flag}: no step named; give at least one (see --help), or leave {flag} out"
            )
        ), output


def test_study_protocol_and_flags_reach_the_commands():
    args = run_study.build_parser().parse_args([])
    commands = {
        s.name: s.command
        for s in study_plan.build_plan(run_study.make_settings(args, "root", ["--no_pretrained"]))
    }
    for tag, epochs in (("simplenet-fakes", "5"), ("simplenet-synthetic", "5"), ("xception-synthetic", "2")):
        command = " ".join(commands[f"train-{tag}"])
        assert "-o Adam --lr 0.001 -b 32" in command and f"-e {epochs} " in command
    assert commands["train-xception-synthetic"][-1] == "--no_pretrained"
    assert "--precise_bn" not in " ".join(map(" ".join, commands.values()))  # your data: the study's protocol
    demo = run_study.make_settings(run_study.build_parser().parse_args([]), "root", [], demo=True)
    commands = {s.name: s.command for s in study_plan.build_plan(demo)}
    for tag in ("simplenet-fakes", "simplenet-synthetic", "xception-synthetic"):  # the demo's small splits
        assert " --precise_bn 64 " in " ".join(commands[f"train-{tag}"]) + " "
    assert not any("--precise_bn" in c for name, c in commands.items() if not name.startswith("train"))
    assert "--no_pretrained" not in commands["train-simplenet-fakes"]
    assert " ".join(commands["gradcam-xception-synthetic"]).endswith("--faithfulness_images 16")
    steps = {s.name: s for s in study_plan.build_plan(run_study.make_settings(args, "root", []))}
    for tag in ("simplenet-fakes", "xception-synthetic"):  # the curves of the analysed checkpoint's run
        checkpoint = next(p for p in steps[f"train-{tag}"].outputs if p.endswith("_Adam.pt"))
        curves = steps[f"curves-{tag}"]
        assert curves.args[curves.args.index("-cpp") + 1] == checkpoint and checkpoint in curves.inputs
    args = run_study.build_parser().parse_args(
        ["--epochs", "3", "--xception_epochs", "1", "-b", "8", "--device", "cuda", "--precise_bn", "0"]
    )
    commands = {
        s.name: " ".join(s.command) for s in study_plan.build_plan(run_study.make_settings(args, "root", []))
    }
    assert "-b 8 -e 3 " in commands["train-simplenet-synthetic"]
    assert "-b 8 -e 1 " in commands["train-xception-synthetic"]
    assert "--device cuda" in commands["gradcam-xception-synthetic"]
    assert "--activation_checkpointing" not in " ".join(commands.values())
    assert "--precise_bn" not in " ".join(commands.values())  # 0: train_main.py's own default
    for flag in ("--run_name", "--figure_format", "--dpi"):  # the defaults: the commands stay as they were
        assert flag not in " ".join(commands.values()), flag
    args = run_study.build_parser().parse_args(["--run_name", "r1", "--figure_format", "pdf", "--dpi", "300"])
    steps = study_plan.build_plan(run_study.make_settings(args, "root", []))
    plotting = {
        "samples",
        "spectrum",
        "curves",
        "numerical",
        "gradcam",
        "robustness",
        "saliency",
        "cross-dataset",
    }
    for step in steps:
        command = " ".join(step.command) + " "
        assert ("--figure_format pdf --dpi 300 " in command) == (step.kind in plotting), step.name
        assert ("--run_name r1 " in command) == (step.run is not None), step.name
    args = run_study.build_parser().parse_args(["--activation_checkpointing"])
    commands = {s.name: s.command for s in study_plan.build_plan(run_study.make_settings(args, "root", []))}
    assert [name for name, command in commands.items() if "--activation_checkpointing" in command] == [
        "train-xception-synthetic"
    ]


def test_clean_line_keeps_what_a_terminal_shows():
    assert clean_line("epoch 1:  10%|#\repoch 1: 100%|##########| 3/3") == "epoch 1: 100%|##########| 3/3"
    assert clean_line("\x1b[Adone  \r") == "done"
    assert clean_line("10%\r100%\r") == "100%"  # a trailing return after an earlier one
    assert clean_line("plain") == "plain"


def test_the_plan_is_built_once_and_only_a_chosen_training_asks_for_weights(tiny_root, tmp_path, monkeypatch):
    built, probed = [], []
    monkeypatch.setattr(run_study, "build_plan", lambda s: built.append(s) or study_plan.build_plan(s))
    monkeypatch.setattr(run_study, "choose_xception_weights", lambda args, console: probed.append(1))
    base = ["--data_root", tiny_root, "--workdir", str(tmp_path), "--dry_run", "--steps"]
    code, plan = call(base + ["numerical"])
    assert code == 0, plan
    assert len(built) == 1 and not probed  # no XceptionBased training chosen: no weights search
    assert [line.split("]")[1].split()[0] for line in plan.splitlines() if line.startswith("[")] == STEPS


# ----------------------------------------------------------------------------- ImageNet weights
def _train_xception_line(plan: str) -> str:
    return next(line for line in plan.splitlines() if "train_main.py -m XceptionBased" in line)


def test_no_weights_falls_back_to_random_init_loudly(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    monkeypatch.setenv("XCEPTION_NO_DOWNLOAD", "1")
    monkeypatch.delenv("XCEPTION_WEIGHTS", raising=False)
    base = ["--data_root", tiny_root, "--workdir", str(tmp_path / "w"), "--dry_run"]
    code, plan = call(base)
    assert code == 0, plan
    assert "NO IMAGENET WEIGHTS FOUND" in plan and "RANDOM INITIALISATION" in plan
    assert _train_xception_line(plan).endswith("--no_pretrained")
    assert "--dry_run: no download was tried" in plan
    code, output = call(base + ["--require_pretrained"])
    assert code == 2 and "No ImageNet weights found" in output
    code, output = call(base + ["--xception_weights", str(tmp_path / "missing.pth")])
    assert code == 2 and "missing.pth" in output and "RANDOM" not in output


def test_found_weights_are_used_and_named(tiny_root, tmp_path, monkeypatch):
    import xception

    monkeypatch.delenv("XCEPTION_WEIGHTS", raising=False)
    weights = tmp_path / "xception-c0a72b38.pth.tar"
    torch.save(xception.Xception().state_dict(), weights)
    code, plan = call(
        [
            "--data_root",
            tiny_root,
            "--workdir",
            str(tmp_path / "w"),
            "--dry_run",
            "--xception_weights",
            str(weights),
        ]
    )
    assert code == 0, plan
    assert "RANDOM" not in plan and f"ImageNet weights {weights}" in plan
    assert _train_xception_line(plan).endswith(f"--xception_weights {weights}")


# ----------------------------------------------------------------------------- demo data
def test_demo_data_made_once_when_no_datasets_are_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../Assignment4_datasets does not exist from here
    monkeypatch.delenv("FACES_DATA_ROOT", raising=False)
    assert not os.path.exists(os.path.join("..", "Assignment4_datasets"))
    args = ["--workdir", "w", "--demo_scale", "0.02", "--steps", "samples", "--no_progress"]
    code, output = call(args)
    assert code == 0, output
    assert "using DEMO data in w/data/demo" in output and "generating the demo datasets" in output
    counts = summary_of("w")["data"]["counts"]
    assert counts["fakes_dataset"]["train"]["real"] == 2 * counts["fakes_dataset"]["train"]["fake"] > 0
    assert all(
        len(os.listdir(os.path.join("w", "data", "demo", d, s, c))) == counts[d][s][c]
        for d in counts
        for s in counts[d]
        for c in ("real", "fake")
    )
    assert summary_of("w")["data"]["demo"] is True
    assert "DEMO DATA" in read(os.path.join("w", "out", "study_report.md"))
    assert os.path.isfile(os.path.join("w", "figures", "datasets_samples.png"))
    code, output = call(args)
    assert code == 0 and "reusing it" in output and "generating" not in output
    assert statuses("w")["samples"] == "skipped (up to date)"
    code, output = call(args[:3] + ["0.05", "--steps", "samples"])
    assert code == 2 and "--remake_demo" in output


def test_demo_dir_with_other_data_is_never_replaced(tmp_path, monkeypatch):
    """An incomplete --demo_dir that run_study.py did not make (no stamp) is refused, not replaced."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACES_DATA_ROOT", raising=False)
    mine = tmp_path / "mine" / "fakes_dataset" / "train" / "real"
    mine.mkdir(parents=True)
    (mine / "keep.png").write_bytes(b"not generated")
    code, output = call(
        [
            "--workdir",
            "w",
            "--demo_dir",
            "mine",
            "--demo_scale",
            "0.02",
            "--steps",
            "samples",
            "--no_progress",
        ]
    )
    assert code == 2, output
    assert os.path.join("mine", "fakes_dataset") in output and "--remake_demo" in output
    assert (mine / "keep.png").read_bytes() == b"not generated"
    assert not os.path.exists(tmp_path / "mine" / "synthetic_dataset")


# ----------------------------------------------------------------------------- shell set-up
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_env_installs_only_when_requirements_change(tmp_path):
    """scripts/setup_env.sh: a new venv, then pip only when the requirements file changed (also
    under a path with a space); a venv without pip is made again."""
    tmp_path = tmp_path / "with space"
    tmp_path.mkdir()
    (tmp_path / "base.txt").write_text("# nothing to install\n")
    (tmp_path / "dev.txt").write_text("-r base.txt\n")
    script = (
        f"set -euo pipefail; source {shlex.quote(ROOT)}/scripts/setup_env.sh; "
        f'setup_env {shlex.quote(str(tmp_path / "dev.txt"))}; echo "python=$VENV_PYTHON"'
    )
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "PYTHON": sys.executable, "PIP_NO_INDEX": "1"}

    def setup() -> str:
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr + done.stdout

    first = setup()
    assert "creating the virtual environment" in first and "installing dev.txt" in first
    assert os.access(tmp_path / "venv" / "bin" / "python", os.X_OK)
    second = setup()
    assert "creating" not in second and "installing" not in second
    (tmp_path / "base.txt").write_text("# nothing to install, changed\n")  # an included file
    assert "installing dev.txt" in setup()
    bad = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "VENV": str(tmp_path / "venv2"), "PYTHON": "no-such-python"},
    )
    assert bad.returncode != 0 and "no-such-python not found" in bad.stderr
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", "--without-pip", str(tmp_path / "venv")], check=True
    )
    repaired = setup()  # e.g. made where python3-venv was missing: no pip in it
    assert "creating the virtual environment" in repaired and "installing dev.txt" in repaired


def test_run_scripts_share_the_setup_and_call_their_commands():
    for name, command in (
        ("run_me.sh", 'exec "$VENV_PYTHON" "$HERE/run_study.py" "$@"'),
        ("run_tests.sh", 'exec "$VENV_PYTHON" -m pytest -q "$@"'),
    ):
        path = os.path.join(ROOT, name)
        assert os.access(path, os.X_OK), f"{name} is not executable"
        text = read(path)
        assert 'source "$HERE/scripts/setup_env.sh"' in text and command in text
    assert 'setup_env "$HERE/requirements-dev.txt"' in read(os.path.join(ROOT, "run_tests.sh"))
    assert "testpaths = tests" in read(os.path.join(ROOT, "pytest.ini"))
    assert read(os.path.join(ROOT, "requirements-dev.txt")).splitlines()[1:3] == [
        "-r requirements.txt",
        "pytest>=8.0",
    ]


# ----------------------------------------------------------------------------- any dataset
def test_any_dataset_folder_for_the_spectra(tmp_path):
    """--datasets takes any dataset folder under the data root (here one in the 0_real/1_fake
    layout): its spectrum is made, counted and reported; an unknown name is a one-line error that
    lists the datasets found."""
    from conftest import make_split

    data = make_tree(str(tmp_path / "data"), COUNTS, seed=6)
    for split, (n_real, n_fake) in COUNTS.items():
        make_split(os.path.join(data, "celebdf", split), n_real, n_fake, seed=7)
        for old, new in (("real", "0_real"), ("fake", "1_fake")):
            os.rename(os.path.join(data, "celebdf", split, old), os.path.join(data, "celebdf", split, new))
    work = str(tmp_path / "w")
    base = ["--data_root", data, "--workdir", work, "--no_progress", "--device", "cpu"]
    code, output = call(base + ["--steps", "spectrum", "--datasets", "fakes_dataset", "celebdf"])
    assert code == 0, output
    assert os.path.isfile(os.path.join(work, "figures", "celebdf_spectrum.png"))
    summary = summary_of(work)
    assert summary["data"]["counts"]["celebdf"]["test"] == {"real": 2, "fake": 2}
    assert summary["beyond"]["spectrum"]["celebdf"]["n_fake"] == 2
    assert set(summary["beyond"]["spectrum"]) == {"fakes_dataset", "celebdf"}
    md = read(os.path.join(work, "out", "study_report.md"))
    assert "\ncelebdf: 2 real, 2 fake test images; largest fake - real difference" in md
    assert "| celebdf | test | 2 | 2 | 4 |" in md
    code, output = call(base + ["--dry_run", "--datasets", "nosuch"])
    lines = output.strip().splitlines()
    assert code == 2 and "'nosuch'" in lines[-1] and "celebdf, fakes_dataset, synthetic_dataset" in lines[-1]
