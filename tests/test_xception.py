"""Tests of xception.py: the network, activation checkpointing and its memory policy.

The weight loading and discovery of xception_weights.py are tested in test_xception_weights.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lib import memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import xception
from xception import Xception

REFERENCE = json.loads((Path(__file__).parent / "xception_state_dict_keys.json").read_text())


def fresh_model():
    torch.manual_seed(123)
    return Xception()


# ----------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------


def test_state_dict_keys_and_shapes_match_reference():
    got = [[k, list(v.shape)] for k, v in Xception().state_dict().items()]
    assert got == REFERENCE["keys"]
    assert len(got) == 276


def test_parameter_count():
    model = Xception()
    assert sum(p.numel() for p in model.parameters()) == 22_855_952 == REFERENCE["num_parameters"]


def test_feature_map_at_256_and_small_inputs():
    model = Xception().eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 256, 256)).shape == (1, 2048, 8, 8)
        feats = model.features(torch.randn(2, 3, 71, 71))
        assert model.logits(feats).shape == (2, 1000)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_hooks_and_input_gradients_work():
    """Full backward hooks fail on outputs later modified in place; saliency needs input grads."""
    model = Xception().eval()
    seen = []
    for m in model.modules():
        if isinstance(m, (xception.Block, torch.nn.ReLU, torch.nn.BatchNorm2d)):
            m.register_full_backward_hook(lambda mod, gin, gout: seen.append(type(mod).__name__))
    captured = {}
    model.block2.register_forward_pre_hook(lambda mod, args: captured.update(inp=args[0].clone()))
    model.block2.register_forward_hook(lambda mod, args, out: captured.update(after=args[0]))
    x = torch.randn(1, 3, 71, 71, requires_grad=True)
    model(x)[0, 3].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert "Block" in seen and "ReLU" in seen
    assert torch.equal(captured["inp"], captured["after"]), "block input was modified in place"


def _train_steps(model, steps=2, seed=5):
    """``steps`` Adam steps on a fixed random batch; returns the per-step losses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 80, 80, generator=g)
    y = torch.tensor([0, 1, 1, 0])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x)[:, :2], y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_activation_checkpointing_gives_the_same_training():
    """Same losses, weights, BatchNorm statistics and batch counters (counted once per step)."""
    plain = fresh_model()
    checkpointed = fresh_model().set_activation_checkpointing(True)
    assert _train_steps(plain) == _train_steps(checkpointed)
    ref, got = plain.state_dict(), checkpointed.state_dict()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-6, atol=1e-7, msg=key)
    assert int(got["block1.rep.1.num_batches_tracked"]) == 2 == int(got["bn1.num_batches_tracked"])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch.compile"])
def test_checkpointed_segment_counts_batchnorm_once(compiled):
    """xception._checkpointed in eager mode and under torch.compile (--compile with activation
    checkpointing): the same gradients and running statistics as the plain segment, updated once."""

    def segment():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).train()

    x = torch.randn(4, 3, 8, 8)
    plain, checkpointed = segment(), segment()
    plain(x).square().sum().backward()
    run = (
        torch.compile(lambda v: xception._checkpointed(checkpointed, v, checkpointed), backend="aot_eager")
        if compiled
        else lambda v: xception._checkpointed(checkpointed, v, checkpointed)
    )
    run(x.clone().requires_grad_()).square().sum().backward()
    torch.testing.assert_close(checkpointed[0].weight.grad, plain[0].weight.grad)
    for key, value in plain[1].state_dict().items():
        torch.testing.assert_close(checkpointed[1].state_dict()[key], value, msg=key)
    assert int(checkpointed[1].num_batches_tracked) == 1


def _saved_bytes(model, x):
    """Bytes of the distinct activations (tensors other than the parameters) that autograd keeps
    for the backward pass of ``model(x)``."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in parameters:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum()
    return sum(storages.values())


def test_activation_checkpointing_keeps_less_and_only_in_training():
    model = fresh_model().train()
    x = torch.randn(2, 3, 128, 128)
    plain = _saved_bytes(model, x)
    model.set_activation_checkpointing(True)
    checkpointed = _saved_bytes(model, x)
    assert checkpointed < 0.1 * plain, (checkpointed, plain)
    model.eval()  # evaluation and the analysis scripts (eval mode) run the plain forward
    eval_checkpointing = _saved_bytes(model, x)
    assert eval_checkpointing == _saved_bytes(model.set_activation_checkpointing(False), x) > checkpointed


def test_keep_batchnorm_stats_restores_statistics():
    model = fresh_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with xception.KeepBatchNormStats(model.block1, model.bn1):
        model.block1(torch.randn(2, 64, 20, 20) * 3 + 1)
        model.bn1(torch.randn(2, 32, 9, 9) + 2)
        changed = model.block1.rep[1].running_mean.clone()
    assert not torch.equal(changed, before["block1.rep.1.running_mean"])
    for key, value in model.state_dict().items():
        if key in before:
            assert torch.equal(value, before[key]), key


def test_grad_cam_runs_on_the_model():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = Xception().eval()
    with GradCAM(model=model, target_layers=[model.block12]) as cam:
        heatmap = cam(input_tensor=torch.randn(1, 3, 96, 96), targets=[ClassifierOutputTarget(1)])
    assert heatmap.shape == (1, 96, 96)


def test_train_main_activation_checkpointing_same_metrics(tmp_path, monkeypatch, capsys):
    """Through the CLI: 'on', and 'auto' when memory is short, reach the model; 'off', and 'auto'
    with enough memory, do not; the logged metrics are the same in every case."""
    import train_main
    from conftest import make_tree

    calls = []
    original = Xception.set_activation_checkpointing

    def spy(self, enabled=True):
        calls.append(enabled)
        return original(self, enabled)

    monkeypatch.setattr(Xception, "set_activation_checkpointing", spy)
    data = make_tree(str(tmp_path / "data"), {"train": (3, 3), "val": (1, 1), "test": (1, 1)}, seed=4)
    runs, notes = {}, {}
    cases = (
        ("off", ["--activation_checkpointing", "off"], 10**12),
        ("on", ["--activation_checkpointing"], 10**12),
        ("auto_enough", [], 10**12),
        ("auto_short", [], 10**9),
    )
    for name, extra, available in cases:
        monkeypatch.setattr(memory, "available_memory_bytes", lambda device, free=available: free)
        out = tmp_path / name
        argv = [
            "--data_root",
            data,
            "-m",
            "XceptionBased",
            "--no_pretrained",
            "-o",
            "Adam",
            "-e",
            "1",
            "-b",
            "3",
            "--num_workers",
            "0",
            "--no_progress",
            "--out_dir",
            str(out / "out"),
            "--checkpoint_dir",
            str(out / "ck"),
            *extra,
        ]
        capsys.readouterr()
        assert train_main.main(argv) == 0
        notes[name] = "activation checkpointing is on" in capsys.readouterr().err
        (run,) = json.loads((out / "out" / "fakes_dataset_XceptionBased_Adam.json").read_text())
        runs[name] = run
        shutil.rmtree(out / "ck")  # hundreds of MB a run; only the logged metrics are compared
    assert calls == [True, True], "checkpointing must be turned on for 'on' and 'auto' when short"
    assert {name: run["activation_checkpointing"] for name, run in runs.items()} == {
        "off": False,
        "on": True,
        "auto_enough": False,
        "auto_short": True,
    }
    assert notes == {"off": False, "on": False, "auto_enough": False, "auto_short": True}
    assert runs["on"]["args"]["activation_checkpointing"] == "on"
    for name in ("on", "auto_enough", "auto_short"):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
            assert runs[name][key] == pytest.approx(runs["off"][key], rel=1e-5), (name, key)


GIB = 1024**3


@pytest.mark.parametrize(
    "setting, model, batch, available, processes, expected",
    [
        ("on", "XceptionBased", 32, 100 * GIB, 1, True),
        ("off", "XceptionBased", 32, 1 * GIB, 1, False),
        ("auto", "SimpleNet", 32, 1 * GIB, 1, False),  # SimpleNet never checkpoints
        ("auto", "XceptionBased", 32, 16 * GIB, 1, False),  # 32 x 200 MiB + 1 GiB = 7.25 GiB fits
        ("auto", "XceptionBased", 32, 7 * GIB, 1, True),
        ("auto", "XceptionBased", 8, 3 * GIB, 1, False),  # 2.56 GiB fits
        ("auto", "XceptionBased", 16, 8 * GIB, 1, False),  # 4.125 GiB fits
        ("auto", "XceptionBased", 16, 8 * GIB, 2, True),  # two processes share the RAM: 8.25 GiB
    ],
)
def test_resolve_activation_checkpointing(setting, model, batch, available, processes, expected):
    enabled, note = memory.resolve_activation_checkpointing(
        setting, model, torch.device("cpu"), batch, available=available, processes=processes
    )
    assert enabled is expected
    assert (note is not None) == (expected and setting == "auto")
    if note:
        assert f"batch {batch}" in note and "--activation_checkpointing off" in note


def test_available_memory_is_read_on_the_cpu():
    free = memory.available_memory_bytes(torch.device("cpu"))
    if os.path.exists("/proc/meminfo"):
        assert 0 < free < 2**50


def test_resolve_activation_checkpointing_counts_memory_allocated_later():
    """On CUDA the image cache goes to the GPU after the decision: 7.25 GiB fits in 8, not with
    a 2 GiB cache on top."""
    decide = functools.partial(
        memory.resolve_activation_checkpointing,
        "auto",
        "XceptionBased",
        torch.device("cpu"),
        32,
        available=8 * GIB,
    )
    assert decide()[0] is False
    enabled, note = decide(extra_bytes=2 * GIB)
    assert enabled is True and "9.9 GB" in note
