"""The study's skip rule and resume decision (study/stamps.py), on small files: no training."""

from __future__ import annotations

import json
import os
import time

import torch

from lib.study.plan import Step
from lib.study.stamps import Stamps, resume_reason, stale_reason


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def _step(tmp_path, **extra) -> Step:
    """A step that reads one input and writes a figure and the 'numerical' section of a JSON
    another step also writes."""
    _write(tmp_path / "input.json", "[]")
    return Step(
        "numerical-x",
        "numerical",
        None,
        "numerical_analysis.py",
        ["--flag", "1"],
        outputs=[str(tmp_path / "fig.png"), str(tmp_path / "metrics.json")],
        inputs=[str(tmp_path / "input.json")],
        sections={str(tmp_path / "metrics.json"): "numerical"},
        **extra,
    )


def _run(step: Step, stamps: Stamps, tmp_path) -> None:
    """What running the step does: stamp its start, write its outputs, stamp its end."""
    stamp = stamps.start(step, stamps.read(step))
    _write(tmp_path / "fig.png", "png")
    metrics = tmp_path / "metrics.json"
    content = json.loads(metrics.read_text()) if metrics.exists() else {}
    _write(metrics, json.dumps(content | {"numerical": {"auc": 0.5}}))
    stamps.finish(step, stamp, 1.0, 0.5, 100)


def test_up_to_date_only_with_its_own_outputs(tmp_path):
    step, stamps = _step(tmp_path), Stamps(str(tmp_path / "out"))
    assert stale_reason(step, stamps.read(step)) == "not run yet"
    stamp = stamps.start(step, None)
    assert stale_reason(step, stamps.read(step)) == "it did not finish last time"
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    # another step writes its own section of the shared JSON: still up to date
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    _write(tmp_path / "metrics.json", json.dumps(metrics | {"grad_cam": {"gap": 1}}))
    assert stale_reason(step, stamps.read(step)) is None
    # another command rewrites its figure: no longer this step's output
    _write(tmp_path / "fig.png", "another png")
    assert (
        stale_reason(step, stamps.read(step))
        == f"output {tmp_path / 'fig.png'} was changed since this step made it"
    )
    _run(step, stamps, tmp_path)
    _write(tmp_path / "metrics.json", json.dumps({"numerical": {"auc": 0.9}}))
    assert stale_reason(step, stamps.read(step)).endswith("metrics.json was changed since this step made it")
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    assert stamp.started_ns <= stamps.read(step).started_ns


def test_a_step_with_two_sections_needs_both(tmp_path):
    """numerical_analysis.py writes 'numerical' and 'uncertainty': the step is stale when either is
    missing or changed, not when another step's section changes."""
    metrics = tmp_path / "metrics.json"
    step, stamps = _step(tmp_path), Stamps(str(tmp_path / "out"))
    step.sections = {str(metrics): ("numerical", "uncertainty")}
    stamp = stamps.start(step, None)
    _write(tmp_path / "fig.png", "png")
    _write(metrics, json.dumps({"numerical": {"auc": 0.5}}))
    stamps.finish(step, stamp, 1.0, 0.5, 100)
    assert stale_reason(step, stamps.read(step)) == f"{metrics} has no 'uncertainty' section"
    both = {"numerical": {"auc": 0.5}, "uncertainty": {"ece": 0.1}}
    _write(metrics, json.dumps(both))
    stamp = stamps.start(step, stamps.read(step))
    stamps.finish(step, stamp, 1.0, 0.5, 100)
    assert stale_reason(step, stamps.read(step)) is None
    _write(metrics, json.dumps(both | {"robustness": {"auc": 1}}))  # another step's section
    assert stale_reason(step, stamps.read(step)) is None
    _write(metrics, json.dumps(both | {"uncertainty": {"ece": 0.2}}))
    assert stale_reason(step, stamps.read(step)) == f"output {metrics} was changed since this step made it"
    _write(metrics, json.dumps({"uncertainty": {"ece": 0.1}}))
    assert stale_reason(step, stamps.read(step)) == f"{metrics} has no 'numerical' section"


def test_newer_input_or_other_command_makes_it_stale(tmp_path):
    step, stamps = _step(tmp_path), Stamps(str(tmp_path / "out"))
    _run(step, stamps, tmp_path)
    later = time.time_ns() + 10**9
    os.utime(tmp_path / "input.json", ns=(later, later))
    assert stale_reason(step, stamps.read(step)) == f"input {tmp_path / 'input.json'} changed"
    _run(step, stamps, tmp_path)
    os.remove(tmp_path / "input.json")
    assert stale_reason(step, stamps.read(step)) == f"input {tmp_path / 'input.json'} is missing"
    _write(tmp_path / "input.json", "[]")
    _run(step, stamps, tmp_path)
    step.args = ["--flag", "2"]
    assert stale_reason(step, stamps.read(step)) == "its command changed"


def test_resume_only_its_own_unfinished_training(tmp_path):
    last = tmp_path / "x_last.pt"
    step = _step(tmp_path, resume_from=str(last))
    stamps = Stamps(str(tmp_path / "out"))

    def save(argv, completed):
        torch.save({"run": {"argv": argv, "completed": completed}, "epoch": 1, "model": {}}, last)

    stamps.start(step, None)  # started, then interrupted
    assert resume_reason(step, stamps.read(step)) is None  # no _last.pt yet
    save(["train_main.py", *step.args], False)
    assert resume_reason(step, stamps.read(step)) == "resuming its interrupted training after epoch 1"
    save(["train_main.py", *step.args, "--resume"], False)  # resumed once already
    assert resume_reason(step, stamps.read(step)) is not None
    save(["train_main.py", "--flag", "9"], False)  # another command's run
    assert resume_reason(step, stamps.read(step)) is None
    save(["train_main.py", *step.args], True)  # finished: a new run starts
    assert resume_reason(step, stamps.read(step)) is None
    save(["train_main.py", *step.args], False)
    _run(step, stamps, tmp_path)  # the step finished: nothing to resume
    assert resume_reason(step, stamps.read(step)) is None
