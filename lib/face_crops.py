"""Find the faces in a whole photo and cut FaceForensics++-style crops of them.

The models are trained on 256x256 face crops, so a whole photo must be cropped before it is scored
(``predict.py --crop_faces``). The detector is OpenCV's Haar cascade for frontal faces
(``haarcascade_frontalface_default.xml``). Its model file ships inside the opencv-python-headless
wheel, so nothing is downloaded. OpenCV 5 no longer has the cascades, so the pin is ``<5``.
OpenCV is optional for the rest of the project: it is imported only when a ``FaceDetector`` is
made. The detector's parameters are fixed, so a photo always gives the same boxes, in the same
order (left to right).

A crop is a square ``MARGIN`` (1.3) times the longer side of the face box, as FaceForensics++ cuts
its faces. It is centred on the box, then moved inside the photo where the photo is long enough.
Where the photo is shorter than the square, the square stays centred and the missing part is black.
The crop is then resized to 256x256.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from lib.cli import UserError
from lib.images import IMAGE_SIZE

OPENCV_INSTALL = "pip install 'opencv-python-headless<5'"
CASCADE_FILE = "haarcascade_frontalface_default.xml"
SCALE_FACTOR = 1.1  # the cascade's window grows by 10 % a step
MIN_NEIGHBORS = 5  # overlapping hits needed to keep a face: fewer false faces
MIN_FACE_PX = 30  # smallest face the cascade looks for, in the pixels it sees
DETECT_MAX_SIDE = 1600  # larger photos are shrunk for detection, which is slow on a full 12 MP photo
MARGIN = 1.3

Box = tuple[int, int, int, int]  # x, y, width, height in the photo's pixels


def import_cv2(purpose: str = "face detection (--crop_faces)"):
    """The ``cv2`` module, when it has the Haar cascades; otherwise a one-line ``UserError`` that
    says what needs it (``purpose``) and what to install."""
    try:
        import cv2
    except ImportError:
        raise UserError(f"{purpose} needs OpenCV, which is not installed: {OPENCV_INSTALL}") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise UserError(
            f"{purpose} needs the Haar cascades of OpenCV 4, and "
            f"the installed OpenCV {cv2.__version__} has none: {OPENCV_INSTALL}"
        )
    return cv2


class FaceDetector:
    """OpenCV's frontal-face Haar cascade with fixed parameters."""

    def __init__(self):
        self._cv2 = import_cv2()
        path = os.path.join(self._cv2.data.haarcascades, CASCADE_FILE)
        self._cascade = self._cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise UserError(f"cannot load OpenCV's face cascade {path}; reinstall OpenCV: {OPENCV_INSTALL}")

    def detect(self, image: Image.Image) -> list[Box]:
        """The face boxes (x, y, w, h) of a PIL image, in its pixels, sorted left to right (then
        top to bottom); an empty list when there is no face."""
        gray = np.asarray(image.convert("L"))
        height, width = gray.shape
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = self._cv2.resize(gray, size, interpolation=self._cv2.INTER_AREA)
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE_PX, MIN_FACE_PX)
        )
        boxes = [tuple(round(float(v) / scale) for v in box) for box in np.reshape(found, (-1, 4))]
        return sorted(boxes)


def crop_square(box: Box, image_size: tuple[int, int], margin: float = MARGIN) -> tuple[int, int, int]:
    """The crop of a face box in a photo of ``image_size`` (width, height): (left, top, side).

    The square's side is ``margin`` times the box's longer side. It is centred on the box and
    moved inside the photo along each axis where the photo is at least ``side`` long; along a
    shorter axis it stays centred and overhangs both edges.
    """
    x, y, w, h = box
    side = max(1, round(margin * max(w, h)))

    def place(centre: float, length: int) -> int:
        start = round(centre - side / 2)
        return min(max(start, 0), length - side) if side <= length else start

    return place(x + w / 2, image_size[0]), place(y + h / 2, image_size[1]), side


def crop_face(
    image: Image.Image, box: Box, size: int = IMAGE_SIZE, margin: float = MARGIN
) -> tuple[Image.Image, tuple[int, int, int]]:
    """The ``size`` x ``size`` crop of one face box of a PIL image, and its square (left, top,
    side) in the image; where the square overhangs the image, the crop is black there."""
    left, top, side = crop_square(box, image.size, margin)
    crop = image.crop((left, top, left + side, top + side))  # PIL fills outside pixels with 0
    if side != size:
        crop = crop.resize((size, size), Image.BILINEAR)
    return crop, (left, top, side)
