"""Figures for a paper: the resolution asked for, one colour scale for the two class means, and
titles that name the model, the dataset, the class and P(fake) of each image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import grad_cam_analysis
import plot_accuracy_and_loss
import plot_samples_of_faces_datasets as samples
from conftest import analysis_argv
from lib import class_means, sampling
from lib.cli import run_cli


def _runs_json(tmp_path) -> str:
    run = {"model": "SimpleNet", "dataset": "fakes_dataset", "optimizer": {"name": "Adam", "params": {}}}
    run.update({f"{s}_loss": [1.0, 0.5] for s in ("train", "val", "test")})
    run.update({f"{s}_acc": [50.0, 60.0] for s in ("train", "val", "test")})
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([run]))
    return str(path)


def test_dpi_sets_the_png_resolution(tmp_path):
    """Twice the dpi: twice the pixels on each side (the figure's size in inches is fixed)."""
    sizes = []
    for dpi in (60, 120):
        out = tmp_path / str(dpi)
        argv = ["-j", _runs_json(tmp_path), "--figures_dir", str(out), "--dpi", str(dpi)]
        assert plot_accuracy_and_loss.main(argv) == 0
        with Image.open(out / "fakes_dataset_SimpleNet_losses_plot.png") as image:
            sizes.append(image.size)
    assert sizes[1] == (2 * sizes[0][0], 2 * sizes[0][1])


def test_samples_figure_as_pdf(tiny_root, tmp_path):
    argv = ["--data_root", tiny_root, "--figures_dir", str(tmp_path), "--figure_format", "pdf"]
    assert samples.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets_samples.pdf"]
    assert (tmp_path / "datasets_samples.pdf").read_bytes().startswith(b"%PDF-")


@pytest.mark.parametrize("shared_scale", [False, True])
def test_mean_maps_are_scaled_again_or_share_one_colour_scale(shared_scale):
    """The study's recipe: each class mean scaled to [0, 1] again (min-max, by hand here);
    --shared_scale: the means as they are, on the lowest to the highest value of both."""
    real = np.linspace(0.0, 0.2, 64).reshape(8, 8)
    fake = np.linspace(0.1, 0.9, 64).reshape(8, 8)
    fig = class_means.plot_mean_maps({0: real, 1: fake}, {0: 3, 1: 5}, "t", "hot", "saliency", shared_scale)
    shown = [image for ax in fig.axes for image in ax.get_images()]
    assert len(shown) == 2
    expected = (real, fake) if shared_scale else ((real - 0.0) / 0.2, (fake - 0.1) / 0.8)
    for image, values in zip(shown, expected):
        np.testing.assert_allclose(np.asarray(image.get_array()), values, atol=1e-12)
    scale = (0.0, 0.9) if shared_scale else (0.0, 1.0)
    assert all(image.get_clim() == pytest.approx(scale) for image in shown)
    colour_bars = [ax for ax in fig.axes if not ax.get_images() and ax.get_ylabel()]
    label = "shared scale" if shared_scale else "each scaled to [0, 1]"
    assert len(colour_bars) == 1 and label in colour_bars[0].get_ylabel()
    assert colour_bars[0].get_ylim() == pytest.approx(scale)


def test_grad_cam_titles_name_model_dataset_class_and_p_fake(
    simplenet_checkpoint, tiny_root, tmp_path, monkeypatch, capsys
):
    """Each image's title: its class, the model's P(fake) of it (softmax of a plain forward pass
    here), the model and the dataset's title."""
    from models import SimpleNet
    from utils import load_dataset

    titles = {}
    real_write = grad_cam_analysis.write_figure

    def write_figure(fig, path, args):
        titles[path] = fig.axes[0].get_title()
        return real_write(fig, path, args)

    monkeypatch.setattr(grad_cam_analysis, "write_figure", write_figure)
    argv = analysis_argv(tiny_root, tmp_path, "-cpp", simplenet_checkpoint, "-b", "2", "--seed", "5")
    assert run_cli(grad_cam_analysis.main, argv) == 0, capsys.readouterr().err

    model = SimpleNet()
    model.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    model.eval()
    dataset = load_dataset("fakes_dataset", "test", tiny_root)
    picks = sampling.pick_one_per_class(dataset.labels.numpy(), 5)
    for label, name in ((0, "Real"), (1, "Fake")):
        image, _ = dataset[picks[label]]
        with torch.no_grad():
            p_fake = torch.softmax(model(image[None]), dim=1)[0, 1].item()
        (title,) = [t for path, t in titles.items() if f"{name}_Image_grad_cam" in path]
        assert title == f"{name} Image, P(fake) = {p_fake:.3f}\nSimpleNet on Deepfakes dataset"
