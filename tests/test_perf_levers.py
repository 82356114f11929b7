"""The speed levers keep the metrics: same seed, same JSON numbers, with and without each lever.

Levers that do not change the arithmetic (the image cache, DataLoader workers, the cached batch path,
progress bars) must give exactly equal values; levers that change the order of floating-point
operations (channels-last layout, a larger eval batch) must agree closely. Also checked against
independent references: the batched GPU-style augmentation against the CPU one and a hand crop, the
channels-last normalisation against ToTensor + Normalize arithmetic, the cached batches against
the DataLoader batches, and the RSS rule of ``apply_image_cache``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import train_main
import utils
from lib import memory, transforms
from lib.batching import CachedBatches, consecutive
from lib.transforms import _crop_gather, _flip_where
from trainer import COURSE_KEYS, EXTRA_SPLIT_KEYS, Trainer
from utils import resolve_channels_last

METRIC_KEYS = (
    COURSE_KEYS
    + tuple(f"{s}_{k}" for s in ("val", "test") for k in EXTRA_SPLIT_KEYS)
    + ("best_epoch", "best_val_acc", "test_acc_at_best")
)


def _train(tiny_root, tmp_path, name, *extra):
    out, ck = tmp_path / name / "out", tmp_path / name / "ck"
    argv = [
        "--data_root",
        tiny_root,
        "-m",
        "SimpleNet",
        "-o",
        "Adam",
        "-b",
        "4",
        "-e",
        "2",
        "--seed",
        "5",
        "--no_progress",
        "--out_dir",
        str(out),
        "--checkpoint_dir",
        str(ck),
        *extra,
    ]
    assert train_main.main(argv) == 0
    with open(out / "fakes_dataset_SimpleNet_Adam.json") as handle:
        run = json.load(handle)[-1]
    state = torch.load(ck / "fakes_dataset_SimpleNet_Adam.pt", weights_only=True)["model"]
    return run, state


@pytest.fixture(scope="module")
def baseline(tiny_root, module_tmp):
    """Default levers: cache auto (all cached), in-process cached batches, channels_last auto."""
    return _train(tiny_root, module_tmp("levers"), "base")


@pytest.mark.parametrize(
    "extra",
    [
        ("--cache_images", "off", "--num_workers", "0"),  # decode every epoch, in-process loader
        ("--cache_images", "off", "--num_workers", "1"),  # decode in a worker process
        # cached, but through a DataLoader worker; channels-last 'on' is what 'auto' means on the CPU
        ("--cache_images", "on", "--num_workers", "1", "--channels_last", "on"),
    ],
    ids=["no-cache", "no-cache-1-worker", "cache-1-worker-channels-last-on"],
)
def test_exact_levers_give_equal_metrics(tiny_root, tmp_path, baseline, extra):
    run0, state0 = baseline
    run, state = _train(tiny_root, tmp_path, "lever", *extra)
    for key in METRIC_KEYS:
        assert run[key] == run0[key], f"{key} changed with {extra}"
    assert run["train_loss"][0] > 0 and len(run["val_acc"]) == 2
    for key, tensor in state0.items():
        assert torch.equal(state[key], tensor), f"weights {key} differ with {extra}"


def test_reordering_levers_keep_metrics_within_noise(tiny_root, tmp_path, baseline, monkeypatch):
    """NCHW instead of channels-last, another eval batch size and the unfused (for-loop) Adam of
    the course instead of the fused one: other float rounding, the same numbers within noise."""
    run0, _ = baseline

    def unfused(name, params, lr, momentum, weight_decay=0.0):
        assert name == "Adam"
        return torch.optim.Adam(params, lr=lr)

    monkeypatch.setattr(train_main, "make_optimizer", unfused)
    extra = ("--channels_last", "off", "--eval_batch_size", "5")
    run, _ = _train(tiny_root, tmp_path, "lever", *extra)
    assert run0["optimizer"]["params"]["fused"] is True and not run["optimizer"]["params"]["fused"]
    for key in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose(run[key], run0[key], rtol=1e-4, err_msg=f"{key} with {extra}")
    for key in ("train_acc", "val_acc", "test_acc", "val_auc", "test_auc"):
        np.testing.assert_allclose(run[key], run0[key], atol=1e-6, err_msg=f"{key} with {extra}")


def test_channels_last_auto_resolution():
    assert resolve_channels_last("auto", torch.device("cpu")) is True
    assert resolve_channels_last("auto", torch.device("cuda")) is True
    assert resolve_channels_last("auto", torch.device("meta")) is False
    assert resolve_channels_last("off", torch.device("cpu")) is False
    assert resolve_channels_last(True, torch.device("cpu")) is True
    assert resolve_channels_last(False, torch.device("cuda")) is False


def test_batched_augmentation_equals_reference():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 256, 256), dtype=torch.uint8, generator=generator)
    batched = utils.get_transforms("train").batched()
    params = batched.draw(12, generator)  # (top, left, flip) rows
    params[0] = torch.tensor([0, 0, 0])  # extreme offsets, with and without a flip
    params[1] = torch.tensor([8, 8, 1])
    params[2] = torch.tensor([0, 8, 1])
    params[3] = torch.tensor([4, 4, 0])  # no shift at all: the identity
    expected = batched.augment(images, params)  # the CPU kernels
    on_device = _flip_where(_crop_gather(images, params[:, :2].long(), 4), params[:, 2] != 0)
    assert torch.equal(on_device, expected)  # the CUDA kernel choice, on CPU
    assert torch.equal(expected[3], images[3])
    # an independent reference for one image: pad with zeros, crop, flip
    padded = torch.nn.functional.pad(images[1], (4, 4, 4, 4))
    assert torch.equal(expected[1], padded[:, 8:264, 8:264].flip(-1))


def test_normalize_channels_last_is_bitwise_equal():
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    mean = torch.tensor(transforms.NORMALIZE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(transforms.NORMALIZE_STD).view(1, 3, 1, 1)
    reference = (images.float() / 255.0 - mean) / std  # ToTensor then Normalize
    plain = transforms.normalize_batch(images)
    last = transforms.normalize_batch(images, torch.channels_last)
    assert torch.equal(plain, reference) and torch.equal(last, reference)
    assert last.is_contiguous(memory_format=torch.channels_last)
    as_float = images.float()
    transforms.normalize_batch(as_float)
    assert torch.equal(as_float, images.float())  # the input is never modified


def _tiny_trainer(tiny_root, cache: bool, num_workers):
    datasets = [
        utils.load_dataset("fakes_dataset", s, tiny_root, cache_images=cache)
        for s in ("train", "val", "test")
    ]
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 256 * 256, 2))
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        5,
        *datasets,
        device="cpu",
        num_workers=num_workers,
        seed=11,
        progress=False,
        out_dir="-",
        checkpoint_dir="-",
    ), datasets


def test_cached_batches_equal_dataloader_batches(tiny_root):
    fast, datasets = _tiny_trainer(tiny_root, cache=True, num_workers=None)
    slow, _ = _tiny_trainer(tiny_root, cache=False, num_workers=0)
    for dataset, train in ((datasets[0], True), (datasets[1], False)):
        fast_loader, slow_loader = (
            fast._batches(dataset, train),
            slow._batches(slow.train_dataset if train else slow.validation_dataset, train),
        )
        assert isinstance(fast_loader.source, CachedBatches)
        assert not isinstance(slow_loader.source, CachedBatches)
        for epoch in (0, 1):
            fast_loader.set_epoch(epoch)
            slow_loader.set_epoch(epoch)
            pairs = list(zip(fast_loader.source, slow_loader.source, strict=True))
            assert sum(len(labels) for _, (_, labels) in pairs) == len(dataset)
            for (images_a, labels_a), (images_b, labels_b) in pairs:
                assert images_a.dtype == torch.uint8 and torch.equal(images_a, images_b)
                assert torch.equal(torch.as_tensor(labels_a), torch.as_tensor(labels_b))
    # explicitly asked workers keep the DataLoader, even for cached data
    with_workers, datasets = _tiny_trainer(tiny_root, cache=True, num_workers=1)
    assert not isinstance(with_workers._batches(datasets[0], True).source, CachedBatches)


class _FakeSplit:
    def __init__(self, n):
        self.n, self.cached = n, False

    def __len__(self):
        return self.n

    def cache_images(self, progress=True):
        self.cached = True


def test_auto_cache_respects_the_rss_ceiling(monkeypatch):
    gib = 1024**3
    image = 3 * 256 * 256
    sizes = [int(1.0 * gib / image), int(0.3 * gib / image), int(0.3 * gib / image)]
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: int(0.7 * gib))
    splits = [_FakeSplit(n) for n in sizes]
    # 3.0 - 0.7 (now) - 0.75 (reserve) = 1.55 GiB: train (1.0) and val (0.3) fit, test (1.6) not
    assert memory.apply_image_cache(splits, "auto", progress=False) == [True, True, False]
    assert [s.cached for s in splits] == [True, True, False]
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: int(1.3 * gib))
    # 0.95 GiB left: train does not fit, the two small splits do (0.6)
    assert memory.apply_image_cache([_FakeSplit(n) for n in sizes], "auto", progress=False) == [
        False,
        True,
        True,
    ]
    # the plain limit still applies, and 'on'/'off' ignore both rules
    assert memory.apply_image_cache(
        [_FakeSplit(n) for n in sizes], "auto", limit_gb=0.5, progress=False, rss_limit_gb=None
    ) == [False, True, False]
    assert memory.apply_image_cache([_FakeSplit(n) for n in sizes], "on", progress=False) == [True] * 3
    assert memory.apply_image_cache([_FakeSplit(n) for n in sizes], "off", progress=False) == [False] * 3
    # no /proc (current RSS unknown: 0): the peak so far stands in, never 0
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: 0)
    monkeypatch.setattr(memory, "_peak_rss_bytes", lambda: int(1.3 * gib))
    assert memory.apply_image_cache([_FakeSplit(n) for n in sizes], "auto", progress=False) == [
        False,
        True,
        True,
    ]


def test_rss_reading_is_plausible():
    rss = memory.current_rss_bytes()
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc here")
    assert 50 * 1024**2 < rss < 64 * 1024**3


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([4, 5, 6], slice(4, 7)),  # eval in order: a view of the cache
        ([0], slice(0, 1)),
        ([4, 6, 7], None),  # a gap
        ([5, 4, 6], None),  # out of order
        ([[4, 0, 0, 1], [5, 8, 8, 0]], None),  # augmentation rows are gathered, never sliced
        ([], None),
    ],
)
def test_consecutive_batches_are_sliced(rows, expected):
    assert consecutive(rows) == expected
