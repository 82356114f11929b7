"""The study's transforms (docs/design.md#transforms), and their batched uint8 twin beside them.

``StudyTransform`` is the per-image torchvision pipeline of one split. ``augment_uint8`` and
``normalize_batch`` do the same arithmetic on a whole uint8 batch (crop and flip on uint8, then
``(x / 255 - mean) / std`` on the device), which is what training and the analyses run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

CROP_PADDING = 4
NORMALIZE_MEAN = (0.4914, 0.4822, 0.4465)
NORMALIZE_STD = (0.2023, 0.1994, 0.2010)


def draw_augmentation(n: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image RandomCrop/flip parameters for ``n`` images: an n x 3 tensor (top, left, flip)."""
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5).long().unsqueeze(1)
    return torch.cat([offsets, flips], dim=1)


def augment_uint8(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """RandomCrop(size, padding=4) then horizontal flip on a uint8 N x 3 x H x W batch.

    ``params`` rows are (top, left, flip) in the padded frame, as ``draw_augmentation`` gives.
    Equal, pixel for pixel, to padding with zeros, cropping at (top, left) and flipping, on any
    device.

    On the CPU each image is one NumPy copy (the flip fused in as a reversed view): NumPy copies
    run on one thread, whereas a torch copy per image starts a parallel region each time, which
    stalls for milliseconds whenever another process holds a core (measured: 10 ms an image on a
    busy 2-core machine, a third of the training time; benchmarks/README.md). On other devices
    (CUDA) it is ``_augment_gather``: a few kernels for the whole batch.
    """
    if images.device.type != "cpu":
        return _augment_gather(images, params)
    _, _, height, width = images.shape
    pad = CROP_PADDING
    src_all = images.numpy()
    out_np = np.zeros(src_all.shape, dtype=src_all.dtype)
    for k, (top, left, flip) in enumerate(params.tolist()):
        dy, dx = top - pad, left - pad  # shift of the crop window relative to the image
        src = src_all[k, :, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
        row, col = max(-dy, 0), max(-dx, 0)  # where the window's image part lands in the crop
        if flip:  # the crop mirrored: its column j is column width-1-j of the unflipped crop
            col = width - col - src.shape[2]
            src = src[:, :, ::-1]
        out_np[k, :, row : row + src.shape[1], col : col + src.shape[2]] = src
    return torch.from_numpy(out_np)


def _augment_gather(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """RandomCrop(padding=4) + flip of a uint8 N x C x H x W batch with (top, left, flip) rows, as
    one zero-pad and two gathers (rows, then columns; a flipped image reads its columns reversed)."""
    n, c, height, width = images.shape
    pad = CROP_PADDING
    params = params.to(images.device, dtype=torch.long)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = params[:, 0:1] + torch.arange(height, device=images.device)
    cols = params[:, 1:2] + torch.arange(width, device=images.device)
    cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, height, 1).expand(n, c, height, width + 2 * pad))
    return out.gather(3, cols.view(n, 1, 1, width).expand(n, c, height, width))


_NORMALIZE_CONSTANTS: dict = {}  # device -> (mean, std) tensors


def _normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as 1x3x1x1 float32 tensors on ``device``, made once per device (creating them
    per batch on CUDA would be a host-to-device copy that waits for the GPU every batch)."""
    if device not in _NORMALIZE_CONSTANTS:
        _NORMALIZE_CONSTANTS[device] = (
            torch.tensor(NORMALIZE_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(NORMALIZE_STD, device=device).view(1, 3, 1, 1),
        )
    return _NORMALIZE_CONSTANTS[device]


def normalize_batch(
    images_uint8: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float32 (the test transform, batched, on any device).

    ``(x / 255 - mean) / std`` in float32, the arithmetic of ToTensor + Normalize, in three passes
    over one new tensor allocated in ``memory_format`` (the input is never modified; no extra
    layout copy). Same numbers, bit for bit, whatever the layout.
    """
    mean, std = _normalize_constants(images_uint8.device)
    out = torch.empty(
        images_uint8.shape, dtype=torch.float32, device=images_uint8.device, memory_format=memory_format
    )
    return torch.div(images_uint8, 255.0, out=out).sub_(mean).div_(std)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalised float images -> float RGB in [0, 1] (for display)."""
    mean = torch.tensor(NORMALIZE_MEAN, device=images.device).view(-1, 3, 1, 1)
    std = torch.tensor(NORMALIZE_STD, device=images.device).view(-1, 3, 1, 1)
    out = images.reshape(-1, *images.shape[-3:]) * std + mean
    return out.reshape(images.shape).clamp(0.0, 1.0)


class StudyTransform(v2.Compose):
    """The study's transform of one split (docs/design.md#transforms); ``train`` says whether it augments.

    The Trainer recognises it and runs the same arithmetic batched (``augment_uint8`` then
    ``normalize_batch``), so a dataset built by ``load_dataset`` trains identically either way.
    """

    takes_uint8_tensor = True  # FacesDataset hands it the uint8 tensor, not a PIL image

    def __init__(self, train: bool):
        steps = [v2.ToImage()]
        if train:
            steps += [v2.RandomCrop(256, padding=CROP_PADDING), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
        super().__init__(steps)
        self.train = train


def uint8_to_rgb_float(images_uint8) -> np.ndarray:
    """uint8 (N x) 3 x H x W -> float32 (N x) H x W x 3 in [0, 1] (for display)."""
    array = torch.as_tensor(images_uint8).float().div(255.0)
    return array.movedim(-3, -1).numpy()
