"""Saliency maps (Simonyan et al. 2014; docs/design.md#saliency): the absolute input gradient of
the true class's raw logit, maximum over the colour channels, batched on the model's device."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lib.batching import iter_batches
from lib.names import CLASS_NAMES
from lib.scores import model_device
from lib.transforms import normalize_batch, uint8_to_rgb_float


def saliency_maps(model: nn.Module, images: torch.Tensor, labels) -> torch.Tensor:
    """Saliency maps (Simonyan et al. 2014) of a batch: N x H x W, on the images' device.

    ``images`` are normalised model inputs. One forward and one backward for the whole batch: the
    gradient of the sum of each image's raw logit for its true class ``labels[i]`` with respect
    to the input, absolute value, maximum over the colour channels. In eval mode the images do not
    interact, so this equals one backward per image. Parameter gradients are not touched.
    """
    labels = torch.as_tensor(labels, device=images.device, dtype=torch.long).view(-1, 1)
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        selected = logits.gather(1, labels).sum()
        (grad,) = torch.autograd.grad(selected, inputs)
    return grad.abs().amax(dim=1)


def saliency_of_dataset(
    model: nn.Module, dataset, indices, batch_size: int = 16, progress: bool = False, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Saliency maps of the images ``indices`` of a dataset: (maps N x H x W float32, uint8 images
    N x 3 x H x W, labels), batched (decoded by ``num_workers`` worker processes)."""
    device = model_device(model)
    maps, images, labels = [], [], []
    for batch, batch_labels, _ in iter_batches(
        dataset, batch_size, indices, num_workers, progress=progress, desc="saliency"
    ):
        inputs = normalize_batch(batch.to(device, non_blocking=True))
        maps.append(saliency_maps(model, inputs, batch_labels.to(device)).float().cpu())
        images.append(batch)
        labels.append(batch_labels)
    return torch.cat(maps).numpy(), torch.cat(images).numpy(), torch.cat(labels).numpy()


def plot_saliency_pairs(
    images_uint8: np.ndarray, maps: np.ndarray, labels, p_fake, title: str, pairs_per_row: int = 6
):
    """Each image beside its saliency map, ``pairs_per_row`` pairs a row and as many rows as the
    images need; each image is titled with its true class and the model's P(fake)."""
    import matplotlib.pyplot as plt

    pairs_per_row = max(1, min(pairs_per_row, len(images_uint8)))
    rows = max(1, -(-len(images_uint8) // pairs_per_row))
    fig, axes = plt.subplots(rows, 2 * pairs_per_row, figsize=(2 * pairs_per_row * 1.9, rows * 2.1))
    axes = np.asarray(axes).reshape(rows, 2 * pairs_per_row)
    rgb = uint8_to_rgb_float(images_uint8)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(len(rgb)):
        r, c = divmod(i, pairs_per_row)
        axes[r, 2 * c].imshow(rgb[i])
        axes[r, 2 * c].set_title(f"{CLASS_NAMES[int(labels[i])]}, P(fake) {float(p_fake[i]):.3f}", fontsize=8)
        axes[r, 2 * c + 1].imshow(maps[i], cmap="hot")
        axes[r, 2 * c + 1].set_title("saliency", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
