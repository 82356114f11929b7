"""The face detectors of ``predict.py`` and ``prepare_videos.py`` (docs/design.md#face-detectors).

- ``mtcnn`` (the default): MTCNN (Zhang et al. 2016) from facenet-pytorch, as the DFDC winner
  used it. Its three small networks (2 MB) ship inside the pip package, so nothing is downloaded;
  it runs on the CPU or a GPU through the project's torch. facenet-pytorch pins a torch older than
  ours, so it is installed with ``--no-deps`` (``FACENET_INSTALL``).
- ``haar``: OpenCV's frontal-face Haar cascade (``face_crops.FaceDetector``), the fallback that
  needs nothing beyond OpenCV. It gives no confidence.

Both return ``Face`` records (box ``(x, y, w, h)`` in the image's pixels, rounded to integers, and
the detector's confidence or None), left to right. Their parameters are fixed, so an image
always gives the same faces; ``params()`` says which, for the records of a run.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from lib import face_crops
from lib.cli import UserError

DETECTORS = ("mtcnn", "haar")
DEFAULT_DETECTOR = "mtcnn"
FACENET_VERSION = "2.6.0"
FACENET_INSTALL = f"pip install --no-deps facenet-pytorch=={FACENET_VERSION} requests"
PICK_RULES = ("largest", "confident")
MIN_FACE_PX = 40  # MTCNN's smallest face: its image pyramid starts at 12 / MIN_FACE_PX of the frame
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults for its three stages
MTCNN_FACTOR = 0.709  # the pyramid's scale step, facenet-pytorch's default
MTCNN_BATCH = 8  # frames a detection pass; a larger batch of full-HD frames takes GBs on the CPU


class Face(NamedTuple):
    """One detected face: ``box`` (x, y, w, h) in the image's pixels (it may overhang the image
    where the detector says so), and ``score``, the detector's confidence (None for Haar)."""

    box: tuple[int, int, int, int]
    score: float | None


def _as_array(image) -> np.ndarray:
    """An RGB uint8 H x W x 3 array of a PIL image or an array."""
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)


class HaarDetector:
    """OpenCV's Haar cascade (``face_crops.FaceDetector``) behind the common interface."""

    name = "haar"

    def __init__(self):
        self._cascade = face_crops.FaceDetector()

    def params(self) -> dict:
        """The detector and its fixed parameters, for the records of a run."""
        return {
            "name": self.name,
            "cascade": face_crops.CASCADE_FILE,
            "scale_factor": face_crops.SCALE_FACTOR,
            "min_neighbors": face_crops.MIN_NEIGHBORS,
            "min_face_px": face_crops.MIN_FACE_PX,
            "detect_max_side": face_crops.DETECT_MAX_SIDE,
        }

    def detect(self, image) -> list[Face]:
        """The faces of one RGB image (PIL or array), left to right; no confidence."""
        picture = image if isinstance(image, Image.Image) else Image.fromarray(_as_array(image))
        return [Face(tuple(int(v) for v in box), None) for box in self._cascade.detect(picture)]

    def detect_batch(self, images) -> list[list[Face]]:
        """``detect`` of each image."""
        return [self.detect(image) for image in images]


def import_mtcnn():
    """facenet-pytorch's ``MTCNN`` class; a one-line ``UserError`` naming the install when it is missing."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise UserError(
            f"--detector mtcnn needs facenet-pytorch ({exc}); install it with: {FACENET_INSTALL} "
            "(--no-deps keeps your torch), or use --detector haar"
        ) from None
    return MTCNN


class MTCNNDetector:
    """MTCNN of facenet-pytorch with fixed parameters, on ``device``."""

    name = "mtcnn"

    def __init__(self, device="cpu", min_face: int = MIN_FACE_PX):
        mtcnn = import_mtcnn()
        self.min_face = int(min_face)
        self._mtcnn = mtcnn(
            keep_all=True,
            min_face_size=self.min_face,
            thresholds=list(MTCNN_THRESHOLDS),
            factor=MTCNN_FACTOR,
            device=device,
        ).eval()

    def params(self) -> dict:
        """The detector and its fixed parameters, for the records of a run."""
        return {
            "name": self.name,
            "package": f"facenet-pytorch {FACENET_VERSION}",
            "min_face_px": self.min_face,
            "thresholds": list(MTCNN_THRESHOLDS),
            "factor": MTCNN_FACTOR,
        }

    def detect(self, image) -> list[Face]:
        """The faces of one RGB image (PIL or array), left to right, with MTCNN's probability."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images) -> list[list[Face]]:
        """The faces of each RGB image; images of one size are detected together, in batches."""
        arrays = [_as_array(image) for image in images]
        out: list[list[Face]] = [[] for _ in arrays]
        by_size: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            by_size.setdefault(array.shape, []).append(i)
        for members in by_size.values():
            for start in range(0, len(members), MTCNN_BATCH):
                chunk = members[start : start + MTCNN_BATCH]
                boxes, probs = self._mtcnn.detect(np.stack([arrays[i] for i in chunk]))
                for i, image_boxes, image_probs in zip(chunk, boxes, probs):
                    out[i] = _faces_of(image_boxes, image_probs)
        return out


def _faces_of(boxes, probs) -> list[Face]:
    """``Face`` records, left to right, of MTCNN's (x1, y1, x2, y2) boxes and probabilities."""
    if boxes is None:
        return []
    faces = []
    for (x1, y1, x2, y2), prob in zip(np.asarray(boxes, dtype=np.float64), probs):
        x, y = round(x1), round(y1)
        faces.append(Face((x, y, max(1, round(x2) - x), max(1, round(y2) - y)), float(prob)))
    return sorted(faces)


def make_detector(name: str, device="cpu", min_face: int = MIN_FACE_PX):
    """The detector called ``name`` (``DETECTORS``); ``min_face`` applies to MTCNN."""
    if name == "mtcnn":
        return MTCNNDetector(device, min_face)
    if name == "haar":
        return HaarDetector()
    raise UserError(f"--detector {name}: unknown; choose one of {', '.join(DETECTORS)}")


def pick_face(faces: list[Face], rule: str = "largest") -> Face | None:
    """The one face of a frame: the largest box (``largest``) or the most confident
    (``confident``); None when there is none. Ties go to the leftmost."""
    if not faces:
        return None
    if rule == "confident":
        if any(face.score is None for face in faces):
            raise UserError("--pick confident needs a detector that gives confidences (--detector mtcnn)")
        return max(faces, key=lambda face: face.score)
    return max(faces, key=lambda face: face.box[2] * face.box[3])
