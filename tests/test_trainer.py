"""The Trainer contract (docs/design.md#trainer) and what the trainer issue adds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import train_main
import utils
from conftest import cpu_trainer
from models import SimpleNet
from trainer import COURSE_KEYS, EvalResult, LoggingParameters

TIMING = {"epoch_seconds", "train_images_per_sec", "eval_images_per_sec", "started", "argv", "run_id", "args"}


def _train(tmp_path, root, *extra):
    argv = [
        "--data_root",
        root,
        "-o",
        "Adam",
        "-b",
        "5",
        "--out_dir",
        str(tmp_path / "out"),
        "--checkpoint_dir",
        str(tmp_path / "ck"),
        "--no_progress",
        "--num_workers",
        "0",
        *extra,
    ]
    assert train_main.main(argv) == 0
    return str(tmp_path / "out" / "fakes_dataset_SimpleNet_Adam.json")


def _stable(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in TIMING}


@pytest.fixture(scope="module")
def two_runs(module_tmp, tiny_root):
    tmp = module_tmp("two_runs")
    path = _train(tmp, tiny_root, "-e", "2")
    first = json.load(open(path))
    _train(tmp, tiny_root, "-e", "2")
    return tmp, first, json.load(open(path))


def test_json_keys_in_order_and_runs_appended(two_runs):
    _, first, both = two_runs
    assert len(first) == 1 and len(both) == 2
    assert both[0] == first[0]  # the earlier run is kept untouched
    for run in both:
        assert tuple(run)[: len(COURSE_KEYS)] == COURSE_KEYS
        assert run["model"] == "SimpleNet" and run["dataset"] == "fakes_dataset"
        assert run["optimizer"]["name"] == "Adam" and run["optimizer"]["params"]["lr"] == 0.001
        assert "params" not in run["optimizer"]["params"]
        for key in COURSE_KEYS[3:]:
            assert len(run[key]) == 2
        for key in (
            "val_auc",
            "val_eer",
            "val_ap",
            "val_balanced_acc",
            "val_per_class_acc",
            "test_auc",
            "epoch_seconds",
            "train_images_per_sec",
            "seed",
            "args",
        ):
            assert key in run
        assert run["completed"] is True and run["seed"] == 0


def test_accuracies_consistent_with_sample_counts(two_runs):
    _, first, _ = two_runs
    run = first[0]
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for acc in run[f"{split}_acc"]:
            correct = acc * n / 100.0
            assert 0 <= acc <= 100 and abs(correct - round(correct)) < 1e-9


def test_extra_metrics_match_sklearn_definitions(two_runs):
    """per-class accuracies recombine into the accuracy; balanced accuracy is their mean."""
    _, first, _ = two_runs
    run = first[0]
    for split, n_real, n_fake in (("val", 4, 2), ("test", 4, 2)):
        for acc, bal, (real_acc, fake_acc) in zip(
            run[f"{split}_acc"], run[f"{split}_balanced_acc"], run[f"{split}_per_class_acc"]
        ):
            assert abs(acc - (real_acc * n_real + fake_acc * n_fake) / (n_real + n_fake)) < 1e-9
            assert abs(bal - (real_acc + fake_acc) / 2) < 1e-9


def test_checkpoint_contract(two_runs):
    tmp, _, both = two_runs
    path = tmp / "ck" / "fakes_dataset_SimpleNet_Adam.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "val_acc", "test_acc", "epoch"} <= set(checkpoint)
    run = both[-1]
    assert checkpoint["epoch"] == run["best_epoch"]
    assert checkpoint["val_acc"] == max(run["val_acc"]) == run["val_acc"][run["best_epoch"] - 1]
    assert checkpoint["test_acc"] == run["test_acc"][run["best_epoch"] - 1]
    SimpleNet().load_state_dict(checkpoint["model"])


def test_same_seed_same_metrics(two_runs):
    _, _, both = two_runs
    assert _stable(both[0]) == _stable(both[1]) or {k: both[0][k] for k in COURSE_KEYS} == {
        k: both[1][k] for k in COURSE_KEYS
    }


def test_resume_matches_uninterrupted_run(tmp_path, tiny_root, two_runs):
    _, first, _ = two_runs
    path = _train(tmp_path, tiny_root, "-e", "1")
    assert len(json.load(open(path))[0]["train_loss"]) == 1
    _train(tmp_path, tiny_root, "-e", "2", "--resume")
    runs = json.load(open(path))
    assert len(runs) == 1  # continued inside the same run entry
    resumed, uninterrupted = runs[0], first[0]
    for key in list(COURSE_KEYS) + ["val_auc", "test_auc", "best_epoch", "best_val_acc", "test_acc_at_best"]:
        assert resumed[key] == uninterrupted[key], key


def _eval_result(accuracy: float) -> EvalResult:
    labels = np.array([0, 0, 1, 1])
    return EvalResult(
        loss=0.5,
        accuracy=accuracy,
        labels=labels,
        logits=np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]),
        seconds=0.1,
    )


def test_checkpoint_only_on_strict_val_improvement(tmp_path, tiny_root, monkeypatch):
    from lib import run_files

    datasets = [utils.load_dataset("fakes_dataset", p, tiny_root) for p in utils.SPLITS]
    model = SimpleNet()
    t = cpu_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-3),
        datasets,
        6,
        out_dir=str(tmp_path / "o"),
        checkpoint_dir=str(tmp_path / "c"),
    )
    val_sequence = iter([50.0, 60.0, 60.0, 55.0, 70.0])
    test_sequence = iter([10.0, 20.0, 99.0, 99.0, 30.0])  # test never drives the choice
    monkeypatch.setattr(
        t,
        "train_one_epoch",
        lambda: (
            (
                t.__setattr__("epoch", t.epoch + 1),
                t.__setattr__("last_train_seconds", 0.1),
                t.__setattr__("last_train_images_per_sec", 1.0),
            )
            and (0.1, 50.0)
        ),
    )
    monkeypatch.setattr(
        t,
        "evaluate",
        lambda dataset, desc="": _eval_result(
            next(val_sequence) if dataset is datasets[1] else next(test_sequence)
        ),
    )
    saved = []
    real_save = run_files.atomic_torch_save
    monkeypatch.setattr(
        run_files,
        "atomic_torch_save",
        lambda obj, path: (
            saved.append(obj["epoch"]) if not path.endswith("_last.pt") else None,
            real_save(obj, path),
        ),
    )
    run = t.run(5, LoggingParameters("SimpleNet", "fakes_dataset", "SGD", {"lr": 1e-3}))
    assert saved == [1, 2, 5]
    assert run["best_epoch"] == 5 and run["test_acc_at_best"] == 30.0


def test_loss_is_weighted_by_batch_size(tiny_root):
    """6 test images in batches of 4 and 2: mean loss over samples, not over batches."""
    torch.manual_seed(0)
    model = SimpleNet()
    test = utils.load_dataset("fakes_dataset", "test", tiny_root)
    t = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3), [test] * 3, 4)
    loss, acc = t.evaluate_model_on_dataloader(test)
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = test.labels
    with torch.no_grad():
        logits = model.eval()(images)
    expect_loss = nn.functional.cross_entropy(logits, labels).item()
    expect_acc = 100.0 * (logits.argmax(1) == labels).sum().item() / len(labels)
    assert abs(loss - expect_loss) < 1e-5 and abs(acc - expect_acc) < 1e-9


def test_train_one_epoch_fewer_than_ten_batches(tiny_root):
    """12 images in batches of 5 (three batches, the last of 2): no division by zero."""
    model = SimpleNet()
    train = utils.load_dataset("fakes_dataset", "train", tiny_root)
    t = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3), [train] * 3, 5, progress=True)
    loss, acc = t.train_one_epoch()
    assert np.isfinite(loss) and abs(acc * 12 / 100 - round(acc * 12 / 100)) < 1e-9
    assert t.epoch == 1


def test_corrupt_json_is_moved_aside(tmp_path, tiny_root):
    out = tmp_path / "out"
    out.mkdir()
    bad = out / "fakes_dataset_SimpleNet_Adam.json"
    bad.write_text("{not json")
    with pytest.warns(UserWarning, match="moved aside"):
        path = _train(tmp_path, tiny_root, "-e", "1")
    assert len(json.load(open(path))) == 1
    aside = [f for f in os.listdir(out) if ".corrupt-" in f]
    assert len(aside) == 1 and (out / aside[0]).read_text() == "{not json"
