"""How batches reach the model: the Trainer's three batch paths, and the uint8 batches of the analyses.

A ``FacesDataset`` hands out decoded 3x256x256 uint8 images. When its transform has a batched form
(``transform.batched()``, ``transforms.BatchedTransform``), whole batches are loaded as one uint8
tensor, augmented there with per-image parameters drawn up front from (seed, epoch) (so workers and
processes agree), and normalised on the device; the arithmetic equals the per-image transform
(docs/design.md#transforms). Those batches come straight from a split's uint8 cache on the device
(``CachedBatches``) or from a ``DataLoader`` over ``UInt8Batches``. Any other dataset goes through
a plain ``DataLoader``, image by image. ``choose_batch_path`` picks one of the three, once per
dataset (docs/design.md#trainer).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from lib.cli import UserError
from lib.transforms import BatchedTransform, normalize_batch


class UInt8Batches(Dataset):
    """Loads a batch of a ``FacesDataset`` as one uint8 tensor, augmented when asked.

    Indexed by a list of ``(index, *parameters)`` rows (or plain indices for no augmentation), so
    that every worker, and every rank, applies the parameters the main process drew with
    ``batched``.
    """

    def __init__(self, dataset, batched: BatchedTransform | None = None):
        self.dataset, self.batched = dataset, batched
        self.labels = dataset.labels

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, rows):
        return batch_of_rows(self.dataset.load_uint8_batch, self.labels, as_rows(rows), self.batched)


def as_rows(rows) -> torch.Tensor:
    """A batch sampler's list of ``(index, *parameters)`` rows or plain indices, as an N x (1 +
    parameters) float64 tensor (exact for every index and integer parameter)."""
    return torch.as_tensor(rows, dtype=torch.float64).reshape(len(rows), -1)


def batch_of_rows(
    load, labels: torch.Tensor, rows: torch.Tensor, batched: BatchedTransform | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of one batch: ``load(indices)`` gives the images, which go through
    ``batched.augment`` with the rows' parameters when the rows carry them."""
    indices = rows[:, 0].long()
    images = load(indices)
    if rows.shape[1] > 1:
        images = batched.augment(images, rows[:, 1:])
    return images, labels[indices]


def seeded_generator(seed: int, counter: int) -> torch.Generator:
    """A CPU generator for one (seed, epoch counter): what the augmentation and the precise
    BatchNorm batches are drawn from, so that a resumed run draws them again. Taken modulo 2**64,
    the range ``manual_seed`` accepts (the same seed for every --seed below 2**44)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + counter) % 2**64)


def _rank_and_world(sampler) -> tuple[int, int]:
    """Which process's share of the epoch a sampler yields, of how many."""
    return getattr(sampler, "rank", 0), getattr(sampler, "num_replicas", getattr(sampler, "world_size", 1))


def global_order(sampler) -> list[int]:
    """The epoch's order over all processes, of which ``sampler`` (rank r of W, a
    ``DistributedSampler`` or ``optim.BalancedSampler``) yields positions r, r+W, ..."""
    shares = []
    for rank in range(_rank_and_world(sampler)[1]):
        share = copy.copy(sampler)
        share.rank = rank
        shares.append(list(share))
    return [index for position in zip(*shares) for index in position]


class AugmentedBatchSampler:
    """Batches of (index, *parameters) rows: a sampler's order plus parameters drawn by ``draw``
    from (seed, epoch), so results do not depend on workers or world size. An image's first draw
    of the epoch takes row ``index`` of one draw; each further draw of it (sampling with
    replacement, padding) takes the row of its position in the epoch's global order from a
    second, so that every copy is augmented on its own."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, n: int, seed: int, draw):
        self.sampler, self.batch_size, self.n, self.seed, self.draw = sampler, batch_size, n, seed, draw

    def __len__(self):
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        generator = seeded_generator(self.seed, self.sampler.epoch + 1)
        params = self.draw(self.n, generator).tolist()
        order = global_order(self.sampler)
        seen, again = set(), None
        if len(set(order)) < len(order):
            again = self.draw(len(order), generator).tolist()
        rows = []
        for position, index in enumerate(order):
            rows.append([index, *(again[position] if index in seen else params[index])])
            seen.add(index)
        rank, world = _rank_and_world(self.sampler)
        mine = rows[rank::world]
        for start in range(0, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]


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
    loader: gather, augment (``batched.augment``) and return uint8. On CUDA the cache and the
    labels are copied to the GPU once (``BatchPath``), so an epoch moves no image data between host
    and device. On the CPU the cache tensor is used as it is.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batches, device: torch.device, batched=None
    ):
        self.images, self.labels, self.batches, self.device = images, labels, batches, device
        self.batched = batched

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
            yield batch_of_rows(self.images.__getitem__, self.labels, rows, self.batched)


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


def epoch_sampler(n: int, train: bool, rank: int, world_size: int, seed: int):
    """This process's order of one epoch: shuffled from (seed, epoch) for training (a
    DistributedSampler, also in one process; ``set_epoch`` before each epoch), dataset order for
    evaluation (under torchrun rank r of W takes r, r+W, ...)."""
    if not train and world_size > 1:
        return EvalShard(n, rank, world_size)
    return DistributedSampler(
        range(n), num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=False
    )


def default_num_workers(datasets) -> int:
    """DataLoader workers when none are asked for: 0 when every split is cached in RAM (batches
    come straight from the cache), else up to 4, leaving a core to the training process."""
    if all(getattr(d, "cached", False) for d in datasets):
        return 0
    return min(4, max(1, (os.cpu_count() or 2) - 1))


def batched_form_of(dataset) -> BatchedTransform | None:
    """The batched form its transform gives (``transform.batched()``) for a dataset that loads uint8
    batches; ``None`` when it has none. A transform that refuses (``UserError``) stops here."""
    batched = getattr(getattr(dataset, "transform", None), "batched", None)
    if batched is None or not hasattr(dataset, "load_uint8_batch"):
        return None
    return batched()


def choose_batch_path(
    dataset, device: torch.device, num_workers: int, workers_asked: bool, memory_format: torch.memory_format
) -> BatchPath:
    """The batch path of ``dataset``, decided here once (docs/design.md#trainer):

    - a batched form and a split cached in RAM, on CUDA or without workers asked for: batches
      straight from the cache (``CachedBatches``; on CUDA the cache is copied to the GPU now);
    - a batched form otherwise: a ``DataLoader`` of uint8 batches (``UInt8Batches``);
    - no batched form (a plain torchvision transform, another dataset): a plain ``DataLoader``.
    """
    batched = batched_form_of(dataset)
    from_cache = (
        batched is not None
        and getattr(dataset, "cached", False)
        and (device.type == "cuda" or num_workers == 0 or not workers_asked)
    )
    cache = (
        (dataset.cache_images(progress=False).to(device), dataset.labels.to(device)) if from_cache else None
    )
    return BatchPath(dataset, batched, device, num_workers, memory_format, cache)


class BatchPath:
    """How the batches of one dataset reach the model (see ``choose_batch_path``): ``batched`` is
    the transform's batched form (``None``: image by image through a plain DataLoader) and
    ``cache`` the split's uint8 images and labels on the device (``None``: through a DataLoader)."""

    def __init__(self, dataset, batched, device, num_workers: int, memory_format, cache=None):
        self.dataset, self.batched, self.cache = dataset, batched, cache
        self.device, self.num_workers, self.memory_format = device, num_workers, memory_format

    def epoch_batches(self, sampler, batch_size: int, seed: int, train: bool) -> DeviceBatches:
        """The batches of ``sampler``'s order, kept from epoch to epoch (persistent workers);
        augmented in training when the batched form draws parameters."""
        if train and self.batched is not None and self.batched.random:
            batches = AugmentedBatchSampler(sampler, batch_size, len(self.dataset), seed, self.batched.draw)
        else:
            batches = BatchSampler(sampler, batch_size, drop_last=False)
        return DeviceBatches(self._source(batches, True, seed), self._to_device, sampler)

    def fixed_batches(self, batches: list[list[int]]) -> DeviceBatches:
        """These batches of indices once, without augmentation (the batched form's evaluation)."""
        return DeviceBatches(self._source(batches, False), self._to_device)

    def _source(self, batches, persistent: bool, seed: int = 0):
        if self.cache is not None:
            return CachedBatches(*self.cache, batches, self.device, self.batched)
        workers = dict(
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and self.num_workers > 0,
            # the workers' seeds: without a generator each iterator draws from the global RNG, which
            # dropout also draws from, so -j, --cache_images and --resume would change the numbers
            generator=torch.Generator().manual_seed(seed),
        )
        if self.batched is None:
            return DataLoader(self.dataset, batch_sampler=batches, **workers)
        return DataLoader(
            UInt8Batches(self.dataset, self.batched), sampler=batches, batch_size=None, **workers
        )

    def _to_device(self, images: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device in the model's memory format; uint8 images normalised there."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            normalize = self.batched.normalize if self.batched is not None else normalize_batch
            images = normalize(images, self.memory_format)
        images = images.contiguous(memory_format=self.memory_format)
        return images, torch.as_tensor(labels).to(self.device, non_blocking=True)


class DeviceBatches:
    """Batches of a ``BatchPath`` as the model takes them: (images, labels) on the device.
    ``source`` yields them as loaded; ``set_epoch`` reorders (and re-augments) the next pass."""

    def __init__(self, source, to_device, sampler=None):
        self.source, self.to_device, self.sampler = source, to_device, sampler

    def __len__(self):
        return len(self.source)

    def __iter__(self):
        for images, labels in self.source:
            yield self.to_device(images, labels)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


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
        generator=torch.Generator(),  # the global RNG stays the analysis's own
    )
    with tqdm(total=len(order), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for rows, (images, labels) in zip(batches, loader):  # the loader keeps the sampler's order
            yield images, labels, torch.as_tensor(rows, dtype=torch.long)
            bar.update(len(rows))
