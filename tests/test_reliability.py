"""Reliability: concurrent runs on the same files, a diverging run, non-finite checkpoints, --resume
with changed flags, and the smaller ways a careful user could lose data or get a wrong result
without a word (empty class folders, bad output paths, disk full, odd seeds and devices, image
formats, mislabelled plots, cut-off errors)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import grad_cam_analysis
import numerical_analysis
import plot_accuracy_and_loss
import plot_samples_of_faces_datasets
import saliency_map
import train_main
import utils
from conftest import (
    HOOKED,
    ROOT,
    SMALL_COUNTS,
    analysis_argv,
    make_image,
    make_tree,
    one_line_error,
    train_argv,
)
from faces_dataset import DataError, FacesDataset, list_images, read_rgb_image
from lib import cli, run_files
from models import SimpleNet
from trainer import Trainer

STEM = "fakes_dataset_SimpleNet_SGD"


@pytest.fixture(scope="module")
def data(module_tmp) -> str:
    """4 training images (2 batches of 2), 2 val, 2 test per dataset."""
    return make_tree(str(module_tmp("reliability_data")), SMALL_COUNTS, seed=3)


@pytest.fixture
def tree(data, tmp_path):
    """A private copy of the data to change."""
    return str(shutil.copytree(data, tmp_path / "data"))


def _argv(data, work, *extra) -> list[str]:
    return train_argv(data, work, "-e", "1", "-b", "2", "--lr", "0.02", *extra)


def _runs(work) -> list:
    return json.loads((work / "out" / f"{STEM}.json").read_text())


def _env(**hooks) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACES_TEST_")}
    env.update(hooks)
    return env


# ----------------------------------------------------------------------------- 1. concurrent runs
def _hammer(path: str, tag: str, n: int, go) -> None:
    """One writer process: append ``n`` runs to the runs JSON through the Trainer's writer."""
    go.wait()
    for i in range(n):
        run_files.write_run(path, {"run_id": f"{tag}-{i}", "writer": tag, "epoch": i})


def test_two_processes_writing_the_runs_json_lose_no_write(tmp_path):
    """Two processes append 60 runs each to one runs JSON at the same time: all 120 survive (an
    unlocked read-modify-write lets one process overwrite the other's runs)."""
    path, n = str(tmp_path / "runs.json"), 60
    context = multiprocessing.get_context("fork")  # forked: no second import of torch
    go = context.Event()
    procs = [context.Process(target=_hammer, args=(path, tag, n, go)) for tag in "ab"]
    for proc in procs:
        proc.start()
    go.set()  # both start writing together
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    runs = json.loads(open(path).read())
    assert sorted(r["run_id"] for r in runs) == sorted(f"{t}-{i}" for t in "ab" for i in range(n))
    for tag in "ab":  # and each process's runs are in the order it wrote them
        assert [r["epoch"] for r in runs if r["writer"] == tag] == list(range(n))


def _wait_for_pause(proc) -> None:
    deadline, seen = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail("training ended before its pause:\n" + "".join(seen))
        seen.append(line)
        if line.startswith("FACES_TEST_PAUSED"):
            return
    pytest.fail("no pause marker:\n" + "".join(seen))


def test_second_live_run_on_the_same_files_is_refused(data, tmp_path, capsys):
    """A run paused in its first epoch holds the files: a second run with the same model, dataset,
    optimizer and checkpoint folder is refused with one line naming the running one's pid, and
    writes nothing. Once the first is killed, a new run trains, and its done line names the
    checkpoint that holds its own weights."""
    argv = _argv(data, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, HOOKED, *argv],
        env=_env(FACES_TEST_PAUSE_AT="1:1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_pause(proc)
        line = one_line_error(
            capsys, train_main.main, argv, "in use by another training", f"pid {proc.pid}", "--checkpoint_dir"
        )
        assert str(tmp_path / "ck" / f"{STEM}.pt") in line
        assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
        # a run on its own checkpoint folder is not blocked, and shares the runs JSON
        assert train_main.main(_argv(data, tmp_path, "--checkpoint_dir", str(tmp_path / "ck2"))) == 0
    finally:
        proc.kill()
        proc.wait()
    capsys.readouterr()
    assert train_main.main(argv) == 0  # the OS released the killed run's lock
    done = capsys.readouterr().out.strip().splitlines()[-1]
    assert done.startswith("done:") and done.endswith(f"checkpoint {tmp_path / 'ck' / STEM}.pt")
    runs = _runs(tmp_path)
    assert len(runs) == 2 and all(r["completed"] for r in runs)
    assert torch.load(tmp_path / "ck" / f"{STEM}.pt", weights_only=True)["run_id"] == runs[-1]["run_id"]
    assert sorted(os.listdir(tmp_path / "ck")) == [f"{STEM}.pt", f"{STEM}_last.pt"]  # lock removed


# ----------------------------------------------------------------------------- 2. divergence
class _PoisonedLoss(nn.CrossEntropyLoss):
    """Cross-entropy whose ``poison``-th training call (with gradients) returns NaN."""

    poison = 4

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, outputs, labels):
        loss = super().forward(outputs, labels)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.poison:
                return loss * float("nan")
        return loss


def _error_after_epochs(capsys, argv, *needles) -> None:
    """train_main exits 2; its last stderr line (after the finished epochs' lines) is the error."""
    code = cli.run_cli(train_main.main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert all(line.startswith("epoch ") for line in lines[:-1]), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def test_diverging_run_stops_with_one_line_and_keeps_finished_epochs(data, tmp_path, capsys, monkeypatch):
    """Training call 4 = epoch 2, batch 2 (2 batches an epoch) gives a NaN loss: the run stops with
    the one-line message naming that epoch and batch, the JSON keeps epoch 1, not completed."""
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", _PoisonedLoss)  # lib.optim builds the loss
    _error_after_epochs(
        capsys,
        _argv(data, tmp_path, "-e", "3"),
        ": error: training diverged (loss is NaN/inf) at epoch 2, batch 2; lower --lr",
    )
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0]["completed"] is False
    assert runs[0]["diverged"].startswith("training diverged") and runs[0]["best_epoch"] == 1
    assert len(runs[0]["train_loss"]) == 1 and np.isfinite(runs[0]["train_loss"] + runs[0]["val_loss"]).all()
    assert torch.load(tmp_path / "ck" / f"{STEM}_last.pt", weights_only=True)["epoch"] == 1


def test_overflowing_outputs_stop_the_run_like_a_nan_loss(data, tmp_path, capsys, monkeypatch):
    """Finite loss and weights, but the evaluation after epoch 2 gives inf logits: the run stops
    with the same one-line message (epoch 2, its last batch) and keeps epoch 1 in the JSON."""
    evaluate = Trainer.evaluate

    def overflowing(self, dataset, desc="eval"):
        result = evaluate(self, dataset, desc)
        return dataclasses.replace(result, logits=result.logits * np.inf) if self.epoch == 2 else result

    monkeypatch.setattr(Trainer, "evaluate", overflowing)
    _error_after_epochs(
        capsys,
        _argv(data, tmp_path, "-e", "3"),
        ": error: training diverged (loss is NaN/inf) at epoch 2, batch 2; lower --lr",
    )
    runs = _runs(tmp_path)
    assert runs[0]["completed"] is False and runs[0]["diverged"].startswith("training diverged")
    assert len(runs[0]["train_loss"]) == 1


def test_huge_learning_rate_diverges_with_one_line(data, tmp_path, capsys):
    """The issue's example, unpatched: SGD with a learning rate far too large."""
    _error_after_epochs(
        capsys,
        _argv(data, tmp_path, "--lr", "1e12", "-e", "2"),
        ": error: training diverged (loss is NaN/inf) at epoch ",
        "; lower --lr",
    )
    assert _runs(tmp_path)[-1]["completed"] is False


@pytest.mark.parametrize(
    "flags", [["--momentum", "nan"], ["--momentum", "inf"], ["--momentum=-inf"], ["--lr", "inf"]]
)
def test_non_finite_momentum_or_lr_is_an_argparse_error(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main.build_parser().parse_args(flags)
    assert exc.value.code == 2
    assert f"argument {flags[0].split('=')[0]}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3. non-finite checkpoint
@pytest.fixture
def nan_checkpoint(tmp_path):
    state = SimpleNet().state_dict()
    state["fc3.bias"][1] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"model": state, "epoch": 1}, path)
    return path


def test_predict_refuses_a_non_finite_checkpoint(nan_checkpoint, tmp_path):
    image = tmp_path / "face.png"
    make_image(np.random.default_rng(0), fake=False).save(image)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "predict.py"),
            "-m",
            "SimpleNet",
            "-cpp",
            str(nan_checkpoint),
            str(image),
            "--device",
            "cpu",
            "--no_progress",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(lines) == 1 and str(nan_checkpoint) in lines[0] and "fc3.bias" in lines[0], lines
    assert "non-finite" in lines[0]


@pytest.mark.parametrize("script", [saliency_map, grad_cam_analysis])
def test_analysis_scripts_refuse_a_non_finite_checkpoint(script, nan_checkpoint, data, tmp_path, capsys):
    argv = [
        "-m",
        "SimpleNet",
        "-cpp",
        str(nan_checkpoint),
        "--data_root",
        data,
        "--device",
        "cpu",
        "--figures_dir",
        str(tmp_path / "fig"),
        "--no_progress",
    ]
    one_line_error(capsys, script.main, argv, nan_checkpoint, "non-finite weights")
    assert not (tmp_path / "fig").exists()


# ----------------------------------------------------------------------------- 4. resume protocol
def test_resume_with_changed_protocol_is_refused_naming_each_difference(tree, tmp_path, capsys):
    other = shutil.copytree(tree, tmp_path / "other")
    assert train_main.main(_argv(tree, tmp_path)) == 0
    capsys.readouterr()
    changed = _argv(
        other, tmp_path, "--resume", "-e", "2", "--lr", "0.5", "-b", "4", "--seed", "7", "--momentum", "0.5"
    )
    one_line_error(
        capsys,
        train_main.main,
        changed,
        "--lr 0.5 differs from the run's 0.02",
        "--batch_size 4 differs from the run's 2",
        "--seed 7 differs from the run's 0",
        "--momentum 0.5 differs from the run's 0.9",
        f"--data_root {os.path.realpath(other)} differs from the run's {os.path.realpath(tree)}",
        "a larger -e is fine",
    )
    runs = _runs(tmp_path)
    assert len(runs) == 1 and len(runs[0]["train_loss"]) == 1  # nothing trained, nothing recorded
    assert train_main.main(_argv(tree, tmp_path, "--resume", "-e", "2")) == 0  # a larger -e continues
    runs = _runs(tmp_path)
    assert len(runs) == 1 and len(runs[0]["train_loss"]) == 2 and runs[0]["completed"] is True


# ----------------------------------------------------------------------------- smaller ones
@pytest.mark.parametrize("empty", ["real", "fake"])
def test_empty_class_folder_in_the_train_split(empty, tree, tmp_path, capsys):
    folder = os.path.join(tree, "fakes_dataset", "train", empty)
    shutil.rmtree(folder)
    os.mkdir(folder)
    one_line_error(capsys, train_main.main, _argv(tree, tmp_path), folder, "no images")
    assert not (tmp_path / "ck").exists() or not os.listdir(tmp_path / "ck")
    one_line_error(
        capsys,
        plot_samples_of_faces_datasets.main,
        ["--data_root", tree, "--figures_dir", str(tmp_path / "fig")],
        folder,
        "no images",
    )


def _no_data_reading(*args, **kwargs):
    raise AssertionError("the data was read before the output paths were checked")


def test_out_dir_that_is_a_file_stops_before_any_work(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes\n")
    argv = _argv(data, tmp_path)
    argv[argv.index("--out_dir") + 1] = str(blocker)
    monkeypatch.setattr(train_main, "load_dataset", _no_data_reading)
    one_line_error(capsys, train_main.main, argv, blocker, "cannot create output folder")
    assert blocker.read_text() == "my notes\n"
    assert not (tmp_path / "ck").exists() or not os.listdir(tmp_path / "ck")


@pytest.mark.parametrize("where", ["out", "ck"])
def test_output_file_that_is_a_folder_stops_before_any_work(where, data, tmp_path, capsys, monkeypatch):
    name = f"{STEM}.json" if where == "out" else f"{STEM}.pt"
    (tmp_path / where / name).mkdir(parents=True)
    monkeypatch.setattr(train_main, "load_dataset", _no_data_reading)
    one_line_error(capsys, train_main.main, _argv(data, tmp_path), tmp_path / where / name, "is a folder")
    assert not (tmp_path / "ck" / f"{STEM}_last.pt").exists()
    assert not (tmp_path / "out" / f"{STEM}.json").is_file()


def _limit_file_size():
    """In the child: files may grow to 2 MB only (EFBIG instead of SIGXFSZ), like a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024**2, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_checkpoint_write_failure_is_one_line(data, tmp_path):
    """SimpleNet's checkpoint (tens of MB) cannot be written where files may not pass 2 MB: one line
    naming the file, no traceback, and no temp file left behind."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_main.py"), *_argv(data, tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and f"{tmp_path / 'ck' / STEM}.pt: cannot write the checkpoint" in lines[0]
    assert "free disk space" in lines[0]
    assert os.listdir(tmp_path / "ck") == []


def test_orphan_temp_files_of_a_killed_save_are_removed(data, tmp_path, capsys):
    """Only this run's own temp names, only in its checkpoint folder."""
    ck = tmp_path / "ck"
    ck.mkdir()
    orphans = [ck / f".{STEM}.pt.ab12cd34.tmp", ck / f".{STEM}_last.pt.x_9y8z7w.tmp"]
    others = [
        ck / ".synthetic_dataset_SimpleNet_SGD.pt.ab12cd34.tmp",
        ck / "my.tmp",
        ck / f"{STEM}.pt.notes.tmp",
    ]
    for path in orphans + others:
        path.write_bytes(b"partial")
    assert train_main.main(_argv(data, tmp_path)) == 0
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in others)
    assert "removed unfinished checkpoint writes" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**63), "1e3"])
def test_seed_out_of_range_is_an_argparse_error(seed, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main.build_parser().parse_args(["--seed", seed])
    assert exc.value.code == 2 and "argument --seed" in capsys.readouterr().err


def test_largest_seed_trains(data, tmp_path):
    """2**63 - 1, and the issue's 2**50, overflowed the augmentation's generator seed."""
    for seed in (2**50, 2**63 - 1):
        assert train_main.main(_argv(data, tmp_path, "--seed", str(seed))) == 0
    assert [r["seed"] for r in _runs(tmp_path)] == [2**50, 2**63 - 1]


@pytest.mark.parametrize("device", ["mps", "meta", "garbage", "cpu:1"])
def test_unsupported_device_is_one_line(device, data, tmp_path, capsys):
    with pytest.raises(cli.UserError, match=f"--device {device}: "):
        utils.get_device(device)
    one_line_error(capsys, train_main.main, _argv(data, tmp_path, "--device", device), f"--device {device}")


@pytest.mark.parametrize("suffix", ["png", "pgm"])  # Pillow reads a 16-bit PGM as mode I
@pytest.mark.parametrize("peak", [200, 256, 65535])
def test_16_bit_grey_is_scaled_by_the_bit_depth(peak, suffix, tmp_path):
    values = np.linspace(0, peak, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / f"grey16.{suffix}"
    if suffix == "pgm":  # written by hand: maxval 65535, big-endian samples
        path.write_bytes(b"P5\n64 64\n65535\n" + values.astype(">u2").tobytes())
    else:
        Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really read as 16-bit
    expected = np.rint(values / 65535.0 * 255.0).astype(np.uint8)
    got = np.asarray(read_rgb_image(str(path)))
    assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=2))


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 says: turn the stored pixels 90 degrees clockwise to view them."""
    stored = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert np.array_equal(np.asarray(read_rgb_image(str(path))), np.rot90(stored, k=-1))


def test_broken_symlink_is_an_error_or_a_skip_warning(tree):
    root = os.path.join(tree, "fakes_dataset", "train")
    link = os.path.join(root, "real", "moved_away.png")
    os.symlink(os.path.join(tree, "nowhere.png"), link)
    with pytest.raises(DataError, match=r"moved_away\.png: broken symbolic link"):
        FacesDataset(root)
    with pytest.warns(UserWarning, match="moved_away.png") as caught:
        dataset = FacesDataset(root, skip_corrupt=True)
    assert "moved_away.png" not in dataset.real_image_names and len(dataset) == 4
    assert not any("--skip_corrupt" in str(w.message) for w in caught)


def test_only_raster_images_count(tmp_path):
    rgb = make_image(np.random.default_rng(2), fake=False, size=32)
    raster = ["a.png", "b.jpg", "c.jpeg", "d.bmp", "e.gif", "f.tif", "g.tiff", "h.webp", "i.ppm", "j.tga"]
    for name in raster:
        rgb.save(tmp_path / name)
    rgb.save(tmp_path / "consent_form.pdf")
    for name in ("scan.ps", "logo.eps", "weights.h5", "clip.mpg", "chart.emf", "notes.txt"):
        (tmp_path / name).write_bytes(b"not a raster image")
    assert list_images(str(tmp_path)) == raster
    for name in raster:
        assert read_rgb_image(str(tmp_path / name)).size == (32, 32)


def test_skip_corrupt_warnings_do_not_suggest_skip_corrupt(tree):
    root = os.path.join(tree, "fakes_dataset", "train")
    with open(os.path.join(root, "fake", "img000.png"), "wb") as handle:
        handle.write(b"\x89PNG truncated")
    with pytest.raises(DataError, match="or pass --skip_corrupt"):  # without the flag: the hint
        read_rgb_image(os.path.join(root, "fake", "img000.png"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FacesDataset(root, skip_corrupt=True)
    messages = [str(w.message) for w in caught]
    assert any("img000.png" in m for m in messages) and not any("--skip_corrupt" in m for m in messages)


def _runs_json(tmp_path, **run) -> str:
    base = {
        "model": "SimpleNet",
        "dataset": "fakes_dataset",
        "optimizer": {"name": "Adam", "params": {}},
        "train_loss": [1.0, 0.5],
        "train_acc": [50, 60],
        "val_loss": [1.0, 0.6],
        "val_acc": [50, 55],
        "test_loss": [1.0, 0.7],
        "test_acc": [50, 52],
        "completed": True,
    }
    base.update(run)
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([base]))
    return str(path)


@pytest.mark.parametrize("flags", [["-m", "XceptionBased"], ["-d", "synthetic_dataset"]])
def test_plot_refuses_a_run_of_another_model_or_dataset(flags, tmp_path, capsys):
    argv = ["-j", _runs_json(tmp_path), "--figures_dir", str(tmp_path / "fig"), *flags]
    one_line_error(capsys, plot_accuracy_and_loss.main, argv, "SimpleNet on fakes_dataset", flags[1])
    assert not (tmp_path / "fig").exists()


def test_plot_of_an_unfinished_run_says_so(tmp_path, capsys, monkeypatch):
    titles = []
    real_write = plot_accuracy_and_loss.write_figure

    def write_figure(fig, path, args):
        titles.append(fig.axes[0].get_title())
        return real_write(fig, path, args)

    monkeypatch.setattr(plot_accuracy_and_loss, "write_figure", write_figure)
    argv = ["-j", _runs_json(tmp_path, completed=False), "--figures_dir", str(tmp_path / "fig")]
    assert plot_accuracy_and_loss.main(argv) == 0
    assert "UNFINISHED" in capsys.readouterr().err
    assert len(titles) == 2 and all("UNFINISHED run: 2 epoch(s)" in t for t in titles)
    titles.clear()
    assert plot_accuracy_and_loss.main(["-j", _runs_json(tmp_path), "--figures_dir", str(tmp_path)]) == 0
    assert titles == [
        "loss vs epoch for SimpleNet model on Deepfakes dataset",
        "accuracy vs epoch for SimpleNet model on Deepfakes dataset",
    ]


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda sd: sd.pop("fc3.bias"), "missing key fc3.bias"),
        (lambda sd: sd.update({"head.weight": torch.zeros(2)}), "unexpected key head.weight"),
        (
            lambda sd: sd.update({"fc3.weight": torch.zeros(3, 256)}),
            "fc3.weight has shape [3, 256] in the checkpoint, [2, 256] in the model",
        ),
    ],
)
def test_state_dict_mismatch_names_the_first_key(change, needle, tmp_path):
    state = SimpleNet().state_dict()
    change(state)
    path = tmp_path / "odd.pt"
    torch.save({"model": state}, path)
    with pytest.raises(cli.UserError, match=r"odd\.pt: does not fit a SimpleNet model") as exc:
        utils.load_model_from_checkpoint("SimpleNet", str(path))
    assert needle in str(exc.value)


# ----------------------------------------------------------------------------- full disk, standard JSON
def _numerical_argv(checkpoint, data, tmp_path, *extra) -> list[str]:
    return [
        "-m", "SimpleNet", "-cpp", str(checkpoint), "--bootstrap", "20", "-b", "4",
        *analysis_argv(data, tmp_path), *extra,
    ]  # fmt: skip


@pytest.fixture
def constant_checkpoint(tmp_path):
    """A SimpleNet whose outputs are the same for every image (P(fake) = sigmoid(0.3))."""
    state = SimpleNet().state_dict()
    state["fc3.weight"].zero_()
    state["fc3.bias"].copy_(torch.tensor([0.0, 0.3]))
    path = tmp_path / "constant.pt"
    torch.save({"model": state}, path)
    return path


def test_a_constant_score_model_writes_standard_json(constant_checkpoint, data, tmp_path):
    """Its EER threshold is undefined (sklearn's first ROC threshold is inf): null, not Infinity."""
    assert numerical_analysis.main(_numerical_argv(constant_checkpoint, data, tmp_path)) == 0
    text = (tmp_path / "out" / "fakes_dataset_SimpleNet_metrics.json").read_text()
    content = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON: {name}"))
    numerical = content["numerical"]
    assert numerical["eer_threshold"] is None
    assert numerical["auc_b"] == pytest.approx(0.5) and numerical["eer"] == pytest.approx(0.5)


def test_an_output_figure_that_is_a_folder_is_one_line(constant_checkpoint, data, tmp_path, capsys):
    roc = tmp_path / "fig" / "fakes_dataset_SimpleNet_roc_curve.png"
    roc.mkdir(parents=True)
    argv = _numerical_argv(constant_checkpoint, data, tmp_path)
    one_line_error(capsys, numerical_analysis.main, argv, f"{roc}: is a folder", "choose another path")


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare to mount a small tmpfs")
def test_a_full_disk_under_the_figures_is_one_line_naming_the_file(constant_checkpoint, data, tmp_path):
    """numerical_analysis.py with --figures_dir on a real 8 KiB tmpfs (the ROC figure does not fit)."""
    full = tmp_path / "fig"
    full.mkdir()
    argv = [
        os.path.join(ROOT, "numerical_analysis.py"),
        *_numerical_argv(constant_checkpoint, data, tmp_path),
    ]
    script = 'mount -t tmpfs -o size=8k tmpfs "$1" || exit 99; shift; exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(full), sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    if proc.returncode == 99:
        pytest.skip("no tmpfs mount in a user namespace here")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    roc = full / "fakes_dataset_SimpleNet_roc_curve.png"
    assert len(lines) == 1 and f"{roc}: cannot write the figure: disk full" in lines[0], lines
    assert "free disk space" in lines[0]


def test_checkpoint_on_a_full_disk_says_disk_full_and_keeps_the_epoch(data, tmp_path, capsys, monkeypatch):
    """ENOSPC inside torch's zip writer (which reports only ``[enforce fail at inline_container.cc]``)
    while the best checkpoint is written: one line saying "disk full" and naming the file, and the
    epoch's metrics are in the runs JSON, without a best epoch that has no checkpoint."""
    import errno

    from lib import fileio

    write = fileio._Descriptor.write

    def full_for_checkpoints(self, data):
        if ".pt." in os.readlink(f"/proc/self/fd/{self.fd}"):
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise self.error
        return write(self, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell the checkpoint's temp file")
    monkeypatch.setattr(fileio._Descriptor, "write", full_for_checkpoints)
    line = cli.run_cli(train_main.main, _argv(data, tmp_path))
    err = capsys.readouterr().err
    assert line == 2 and "Traceback" not in err, err
    errors = [x for x in err.splitlines() if ": error: " in x]
    assert len(errors) == 1 and f"{tmp_path / 'ck' / STEM}.pt" in errors[0] and "disk full" in errors[0]
    run = _runs(tmp_path)[0]
    assert len(run["val_acc"]) == 1 and run["completed"] is False
    assert f"{tmp_path / 'out' / STEM}.json" in errors[0]
    # no best checkpoint was written, so the JSON names no best epoch (the analyses would pair
    # that epoch's accuracies with whichever model the checkpoint holds)
    assert not (tmp_path / "ck" / f"{STEM}.pt").exists()
    assert (run["best_epoch"], run["best_val_acc"], run["test_acc_at_best"]) == (None, None, None)


def test_resume_keeps_added_keys_and_names_edited_ones(data, tmp_path, capsys):
    """Hand edits of a run's own JSON entry: an added key survives --resume; an edited value of the
    trainer's is restored from _last.pt, and one line names it."""
    assert train_main.main(_argv(data, tmp_path)) == 0
    runs = _runs(tmp_path)
    runs[0]["note"] = "lr from the paper"
    runs[0]["seed"] = 99
    (tmp_path / "out" / f"{STEM}.json").write_text(json.dumps(runs))
    capsys.readouterr()
    assert train_main.main(_argv(data, tmp_path, "-e", "2", "--resume")) == 0
    err = capsys.readouterr().err
    run = _runs(tmp_path)[0]
    assert run["note"] == "lr from the paper" and len(run["train_loss"]) == 2
    assert run["seed"] == 0
    notes = [x for x in err.splitlines() if "edited" in x]
    assert len(notes) == 1 and "(seed)" in notes[0] and STEM in notes[0]
