"""predict.py: odd inputs, per-file errors, --json, --grad_cam, wrong -m."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision import transforms as T

import predict
from lib.cli import run_cli
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from models import SimpleNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def simplenet_argv(checkpoint, *rest) -> list[str]:
    """predict.py's arguments for the SimpleNet ``checkpoint``, then ``rest``."""
    return ["-m", "SimpleNet", "-cpp", checkpoint, *rest]


def run_script(argv, timeout) -> subprocess.CompletedProcess:
    """predict.py run as a separate process with ``argv``; its exit code and text output."""
    return subprocess.run(
        [sys.executable, "predict.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def images(module_tmp):
    """A folder with grayscale, RGBA, odd-size, plain RGB and corrupt files, plus a non-image."""
    folder = module_tmp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8), "L").save(folder / "a_gray.png")
    Image.fromarray(rng.integers(0, 256, (256, 256, 4), dtype=np.uint8), "RGBA").save(folder / "b_rgba.png")
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), "RGB").save(folder / "c_odd.png")
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB").save(folder / "d_rgb.jpg")
    (folder / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.txt").write_text("not an image")
    return folder


def reference_p_fake(simplenet_checkpoint, path):
    """Independent preprocessing: PIL convert('RGB'), PIL bilinear resize, torchvision v1."""
    model = SimpleNet()
    model.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    image = Image.open(path).convert("RGB")
    if image.size != (256, 256):
        image = image.resize((256, 256), Image.BILINEAR)
    x = T.Compose([T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])(image)[None]
    with torch.no_grad():
        return float(torch.softmax(model.eval()(x).double(), 1)[0, 1]), x


def test_text_output_odd_inputs_and_corrupt_file(simplenet_checkpoint, images, capsys):
    code = run_cli(
        predict.main,
        simplenet_argv(simplenet_checkpoint, str(images), "-b", "2", "--device", "cpu", "--no_progress"),
    )
    assert code == 1  # the corrupt file failed
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    names = ["a_gray.png", "b_rgba.png", "c_odd.png", "d_rgb.jpg"]
    assert [os.path.basename(line.split("\t")[0]) for line in lines] == names
    for line, name in zip(lines, names):
        _, score, label = line.split("\t")
        p_fake = float(score.removeprefix("P(fake)="))
        expected, _ = reference_p_fake(simplenet_checkpoint, images / name)
        assert p_fake == pytest.approx(expected, abs=1e-4)
        assert label == ("fake" if expected > 0.5 else "real")
    assert "e_corrupt.png" in captured.err and "cannot read image" in captured.err
    assert "skip_corrupt" not in captured.err
    assert "c_odd.png: image is 200x120, resized to 256x256" in captured.err
    assert "notes.txt" not in captured.out + captured.err


def test_json_output_and_missing_path(simplenet_checkpoint, images, tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    code = run_cli(
        predict.main,
        simplenet_argv(
            simplenet_checkpoint,
            "--json",
            "--device",
            "cpu",
            str(images / "b_rgba.png"),
            missing,
            str(images / "e_corrupt.png"),
        ),
    )
    assert code == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout is exactly one JSON document
    assert document["model"] == "SimpleNet"
    [result] = document["results"]
    expected, _ = reference_p_fake(simplenet_checkpoint, images / "b_rgba.png")
    assert result["p_fake"] == pytest.approx(expected, abs=1e-4)
    assert result["p_fake"] + result["p_real"] == pytest.approx(1.0)
    assert result["label"] in ("real", "fake") and result["resized_from"] is None
    assert sorted(os.path.basename(e["path"]) for e in document["errors"]) == ["e_corrupt.png", "nope.png"]
    assert "no such file or folder" in captured.err


def test_all_good_exit_zero_and_recursive(simplenet_checkpoint, images, tmp_path, capsys):
    nested = tmp_path / "top" / "sub"
    nested.mkdir(parents=True)
    Image.open(images / "d_rgb.jpg").save(nested / "x.png")
    assert run_cli(predict.main, simplenet_argv(simplenet_checkpoint, str(tmp_path / "top"))) == 1
    assert "--recursive" in capsys.readouterr().err
    assert run_cli(predict.main, simplenet_argv(simplenet_checkpoint, "-r", str(tmp_path / "top"))) == 0
    assert capsys.readouterr().out.startswith(str(nested / "x.png"))


def test_grad_cam_overlays_match_the_library(simplenet_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "cams"
    code = run_cli(
        predict.main,
        simplenet_argv(
            simplenet_checkpoint,
            "--grad_cam",
            str(out),
            "--json",
            str(images / "a_gray.png"),
            str(images / "c_odd.png"),
        ),
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == ["a_gray_grad_cam.png", "c_odd_grad_cam.png"]
    result = document["results"][1]
    assert result["grad_cam"] == str(out / "c_odd_grad_cam.png")
    with Image.open(result["grad_cam"]) as saved:
        overlay = np.asarray(saved)
    assert overlay.shape == (256, 256, 3)

    model = SimpleNet()
    model.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    p_fake, x = reference_p_fake(simplenet_checkpoint, images / "c_odd.png")
    with GradCAM(model=model.eval(), target_layers=[model.conv3]) as cam:
        mask = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(p_fake > 0.5))])[0]
    rgb = (
        np.asarray(
            Image.open(images / "c_odd.png").convert("RGB").resize((256, 256), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255
    )
    expected = show_cam_on_image(rgb, mask, use_rgb=True)
    assert np.abs(overlay.astype(int) - expected.astype(int)).max() <= 2


def test_wrong_model_names_both(simplenet_checkpoint, images):
    result = run_script(["-m", "XceptionBased", "-cpp", simplenet_checkpoint, str(images / "d_rgb.jpg")], 300)
    assert result.returncode == 2
    assert "SimpleNet" in result.stderr and "XceptionBased" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_fifo_is_refused_not_read(simplenet_checkpoint, images, tmp_path):
    """Reading a FIFO (as an explicit path) would block forever; in a folder it is not an image."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "in_folder.png")
    Image.open(images / "d_rgb.jpg").save(folder / "good.png")
    result = run_script(simplenet_argv(simplenet_checkpoint, str(fifo), str(folder), "--no_progress"), 120)
    assert result.returncode == 1  # the FIFO failed, the rest ran
    assert result.stderr.strip() == (
        f"predict.py: error: {fifo}: not a regular file (a FIFO, "
        "device or socket); give image files or folders"
    )
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(folder / "good.png")]


def test_a_reader_that_quits_early_gets_no_traceback(simplenet_checkpoint, images):
    """`predict.py ... | head -1`, and a JSON reader that closed the pipe before anything came."""
    command = [
        sys.executable,
        "predict.py",
        *simplenet_argv(simplenet_checkpoint),
        "-b",
        "1",
        "--no_progress",
        str(images / "a_gray.png"),
        str(images / "b_rgba.png"),
        str(images / "d_rgb.jpg"),
    ]
    result = subprocess.run(
        ["bash", "-c", '"$@" | head -1; echo "status ${PIPESTATUS[0]}"', "bash"] + command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    first, status = result.stdout.splitlines()
    assert first.startswith(str(images / "a_gray.png") + "\tP(fake)=")
    assert status in ("status 0", "status 141")  # 141 when the closed pipe was hit
    assert result.stderr == ""
    with subprocess.Popen(
        command + ["--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        process.stdout.close()  # the reader is gone before the document is written
        _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and err == ""
