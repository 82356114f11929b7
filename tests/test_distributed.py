"""torch.distributed on the existing engine: 2 CPU processes (gloo) under torchrun with batch B/2
each must train exactly like 1 process with batch B.

One torchrun launch checks all of it: the 2-process run continues (``--resume``) from the state a
1-process run left after epoch 1, so it also proves that every rank loads the ``_last.pt`` (a rank
that did not would compute its gradients at other weights, and the averaged step would differ).
The reference continues the same state in this process with 1 rank. Compared: all weights and the
SGD momentum buffers after the epoch-2 steps (float tolerance), and every metric in the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import train_main
from conftest import ROOT, make_tree, train_argv
from models import SimpleNet
from trainer import COURSE_KEYS, EXTRA_SPLIT_KEYS
from utils import set_seed

STEM = "fakes_dataset_SimpleNet_SGD"
SEED = 3
METRIC_KEYS = (  # the numbers of a run; its model, dataset and optimizer are not compared
    COURSE_KEYS[3:]
    + tuple(f"{s}_{k}" for s in ("val", "test") for k in EXTRA_SPLIT_KEYS)
    + ("best_epoch", "best_val_acc", "test_acc_at_best")
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _argv(data: str, work, epochs: int, *extra: str) -> list[str]:
    # global batch 2 over 4 training images: 2 SGD steps per epoch; 1 image per rank under torchrun
    return train_argv(
        data,
        work,
        "-m",
        "SimpleNet",
        "-o",
        "SGD",
        "--lr",
        "0.05",
        "-b",
        "2",
        "-e",
        str(epochs),
        "--seed",
        str(SEED),
        *extra,
    )


def _close(a, b, what: str) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), what
        for x, y in zip(a, b):
            _close(x, y, what)
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), what
    else:
        assert a == b, what


# Class weights: 3 real and 1 fake images, 1 a rank, so the ranks' shares weigh differently
# (each rank's weighted mean, averaged by DDP, is not the batch's weighted mean).
OPTIONS = {"plain": ((2, 2), ()), "balance_weights": ((3, 1), ("--balance", "weights"))}


@pytest.fixture(scope="module", params=OPTIONS)
def runs(module_tmp, request):
    tmp = module_tmp(f"distributed_{request.param}")
    train, options = OPTIONS[request.param]
    data = make_tree(str(tmp / "data"), {"train": train, "val": (2, 1), "test": (1, 2)}, seed=4)
    single, multi = tmp / "single", tmp / "multi"
    # epoch 1 in this process (world size 1), then the same state is continued both ways
    assert train_main.main(_argv(data, single, 1, *options)) == 0
    shutil.copytree(single, multi)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        os.path.join(ROOT, "train_main.py"),
        *_argv(data, multi, 2, "--resume", *options),
    ]
    proc = subprocess.run(command, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train_main.main(_argv(data, single, 2, "--resume", *options)) == 0
    return single, multi, proc


def _load(work, name):
    return torch.load(work / "ck" / name, map_location="cpu", weights_only=True)


def test_two_processes_half_batch_equal_one_process_full_batch_weights(runs):
    """Float tolerance scaled to what the steps did: the difference between the two runs is under
    1e-3 of the distance the weights moved (measured: about 4e-5 at most); a rank that skipped the
    resume, or summed instead of averaged gradients, lands at a ratio of order 1."""
    single, multi, _ = runs
    a, b = _load(single, f"{STEM}_last.pt"), _load(multi, f"{STEM}_last.pt")
    assert a["epoch"] == b["epoch"] == 2
    set_seed(SEED)
    init = SimpleNet().state_dict()
    assert set(a["model"]) == set(b["model"]) == set(init)
    for key, value in a["model"].items():
        moved = (value - init[key]).norm()
        assert moved > 1e-3, key
        assert (b["model"][key] - value).norm() < 1e-3 * moved, key
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(momentum_a) == len(momentum_b) == 12  # weight and bias of 6 layers
    for x, y in zip(momentum_a, momentum_b):
        assert x.norm() > 0 and (y - x).norm() < 1e-3 * x.norm()


def test_two_processes_same_metrics_and_one_json_run(runs):
    single, multi, _ = runs
    json_a = json.loads((single / "out" / f"{STEM}.json").read_text())
    json_b = json.loads((multi / "out" / f"{STEM}.json").read_text())
    assert len(json_a) == len(json_b) == 1  # rank 1 did not append a run of its own
    a, b = json_a[0], json_b[0]
    assert len(a["train_loss"]) == len(b["train_loss"]) == 2 and b["completed"] is True
    for key in METRIC_KEYS:
        _close(a[key], b[key], key)
    # counts are global (all 4 training images, all 3 val and test images), not one rank's share
    for key, n in (("train_acc", 4), ("val_acc", 3), ("test_acc", 3)):
        for acc in b[key]:
            assert (acc * n / 100) == pytest.approx(round(acc * n / 100), abs=1e-9), key
    assert b["val_per_class_acc"][-1][0] is not None and b["val_per_class_acc"][-1][1] is not None


def test_only_rank0_writes_and_reports(runs):
    _, multi, proc = runs
    assert proc.stderr.count("epoch 2/2:") == 1
    assert proc.stderr.count("resuming ") == 1
    assert proc.stdout.count("done:") == 1
    assert sorted(os.listdir(multi / "out")) == [
        f"{STEM}.csv",
        f"{STEM}.json",
    ]  # the runs JSON and its epoch CSV
    assert sorted(os.listdir(multi / "ck")) == [f"{STEM}.pt", f"{STEM}_last.pt"]
    for name in os.listdir(multi / "ck"):
        _load(multi, name)  # complete, loadable files (no half-written or interleaved writes)


def _gather_rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from lib import distributed
    from lib.batching import EvalShard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = torch.tensor(list(EvalShard(5, rank, 2)))  # 0, 2, 4 and 1, 3: rank 1 is one short
        logits, labels = distributed.gather_eval(torch.stack([mine, -mine], 1).float(), mine)
        queue.put((rank, logits.tolist(), labels.tolist()))  # plain data: outlives the process
    finally:
        dist.destroy_process_group()


def test_eval_shards_gather_back_into_dataset_order():
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_gather_rank, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    for _ in range(2):
        _, logits, labels = queue.get(timeout=60)
        assert labels == [0, 1, 2, 3, 4]
        assert logits == [[float(i), float(-i)] for i in range(5)]
