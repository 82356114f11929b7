"""Habits of the command line (issue 21 items 1 and 5) and two guards of the scoring paths:
models whose outputs overflow, and file names that would forge predict.py's text fields."""

from __future__ import annotations

import os

import pytest
import torch

import cross_dataset_analysis
import grad_cam_analysis
import numerical_analysis
import predict
import robustness_analysis
import saliency_map
from conftest import analysis_argv, make_image, one_line_error
from models import SimpleNet


@pytest.fixture(scope="module")
def overflowing_checkpoint(module_tmp) -> str:
    """A SimpleNet whose finite weights are scaled by 1e7: its logits overflow to inf/NaN."""
    torch.manual_seed(0)
    state = {k: v * 1e7 for k, v in SimpleNet().state_dict().items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    path = module_tmp("overflow") / "fakes_dataset_SimpleNet_Adam.pt"
    torch.save({"model": state, "epoch": 1, "model_name": "SimpleNet"}, path)
    return str(path)


def test_the_overflowing_model_really_overflows(overflowing_checkpoint):
    """The control: the model's own logits on a test-sized input are not finite."""
    model = SimpleNet()
    model.load_state_dict(torch.load(overflowing_checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        assert not torch.isfinite(model.eval()(torch.randn(2, 3, 256, 256))).all()


@pytest.mark.parametrize(
    "main, extra",
    [
        (numerical_analysis.main, ["--bootstrap", "10"]),
        (robustness_analysis.main, []),
        (saliency_map.main, []),
        (grad_cam_analysis.main, []),
    ],
    ids=["numerical", "robustness", "saliency", "grad_cam"],
)
def test_non_finite_outputs_are_one_line_in_every_analysis(
    overflowing_checkpoint, tiny_root, tmp_path, capsys, main, extra
):
    argv = analysis_argv(tiny_root, tmp_path, "-m", "SimpleNet", "-cpp", overflowing_checkpoint, *extra)
    if main is saliency_map.main:  # it writes no JSON
        at = argv.index("--out_dir")
        argv = argv[:at] + argv[at + 2 :]
    one_line_error(capsys, main, argv, overflowing_checkpoint, "not finite", "retrain")


def test_non_finite_outputs_in_cross_dataset_and_predict(overflowing_checkpoint, tiny_root, tmp_path, capsys):
    spec = f"fakes_dataset:SimpleNet:{overflowing_checkpoint}"
    argv = ["--checkpoints", spec, "--data_root", tiny_root, "--figures_dir", str(tmp_path / "fig")]
    argv += ["--out_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress", "-d", "fakes_dataset"]
    one_line_error(capsys, cross_dataset_analysis.main, argv, overflowing_checkpoint, "not finite")
    image = os.path.join(tiny_root, "fakes_dataset", "test", "real", "img000.png")
    for flags in ([], ["--json"]):
        argv = ["-m", "SimpleNet", "-cpp", overflowing_checkpoint, image, "--device", "cpu", *flags]
        one_line_error(capsys, predict.main, argv + ["--no_progress"], overflowing_checkpoint, "not finite")
        assert "nan" not in capsys.readouterr().out.lower()


def test_predict_text_fields_cannot_be_forged(simplenet_checkpoint, tmp_path, capsys):
    """A file name holding a tab and a newline stays one line of three fields, its name escaped."""
    import numpy as np

    from lib.cli import run_cli

    name = "a\tP(fake)=0.0000\treal\nforged.png"
    make_image(np.random.default_rng(0), fake=True).save(tmp_path / name)
    argv = [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        str(tmp_path),
        "--device",
        "cpu",
        "--no_progress",
    ]
    assert run_cli(predict.main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    path, score, label = lines[0].split("\t")
    assert path == str(tmp_path / "a\\tP(fake)=0.0000\\treal\\nforged.png")
    assert score.startswith("P(fake)=") and label in ("real", "fake")
