"""--run_name: a suffix that keeps the files of runs with other flags apart, recorded in the run
and its checkpoints, and followed by the analyses, the curve plots and the cross-dataset matrix."""

from __future__ import annotations

import json
import os

import pytest

import cross_dataset_analysis
import numerical_analysis
import plot_accuracy_and_loss
import train_main
from conftest import analysis_argv, one_line_error, train_argv
from lib.checkpoints import default_checkpoint, torch_load
from lib.cli import run_cli

STEM = "fakes_dataset_SimpleNet_Adam"


@pytest.fixture(scope="module")
def two_runs(tiny_root, module_tmp):
    """Two one-epoch trainings into one folder, --lr 1e-3 named lr3 and --lr 1e-4 named lr4;
    returns the folder."""
    work = module_tmp("two_runs")
    for name, lr in (("lr3", "0.001"), ("lr4", "0.0001")):
        argv = train_argv(tiny_root, work, "-o", "Adam", "-b", "4", "-e", "1", "--lr", lr, "--run_name", name)
        assert train_main.main(argv) == 0
    return work


def test_named_runs_share_no_file_and_record_their_names(two_runs):
    files = {name: sorted(os.listdir(two_runs / name)) for name in ("out", "ck")}
    assert files["out"] == sorted(f"{STEM}_{n}.{ext}" for n in ("lr3", "lr4") for ext in ("json", "csv"))
    assert files["ck"] == sorted(f"{STEM}_{n}{end}" for n in ("lr3", "lr4") for end in (".pt", "_last.pt"))
    for name, lr in (("lr3", 1e-3), ("lr4", 1e-4)):
        (run,) = json.loads((two_runs / "out" / f"{STEM}_{name}.json").read_text())
        assert run["run_name"] == name and run["optimizer"]["params"]["lr"] == lr
        for end in (".pt", "_last.pt"):
            checkpoint = torch_load(str(two_runs / "ck" / f"{STEM}_{name}{end}"))  # weights_only=True
            assert checkpoint["run_name"] == name
    with open(two_runs / "out" / f"{STEM}_lr4.csv") as handle:
        assert len(handle.read().splitlines()) == 2  # the header and its one epoch: not lr3's


def test_without_a_name_the_course_names_stay(tiny_root, tmp_path):
    assert train_main.main(train_argv(tiny_root, tmp_path, "-o", "Adam", "-b", "4", "-e", "1")) == 0
    assert sorted(os.listdir(tmp_path / "out")) == [f"{STEM}.csv", f"{STEM}.json"]
    assert sorted(os.listdir(tmp_path / "ck")) == [f"{STEM}.pt", f"{STEM}_last.pt"]
    (run,) = json.loads((tmp_path / "out" / f"{STEM}.json").read_text())
    assert run["run_name"] is None


def test_analysis_names_its_outputs_after_the_checkpoints_run(two_runs, tiny_root, tmp_path, capsys):
    checkpoint = str(two_runs / "ck" / f"{STEM}_lr4.pt")
    argv = analysis_argv(tiny_root, tmp_path, "-cpp", checkpoint, "--bootstrap", "10")
    assert run_cli(numerical_analysis.main, argv) == 0, capsys.readouterr().err
    stem = "fakes_dataset_SimpleNet_lr4"
    suffixes = ("roc_curve", "det_curve", "reliability_diagram")
    assert sorted(os.listdir(tmp_path / "fig")) == sorted(f"{stem}_{s}.png" for s in suffixes)
    assert sorted(os.listdir(tmp_path / "out")) == [f"{stem}_metrics.json", f"{stem}_scores.csv"]
    # the same name given is fine; another one names both
    assert run_cli(numerical_analysis.main, argv + ["--run_name", "lr4"]) == 0
    capsys.readouterr()
    one_line_error(capsys, numerical_analysis.main, argv + ["--run_name", "lr3"], "'lr4'", "--run_name lr3")


def test_curve_plot_follows_the_runs_name(two_runs, tmp_path, capsys):
    runs_json = str(two_runs / "out" / f"{STEM}_lr3.json")
    assert plot_accuracy_and_loss.main(["-j", runs_json, "--figures_dir", str(tmp_path)]) == 0
    expected = [f"fakes_dataset_SimpleNet_lr3_{s}.png" for s in ("accuracies_plot", "losses_plot")]
    assert sorted(os.listdir(tmp_path)) == expected
    argv = ["-j", runs_json, "--figures_dir", str(tmp_path), "--run_name", "other"]
    one_line_error(capsys, plot_accuracy_and_loss.main, argv, "'lr3'", "--run_name other")


def test_default_checkpoint_follows_the_name(two_runs, monkeypatch):
    monkeypatch.chdir(two_runs)
    found = default_checkpoint("SimpleNet", "fakes_dataset", checkpoint_dir="ck", run_name="lr3")
    assert found == os.path.join("ck", f"{STEM}_lr3.pt")
    with pytest.raises(Exception, match="no checkpoint found"):
        default_checkpoint("SimpleNet", "fakes_dataset", checkpoint_dir="ck", run_name="lr5")
    with pytest.raises(Exception, match="no checkpoint found"):  # the unnamed run's file is not there
        default_checkpoint("SimpleNet", "fakes_dataset", checkpoint_dir="ck")


def test_cross_dataset_finds_named_checkpoints_and_keeps_their_json_apart(
    two_runs, tiny_root, tmp_path, capsys
):
    argv = ["--checkpoint_dir", str(two_runs / "ck"), *analysis_argv(tiny_root, tmp_path, "-b", "4")]
    assert run_cli(cross_dataset_analysis.main, argv) == 0, capsys.readouterr().err
    matrix = json.loads((tmp_path / "out" / "cross_dataset.json").read_text())["cross_dataset"]
    assert [row["run_name"] for row in matrix["rows"]] == ["lr3", "lr4"]  # no _last.pt row
    assert all(row["label"].startswith(f"SimpleNet, Adam {row['run_name']},") for row in matrix["rows"])
    for name in ("lr3", "lr4"):
        section = json.loads((tmp_path / "out" / f"fakes_dataset_SimpleNet_{name}_metrics.json").read_text())
        assert [row["run_name"] for row in section["cross_dataset"]["rows"]] == [name]


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a b", "last", "x_last"])
def test_a_name_that_cannot_name_files_is_a_one_line_error(name, tiny_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main.main(train_argv(tiny_root, tmp_path, "-e", "1", "--run_name", name))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "argument --run_name" in err[0] and "letters, digits" in err[0]
    assert not (tmp_path / "out").exists()
