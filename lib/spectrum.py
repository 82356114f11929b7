"""Frequency traces of a dataset: mean Fourier spectra of real and fake images (Durall et al. 2020,
Frank et al. 2020).

Each image is turned to grey (torchvision's luma weights), scaled to [0, 1] and its mean removed;
its 2-D discrete Fourier transform F (``torch.fft.fft2``, on any device) gives

- the log-magnitude ``log(|F| + 1e-8)``, averaged per class (``mean_log_magnitude``, centred with
  ``fftshift``);
- the power ``|F|^2 / (H W)`` (its mean over frequencies is the image's variance), averaged per
  class and then azimuthally: over the frequencies whose distance from zero frequency rounds to
  the same whole number r of cycles per image (``radial_profile``); r / H is cycles per pixel,
  and the profile runs to the corners of the spectrum (r up to H / sqrt 2). The 1-D spectra
  start at r = 1: with the mean removed, the power at zero frequency is 0.

``SpectrumAccumulator`` sums over batches; ``summary`` gives the JSON-ready 1-D spectra in dB and
their difference; ``plot_spectra`` draws them.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from lib.class_means import ClassSums
from lib.names import CLASS_NAMES

LOG_EPS = 1e-8


def grey_zero_mean(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float64 N x H x W grey images in [0, 1] less their own mean."""
    grey = TF.rgb_to_grayscale(images_uint8.double() / 255.0)[:, 0]
    return grey - grey.mean(dim=(1, 2), keepdim=True)


def power_and_log_magnitude(grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(power |F|^2 / (H W), log(|F| + 1e-8)) of each N x H x W image, unshifted (zero frequency
    at [0, 0])."""
    spectrum = torch.fft.fft2(grey)
    magnitude = spectrum.abs()
    return magnitude.square() / (grey.shape[-2] * grey.shape[-1]), torch.log(magnitude + LOG_EPS)


def radius_bins(height: int, width: int) -> np.ndarray:
    """Integer H x W array: the rounded distance of each unshifted frequency from zero frequency,
    in cycles per image."""
    fy = np.fft.fftfreq(height) * height
    fx = np.fft.fftfreq(width) * width
    return np.rint(np.hypot(fy[:, None], fx[None, :])).astype(np.int64)


def radial_profile(values: np.ndarray) -> np.ndarray:
    """Azimuthal mean of an unshifted H x W spectrum: entry r is the mean over the frequencies of
    ``radius_bins`` r (r = 0 .. the largest)."""
    bins = radius_bins(*values.shape).ravel()
    sums = np.bincount(bins, weights=np.asarray(values, dtype=np.float64).ravel())
    return sums / np.bincount(bins)


class SpectrumAccumulator:
    """Per-class sums of power and log-magnitude spectra over batches of uint8 images."""

    def __init__(self):
        self.power, self.log_magnitude = ClassSums(), ClassSums()

    @property
    def counts(self) -> dict[int, int]:
        """Images added per class."""
        return self.power.counts()

    def add(self, images_uint8: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (uint8 images on any device, labels 0 real / 1 fake)."""
        power, log_magnitude = power_and_log_magnitude(grey_zero_mean(images_uint8))
        labels = torch.as_tensor(labels, device=power.device)
        self.power.add(power, labels)
        self.log_magnitude.add(log_magnitude, labels)

    def mean_log_magnitude(self, label: int) -> np.ndarray | None:
        """The class's mean log-magnitude spectrum, zero frequency centred; ``None`` without images."""
        mean = self.log_magnitude.mean(label)
        return None if mean is None else np.fft.fftshift(mean.cpu().numpy())

    def power_profile_db(self, label: int) -> np.ndarray | None:
        """10 log10 of the azimuthal mean of the class's mean power spectrum (``radial_profile``),
        from r = 1 on; ``None`` without images."""
        mean = self.power.mean(label)
        if mean is None:
            return None
        mean_power = mean.cpu().numpy()
        return 10.0 * np.log10(radial_profile(mean_power)[1:] + 1e-30)

    def summary(self, size: int) -> dict:
        """JSON-ready 1-D spectra: cycles per pixel, real and fake power in dB, fake - real, counts."""
        real, fake = self.power_profile_db(0), self.power_profile_db(1)
        both = real is not None and fake is not None
        n = int(radius_bins(size, size).max())
        return {
            "method": "grey, [0, 1], mean removed; power |F|^2 / (H W) of the 2-D DFT averaged per "
            "class, then over rings of equal rounded radius r (cycles per image); in dB "
            "(10 log10)",
            "image_size": int(size),
            "n_real": self.counts[0],
            "n_fake": self.counts[1],
            "cycles_per_pixel": [r / size for r in range(1, n + 1)],
            "real_db": None if real is None else [float(v) for v in real],
            "fake_db": None if fake is None else [float(v) for v in fake],
            "fake_minus_real_db": [float(v) for v in fake - real] if both else None,
        }


def largest_difference(fake_minus_real_db: list) -> int:
    """The index of the largest |fake - real| of a summary's 1-D spectra (the first on a tie)."""
    return max(range(len(fake_minus_real_db)), key=lambda r: abs(fake_minus_real_db[r]))


def plot_spectra(acc: SpectrumAccumulator, summary: dict, title: str):
    """Top: the mean log-magnitude spectra of real and fake images and their difference; bottom:
    the 1-D power spectra of both classes, and fake - real."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13.5, 8.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.8])
    maps = {label: acc.mean_log_magnitude(label) for label in (0, 1)}
    both = all(m is not None for m in maps.values())
    panels = [
        (maps[0], f"mean log |F|, real (n={acc.counts[0]})", "viridis"),
        (maps[1], f"mean log |F|, fake (n={acc.counts[1]})", "viridis"),
        (maps[1] - maps[0] if both else None, "fake - real (log |F|)", "coolwarm"),
    ]
    for column, (image, name, cmap) in enumerate(panels):
        ax = fig.add_subplot(grid[0, column])
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            ax.set_title(f"{name}: no images")
            continue
        # Colour range without the zero-frequency pixel (near log 1e-8: the mean is removed).
        low, high = np.percentile(image, [0.5, 99.9])
        if cmap == "coolwarm":
            low, high = -max(abs(low), abs(high)), max(abs(low), abs(high))
        shown = ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
        ax.set_title(name + "\n(centre: zero frequency)", fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    freq = np.asarray(summary["cycles_per_pixel"])
    ax = fig.add_subplot(grid[1, :2])
    for key, label in (("real_db", 0), ("fake_db", 1)):
        if summary[key] is not None:
            ax.plot(freq, summary[key], label=CLASS_NAMES[label], color=f"C{label}")
    _frequency_axis(ax, "mean power (dB)")
    ax.legend()
    ax = fig.add_subplot(grid[1, 2])
    if summary["fake_minus_real_db"] is not None:
        ax.plot(freq, summary["fake_minus_real_db"], color="C3")
    ax.axhline(0, color="gray", linestyle=":")
    _frequency_axis(ax, "fake - real (dB)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _frequency_axis(ax, ylabel: str) -> None:
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=0.8)  # Nyquist along the axes
    ax.set_xlabel("cycles/pixel (dashed: 0.5, Nyquist along an axis)")
    ax.set_ylabel(ylabel)
    ax.grid(True, linestyle=":", alpha=0.5)
