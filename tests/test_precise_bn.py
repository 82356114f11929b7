"""Precise BatchNorm statistics: against a direct computation of each layer's input moments, in the
Trainer (evaluation transform, determinism, resume) and summed over torchrun-style processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import train_main
from conftest import cpu_trainer, train_argv
from faces_dataset import FacesDataset
from lib.precise_bn import recompute_bn_statistics
from lib.transforms import normalize_batch
from trainer import Trainer
from utils import get_transforms


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 8),
        nn.BatchNorm1d(8),
    )
    for bn in (net[1], net[4], net[9]):  # stale statistics, as after a few steps from ImageNet
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(7.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net


def _batches(n_batches=3, size=4, seed=1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 9, 9, generator=generator) * 2 + 1 for _ in range(n_batches)]


def _direct_moments(net: nn.Sequential, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's input over all batches, computed by hand with batch statistics in
    the forward pass (as in training): per-channel mean and unbiased variance."""
    inputs = {1: [], 4: [], 9: []}
    for x in batches:
        for i, layer in enumerate(net):
            if i in inputs:
                inputs[i].append(x.double())
                x = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
            else:
                x = layer(x)
    out = []
    for i in (1, 4, 9):
        values = torch.cat(inputs[i])
        channels = values.transpose(0, 1).reshape(values.shape[1], -1)
        out.append((channels.mean(1), channels.var(1, unbiased=True)))
    return out


def test_statistics_equal_a_direct_computation_of_each_layers_inputs():
    net, batches = _net(), _batches()
    expected = _direct_moments(net, batches)
    net.eval()
    with torch.no_grad():
        before = net(batches[0])
    assert recompute_bn_statistics(net, batches) == 12
    assert not net.training  # the mode it was in
    for bn, (mean, var) in zip((net[1], net[4], net[9]), expected):
        torch.testing.assert_close(bn.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var.float(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(net(batches[0]), before)  # eval output changed with the statistics
    assert all(p.grad is None for p in net.parameters())


def test_a_model_without_batchnorm_is_left_alone():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_bn_statistics(net, iter(_batches())) == 0
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def _rank_main(rank: int, port: int, shards, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = _net()
        recompute_bn_statistics(net, shards[rank], dist.all_reduce)
        queue.put(
            (rank, {k: v.tolist() for k, v in net.state_dict().items() if "running" in k})
        )  # plain data: outlives the process
    finally:
        dist.destroy_process_group()


def test_two_processes_get_the_statistics_of_the_union_of_their_batches():
    batches = _batches(n_batches=4)
    shards = [batches[0::2], batches[1::2]]  # uneven content, one shard per process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_rank_main, args=(port, shards, queue), nprocs=2, start_method="spawn")
    results = dict(queue.get(timeout=60) for _ in range(2))
    single = _net()
    recompute_bn_statistics(single, batches)
    for rank in (0, 1):
        for key, value in results[rank].items():
            torch.testing.assert_close(torch.tensor(value), single.state_dict()[key], rtol=1e-5, atol=1e-6)


class _BNNet(nn.Module):
    """A small 256x256 classifier with BatchNorm, for the Trainer tests."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=8)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def _trainer(root: str, precise_bn: int, **kwargs) -> Trainer:
    torch.manual_seed(0)
    model = _BNNet()
    splits = [
        FacesDataset(os.path.join(root, "fakes_dataset", part), get_transforms(part))
        for part in ("train", "val", "test")
    ]
    return cpu_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.0), splits, precise_bn=precise_bn, **kwargs
    )


@pytest.mark.parametrize("cached", [False, True])
def test_trainer_uses_unaugmented_training_images(tiny_root, cached):
    trainer = _trainer(tiny_root, precise_bn=100)  # more batches than the split has: all 12 images
    if cached:
        trainer.train_dataset.cache_images(progress=False)
    trainer.recompute_bn_statistics()
    train = trainer.train_dataset
    images = normalize_batch(train.load_uint8_batch(torch.arange(len(train))))
    with torch.no_grad():
        features = trainer.model.conv(images).double()
    channels = features.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(trainer.model.bn.running_mean, channels.mean(1).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainer.model.bn.running_var, channels.var(1).float(), rtol=1e-5, atol=1e-6)


def test_trainer_subset_is_drawn_from_seed_and_epoch(tiny_root):
    def stats(epoch, seed):
        trainer = _trainer(tiny_root, precise_bn=1, seed=seed)  # one batch of 4 of the 12 images
        trainer.epoch = epoch
        trainer.recompute_bn_statistics()
        return trainer.model.bn.running_mean.clone()

    assert torch.equal(stats(1, 0), stats(1, 0))  # repeats: a resumed run redraws the same batches
    assert not torch.equal(stats(1, 0), stats(2, 0))


def test_course_transform_dataset_uses_the_validation_transform(tiny_root):
    import torchvision.transforms as T

    normalize = T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    augment = T.Compose([T.RandomHorizontalFlip(1.0), T.ToTensor(), normalize])  # always flips
    plain = T.Compose([T.ToTensor(), normalize])
    trainer = _trainer(tiny_root, precise_bn=100)
    for dataset, transform in ((trainer.train_dataset, augment), (trainer.validation_dataset, plain)):
        dataset.transform = transform
    trainer.recompute_bn_statistics()
    images = torch.stack(
        [
            trainer.train_dataset.__class__(trainer.train_dataset.root_path, plain)[i][0]
            for i in range(len(trainer.train_dataset))
        ]
    )
    with torch.no_grad():
        features = trainer.model.conv(images).double().transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(trainer.model.bn.running_mean, features.mean(1).float(), rtol=1e-5, atol=1e-6)


def test_train_main_flag_is_recorded_and_off_by_default(tmp_path, tiny_root):
    import json

    base = train_argv(tiny_root, tmp_path, "-m", "SimpleNet", "-o", "Adam", "-b", "4", "-e", "1")
    assert train_main.build_parser().parse_args([]).precise_bn == 0
    assert train_main.main(base + ["--precise_bn", "8"]) == 0
    run = json.load(open(tmp_path / "out" / "fakes_dataset_SimpleNet_Adam.json"))[-1]
    assert run["precise_bn"] == 8 and run["args"]["precise_bn"] == 8
    with pytest.raises(SystemExit):
        train_main.build_parser().parse_args(["--precise_bn", "-1"])
