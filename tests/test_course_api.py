"""The course API as the course used it: classic torchvision transforms on FacesDataset, a Trainer
subclass that overrides validate()/test(), the defaults graders type, and a GPU-saved checkpoint."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import grad_cam_analysis
import numerical_analysis
import saliency_map
import train_main
import utils
from conftest import cpu_trainer
from faces_dataset import FacesDataset
from models import SimpleNet
from trainer import LoggingParameters, Trainer

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _split(root: str) -> str:
    return os.path.join(root, "fakes_dataset", "train")


def _file_as_course_tensor(path: str) -> torch.Tensor:
    """The course's own recipe, independent of the project: PIL RGB, ToTensor, Normalize."""
    with Image.open(path) as image:
        return T.Normalize(MEAN, STD)(T.ToTensor()(image.convert("RGB")))


def test_classic_transform_receives_a_pil_image(tiny_root):
    seen = []
    course = T.Compose(
        [T.Lambda(lambda im: seen.append(type(im)) or im), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    dataset = FacesDataset(_split(tiny_root), transform=course)
    for index in (0, len(dataset) - 1):  # a real and a fake
        image, label = dataset[index]
        path, expected_label = dataset.path_and_label(index)
        assert label == expected_label
        torch.testing.assert_close(image, _file_as_course_tensor(path))
    assert len(seen) == 2 and all(issubclass(t, Image.Image) for t in seen)


def test_project_transform_and_none_get_the_uint8_tensor(tiny_root):
    dataset = FacesDataset(_split(tiny_root), transform=None)
    image, _ = dataset[0]
    path, _ = dataset.path_and_label(0)
    with Image.open(path) as pil:
        expected = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    assert image.dtype == torch.uint8 and torch.equal(image, expected)
    projected = FacesDataset(_split(tiny_root), transform=utils.get_transforms("test"))[0][0]
    torch.testing.assert_close(projected, _file_as_course_tensor(path))


def test_a_course_transform_dataset_trains_through_a_dataloader(tiny_root, tmp_path):
    course = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    splits = [
        FacesDataset(os.path.join(tiny_root, "fakes_dataset", p), course) for p in ("train", "val", "test")
    ]
    torch.manual_seed(0)
    model = SimpleNet()
    trainer = cpu_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        splits,
        out_dir=str(tmp_path / "o"),
        checkpoint_dir=str(tmp_path / "c"),
    )
    loss, accuracy = trainer.train_one_epoch()
    assert np.isfinite(loss) and 0 <= accuracy <= 100


class _CountingTrainer(Trainer):
    """A course-style subclass: its validate() and test() must be what run() uses."""

    calls: list

    def validate(self):
        self.calls.append("validate")
        return 1.5, 42.0  # not from an evaluation pass: run() keeps these numbers

    def test(self):
        self.calls.append("test")
        return super().test()


def test_run_evaluates_through_validate_and_test(tiny_root, tmp_path):
    splits = [utils.load_dataset("fakes_dataset", p, tiny_root) for p in ("train", "val", "test")]
    torch.manual_seed(0)
    model = SimpleNet()
    trainer = cpu_trainer(
        model,
        torch.optim.Adam(model.parameters()),
        splits,
        trainer_class=_CountingTrainer,
        out_dir=str(tmp_path / "o"),
        checkpoint_dir=str(tmp_path / "c"),
    )
    trainer.calls = []
    run = trainer.run(2, LoggingParameters("SimpleNet", "fakes_dataset", "Adam"))
    assert trainer.calls == ["validate", "test", "validate", "test"]
    assert run["val_loss"] == [1.5, 1.5] and run["val_acc"] == [42.0, 42.0]
    assert run["val_auc"] == [None, None]  # no scores behind the overridden numbers
    assert run["test_auc"][0] is not None  # test() went through the real evaluation


def test_every_run_trains_its_own_epochs(tiny_root, tmp_path):
    """The course's run(epochs) trains that many epochs each time it is called: a second run() of
    one Trainer, or one after an epoch trained by hand, appends a run of its own epochs 1..N whose
    best epoch and checkpoint point into its lists."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 8, 8), torch.tensor([0, 1] * 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    splits, folders = (
        [TensorDataset(images, labels)] * 3,
        dict(out_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "c")),
    )
    trainer = cpu_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), splits, **folders)
    trainer.train_one_epoch()
    parameters = LoggingParameters("SimpleNet", "fakes_dataset", "SGD")
    runs = [trainer.run(2, parameters), trainer.run(3, parameters)]
    assert [len(run["train_loss"]) for run in runs] == [2, 3]
    assert [len(run["lr"]) for run in runs] == [2, 3]
    assert all(1 <= run["best_epoch"] <= len(run["val_acc"]) for run in runs)
    saved = json.loads((tmp_path / "o" / "fakes_dataset_SimpleNet_SGD.json").read_text())
    assert [len(run["train_loss"]) for run in saved] == [2, 3]
    checkpoint = torch.load(tmp_path / "c" / "fakes_dataset_SimpleNet_SGD.pt", weights_only=True)
    assert checkpoint["epoch"] == runs[1]["best_epoch"] and checkpoint["run_id"] == runs[1]["run_id"]


def test_train_main_defaults_graders_type():
    args = train_main.build_parser().parse_args([])
    assert (args.lr, args.momentum, args.batch_size, args.epochs) == (0.001, 0.9, 128, 2)
    assert (args.model, args.optimizer, args.dataset) == ("SimpleNet", "SGD", "fakes_dataset")


@pytest.mark.parametrize("script", [numerical_analysis, saliency_map, grad_cam_analysis])
def test_analysis_defaults_graders_type(script, tmp_path, monkeypatch):
    """No flags: the course's checkpoints/XceptionBased.pt on fakes_dataset, where that file exists
    (the model then comes from the checkpoint, XceptionBased)."""
    from lib.checkpoints import default_checkpoint

    args = script.build_parser().parse_args([])
    assert (args.model, args.checkpoint_path, args.dataset) == (None, None, "fakes_dataset")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "XceptionBased.pt").write_bytes(b"")
    assert default_checkpoint(args.model, args.dataset) == "checkpoints/XceptionBased.pt"
    graders = script.build_parser().parse_args(
        ["-m", "XceptionBased", "-cpp", "checkpoints/XceptionBased.pt"]
    )
    assert (graders.model, graders.checkpoint_path) == ("XceptionBased", "checkpoints/XceptionBased.pt")


def test_a_gpu_saved_checkpoint_loads_on_the_cpu(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = SimpleNet()
    path = str(tmp_path / "gpu.pt")
    # record every tensor as living on cuda:0, as torch.save does on a GPU machine
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"model": model.state_dict(), "val_acc": 90.0, "test_acc": 88.0, "epoch": 1}, path)
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the file really names the GPU: a plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = utils.load_model_from_checkpoint("SimpleNet", path, torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value) and loaded.state_dict()[key].device.type == "cpu"
    assert json.dumps(utils.load_checkpoint(path)["val_acc"]) == "90.0"
