"""The study's transforms (docs/design.md#transforms), and their batched uint8 twins beside them.

``StudyTransform`` is the per-image torchvision pipeline of one split. Its ``batched()`` form does
the same arithmetic on a whole uint8 batch (each random step through its batched twin, with
per-image parameters drawn up front, then ``(x / 255 - mean) / std`` on the device), which is what
training runs; the analyses normalise with ``normalize_batch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from lib.cli import UserError
from lib.images import IMAGE_SIZE

CROP_PADDING = 4
NORMALIZE_MEAN = (0.4914, 0.4822, 0.4465)
NORMALIZE_STD = (0.2023, 0.1994, 0.2010)


_NORMALIZE_CONSTANTS: dict = {}  # (device, mean, std) -> (mean, std) tensors


def _normalize_constants(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as 1x3x1x1 float32 tensors on ``device``, made once per device (creating them
    per batch on CUDA would be a host-to-device copy that waits for the GPU every batch)."""
    key = (device, tuple(mean), tuple(std))
    if key not in _NORMALIZE_CONSTANTS:
        _NORMALIZE_CONSTANTS[key] = (
            torch.tensor(key[1], device=device).view(1, 3, 1, 1),
            torch.tensor(key[2], device=device).view(1, 3, 1, 1),
        )
    return _NORMALIZE_CONSTANTS[key]


def normalize_batch(
    images_uint8: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
    mean: tuple = NORMALIZE_MEAN,
    std: tuple = NORMALIZE_STD,
) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalised float32 (the test transform, batched, on any device).

    ``(x / 255 - mean) / std`` in float32, the arithmetic of ToTensor + Normalize, in three passes
    over one new tensor allocated in ``memory_format`` (the input is never modified; no extra
    layout copy). Same numbers, bit for bit, whatever the layout.
    """
    mean, std = _normalize_constants(images_uint8.device, mean, std)
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


# ----------------------------------------------------------------------------- batched steps
# A batched step is the twin of one random per-image torchvision step: ``n_params`` columns of
# per-image parameters, ``draw(n, generator)`` (an n x n_params tensor, drawn apart from the
# images so they depend only on the seed, the epoch and the image's index) and
# ``step(images, params)`` (a uint8 N x 3 x H x W batch, image k with row k; a new tensor).
class RandomCropUint8:
    """Twin of ``v2.RandomCrop(size, padding=p)`` with zero fill, for images of that size: rows
    (top, left) of the crop window in the zero-padded image."""

    n_params = 2

    def __init__(self, padding: int):
        self.padding = padding

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        crop = _crop_numpy if images.device.type == "cpu" else _crop_gather
        return crop(images, params.long(), self.padding)


def _crop_numpy(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """The CPU crop: one NumPy copy per image. NumPy copies run on one thread, whereas a torch copy
    per image starts a parallel region each time, which stalls whenever another process holds a
    core (benchmarks/README.md)."""
    _, _, height, width = images.shape
    src_all = images.numpy()
    out = np.zeros(src_all.shape, dtype=src_all.dtype)
    for k, (top, left) in enumerate(offsets.tolist()):
        dy, dx = top - pad, left - pad  # shift of the crop window relative to the image
        src = src_all[k, :, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
        row, col = max(-dy, 0), max(-dx, 0)  # where the window's image part lands in the crop
        out[k, :, row : row + src.shape[1], col : col + src.shape[2]] = src
    return torch.from_numpy(out)


def _crop_gather(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """The crop on other devices (CUDA): one zero-pad and two gathers (rows, then columns)."""
    n, c, height, width = images.shape
    offsets = offsets.to(images.device)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)
    out = padded.gather(2, rows.view(n, 1, height, 1).expand(n, c, height, width + 2 * pad))
    return out.gather(3, cols.view(n, 1, 1, width).expand(n, c, height, width))


class RandomHorizontalFlipUint8:
    """Twin of ``v2.RandomHorizontalFlip(p)``: one column, 1 where the image is mirrored."""

    n_params = 1

    def __init__(self, p: float):
        self.p = p

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < self.p).unsqueeze(1)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        flips = params[:, 0] != 0
        return (_flip_numpy if images.device.type == "cpu" else _flip_where)(images, flips)


def _flip_numpy(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The CPU flip: one NumPy copy per image, as in ``_crop_numpy``."""
    src = images.numpy()
    out = np.empty_like(src)
    for k, flip in enumerate(flips.tolist()):
        out[k] = src[k, :, :, ::-1] if flip else src[k]
    return torch.from_numpy(out)


def _flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The flip on other devices (CUDA): the whole batch mirrored, kept where ``flips`` says."""
    return torch.where(flips.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def _crop_twin(step: v2.RandomCrop) -> RandomCropUint8:
    """The twin of a RandomCrop that keeps the image size and pads with zeros; others are refused."""
    padding = step.padding or [0]
    if step.size != (IMAGE_SIZE, IMAGE_SIZE) or len(set(padding)) != 1 or step.padding_mode != "constant":
        raise _no_twin(step, f" (only RandomCrop({IMAGE_SIZE}, padding=p) with zero fill has one)")
    if step.fill != 0:
        raise _no_twin(step, " (only zero fill has one)")
    return RandomCropUint8(padding[0])


# ----------------------------------------------------------------------------- degradations
def blur_kernel_size(sigma: float) -> int:
    """The Gaussian kernel's width for ``sigma`` pixels: 2 ceil(3 sigma) + 1, as robustness_analysis.py
    blurs (docs/design.md#degradations)."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``v2.functional.gaussian_blur`` of one image (or a batch) with ``sigma`` pixels and a kernel
    of ``blur_kernel_size(sigma)``; sigma 0 leaves the image as it is."""
    if sigma <= 0:
        return image
    size = blur_kernel_size(sigma)
    return TF.gaussian_blur(image, [size, size], [sigma, sigma])


class GaussianBlurSigma(v2.Transform):
    """A Gaussian blur whose sigma is drawn uniformly from ``sigma`` = (low, high), low = 0 allowed
    (CNNDetection's [0, 3]; ``v2.GaussianBlur`` wants sigma > 0 and one kernel size for all sigmas).
    Applied with a probability as ``v2.RandomApply([GaussianBlurSigma(...)], p)``."""

    def __init__(self, sigma: tuple[float, float]):
        super().__init__()
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def make_params(self, flat_inputs) -> dict:
        return {"sigma": float(torch.empty(()).uniform_(*self.sigma))}

    def transform(self, inpt, params: dict):
        return gaussian_blur(inpt, params["sigma"])


@dataclass(frozen=True)
class Degradations:
    """CNNDetection's training augmentation (docs/design.md#degradations): a Gaussian blur (sigma
    uniform in ``blur_sigma``) with probability ``blur_prob``, then a JPEG round trip (quality
    uniform in ``jpeg_quality``, both ends included) with probability ``jpeg_prob``, before the
    crop and flip. Off (no step at all) at probability 0."""

    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)

    def steps(self) -> list:
        """The torchvision steps: ``RandomApply`` of the blur and of ``v2.JPEG``, those with p > 0."""
        steps = []
        if self.blur_prob > 0:
            steps.append(v2.RandomApply([GaussianBlurSigma(self.blur_sigma)], p=self.blur_prob))
        if self.jpeg_prob > 0:
            steps.append(v2.RandomApply([v2.JPEG(quality=tuple(self.jpeg_quality))], p=self.jpeg_prob))
        return steps


class RandomBlurUint8:
    """Twin of ``RandomApply([GaussianBlurSigma((low, high))], p)``: rows (applied, sigma)."""

    n_params = 2

    def __init__(self, p: float, low: float, high: float):
        self.p, self.low, self.high = p, low, high

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        applied = torch.rand(n, generator=generator, dtype=torch.float64) < self.p
        sigma = self.low + (self.high - self.low) * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([applied.double(), sigma], 1)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for k, (applied, sigma) in enumerate(params.tolist()):
            if applied:  # one sigma, so one kernel, per image: v2.functional.gaussian_blur image by image
                out[k] = gaussian_blur(images[k], sigma)
        return out


class RandomJPEGUint8:
    """Twin of ``RandomApply([v2.JPEG((low, high))], p)``: rows (applied, quality). The round trip
    runs on the CPU (libjpeg, as ``v2.JPEG``), whatever the batch's device."""

    n_params = 2

    def __init__(self, p: float, low: int, high: int):
        self.p, self.low, self.high = p, low, high

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        applied = torch.rand(n, generator=generator, dtype=torch.float64) < self.p
        quality = torch.randint(self.low, self.high + 1, (n,), generator=generator)
        return torch.stack([applied.double(), quality.double()], 1)

    def __call__(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        out = images.cpu().clone()
        for k, (applied, quality) in enumerate(params.tolist()):
            if applied:
                out[k] = TF.jpeg(out[k], int(quality))
        return out.to(images.device)


def _random_apply_twin(step: v2.RandomApply):
    """The twin of a RandomApply of one ``GaussianBlurSigma`` or one ``v2.JPEG``; others are refused."""
    inner = list(step.transforms)
    if len(inner) == 1 and type(inner[0]) is GaussianBlurSigma:
        return RandomBlurUint8(step.p, *inner[0].sigma)
    if len(inner) == 1 and type(inner[0]) is v2.JPEG:
        return RandomJPEGUint8(step.p, *inner[0].quality)
    raise _no_twin(step, " (only RandomApply of one GaussianBlurSigma or one JPEG has one)")


# Each random per-image step the study transform may hold -> its batched twin (a step of another
# type is refused, never left out): adding a random step means adding its twin here.
BATCHED_TWINS = {
    v2.RandomCrop: _crop_twin,
    v2.RandomHorizontalFlip: lambda step: RandomHorizontalFlipUint8(step.p),
    v2.RandomApply: _random_apply_twin,
}


class BatchedTransform:
    """A study transform as batch operations (docs/design.md#transforms): its random steps on a
    uint8 batch, each image with its own parameters (``draw``, then ``augment``), and its
    ToDtype + Normalize on the device (``normalize``). ``steps`` are batched steps (above)."""

    def __init__(self, steps: list, mean, std):
        self.steps, self.mean, self.std = list(steps), tuple(mean), tuple(std)

    @property
    def random(self) -> bool:
        """Whether any step draws per-image parameters (a training transform)."""
        return any(step.n_params for step in self.steps)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Every step's parameters for ``n`` images, drawn step by step from ``generator`` and put
        side by side: an n x (sum of n_params) float64 tensor."""
        columns = [step.draw(n, generator).reshape(n, step.n_params).double() for step in self.steps]
        return torch.cat(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.float64)

    def augment(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The random steps in order on a uint8 batch, image k with row k of ``params``."""
        start = 0
        for step in self.steps:
            images = step(images, params[:, start : start + step.n_params])
            start += step.n_params
        return images

    def normalize(
        self, images_uint8: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """ToDtype(float32, scale=True) then Normalize, batched (``normalize_batch``)."""
        return normalize_batch(images_uint8, memory_format, self.mean, self.std)


def batched_form(steps) -> BatchedTransform:
    """The batched form of a study transform's torchvision ``steps``: ``ToImage``, random steps
    with a batched twin (``BATCHED_TWINS``), ``ToDtype(torch.float32, scale=True)``, ``Normalize``.
    Any other step is refused with a one-line ``UserError`` naming it."""
    steps = list(steps)
    if len(steps) < 3:
        raise UserError("StudyTransform: needs ToImage, ToDtype(torch.float32, scale=True) and Normalize")
    first, *middle, to_float, normalize = steps
    if type(normalize) is not v2.Normalize:  # checked from the end: an appended step is named
        raise _no_twin(normalize, " after Normalize")
    if not (type(to_float) is v2.ToDtype and to_float.dtype == torch.float32 and to_float.scale):
        raise _no_twin(to_float, " between ToDtype(torch.float32, scale=True) and Normalize")
    if type(first) is not v2.ToImage:
        raise _no_twin(first, " before ToImage")
    twins = []
    for step in middle:
        if type(step) not in BATCHED_TWINS:
            raise _no_twin(step, "")
        twins.append(BATCHED_TWINS[type(step)](step))
    return BatchedTransform(twins, normalize.mean, normalize.std)


def _no_twin(step, where: str) -> UserError:
    return UserError(
        f"StudyTransform: {type(step).__name__}{where} has no batched uint8 twin, so training could not "
        "apply it; give FacesDataset a v2.Compose of your steps instead (trained image by image), or add "
        "a twin to lib/transforms.py (docs/design.md#transforms)"
    )


class StudyTransform(v2.Compose):
    """The study's transform of one split (docs/design.md#transforms); ``train`` says whether it
    augments, ``degradations`` adds the blur and JPEG training augmentation (off by default).

    Applied to one image (``FacesDataset`` hands it the uint8 tensor) it runs its torchvision
    steps. The Trainer runs ``batched()`` instead: the same steps as batch operations on uint8.
    """

    takes_uint8_tensor = True  # FacesDataset hands it the uint8 tensor, not a PIL image

    def __init__(self, train: bool, degradations: Degradations | None = None):
        if degradations is not None and not train:
            raise ValueError("StudyTransform: degradations are a training augmentation (train=True)")
        steps = [v2.ToImage()]
        if train:
            steps += (degradations or Degradations()).steps()  # none by default: the study's transform
            steps += [v2.RandomCrop(IMAGE_SIZE, padding=CROP_PADDING), v2.RandomHorizontalFlip()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
        super().__init__(steps)
        self.train = train

    def batched(self) -> BatchedTransform:
        """These steps as batch operations, which is what the Trainer runs; a step without a
        batched twin is refused (``UserError``) rather than left out of training."""
        return batched_form(self.transforms)


def uint8_to_rgb_float(images_uint8) -> np.ndarray:
    """uint8 (N x) 3 x H x W -> float32 (N x) H x W x 3 in [0, 1] (for display)."""
    array = torch.as_tensor(images_uint8).float().div(255.0)
    return array.movedim(-3, -1).numpy()
