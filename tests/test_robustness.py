"""perturbations.py and robustness_analysis.py: each perturbation against an independent
implementation, and the clean figures against numerical_analysis.py's."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import numerical_analysis
import robustness_analysis
from conftest import analysis_argv
from lib import perturbations
from lib.cli import run_cli


def images_of(seed: int, n: int = 3, size: int = 64) -> torch.Tensor:
    """Smooth-ish random uint8 images (a blurred noise field plus a gradient)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, size // 8, size // 8)).astype(np.float32)
    field = torch.nn.functional.interpolate(torch.from_numpy(base), size=size, mode="bilinear")
    ramp = torch.linspace(-40, 40, size).view(1, 1, 1, size)
    return (field + ramp).clamp(0, 255).round().to(torch.uint8)


def test_jpeg_equals_a_pil_round_trip_and_degrades_with_quality():
    images = images_of(0)
    for quality in (90, 30):
        out = perturbations.jpeg(images, quality)
        for image, got in zip(images, out):
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
            np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)
    error = [(perturbations.jpeg(images, q).float() - images.float()).abs().mean() for q in (90, 30)]
    assert 0 < error[0] < error[1]


@pytest.mark.parametrize("sigma", perturbations.PERTURBATIONS["blur"])
def test_blur_matches_torchvision(sigma):
    images = images_of(1)
    size = 2 * math.ceil(3 * sigma) + 1
    expected = TF.gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])
    got = perturbations.blur(images, sigma)
    assert got.dtype == torch.uint8 and got.shape == images.shape
    assert (got.int() - expected.int()).abs().max() <= 1  # float rounding only


@pytest.mark.parametrize("scale", perturbations.PERTURBATIONS["resize"])
def test_resize_matches_pil_bilinear(scale):
    images = images_of(2)
    got = perturbations.resize(images, scale)
    assert got.shape == images.shape
    small = round(64 * scale)
    for image, ours in zip(images, got):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        back = pil.resize((small, small), Image.BILINEAR).resize((64, 64), Image.BILINEAR)
        diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - np.asarray(back).astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 3
    assert (got.float() - images.float()).abs().mean() > 0.5  # it did change the images


def test_noise_has_its_sigma_and_depends_only_on_seed_and_index():
    images = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    out = perturbations.noise(images, 10.0, [0, 1, 2, 3], seed=0)
    delta = out.double() - 128
    assert abs(delta.mean()) < 0.2 and delta.std().item() == pytest.approx(10.0, rel=0.03)
    # The same image index gets the same noise alone or in another batch; other seeds differ.
    alone = perturbations.noise(images[:1], 10.0, [2], seed=0)
    torch.testing.assert_close(alone[0], out[2])
    assert not torch.equal(perturbations.noise(images[:1], 10.0, [2], seed=1)[0], out[2])
    assert not torch.equal(out[0], out[1])
    # Clipped to 0-255, not wrapped around.
    dark = perturbations.noise(torch.zeros((1, 3, 64, 64), dtype=torch.uint8), 10.0, [0], 0)
    assert dark.float().mean() > 2


# ----------------------------------------------------------------------------- the script
def common(simplenet_checkpoint, tiny_root, tmp_path):
    return [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        "-d",
        "synthetic_dataset",
        *analysis_argv(tiny_root, tmp_path, "-b", "4"),
    ]


def test_clean_figures_equal_numerical_analysis(simplenet_checkpoint, tiny_root, tmp_path):
    args = common(simplenet_checkpoint, tiny_root, tmp_path)
    assert run_cli(numerical_analysis.main, args + ["--bootstrap", "10"]) == 0
    assert (
        run_cli(robustness_analysis.main, args + ["--max_images", "0", "--perturbations", "resize", "jpeg"])
        == 0
    )
    content = json.loads((tmp_path / "out" / "synthetic_dataset_SimpleNet_metrics.json").read_text())
    robust, numerical = content["robustness"], content["numerical"]
    for name in ("auc", "accuracy", "eer", "ap"):
        assert robust["clean"][name] == numerical[name], name  # exactly
    assert robust["n_images"] == 6 and robust["subset"] is None
    assert list(robust["perturbations"]) == ["resize", "jpeg"]
    for name in ("resize", "jpeg"):
        severities = perturbations.PERTURBATIONS[name]
        entry = robust["perturbations"][name]
        assert entry["severities"] == list(severities)
        assert len(entry["auc"]) == len(entry["accuracy"]) == len(severities)
    assert (tmp_path / "fig" / "synthetic_dataset_SimpleNet_robustness.png").is_file()


def test_subset_and_seed_are_repeatable(simplenet_checkpoint, tiny_root, tmp_path):
    def run(seed):
        args = common(simplenet_checkpoint, tiny_root, tmp_path) + [
            "--max_images",
            "4",
            "--seed",
            str(seed),
            "--perturbations",
            "noise",
        ]
        assert run_cli(robustness_analysis.main, args) == 0
        path = tmp_path / "out" / "synthetic_dataset_SimpleNet_metrics.json"
        return json.loads(path.read_text())["robustness"]

    first, again = run(0), run(0)
    assert first == again
    assert (first["n_images"], first["n_real"], first["n_fake"]) == (4, 2, 2)
    assert list(first["perturbations"]) == ["noise"]


def test_the_study_grades():
    assert perturbations.conditions() == [
        ("jpeg", 90),
        ("jpeg", 70),
        ("jpeg", 50),
        ("jpeg", 30),
        ("blur", 0.5),
        ("blur", 1.0),
        ("blur", 2.0),
        ("blur", 3.0),
        ("resize", 0.75),
        ("resize", 0.5),
        ("resize", 0.25),
        ("noise", 2.0),
        ("noise", 5.0),
        ("noise", 10.0),
    ]


def test_plot_has_one_line_per_perturbation_and_the_clean_reference():
    metrics = {
        "clean": {"auc": 0.8},
        "perturbations": {
            "jpeg": {"severities": [90, 30], "auc": [0.7, 0.6]},
            "noise": {"severities": [2.0], "auc": [None]},
        },
    }
    fig = perturbations.plot_robustness(metrics, "t")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["clean AUC = 0.8000"].get_ydata()) == [0.8, 0.8]
    jpeg = next(line for label, line in lines.items() if label.startswith("JPEG quality"))
    assert list(jpeg.get_ydata()) == [0.8, 0.7, 0.6]  # level 0 is the clean AUC
    assert sum(label.startswith(("JPEG", "Gaussian")) for label in lines) == 2
