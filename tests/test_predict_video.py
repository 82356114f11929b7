"""predict.py on videos: each sampled frame's faces scored as a photo's would be (checked against
numpy/PIL crops and torchvision transforms), the video's mean or median of its frames' top face,
no made-up score without a face, the annotated copy, and bad videos among good ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import predict
from lib import video
from lib.cli import run_cli
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from models import SimpleNet
from test_video_prep import reference_crop, write_counting_video


@pytest.fixture(scope="module")
def model(simplenet_checkpoint):
    net = SimpleNet()
    net.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    return net.eval()


def reference_p_fake(model, frame: np.ndarray, box) -> float:
    """P(fake) of the 1.3x crop of ``box`` with torchvision's v1 transforms."""
    crop = Image.fromarray(reference_crop(frame, box).astype(np.uint8))
    x = T.Compose([T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])(crop)[None]
    with torch.no_grad():
        return float(torch.softmax(model(x).double(), 1)[0, 1])


def a_fake(demo_videos) -> str:
    folder = Path(demo_videos) / "manipulated_sequences" / "FaceSwap" / "c23" / "videos"
    return str(sorted(folder.iterdir())[0])


def run_json(capsys, argv) -> tuple[int, dict]:
    code = run_cli(predict.main, argv + ["--json", "--no_progress"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("aggregate, reduce", [("mean", np.mean), ("median", np.median)])
def test_a_video_is_the_aggregate_of_its_frames_top_faces(
    simplenet_checkpoint, model, demo_videos, capsys, aggregate, reduce
):
    path = a_fake(demo_videos)
    argv = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, path, "--frames", "3", "--aggregate", aggregate]
    code, document = run_json(capsys, argv)
    assert code == 0 and document["errors"] == [] and document["detector"]["name"] == "mtcnn"
    [result] = document["results"]
    assert result["video"] is True and result["frames_sampled"] == 3
    frames = dict(video.sampled_frames(path, 0))
    assert [f["frame"] for f in result["frames"]] == video.sample_indices(len(frames), 3)
    tops = []
    for record in result["frames"]:
        for face in record["faces"]:
            assert face["p_fake"] == pytest.approx(
                reference_p_fake(model, frames[record["frame"]], face["box"]), abs=1e-4
            )
        if record["faces"]:
            top = max(record["faces"], key=lambda f: f["p_fake"])
            assert (record["box"], record["p_fake"]) == (top["box"], top["p_fake"])
            tops.append(top["p_fake"])
        else:
            assert record["p_fake"] is None and record["box"] is None
    assert result["frames_with_face"] == len(tops) > 0
    assert result["p_fake"] == pytest.approx(float(reduce(tops)))
    assert result["label"] == ("fake" if result["p_fake"] > 0.5 else "real")
    assert run_cli(predict.main, argv + ["--no_progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        f"{path}\tP(fake)={result['p_fake']:.4f}\t{result['label']}\tvideo: {aggregate} of {len(tops)} "
        "frames with a face (of 3 sampled)"
    )


def test_a_video_without_a_face_is_said_with_no_score(simplenet_checkpoint, tmp_path, capsys):
    flat = tmp_path / "wall.avi"
    write_counting_video(flat, 12, size=(160, 120))
    argv = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, str(flat), "--frames", "4"]
    assert run_cli(predict.main, argv + ["--no_progress"]) == 0
    assert capsys.readouterr().out == f"{flat}\tno face found in 4 sampled frames\n"
    code, document = run_json(capsys, argv)
    assert code == 0 and document["results"] == [] and document["no_face"] == [str(flat)]


def test_annotate_writes_every_frame_with_the_boxes(simplenet_checkpoint, demo_videos, tmp_path, capsys):
    path, out = a_fake(demo_videos), tmp_path / "annotated.mp4"
    argv = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, path, "--frames", "2", "--detector", "haar"]
    code, document = run_json(capsys, argv + ["--annotate", str(out)])
    assert code == 0
    [result] = document["results"]
    assert result["annotated"] == str(out)
    source, drawn = dict(video.sampled_frames(path, 0)), dict(video.sampled_frames(str(out), 0))
    assert sorted(drawn) == sorted(source) and drawn[0].shape == source[0].shape
    record = next(r for r in result["frames"] if r["faces"])
    x, y, w, h = record["faces"][0]["box"]
    change = np.abs(drawn[record["frame"]].astype(int) - source[record["frame"]].astype(int)).sum(-1)
    edge = change[y, x + 2 : x + w - 2].mean()  # the box's top edge is drawn
    inside = change[y + h // 3 : y + 2 * h // 3, x + w // 3 : x + 2 * w // 3].mean()  # the face is not
    assert edge > 100 and inside < 30
    assert run_cli(predict.main, argv + ["--annotate", str(out)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
    second = str(sorted(Path(path).parent.iterdir())[1])
    two = [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        path,
        second,
        "--annotate",
        str(tmp_path / "b.mp4"),
    ]
    assert run_cli(predict.main, two) == 2
    assert "exactly one video" in capsys.readouterr().err


def test_a_bad_video_is_named_and_the_others_go_on(simplenet_checkpoint, demo_videos, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 2000)
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = folder / "clip.mp4"
    good.write_bytes(Path(a_fake(demo_videos)).read_bytes())
    Image.new("RGB", (256, 256), (120, 90, 60)).save(folder / "face.png")
    argv = [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        str(bad),
        str(folder),
        "--frames",
        "2",
        "--detector",
        "haar",
    ]
    code, document = run_json(capsys, argv)
    assert code == 1
    assert [e["path"] for e in document["errors"]] == [str(bad)] and str(bad) in document["errors"][0][
        "error"
    ]
    assert [r["path"] for r in document["results"]] == [str(folder / "clip.mp4"), str(folder / "face.png")]
    assert document["results"][1]["face"] is None  # the image is scored whole, as before
