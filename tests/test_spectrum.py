"""spectrum.py and spectrum_analysis.py against numpy.fft and known frequencies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spectrum_analysis
from conftest import analysis_argv
from lib import spectrum
from lib.cli import run_cli

SIZE = 64
LUMA = np.array([0.2989, 0.587, 0.114])  # torchvision's (ITU-R 601-2) grey weights


def wave(ky: int, kx: int, phase: float = 0.0) -> np.ndarray:
    """A uint8 3 x SIZE x SIZE colour image: a cosine of (ky, kx) cycles per image, tinted."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    grey = 128 + 90 * np.cos(2 * np.pi * (ky * y + kx * x) / SIZE + phase)
    return np.clip(np.rint(grey[None] * np.array([1.0, 0.9, 0.8])[:, None, None]), 0, 255).astype(np.uint8)


def reference_spectra(images: np.ndarray):
    """numpy.fft: per image the power |F|^2/(H W) and log(|F| + 1e-8) of the grey, mean-removed image."""
    grey = np.tensordot(LUMA, images.astype(np.float64) / 255.0, axes=(0, 1))
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    transform = np.fft.fft2(grey)
    return np.abs(transform) ** 2 / SIZE**2, np.log(np.abs(transform) + 1e-8)


def brute_force_ring_mean(power: np.ndarray, r: int) -> float:
    """Mean of the frequencies whose distance from zero frequency rounds to r."""
    f = np.fft.fftfreq(SIZE) * SIZE
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return float(power[np.abs(radius - r) <= 0.5 - 1e-12].mean()) if r else float(power[0, 0])


def test_spectra_match_numpy_fft_and_peak_at_the_known_radius():
    # Reals: 12 x 16 cycles (radius 20); fakes: 0 x 16 cycles (radius 16), two phases each.
    real = np.stack([wave(12, 16), wave(12, 16, 1.0)])
    fake = np.stack([wave(0, 16), wave(0, 16, 2.0)])
    acc = spectrum.SpectrumAccumulator()
    acc.add(torch.from_numpy(np.concatenate([real[:1], fake])), torch.tensor([0, 1, 1]))
    acc.add(torch.from_numpy(real[1:]), torch.tensor([0]))
    assert acc.counts == {0: 2, 1: 2}
    for label, images in ((0, real), (1, fake)):
        power, log_magnitude = reference_spectra(images)
        # Compared as (geometric mean) magnitudes: the log of a rounding-level |F| is noise itself;
        # 1e-7 is 1e-10 of the largest |F| here.
        np.testing.assert_allclose(
            np.exp(acc.mean_log_magnitude(label)),
            np.exp(np.fft.fftshift(log_magnitude.mean(0))),
            rtol=1e-9,
            atol=1e-7,
        )
        mean_power = power.mean(0)
        expected = [brute_force_ring_mean(mean_power, r) for r in range(1, 46)]
        np.testing.assert_allclose(
            acc.power_profile_db(label), 10 * np.log10(np.asarray(expected) + 1e-30), atol=1e-6
        )
    summary = acc.summary(SIZE)
    freq = np.asarray(summary["cycles_per_pixel"])
    assert freq[0] == 1 / SIZE and len(freq) == len(summary["real_db"]) == 45  # r = 1 .. 64/sqrt 2
    assert freq[np.argmax(summary["real_db"])] == 20 / SIZE
    assert freq[np.argmax(summary["fake_db"])] == 16 / SIZE
    np.testing.assert_allclose(
        summary["fake_minus_real_db"], np.subtract(summary["fake_db"], summary["real_db"])
    )
    # Parseval: the mean power over all frequencies is the grey image's variance.
    grey = np.tensordot(LUMA, real[0].astype(np.float64) / 255.0, axes=(0, 0))
    assert reference_spectra(real[:1])[0].mean() == pytest.approx(grey.var())


def test_a_class_without_images_has_no_spectrum():
    acc = spectrum.SpectrumAccumulator()
    acc.add(torch.from_numpy(np.stack([wave(3, 4)])), torch.tensor([1]))
    summary = acc.summary(SIZE)
    assert summary["real_db"] is None and summary["fake_minus_real_db"] is None
    assert summary["fake_db"] is not None and acc.mean_log_magnitude(0) is None


def test_spectrum_analysis_writes_each_dataset(tiny_root, tmp_path, capsys):
    args = analysis_argv(tiny_root, tmp_path, "-b", "4")
    assert run_cli(spectrum_analysis.main, args) == 0
    for name in ("fakes_dataset", "synthetic_dataset"):
        assert (tmp_path / "fig" / f"{name}_spectrum.png").is_file()
        section = json.loads((tmp_path / "out" / f"{name}_spectrum.json").read_text())["spectrum"]
        assert (section["n_real"], section["n_fake"], section["image_size"]) == (4, 2, 256)
        assert len(section["cycles_per_pixel"]) == len(section["fake_minus_real_db"]) == 181
    # The conftest fakes carry a checkerboard of 4-pixel squares (fundamental at 1/8 cycles/pixel
    # on both axes, and odd harmonics): peaks that the noisy reals lack.
    assert "largest |fake - real|" in capsys.readouterr().out
    assert max(section["fake_minus_real_db"]) > 10
    # A subset of the test split.
    assert run_cli(spectrum_analysis.main, args + ["--datasets", "fakes_dataset", "--max_images", "2"]) == 0
    section = json.loads((tmp_path / "out" / "fakes_dataset_spectrum.json").read_text())["spectrum"]
    assert (section["n_real"], section["n_fake"]) == (1, 1)
