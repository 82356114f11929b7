"""face_crops.py and predict.py --crop_faces on a real photograph: matplotlib's grace_hopper.jpg."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision import transforms as T

import predict
from lib import face_crops
from lib.cli import run_cli
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from models import SimpleNet

INSTALL = "pip install 'opencv-python-headless<5'"


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    """A real photograph of one face (512x600) that ships with matplotlib."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def detector():
    return face_crops.FaceDetector()


@pytest.fixture(scope="module")
def canvas(hopper):
    """A 1200x900 noise canvas with the photo at (600, 150) and a half-size copy at (100, 450)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8))
    image.paste(hopper, (600, 150))
    image.paste(hopper.resize((256, 300), Image.BILINEAR), (100, 450))
    return image


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes, counted on a pixel grid."""
    size = max(a[0] + a[2], b[0] + b[2]) + 1, max(a[1] + a[3], b[1] + b[3]) + 1
    masks = np.zeros((2,) + size, dtype=bool)
    for mask, (x, y, w, h) in zip(masks, (a, b)):
        mask[x : x + w, y : y + h] = True
    return (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()


def shifted(box, dx, dy):
    return box[0] + dx, box[1] + dy, box[2], box[3]


def test_boxes_are_where_the_faces_were_pasted(hopper, detector, canvas):
    [alone] = detector.detect(hopper)
    [alone_small] = detector.detect(hopper.resize((256, 300), Image.BILINEAR))
    boxes = detector.detect(canvas)
    assert len(boxes) == 2 and boxes == detector.detect(canvas)  # deterministic
    small, large = boxes  # sorted left to right
    assert iou(small, shifted(alone_small, 100, 450)) > 0.7
    assert iou(large, shifted(alone, 600, 150)) > 0.7


def test_a_large_photo_is_shrunk_for_detection_and_boxes_map_back(hopper, detector):
    photo = Image.new("RGB", (2400, 1800), (100, 110, 120))
    photo.paste(hopper.resize((1024, 1200), Image.BILINEAR), (1000, 500))
    [alone] = detector.detect(hopper)
    [box] = detector.detect(photo)
    expected = [round(2 * v) for v in alone]
    assert iou(box, shifted(expected, 1000, 500)) > 0.7


def test_crop_is_the_margin_square_resized_to_256(detector, canvas):
    box = detector.detect(canvas)[1]
    crop, (left, top, side) = face_crops.crop_face(canvas, box)
    assert crop.size == (256, 256)
    assert side == round(1.3 * max(box[2], box[3]))
    # centred on the face box (it fits inside the canvas, so it is not moved)
    assert abs(left + side / 2 - (box[0] + box[2] / 2)) <= 0.5
    assert abs(top + side / 2 - (box[1] + box[3] / 2)) <= 0.5
    region = Image.fromarray(np.asarray(canvas)[top : top + side, left : left + side])
    expected = np.asarray(region.resize((256, 256), Image.BILINEAR), dtype=int)
    assert np.abs(np.asarray(crop, dtype=int) - expected).max() <= 1
    # the face, found again in the crop, fills about 1/1.3 of it, in the middle
    [(x, y, w, h)] = detector.detect(crop)
    assert 1.15 < 256 / w < 1.5
    assert abs(x + w / 2 - 128) < 20 and abs(y + h / 2 - 128) < 20


@pytest.mark.parametrize(
    "box, size, square",
    [
        ((0, 0, 100, 100), (1000, 1000), (0, 0, 130)),  # at a corner: moved inside
        ((950, 10, 50, 40), (1000, 500), (935, 0, 65)),  # at the right edge, longer side w
        ((5, 300, 100, 100), (110, 1000), (-10, 285, 130)),  # narrower than the square: overhangs
    ],
)
def test_crop_square_at_the_borders(box, size, square):
    assert face_crops.crop_square(box, size) == square


def test_overhang_is_padded_black():
    image = Image.new("RGB", (110, 400), (200, 50, 20))
    crop, (left, top, side) = face_crops.crop_face(image, (5, 100, 100, 100), size=130)
    assert (left, top, side) == (-10, 85, 130)
    array = np.asarray(crop)
    assert (array[:, :10] == 0).all() and (array[:, 120:] == 0).all()
    assert (array[:, 10:120] == (200, 50, 20)).all()


def reference_crop_scores(model, photo, square):
    """P(fake), model input and RGB in [0, 1] of one crop, with numpy slicing, PIL and
    torchvision v1 transforms."""
    left, top, side = square
    region = Image.fromarray(np.asarray(photo)[top : top + side, left : left + side])
    region = region.resize((256, 256), Image.BILINEAR)
    x = T.Compose([T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])(region)[None]
    with torch.no_grad():
        p_fake = float(torch.softmax(model(x).double(), 1)[0, 1])
    return p_fake, x, np.asarray(region, np.float32) / 255


def test_predict_scores_each_face_and_draws_grad_cam_on_the_crop(
    simplenet_checkpoint, canvas, detector, tmp_path, capsys
):
    path = tmp_path / "group.png"
    canvas.save(path)
    args = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, "--crop_faces", "--detector", "haar", str(path)]
    code = run_cli(predict.main, args + ["--json", "--grad_cam", str(tmp_path / "cams")])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["crop_faces"] is True and document["no_face"] == [] and document["errors"] == []
    results = document["results"]
    assert [r["face"] for r in results] == [1, 2]
    assert [tuple(r["box"]) for r in results] == detector.detect(canvas)
    model = SimpleNet()
    model.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    model.eval()
    for result in results:
        p_fake, x, rgb = reference_crop_scores(model, canvas, result["crop"])
        assert result["p_fake"] == pytest.approx(p_fake, abs=1e-4)
        assert result["label"] == ("fake" if p_fake > 0.5 else "real")
        name = f"group_face{result['face']}_grad_cam.png"
        assert result["grad_cam"] == str(tmp_path / "cams" / name)
        with GradCAM(model=model, target_layers=[model.conv3]) as cam:
            mask = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(p_fake > 0.5))])[0]
        with Image.open(result["grad_cam"]) as saved:
            overlay = np.asarray(saved, dtype=int)
        assert np.abs(overlay - show_cam_on_image(rgb, mask, use_rgb=True)).max() <= 2

    assert run_cli(predict.main, args) == 0
    lines = capsys.readouterr().out.splitlines()
    second = results[1]
    box = ",".join(str(v) for v in second["box"])
    assert lines[1] == f"{path}\tP(fake)={second['p_fake']:.4f}\t{second['label']}\tface 2 box={box}"


def test_a_photo_without_a_face_is_said_and_exits_0(simplenet_checkpoint, tmp_path, capsys):
    flat = tmp_path / "wall.png"
    Image.new("RGB", (1200, 900), (128, 128, 128)).save(flat)
    args = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, "--crop_faces", str(flat)]
    assert run_cli(predict.main, args) == 0
    assert capsys.readouterr().out == f"{flat}\tno face found\n"
    assert run_cli(predict.main, args + ["--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["results"] == [] and document["no_face"] == [str(flat)]
    assert document["errors"] == []


@pytest.mark.parametrize(
    "cv2_module, says",
    [
        (None, "OpenCV, which is not installed"),  # None in sys.modules makes the import fail
        (types.SimpleNamespace(__version__="5.0.0"), "OpenCV 5.0.0 has none"),
    ],
)
def test_missing_opencv_is_one_line_naming_the_install(
    simplenet_checkpoint, tmp_path, monkeypatch, capsys, cv2_module, says
):
    image = tmp_path / "face.png"
    Image.new("RGB", (256, 256)).save(image)
    monkeypatch.setitem(sys.modules, "cv2", cv2_module)
    args = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, str(image)]
    assert run_cli(predict.main, args + ["--crop_faces", "--detector", "haar"]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert says in line and INSTALL in line and captured.out == ""
    assert run_cli(predict.main, args) == 0  # without --crop_faces OpenCV is not needed
