"""The samples figure picks by label; the curve plots follow the contract's names and titles."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import plot_accuracy_and_loss
import plot_samples_of_faces_datasets as samples
from conftest import make_tree


@pytest.fixture(scope="module")
def two_to_one_root(module_tmp):
    """Train splits of 2 real : 1 fake, where a 'second half' pick would often be real."""
    return make_tree(str(module_tmp("two_to_one")), counts={"train": (6, 3), "val": (2, 1), "test": (2, 1)})


@pytest.mark.parametrize("seed", range(4))
def test_samples_are_picked_by_label(two_to_one_root, seed):
    picked = samples.sample_images(two_to_one_root, seed)
    titles = [title for title, *_ in picked]
    assert titles == [
        "Deepfakes dataset real image",
        "Deepfakes dataset fake image",
        "Synthetic images dataset real image",
        "Synthetic images dataset fake image",
    ]
    for title, image, label, path in picked:
        kind = "fake" if "fake image" in title else "real"
        assert label == (1 if kind == "fake" else 0)
        assert os.path.basename(os.path.dirname(path)) == kind  # the file really is in real/ or fake/
        assert np.array_equal(image, np.array(Image.open(path).convert("RGB")))


def test_samples_figure_written(two_to_one_root, tmp_path):
    assert samples.main(["--data_root", two_to_one_root, "--figures_dir", str(tmp_path)]) == 0
    with Image.open(tmp_path / "datasets_samples.png") as image:
        assert image.size[0] > 400 and image.size[1] > 400


def _runs(n_epochs=(3, 4)):
    runs = []
    for n in n_epochs:
        run = {"model": "SimpleNet", "dataset": "fakes_dataset", "optimizer": {"name": "Adam", "params": {}}}
        for split in ("train", "val", "test"):
            run[f"{split}_loss"] = list(np.linspace(1.0, 0.5, n))
            run[f"{split}_acc"] = list(np.linspace(50, 80, n))
        runs.append(run)
    return runs


def test_curve_plots_use_last_run_by_default(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_runs()))
    plotted = []
    real = plot_accuracy_and_loss.plot_metric
    monkeypatch.setattr(
        plot_accuracy_and_loss,
        "plot_metric",
        lambda run, metric, ylabel, title, out, args: (
            plotted.append((len(run["train_loss"]), title)),
            real(run, metric, ylabel, title, out, args),
        )[1],
    )
    argv = ["-m", "SimpleNet", "-j", str(path), "-d", "fakes_dataset", "--figures_dir", str(tmp_path)]
    assert plot_accuracy_and_loss.main(argv) == 0
    assert plotted == [
        (4, "loss vs epoch for SimpleNet model on Deepfakes dataset"),
        (4, "accuracy vs epoch for SimpleNet model on Deepfakes dataset"),
    ]
    assert (tmp_path / "fakes_dataset_SimpleNet_losses_plot.png").is_file()
    assert (tmp_path / "fakes_dataset_SimpleNet_accuracies_plot.png").is_file()
    plotted.clear()
    assert plot_accuracy_and_loss.main(argv + ["--run", "1"]) == 0
    assert [n for n, _ in plotted] == [3, 3]


@pytest.mark.parametrize(
    "content, needle", [(None, "no such metrics JSON"), ("{oops", "corrupt"), ("[]", "holds no runs")]
)
def test_curve_plot_bad_json_is_one_line_error(tmp_path, content, needle, capsys):
    from lib.cli import run_cli

    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    code = run_cli(plot_accuracy_and_loss.main, ["-j", str(path), "--figures_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and str(path) in err and len(err.splitlines()) == 1
    if content is not None:
        assert path.read_text() == content  # never touched


def test_curve_plots_of_the_run_a_checkpoint_or_an_id_names(tmp_path, monkeypatch, capsys):
    """--checkpoint_path plots the run that saved that best checkpoint (its recorded run id), and
    --run_id that run, wherever it is in the JSON; an id the JSON lacks is a one-line error."""
    import torch

    from lib.cli import run_cli

    runs = _runs((3, 4, 5))
    for run, run_id in zip(runs, ("a", "b", "c")):
        run["run_id"] = run_id
    path = tmp_path / "m.json"
    path.write_text(json.dumps(runs))
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": {}, "epoch": 2, "run_id": "b"}, checkpoint)
    plotted = []
    monkeypatch.setattr(
        plot_accuracy_and_loss, "plot_metric", lambda run, *args: plotted.append(len(run["train_loss"]))
    )
    argv = ["-j", str(path), "--figures_dir", str(tmp_path)]
    assert plot_accuracy_and_loss.main(argv + ["-cpp", str(checkpoint)]) == 0
    assert plot_accuracy_and_loss.main(argv + ["--run_id", "a"]) == 0
    assert plotted == [4, 4, 3, 3]
    torch.save({"model": {}, "run_id": "gone"}, checkpoint)
    torch.save({"model": {}}, tmp_path / "old.pt")
    for extra, needle in (
        (["-cpp", str(checkpoint)], "holds no run with id gone (its 3 runs: a, b, c)"),
        (["-cpp", str(tmp_path / "old.pt")], "records no run id"),
        (["--run_id", "x"], "holds no run with id x"),
    ):
        assert run_cli(plot_accuracy_and_loss.main, argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert plotted == [4, 4, 3, 3]  # nothing plotted from another run
