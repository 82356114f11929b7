"""Any dataset folder under the data root: a new name, and the ``0_real/1_fake`` layout of the
GAN-image detectors, through training, numerical analysis and cross-dataset; an unknown name is a
one-line error that lists the datasets found."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import cross_dataset_analysis
import numerical_analysis
import train_main
from conftest import analysis_argv, make_image, one_line_error, train_argv
from faces_dataset import FacesDataset
from lib.cli import run_cli
from utils import datasets_under, load_dataset

COUNTS = {"train": (4, 4), "val": (2, 2), "test": (3, 2)}


def make_named_dataset(root, name: str, class_dirs=("real", "fake"), seed: int = 0) -> None:
    """``root/name/<split>/<real dir>|<fake dir>/`` with COUNTS images, generated with ``seed``."""
    rng = np.random.default_rng(seed)
    for split, (n_real, n_fake) in COUNTS.items():
        for class_dir, count, fake in ((class_dirs[0], n_real, False), (class_dirs[1], n_fake, True)):
            folder = os.path.join(root, name, split, class_dir)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                make_image(rng, fake).save(os.path.join(folder, f"{split}{i:02d}.png"))


@pytest.fixture(scope="module")
def other_root(module_tmp):
    """A data root with ``celebdf_crops`` (real/fake) and ``gan_images`` (0_real/1_fake)."""
    root = module_tmp("any_data")
    make_named_dataset(root, "celebdf_crops", seed=1)
    make_named_dataset(root, "gan_images", ("0_real", "1_fake"), seed=2)
    os.makedirs(root / "notes" / "train")  # a folder that is not a dataset
    return root


def test_the_0_real_1_fake_layout_reads_with_the_course_labels(other_root):
    dataset = FacesDataset(str(other_root / "gan_images" / "test"))
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1]
    path, label = dataset.path_and_label(3)
    assert label == 1 and os.sep + "1_fake" + os.sep in path
    assert dataset.path_and_label(0)[0].split(os.sep)[-2] == "0_real"


def test_datasets_are_listed_by_their_folders(other_root):
    assert datasets_under(str(other_root)) == ["celebdf_crops", "gan_images"]


def test_an_unknown_dataset_lists_those_found(capsys, other_root, tmp_path):
    one_line_error(
        capsys,
        train_main.main,
        train_argv(other_root, tmp_path, "-d", "celeb_df", "-e", "1"),
        "--dataset 'celeb_df'",
        "celebdf_crops, gan_images",
    )


@pytest.mark.parametrize("name", ["celebdf_crops", "gan_images"])
def test_a_dataset_of_any_name_trains_and_is_analysed(other_root, tmp_path, name):
    argv = train_argv(other_root, tmp_path, "-d", name, "-e", "1", "-b", "4", "-o", "Adam")
    assert run_cli(train_main.main, argv) == 0
    stem = f"{name}_SimpleNet_Adam"
    run = json.loads((tmp_path / "out" / f"{stem}.json").read_text())[-1]
    assert run["dataset"] == name and len(run["test_acc"]) == 1
    checkpoint = tmp_path / "ck" / f"{stem}.pt"
    argv = analysis_argv(other_root, tmp_path, "-m", "SimpleNet", "-cpp", str(checkpoint), "-d", name)
    assert run_cli(numerical_analysis.main, argv) == 0
    numerical = json.loads((tmp_path / "out" / f"{name}_SimpleNet_metrics.json").read_text())["numerical"]
    assert (numerical["n_real"], numerical["n_fake"]) == COUNTS["test"]
    assert (tmp_path / "fig" / f"{name}_SimpleNet_roc_curve.png").is_file()
    # the AUC of P(fake) against sklearn on the checkpoint's own scores, one image at a time
    from utils import load_model_from_checkpoint

    model = load_model_from_checkpoint("SimpleNet", str(checkpoint))
    dataset = load_dataset(name, "test", str(other_root))
    with torch.inference_mode():
        p_fake = [torch.softmax(model(dataset[i][0][None]), 1)[0, 1].item() for i in range(len(dataset))]
    assert numerical["auc"] == pytest.approx(roc_auc_score(dataset.labels.numpy(), p_fake), abs=1e-6)


def test_cross_dataset_takes_any_checkpoint_against_any_datasets(other_root, tmp_path):
    torch.manual_seed(0)
    from models import SimpleNet

    checkpoint = tmp_path / "celebdf_crops_SimpleNet_Adam.pt"
    torch.save({"model": SimpleNet().state_dict()}, checkpoint)
    argv = [
        "--checkpoints",
        str(checkpoint),
        *analysis_argv(other_root, tmp_path, "--datasets", "celebdf_crops", "gan_images"),
    ]
    assert run_cli(cross_dataset_analysis.main, argv) == 0
    matrix = json.loads((tmp_path / "out" / "cross_dataset.json").read_text())["cross_dataset"]
    (row,) = matrix["rows"]
    assert row["train_dataset"] == "celebdf_crops" and row["model"] == "SimpleNet"
    assert row["results"]["celebdf_crops"]["in_distribution"] is True
    assert row["results"]["gan_images"]["in_distribution"] is False
    assert row["results"]["gan_images"]["n_fake"] == COUNTS["test"][1]
