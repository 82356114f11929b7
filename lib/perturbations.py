"""Robustness to perturbations: the image perturbations, scoring under them, their figures.

The perturbations work on uint8 N x 3 x H x W batches on the CPU: each takes the uint8 test images
before the evaluation transform and returns uint8 images of the same shape:

- ``jpeg``: a JPEG round trip through PIL at a quality (PIL's default 4:2:0 chroma subsampling);
- ``blur``: Gaussian blur with a standard deviation in pixels (scipy; kernel radius ceil(3 sigma),
  reflected borders);
- ``resize``: down-scale by a factor, then up-scale back, both bilinear with antialiasing
  (torchvision);
- ``noise``: additive Gaussian noise with a standard deviation on the 0-255 scale, rounded and
  clipped. Its noise comes from a generator seeded with (seed, dataset index) per image, so an
  image gets the same noise whatever batch or subset it is in.

``score_perturbed`` forwards the test images clean and perturbed, ``robustness_metrics`` turns
the logits into AUC, accuracy, EER and AP of P(fake), ``plot_robustness`` draws AUC against
severity.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from lib import batching, scores
from lib.metrics import HEADLINE_METRICS, binary_metrics

PERTURBATIONS = {  # name: severities, mildest first
    "jpeg": (90, 70, 50, 30),
    "blur": (0.5, 1.0, 2.0, 3.0),
    "resize": (0.75, 0.5, 0.25),
    "noise": (2.0, 5.0, 10.0),
}
SEVERITY_NAMES = {
    "jpeg": "JPEG quality",
    "blur": "Gaussian blur sigma (px)",
    "resize": "down-then-up scale factor",
    "noise": "Gaussian noise sigma (0-255)",
}


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of each image through PIL at ``quality`` (1-95)."""
    out = torch.empty_like(images)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1)
    return out


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels, kernel 2 ceil(3 sigma) + 1 wide,
    borders reflected (scipy's separable filter), rounded back to uint8."""
    radius = math.ceil(3 * sigma)
    blurred = gaussian_filter(
        images.numpy().astype(np.float32), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=radius / sigma
    )
    return torch.from_numpy(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))


def resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear, antialiased down-scale to ``scale`` times the size, then back up to the size."""
    height, width = images.shape[-2:]
    small = [max(1, round(height * scale)), max(1, round(width * scale))]
    down = TF.resize(images, small, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(down, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)


def noise(images: torch.Tensor, sigma: float, indices, seed: int) -> torch.Tensor:
    """Add N(0, sigma^2) noise (0-255 scale), round and clip; image i's noise is drawn from
    ``numpy.random.default_rng([seed, indices[i]])``."""
    out = np.empty(images.shape, np.uint8)
    for i, (image, index) in enumerate(zip(images.numpy(), np.asarray(indices).tolist())):
        field = np.random.default_rng([int(seed), int(index)]).standard_normal(image.shape)
        out[i] = np.clip(np.rint(image + float(sigma) * field), 0, 255)
    return torch.from_numpy(out)


def perturb(images: torch.Tensor, name: str, severity: float, indices, seed: int) -> torch.Tensor:
    """``images`` (uint8 N x 3 x H x W, CPU; their dataset ``indices``) under perturbation
    ``name`` at ``severity``."""
    if name == "jpeg":
        return jpeg(images, int(severity))
    if name == "blur":
        return blur(images, severity)
    if name == "resize":
        return resize(images, severity)
    if name == "noise":
        return noise(images, severity, indices, seed)
    raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")


def conditions(names=None) -> list[tuple[str, float]]:
    """(perturbation, severity) pairs of the ``names`` chosen (default: all), in table order."""
    names = list(PERTURBATIONS) if names is None else list(names)
    return [(name, severity) for name in names for severity in PERTURBATIONS[name]]


# ----------------------------------------------------------------------------- evaluation
def score_perturbed(
    model, dataset, chosen, indices, batch_size: int, seed: int, progress: bool = False, num_workers: int = 0
) -> tuple[dict, np.ndarray]:
    """Logits of the images ``indices`` of a ``FacesDataset``, clean and under each (name,
    severity) of ``chosen``: ``({"clean" or (name, severity): N x 2 float32}, labels)``;
    ``num_workers`` worker processes decode the images.

    Each batch is decoded once and forwarded clean and perturbed, on the model's device, through
    the evaluation transform (``scores.predict_logits``); the clean forward is the one
    ``scores.predict_scores`` makes, so clean figures equal numerical_analysis.py's.
    """
    keys = ["clean"] + list(chosen)
    logits: dict = {key: [] for key in keys}
    labels = []
    with tqdm(
        total=len(indices) * len(keys), desc="perturbed scoring", unit="img", disable=not progress
    ) as bar:
        for images, batch_labels, batch_indices in batching.iter_batches(
            dataset, batch_size, indices, num_workers
        ):
            for key in keys:
                batch = images if key == "clean" else perturb(images, *key, batch_indices, seed)
                logits[key].append(scores.predict_logits(model, batch, batch_size))
                bar.update(len(images))
            labels.append(batch_labels)
    return (
        {key: torch.cat(parts).numpy() for key, parts in logits.items()},
        torch.cat(labels).numpy().astype(np.int64),
    )


def robustness_metrics(labels, logits: dict) -> dict:
    """The JSON-ready figures of ``score_perturbed``'s logits: ``clean`` (``metrics.binary_metrics``
    of P(fake): AUC, accuracy %, EER, AP) and, per perturbation, its severities and those figures
    as lists in severity order."""
    keep = HEADLINE_METRICS

    def figures(key):
        metrics = binary_metrics(labels, scores.soft_scores(logits[key])[:, 1])
        return {name: metrics[name] for name in keep}

    out = {"clean": figures("clean"), "perturbations": {}}
    for key in logits:
        if key == "clean":
            continue
        name, severity = key
        entry = out["perturbations"].setdefault(
            name, {"severity": SEVERITY_NAMES[name], "severities": [], **{k: [] for k in keep}}
        )
        entry["severities"].append(severity)
        for metric, value in figures(key).items():
            entry[metric].append(value)
    return out


def plot_robustness(metrics: dict, title: str):
    """AUC against severity level (0 = clean, then each perturbation's grades, mildest first), one
    line per perturbation, the clean AUC as a dashed reference line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    clean = metrics["clean"]["auc"]
    for name, entry in metrics["perturbations"].items():
        grades = ", ".join(f"{s:g}" for s in entry["severities"])
        aucs = [np.nan if a is None else a for a in entry["auc"]]
        ax.plot(
            range(len(aucs) + 1),
            [np.nan if clean is None else clean] + aucs,
            marker="o",
            label=f"{SEVERITY_NAMES[name]}: {grades}",
        )
    if clean is not None:
        ax.axhline(clean, linestyle="--", color="black", label=f"clean AUC = {clean:.4f}")
    ax.axhline(0.5, linestyle=":", color="gray", label="chance")
    ax.set_xticks(
        range(max((len(e["severities"]) for e in metrics["perturbations"].values()), default=0) + 1)
    )
    ax.set_xlabel("severity level (0 = clean; the grades in the legend, mildest first)")
    ax.set_ylabel("AUC of P(fake)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, linestyle=":", alpha=0.5)
    fig.tight_layout()
    return fig
