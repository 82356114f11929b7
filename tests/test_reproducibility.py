"""What a machine decides by itself must not change a run's numbers: whether the splits are cached
in RAM (decided by the process's RSS), how many DataLoader workers decode them (decided by the CPU
count) and whether XceptionBased trains with activation checkpointing (decided by the free memory)
give the same run JSON, bit for bit, at one seed. The thread count changes only float rounding.
(The demo data itself is the same on every CPU: tests/test_demo_data.py.)"""

from __future__ import annotations

import json
import os

import pytest
import torch

import train_main
from conftest import make_tree
from lib import memory

# Keys that say how or when a run ran, not what it computed.
HOW = {"epoch_seconds", "train_images_per_sec", "eval_images_per_sec", "run_id", "started", "args", "argv"}


@pytest.fixture(scope="module")
def data(module_tmp) -> str:
    return make_tree(
        str(module_tmp("reproducibility_data")), {"train": (6, 6), "val": (3, 3), "test": (3, 3)}, 7
    )


def _train(data, work, *flags) -> dict:
    """One SimpleNet run as the study starts it (no --num_workers: the machine's default), its
    run dict without the keys of ``HOW``."""
    argv = ["--data_root", data, "-o", "Adam", "-b", "4", "-e", "2", "--seed", "3", "--no_progress",
            "--out_dir", str(work / "out"), "--checkpoint_dir", str(work / "ck"), *flags]  # fmt: skip
    assert train_main.main(argv) == 0
    (run,) = json.loads(next((work / "out").glob("*.json")).read_text())
    return {key: value for key, value in run.items() if key not in HOW}


def test_the_image_cache_and_the_workers_do_not_change_the_numbers(data, tmp_path, monkeypatch):
    """--cache_images auto caches the splits while the RSS allows: a busy machine with a large
    process decodes every epoch instead, through DataLoader workers (min(4, cores - 1))."""
    decisions = []

    def spy(*args, **kwargs):
        decisions.append(memory.apply_image_cache(*args, **kwargs))
        return decisions[-1]

    monkeypatch.setattr(train_main, "apply_image_cache", spy)
    # The RSS of a long pytest process is not the study's: pin it to a fresh process's.
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: 300 * 1024**2)
    cached = _train(data, tmp_path / "cached")
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: 64 * 1024**3)  # no room for a cache
    monkeypatch.setattr(os, "cpu_count", lambda: 3)  # two workers by default
    decoded = _train(data, tmp_path / "decoded")
    one_worker = _train(data, tmp_path / "one_worker", "--cache_images", "off", "--num_workers", "1")
    assert decisions == [[True] * 3, [False] * 3, [False] * 3]
    assert decoded == cached
    assert one_worker == cached
    assert cached["train_loss"][0] != cached["train_loss"][1]  # it trained


def test_activation_checkpointing_does_not_change_the_numbers(data, tmp_path, monkeypatch):
    """--activation_checkpointing auto turns it on when the free memory is short: the same
    arithmetic (each segment recomputed, BatchNorm statistics counted once), the same bits."""
    xception = ["-m", "XceptionBased", "--no_pretrained", "-e", "1", "--precise_bn", "2"]
    plain = _train(data, tmp_path / "plain", *xception)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device: 10**9)
    short = _train(data, tmp_path / "short", *xception)
    assert (plain.pop("activation_checkpointing"), short.pop("activation_checkpointing")) == (False, True)
    assert short == plain


def test_the_thread_count_changes_only_the_rounding(data, tmp_path):
    """Another number of threads splits the reductions of the convolutions otherwise: the losses
    agree to float32 rounding, not bit for bit (benchmarks/README.md#reproducibility-across-machines)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _train(data, tmp_path / "one")
        torch.set_num_threads(2)
        two = _train(data, tmp_path / "two")
    finally:
        torch.set_num_threads(threads)
    for key in ("train_loss", "val_loss", "test_loss"):
        assert one[key] == pytest.approx(two[key], rel=1e-4), key


@pytest.mark.parametrize("workers", [1, 2])
def test_dropout_draws_the_same_masks_whatever_the_workers(data, workers):
    """Dropout draws from the global RNG, so the loaders must not: each DataLoader iterator took its
    workers' seed from it (once with persistent workers, every epoch without), which changed a
    dropout model's numbers with -j (and after --resume, which restores that RNG)."""
    from torch import nn

    import utils
    from trainer import Trainer

    splits = [utils.load_dataset("fakes_dataset", split, data) for split in utils.SPLITS]

    def losses(num_workers: int) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.AvgPool2d(32), nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 8 * 8, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), 4, *splits, device="cpu",
                          num_workers=num_workers, progress=False)  # fmt: skip
        out = []
        for _ in range(3):
            out.append(trainer.train_one_epoch()[0])
            out.append(trainer.validate()[0])
        return out

    assert losses(workers) == losses(0)
