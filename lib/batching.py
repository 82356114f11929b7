"""The uint8 batch paths shared by the Trainer and the analysis scripts.

A ``FacesDataset`` hands out decoded 3x256x256 uint8 images. Instead of transforming one image at a
time, these helpers load whole batches as one uint8 tensor, crop and flip them there when training
(``augment_uint8`` with per-image parameters drawn up front, so workers and processes agree), and
normalise on the device (``normalize_batch``). The arithmetic equals the study's transforms
(docs/design.md#transforms). Batches come from a ``DataLoader`` over ``UInt8Batches`` or, for a
split cached in RAM, straight from the cache (``CachedBatches``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from lib.cli import UserError
from lib.transforms import augment_uint8, draw_augmentation


class UInt8Batches(Dataset):
    """Loads a batch of a ``FacesDataset`` as one uint8 tensor, augmented when asked.

    Indexed by a list of ``(index, top, left, flip)`` rows (or plain indices for no augmentation)
    so that every worker, and every rank, applies the parameters the main process drew.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.labels = dataset.labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, rows):
        return batch_of_rows(self.dataset.load_uint8_batch, self.labels, as_rows(rows))


def as_rows(rows) -> torch.Tensor:
    """A batch sampler's list of ``(index, top, left, flip)`` rows or plain indices, as an
    N x 4 (or N x 1) long tensor."""
    return torch.as_tensor(rows, dtype=torch.long).reshape(len(rows), -1)


def batch_of_rows(load, labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of one batch: ``load(indices)`` gives the images, which are cropped
    and flipped with the rows' parameters when the rows carry them (``transforms.augment_uint8``)."""
    indices = rows[:, 0]
    images = load(indices)
    if rows.shape[1] == 4:
        images = augment_uint8(images, rows[:, 1:])
    return images, labels[indices]


def seeded_generator(seed: int, counter: int) -> torch.Generator:
    """A CPU generator for one (seed, epoch counter): what the augmentation and the precise
    BatchNorm batches are drawn from, so that a resumed run draws them again. Taken modulo 2**64,
    the range ``manual_seed`` accepts (the same seed for every --seed below 2**44)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + counter) % 2**64)


class AugmentedBatchSampler:
    """Batches of (index, top, left, flip) rows: a DistributedSampler's order plus per-index
    augmentation drawn from (seed, epoch), so results do not depend on workers or world size."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, n: int, seed: int):
        self.sampler, self.batch_size, self.n, self.seed = sampler, batch_size, n, seed

    def __len__(self):
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        generator = seeded_generator(self.seed, self.sampler.epoch + 1)
        params = draw_augmentation(self.n, generator).tolist()
        for batch in BatchSampler(self.sampler, self.batch_size, drop_last=False):
            yield [[i, *params[i]] for i in batch]


def consecutive(rows) -> slice | None:
    """The slice of a batch of plain indices ``i, i+1, ..., j``; ``None`` for any other batch
    (augmentation rows, or indices out of order)."""
    if not rows or isinstance(rows[0], (list, tuple)):
        return None
    first = rows[0]
    return slice(first, first + len(rows)) if list(rows) == list(range(first, first + len(rows))) else None


class CachedBatches:
    """Batches straight from a dataset's decoded uint8 cache, on the training device.

    The same batches as the ``DataLoader`` path (same sampler, same augmentation rows), without a
    loader: gather, augment (``transforms.augment_uint8``) and return uint8; the trainer normalises. On
    CUDA the cache and the labels are copied to the GPU once, so an epoch moves no image data
    between host and device. On the CPU the cache tensor is used as it is.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batches, device: torch.device):
        self.images, self.labels, self.batches, self.device = images, labels, batches, device

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for rows in self.batches:
            run = consecutive(rows)
            if run is not None:  # eval in dataset order: a view of the cache, no copy
                yield self.images[run], self.labels[run]
                continue
            rows = as_rows(rows)
            if self.device.type == "cuda":  # pinned + non_blocking: no wait for the queued steps
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            yield batch_of_rows(self.images.__getitem__, self.labels, rows)


class EvalShard(torch.utils.data.Sampler):
    """Rank r of W evaluates indices r, r+W, ...: every sample exactly once, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size, self.epoch = n, rank, world_size, 0

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def iter_batches(
    dataset,
    batch_size: int,
    indices=None,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "batches",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 N x 3 x 256 x 256, labels, dataset indices)`` batches of a ``FacesDataset``.

    ``indices`` (default: all, in order) selects and orders the images; ``num_workers`` decodes
    batches in worker processes.
    """
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    batches = BatchSampler(order, batch_size, drop_last=False)
    loader = DataLoader(
        UInt8Batches(dataset),
        sampler=batches,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )
    with tqdm(total=len(order), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for rows, (images, labels) in zip(batches, loader):  # the loader keeps the sampler's order
            yield images, labels, torch.as_tensor(rows, dtype=torch.long)
            bar.update(len(rows))
