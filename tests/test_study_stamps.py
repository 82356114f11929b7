"""The study's skip rule and resume decision (lib/study/stamps.py), on small files: no training."""

from __future__ import annotations

import json
import os
import shutil
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
        "numerical_analysis.py",
        ["--flag", "1"],
        outputs={str(tmp_path / "fig.png"): (), str(tmp_path / "metrics.json"): ("numerical",)},
        inputs=[str(tmp_path / "input.json")],
        name="numerical-x",
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
    step.outputs[str(metrics)] = ("numerical", "uncertainty")
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


def test_an_edited_library_module_reruns_only_the_steps_that_import_it(tmp_path, monkeypatch):
    """The code a step depends on is its script and every repository module it imports, followed
    into lib/: editing lib/deep.py (imported by script a through lib/helper.py) makes step a
    stale and leaves step b, which imports only lib/other.py, up to date."""
    from lib.study import stamps as study_stamps

    repo = tmp_path / "repo"
    (repo / "lib").mkdir(parents=True)
    sources = {
        "a.py": "import os\nfrom lib.helper import f\n",
        "b.py": "import lib.other\n",
        "lib/__init__.py": "",
        "lib/helper.py": "from lib import deep\n\n\ndef f():\n    return deep.g()\n",
        "lib/deep.py": "def g():\n    return 1\n",
        "lib/other.py": "import torch\n",
    }
    for name, text in sources.items():
        _write(repo / name, text)
    monkeypatch.setattr(study_stamps, "HERE", str(repo))
    study_stamps.code_files.cache_clear()
    try:
        assert study_stamps.code_files("a.py") == ("a.py", "lib/__init__.py", "lib/deep.py", "lib/helper.py")
        assert study_stamps.code_files("b.py") == ("b.py", "lib/__init__.py", "lib/other.py")
        stamps = Stamps(str(tmp_path / "out"))
        steps = {}
        for name in ("a", "b"):
            figure = tmp_path / f"{name}.png"
            steps[name] = Step(f"{name}.py", [], outputs={str(figure): ()}, name=name)
            stamp = stamps.start(steps[name], None)
            _write(figure, "png")
            stamps.finish(steps[name], stamp, 1.0, 0.5, 100)

        def edit(name: str) -> None:
            """Change the module's text, with a modification time clearly after the stamps."""
            path = repo / name
            _write(path, path.read_text() + "# edited\n")
            later = time.time_ns() + 10**9
            os.utime(path, ns=(later, later))

        assert all(stale_reason(step, stamps.read(step)) is None for step in steps.values())
        edit("lib/deep.py")
        assert stale_reason(steps["a"], stamps.read(steps["a"])) == "code lib/deep.py changed"
        assert stale_reason(steps["b"], stamps.read(steps["b"])) is None
        edit("lib/other.py")
        assert stale_reason(steps["b"], stamps.read(steps["b"])) == "code lib/other.py changed"
    finally:
        study_stamps.code_files.cache_clear()  # the real repository's files again for later tests


def _data_step(tmp_path) -> tuple[Step, str]:
    """A step reading a split folder (real/ and fake/, two images each) and an earlier step's file;
    and the path of one of its images."""
    split = tmp_path / "data" / "test"
    for class_dir in ("real", "fake"):
        (split / class_dir).mkdir(parents=True)
        for i in range(2):
            (split / class_dir / f"img{i}.png").write_bytes(b"\x89PNG" + bytes([i]) * 100)
    return _step(tmp_path, data=[str(split)]), str(split / "fake" / "img1.png")


def test_data_copied_over_with_its_old_mtime_makes_it_stale(tmp_path):
    """``cp -p`` / ``rsync -a`` (here shutil.copy2) keep the modification time: another file's
    content put over a data file is noticed by its size, and a same-size one by its ctime."""
    step, image = _data_step(tmp_path)
    stamps = Stamps(str(tmp_path / "out"))
    old = os.stat(image)
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    other = tmp_path / "other.png"
    other.write_bytes(b"\x89PNG" + b"x" * 200)  # another size, and the data file's own old mtime
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
    shutil.copy2(other, image)
    assert os.stat(image).st_mtime_ns == old.st_mtime_ns  # the case the mtime alone misses
    split = os.path.dirname(os.path.dirname(image))
    assert stale_reason(step, stamps.read(step)) == f"data in {split} changed"
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    same_size = tmp_path / "same_size.png"
    same_size.write_bytes(b"\x89PNG" + b"y" * 200)
    os.utime(same_size, ns=(old.st_atime_ns, old.st_mtime_ns))
    before = os.stat(image)
    time.sleep(0.01)  # a later ctime also on file systems with coarse timestamps
    shutil.copy2(same_size, image)
    after = os.stat(image)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert stale_reason(step, stamps.read(step)) == f"data in {split} changed"


def test_an_input_replaced_by_a_copy_with_its_mtime_makes_it_stale(tmp_path):
    """An earlier step's file (a checkpoint) put back from a copy that kept its mtime and size."""
    step, stamps = _step(tmp_path), Stamps(str(tmp_path / "out"))
    backup = tmp_path / "backup.json"
    shutil.copy2(tmp_path / "input.json", backup)
    _run(step, stamps, tmp_path)
    time.sleep(0.01)
    shutil.copy2(backup, tmp_path / "input.json")
    assert stale_reason(step, stamps.read(step)) == f"input {tmp_path / 'input.json'} changed"


def test_a_class_folder_of_the_other_layout_is_read(tmp_path):
    """A split in the 0_real/1_fake layout: its images are part of the signature too."""
    split = tmp_path / "data" / "test"
    for class_dir in ("0_real", "1_fake"):
        (split / class_dir).mkdir(parents=True)
        (split / class_dir / "a.png").write_bytes(b"\x89PNG")
    step, stamps = _step(tmp_path, data=[str(split)]), Stamps(str(tmp_path / "out"))
    _run(step, stamps, tmp_path)
    (split / "1_fake" / "b.png").write_bytes(b"\x89PNG")
    assert stale_reason(step, stamps.read(step)) == f"data in {split} changed"


def test_a_file_read_when_it_exists_is_signed_present_or_absent(tmp_path):
    """A dataset's manifest.json (numerical) and the ImageNet weights (XceptionBased's training)
    lie outside the split folders: appearing, changing or going away makes the step stale; a
    stamp from before such files were signed (no key for them) stays up to date."""
    manifest = tmp_path / "manifest.json"
    step, stamps = _step(tmp_path, files=[str(manifest)]), Stamps(str(tmp_path / "out"))
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    _write(manifest, '{"images": []}')
    assert stale_reason(step, stamps.read(step)) == f"file {manifest} changed"
    _run(step, stamps, tmp_path)
    assert stale_reason(step, stamps.read(step)) is None
    os.remove(manifest)
    assert stale_reason(step, stamps.read(step)) == f"file {manifest} changed"
    stamp = json.loads(open(stamps.path(step)).read())
    stamp["inputs"].pop(f"file {manifest}")
    _write(stamps.path(step), json.dumps(stamp))
    assert stale_reason(step, stamps.read(step)) is None


def test_the_plan_signs_the_manifest_and_the_weights(tmp_path):
    import run_study
    from lib.study.plan import build_plan

    args = run_study.build_parser().parse_args(["--workdir", str(tmp_path)])
    plan = {
        s.name: s for s in build_plan(run_study.make_settings(args, "r", ["--xception_weights", "w.pth"]))
    }
    assert plan["numerical-simplenet-fakes"].files == [os.path.join("r", "fakes_dataset", "manifest.json")]
    assert plan["train-xception-synthetic"].files == ["w.pth"]
    assert plan["train-simplenet-fakes"].files == [] == plan["gradcam-simplenet-fakes"].files


def test_the_dry_run_runs_what_reads_a_file_an_earlier_step_would_rewrite(tmp_path, capsys):
    """A stale training makes its analyses stale once it has run: --dry_run says so beforehand,
    though their inputs are still the ones they read (the real run finds the checkpoint changed)."""
    from lib.study.runner import Console, Runner

    train = _step(tmp_path)  # numerical-x: reads input.json, writes fig.png
    analysis = Step(
        "numerical_analysis.py", [], {str(tmp_path / "b.txt"): ()}, [str(tmp_path / "fig.png")], name="num-x"
    )
    other = Step(
        "numerical_analysis.py",
        ["2"],
        {str(tmp_path / "c.txt"): ()},
        [str(tmp_path / "input.json")],
        name="other",
    )
    stamps = Stamps(str(tmp_path / "out"))
    _run(train, stamps, tmp_path)
    for step in (analysis, other):
        stamp = stamps.start(step, None)
        _write(next(iter(step.outputs)), "made")
        stamps.finish(step, stamp, 1.0, 0.5, 100)
    runner = Runner([train, analysis, other], stamps, force=False)
    runner.print_plan([train, analysis, other], True, Console(0, False, True))
    lines = capsys.readouterr().out.splitlines()
    assert all(line.endswith("up to date, would skip") for line in lines[0:6:2]), lines
    time.sleep(0.01)
    _write(tmp_path / "input.json", "[1]")  # the training's input changes: it would rewrite fig.png
    runner.print_plan([train, analysis, other], True, Console(0, False, True))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"would run (input {tmp_path / 'input.json'} changed)")
    assert lines[2].endswith("would run (after numerical-x, which rewrites its input)")
    assert lines[4].endswith(f"would run (input {tmp_path / 'input.json'} changed)")  # its own reason
