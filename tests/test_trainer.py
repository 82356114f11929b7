"""The Trainer contract (docs/design.md#trainer) and what the trainer issue adds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

import train_main
import utils
from conftest import cpu_trainer
from faces_dataset import FacesDataset
from lib.batching import CachedBatches, seeded_generator
from lib.cli import UserError
from lib.transforms import BatchedTransform, RandomCropUint8
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


# ----------------------------------------------------------------------------- the transform that trains
class _InvertUint8:
    """A test-only random batched step: image k is inverted (255 - x) where its parameter is 1."""

    n_params = 1

    def draw(self, n, generator):
        return (torch.rand(n, generator=generator) < 0.5).unsqueeze(1)

    def __call__(self, images, params):
        return torch.where((params[:, 0] != 0).view(-1, 1, 1, 1), 255 - images, images)


class _OwnBatchedTransform:
    """Not a StudyTransform: any transform with a ``batched()`` form trains through that form."""

    takes_uint8_tensor = True

    def __init__(self):
        self.asked = 0

    def __call__(self, image):
        raise AssertionError("the per-image transform must not run in training")

    def batched(self):
        self.asked += 1
        return BatchedTransform([RandomCropUint8(4), _InvertUint8()], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("cached", [False, True], ids=["uint8-dataloader", "from-cache"])
def test_the_trainer_runs_the_transforms_own_batched_form(tiny_root, cached):
    """The images the model trains on are, batch by batch in the sampler's order, the transform's
    batched form applied with the parameters it draws from (seed, epoch), computed here by hand:
    zero-pad, crop, invert where drawn, normalise with the form's own mean and std."""
    own = _OwnBatchedTransform()
    train = FacesDataset(os.path.join(tiny_root, "fakes_dataset", "train"), own, cache_images=cached)
    evaluation = utils.load_dataset("fakes_dataset", "val", tiny_root)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 256 * 256, 2))
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    t = cpu_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), [train, evaluation, evaluation], 5, seed=7
    )
    t.train_one_epoch()
    assert isinstance(t._batches(train, True).source, CachedBatches) == cached
    params = own.batched().draw(len(train), seeded_generator(7, 1)).long().tolist()  # epoch 0's draw
    order = list(DistributedSampler(range(len(train)), num_replicas=1, rank=0, shuffle=True, seed=7))
    expected = []
    for i in order:
        top, left, invert = params[i]
        crop = nn.functional.pad(train.load_uint8(i), (4, 4, 4, 4))[:, top : top + 256, left : left + 256]
        crop = 255 - crop if invert else crop
        expected.append((crop.float() / 255.0 - 0.5) / 0.25)
    torch.testing.assert_close(torch.cat(seen), torch.stack(expected), rtol=0, atol=1e-6)
    assert own.asked == 2  # once by the trainer for this dataset, once above


def test_a_study_transform_step_without_batched_twin_stops_training(tiny_root):
    """ColorJitter added to the study transform would not train: the trainer stops with one line."""
    datasets = [utils.load_dataset("fakes_dataset", p, tiny_root) for p in utils.SPLITS]
    datasets[0].transform.transforms.insert(3, v2.ColorJitter(brightness=0.5))
    model = SimpleNet()
    t = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3), datasets, 6)
    with pytest.raises(UserError, match="StudyTransform: ColorJitter has no batched uint8 twin"):
        t.train_one_epoch()


def test_a_plain_torchvision_transform_trains_image_by_image(tiny_root, monkeypatch):
    """The same steps as a plain v2.Compose, ColorJitter included, go through a DataLoader of the
    dataset itself, which runs the transform on every image."""
    steps = utils.get_transforms("train").transforms
    compose = v2.Compose([*steps[:3], v2.ColorJitter(brightness=0.5), *steps[3:]])
    train = FacesDataset(os.path.join(tiny_root, "fakes_dataset", "train"), compose)
    calls = []
    jitter = compose.transforms[3]
    monkeypatch.setattr(jitter, "forward", lambda *a, f=jitter.forward: calls.append(1) or f(*a))
    evaluation = utils.load_dataset("fakes_dataset", "val", tiny_root)
    model = SimpleNet()
    t = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3), [train, evaluation, evaluation], 6)
    loss, _ = t.train_one_epoch()
    source = t._batches(train, True).source
    assert isinstance(source, DataLoader) and source.dataset is train
    assert np.isfinite(loss) and len(calls) == len(train)
