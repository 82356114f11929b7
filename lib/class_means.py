"""Per-class means of per-image maps (saliency, Grad-CAM, spectra), and the figure of the two
class means."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lib.batching import iter_batches
from lib.names import CLASS_NAMES
from lib.transforms import normalize_batch


class ClassSums:
    """Per-class (0 real, 1 fake) sums of per-image tensors and the class counts, kept on the
    device: adding a batch needs no host sync and sums in a fixed order (deterministic on CUDA)."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # 2 x (one image's shape)
        self.totals: torch.Tensor | None = None  # images per class

    def add(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``values`` N x ..., ``labels`` N (0 or 1)."""
        labels = labels.to(values.device, torch.long)
        if self.sums is None:
            self.sums = values.new_zeros((2, *values.shape[1:]))
            self.totals = torch.zeros(2, dtype=torch.long, device=values.device)
        shape = (-1,) + (1,) * (values.dim() - 1)
        for label in (0, 1):  # where, not a product: a non-finite value stays in its own class
            self.sums[label] += torch.where((labels == label).view(shape), values, 0).sum(0)
        self.totals += torch.bincount(labels, minlength=2)

    def counts(self) -> dict[int, int]:
        """Images added per class."""
        totals = [0, 0] if self.totals is None else self.totals.tolist()
        return {0: int(totals[0]), 1: int(totals[1])}

    def mean(self, label: int) -> torch.Tensor | None:
        """The class's mean; ``None`` when it has no images."""
        n = self.counts()[label]
        return self.sums[label] / n if n else None


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of an N x H x W batch to [0, 1] (min-max); a constant map becomes zeros."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(
        span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)
    )
    return out.reshape(maps.shape)


def mean_maps_per_class(
    dataset,
    map_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    device,
    indices=None,
    progress: bool = False,
    desc: str = "maps",
    on_batch: Callable | None = None,
    num_workers: int = 0,
) -> tuple[dict[int, np.ndarray | None], dict[int, int]]:
    """Mean map per class over a dataset: each map normalised to [0, 1], averaged per class (as
    it is: ``plot_mean_maps`` scales each mean again, or not; docs/design.md#saliency).
    ``map_fn(normalised images on device, labels on device)`` gives N x H x W maps (tensor or
    array). ``on_batch(images, labels, maps, indices)`` is called on every batch
    (for extra statistics on the same maps; ``indices``: the batch's dataset indices).
    ``num_workers`` worker processes decode the images. Returns
    ({0: real mean, 1: fake mean}, {0: n, 1: n}); a class without images has ``None``."""
    device = torch.device(device)
    per_class = ClassSums()
    for batch, labels, batch_indices in iter_batches(
        dataset, batch_size, indices, num_workers, progress=progress, desc=desc
    ):
        images = normalize_batch(batch.to(device, non_blocking=True))
        labels = labels.to(device)
        maps = torch.as_tensor(map_fn(images, labels), device=device)
        if on_batch is not None:
            on_batch(images, labels, maps, batch_indices)
        per_class.add(normalize_maps(maps.double()), labels)
    means: dict[int, np.ndarray | None] = {}
    for label in (0, 1):
        mean = per_class.mean(label)
        means[label] = None if mean is None else mean.float().cpu().numpy()
    return means, per_class.counts()


def plot_mean_maps(means: dict, counts: dict, title: str, cmap: str, what: str, shared_scale: bool = False):
    """Two panels: the mean map of the real and of the fake images (with the image counts), each
    scaled to [0, 1] again (the study's recipe), or with ``shared_scale`` as they are, on one
    colour scale (the lowest to the highest value of both); one colour bar."""
    import matplotlib.pyplot as plt

    if not shared_scale:
        means = {
            k: None if m is None else normalize_maps(torch.as_tensor(m)[None])[0].numpy()
            for k, m in means.items()
        }
    present = [np.asarray(m) for m in means.values() if m is not None]
    low = min((float(m.min()) for m in present), default=0.0)
    high = max((float(m.max()) for m in present), default=1.0)
    fig, axes = plt.subplots(1, 2, figsize=(10.8, 5.2), layout="constrained")
    shown = None
    for ax, label in zip(axes, (0, 1)):
        ax.axis("off")
        if means.get(label) is None:
            ax.set_title(f"{CLASS_NAMES[label]} images: none in the test split")
            continue
        shown = ax.imshow(means[label], cmap=cmap, vmin=low, vmax=high if high > low else low + 1.0)
        ax.set_title(f"mean {what} of {CLASS_NAMES[label].lower()} images (n={counts[label]})")
    if shown is not None:
        scale = "shared scale" if shared_scale else "each scaled to [0, 1]"
        fig.colorbar(shown, ax=list(axes), fraction=0.046, pad=0.04, label=f"mean {what} ({scale})")
    fig.suptitle(title)
    return fig
