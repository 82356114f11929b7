"""The deletion test of relevance maps (docs/design.md#faithfulness): how much the confidence
drops when the most relevant pixels are removed, against random pixels."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.4)


def rank_pixels(scores: torch.Tensor, random_order: torch.Tensor) -> torch.Tensor:
    """Each row's pixel indices (N x P), highest ``scores`` first, pixels of equal score in
    ``random_order``: a map's ties, such as the zeros of Grad-CAM's ReLU, are then removed as
    random pixels are, not as a fixed band of rows (``topk``'s order)."""
    by_score = scores.gather(1, random_order).argsort(dim=1, descending=True, stable=True)
    return random_order.gather(1, by_score)


@torch.inference_mode()
def _target_confidence(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images).double(), dim=1).gather(1, labels.view(-1, 1))[:, 0]


def deletion_faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    labels,
    maps,
    fractions=DEFAULT_FRACTIONS,
    generator: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Deletion test of relevance maps on a batch (normalised images on the model's device).

    For each fraction f, the f most relevant pixels of each image (by ``maps``, N x H x W) are
    replaced by the image's per-channel mean, and so are f random pixels; the drop in the softmax
    confidence of the target class ``labels`` is measured for both. Faithful maps give a
    larger drop than random pixels; pixels of equal map value are taken in the random pixels'
    order, so a constant map scores exactly as random pixels do. Returns per-image arrays
    ``map_drop`` and ``random_drop`` (F x N) and ``base`` (N). Random pixels come from
    ``generator`` (CPU) for repeatability.
    """
    labels = torch.as_tensor(labels, device=images.device, dtype=torch.long)
    maps = torch.as_tensor(
        np.asarray(maps) if not torch.is_tensor(maps) else maps, device=images.device, dtype=torch.float32
    )
    n, _, height, width = images.shape
    pixels = height * width
    base = _target_confidence(model, images, labels)
    fill = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    random_order = (
        torch.rand((n, pixels), generator=generator).to(images.device).argsort(dim=1, descending=True)
    )
    map_order = rank_pixels(maps.reshape(n, -1), random_order)
    map_drop, random_drop = [], []
    for fraction in fractions:
        k = max(1, round(float(fraction) * pixels))
        drops = []
        for order in (map_order, random_order):
            mask = torch.zeros((n, pixels), dtype=torch.bool, device=images.device)
            mask.scatter_(1, order[:, :k], True)
            perturbed = torch.where(mask.view(n, 1, height, width), fill, images)
            drops.append((base - _target_confidence(model, perturbed, labels)).cpu().numpy())
        map_drop.append(drops[0])
        random_drop.append(drops[1])
    return {"map_drop": np.stack(map_drop), "random_drop": np.stack(random_drop), "base": base.cpu().numpy()}


class FaithfulnessAccumulator:
    """Sums ``deletion_faithfulness`` over batches; ``summary()`` gives the JSON-ready means.

    ``only``: dataset indices to test (``None``: every image it is given); the others of a batch
    are skipped, so the test can ride on a pass that computes maps for more images.
    """

    def __init__(self, model: nn.Module, fractions=DEFAULT_FRACTIONS, seed: int = 0, only=None):
        self.model = model
        self.only = None if only is None else torch.as_tensor(np.asarray(only, dtype=np.int64))
        self.fractions = [float(f) for f in fractions]
        self.generator = torch.Generator().manual_seed(seed)
        self.map_drop = np.zeros(len(self.fractions))
        self.random_drop = np.zeros(len(self.fractions))
        self.base = 0.0
        self.n = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, maps, indices=None) -> None:
        if self.only is not None:
            if indices is None:
                raise ValueError("FaithfulnessAccumulator(only=...) needs each batch's dataset indices")
            keep = torch.isin(torch.as_tensor(indices), self.only)
            if not bool(keep.any()):
                return
            keep = keep.to(images.device)
            maps = torch.as_tensor(maps, device=images.device)
            images, labels, maps = images[keep], labels[keep], maps[keep]
        result = deletion_faithfulness(self.model, images, labels, maps, self.fractions, self.generator)
        self.map_drop += result["map_drop"].sum(axis=1)
        self.random_drop += result["random_drop"].sum(axis=1)
        self.base += float(result["base"].sum())
        self.n += len(result["base"])

    def summary(self) -> dict:
        n = max(self.n, 1)
        map_drop, random_drop = self.map_drop / n, self.random_drop / n
        return {
            "method": "deletion: the top fraction of pixels by Grad-CAM (or random pixels) replaced "
            "by the image's per-channel mean; drop in the softmax confidence of the true "
            "class, averaged over images",
            "n_images": self.n,
            "fractions": self.fractions,
            "mean_confidence": self.base / n,
            "map_drop": [float(v) for v in map_drop],
            "random_drop": [float(v) for v in random_drop],
            "mean_map_drop": float(map_drop.mean()),
            "mean_random_drop": float(random_drop.mean()),
            "faithfulness_gap": float((map_drop - random_drop).mean()),
        }


def faithfulness_table(summary: dict) -> str:
    lines = [
        "pixels removed   drop (Grad-CAM top)   drop (random)",
        "--------------   -------------------   -------------",
    ]
    for f, m, r in zip(summary["fractions"], summary["map_drop"], summary["random_drop"]):
        lines.append(f"{100 * f:>13.1f}%   {m:>19.4f}   {r:>13.4f}")
    lines.append(
        f"faithfulness gap (mean drop Grad-CAM - random) over {summary['n_images']} images: "
        f"{summary['faithfulness_gap']:+.4f}"
    )
    return "\n".join(lines)
