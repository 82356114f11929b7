"""Make procedural demo data in the study's layout (docs/design.md#dataset-layout), so every script
runs without the course datasets.

Usage::

    python make_demo_datasets.py --out data/demo                 # default demo (about 1,300 images)
    python make_demo_datasets.py --out data/demo --full_size     # the real datasets' sizes
    python make_demo_datasets.py --out /tmp/tiny --scale 0.05 --force

What it writes (256x256 RGB PNG)::

    OUT/fakes_dataset/{train,val,test}/{real,fake}/*.png        "Deepfakes": exactly 2 real : 1 fake
    OUT/synthetic_dataset/{train,val,test}/{real,fake}/*.png    generator faces: about 1 : 1

Everything is drawn here with numpy and PIL: no image is downloaded or copied. Each identity (face
shape, skin tone, eyes, brows, nose, mouth, hair, sometimes glasses or a beard) is a set of random
parameters; each image adds pose, scale and position jitter, background, lighting and a camera
(white balance, exposure, blur, sensor noise, a JPEG round trip).

* fakes_dataset real images are face crops from an identity's "video" (its own background and
  lighting). A fake is a face swap: the inner face of ANOTHER identity of the same split, rendered
  in the target frame's pose but with its own colours, passes a low-resolution bottleneck (down-
  then up-sampling, like the autoencoder of the Deepfakes method) and comes out a little washed
  out and with the decoder's colour bias (slightly brighter and warmer), is slightly misaligned,
  only partly colour-matched and pasted into the target frame with a feathered mask (a seam is
  sometimes visible; the pasted face lacks the frame's sensor noise).
* synthetic_dataset real images are portraits. A fake is a whole "generator" image: it is rebuilt
  from a 32x32 version through three transposed-convolution-like upsampling steps (zero insertion
  and a fixed, learned-looking 4x4 kernel per colour channel, whose uneven phases leave periodic
  checkerboard peaks in the spectrum) while re-adding the fine detail, and its colours are
  slightly off (saturation, tinted shadows).

Every fake is finally matched to a real image of the same scene (the target frame; for a generated
image, the scene through the real camera): its channel means and standard deviations, and the
variance of the Laplacian of its grey image (by adding sensor noise or blurring), so brightness,
contrast and sharpness alone do not give it away. ``benchmarks/check_demo_difficulty.py``
measures how hard the data is: a logistic regression on those global statistics stays near
chance, while SimpleNet with the study's protocol learns the face swaps (not perfectly) and, as in
the study, hardly the generated faces.

File names encode identities (5-digit numbers, unique within a dataset, never shared between the
train, val and test splits of that dataset)::

    real/id00012_003.png               frame 3 of identity 12
    fake/id00012_from_id00040_001.png  fakes_dataset: fake 1 made on a frame of identity 12 (the
                                       target) with the face of identity 40 (the source)
    fake/id00012_001.png               synthetic_dataset: generated image 1 of identity 12

Determinism: the same seed, scale and size give byte-identical files, whatever the number of
workers and the CPU: each image has its own random generator seeded from (seed, dataset, split,
class, index).

A target dataset folder that exists and is not empty is refused unless ``--force``, which replaces
only what this script made: it writes a marker (``.made_by_make_demo_datasets.json``) into each
dataset folder, and a folder holding anything else (real data, notes) is refused, naming it. The
data is written into a hidden temporary folder next to it and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from lib import cli

DATASETS = ("fakes_dataset", "synthetic_dataset")
SPLITS = ("train", "val", "test")
CLASSES = ("real", "fake")
IMAGE_SIZE = 256

# Images per split (real + fake) of the default demo and of the course datasets
# (docs/design.md#dataset-layout).
DEFAULT_COUNTS = {
    "fakes_dataset": {"train": 600, "val": 150, "test": 150},
    "synthetic_dataset": {"train": 240, "val": 60, "test": 60},
}
FULL_COUNTS = {
    "fakes_dataset": {"train": 10800, "val": 2100, "test": 2100},
    "synthetic_dataset": {"train": 9446, "val": 1171, "test": 1103},
}
# Real images per split of the full synthetic set; the rest of each split is fake.
FULL_SYNTHETIC_REAL = {"train": 4721, "val": 586, "test": 551}
# About how many real images show one identity (frames of a video; photos of a celebrity).
IMAGES_PER_IDENTITY = {"fakes_dataset": 8, "synthetic_dataset": 3}
# The most images one call may make (about 37 times the course datasets): a larger --scale is a
# typo, not a request.
MAX_IMAGES = 1_000_000


class TargetExistsError(FileExistsError):
    """A dataset folder to write already exists and is not empty, and ``force`` was not given;
    or, with ``force``, it holds something this script did not make."""


class DemoRequestError(ValueError):
    """``generate`` cannot do what it was asked (unknown dataset, scale or seed out of range, an
    output folder that cannot be made); raised before any image is written. The message names the
    command-line flag."""


# ============================================================================ counts and plan
def class_counts(dataset: str, split: str, scale: float = 1.0, full_size: bool = False) -> dict:
    """``{"real": n, "fake": n}`` for one split: fakes_dataset exactly 2:1, synthetic about 1:1.

    ``scale`` multiplies the default (or, with ``full_size``, the course) counts; every class keeps
    at least one image.
    """
    total = (FULL_COUNTS if full_size else DEFAULT_COUNTS)[dataset][split]
    if dataset == "fakes_dataset":
        fake = max(1, round(total / 3 * scale))
        return {"real": 2 * fake, "fake": fake}
    real = FULL_SYNTHETIC_REAL[split] if full_size else total // 2
    return {"real": max(1, round(real * scale)), "fake": max(1, round((total - real) * scale))}


def plan_counts(scale: float = 1.0, full_size: bool = False, datasets=DATASETS) -> dict:
    """``{dataset: {split: {"real": n, "fake": n}}}`` for the datasets to generate."""
    return {d: {s: class_counts(d, s, scale, full_size) for s in SPLITS} for d in datasets}


def _rng(*keys) -> np.random.Generator:
    """A generator seeded from ints and strings (strings through CRC-32, stable across runs)."""
    entropy = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


@dataclass(frozen=True)
class ImageTask:
    """One image to make: everything a worker needs, nothing else (so it pickles cheaply)."""

    path: str
    dataset: str
    split: str
    label: str
    index: int
    seed: int
    identity: int
    source: int | None  # fakes_dataset fakes: the identity whose face is pasted in


def _identity_pools(dataset: str, split_counts: dict) -> dict:
    """Disjoint, consecutive identity numbers for each split (at least 2, so a swap has a source)."""
    pools, start = {}, 0
    for split in SPLITS:
        images = max(split_counts[split].values())
        n = max(2, math.ceil(images / IMAGES_PER_IDENTITY[dataset]))
        pools[split] = list(range(start, start + n))
        start += n
    return pools


def plan_tasks(root: Path, dataset: str, split_counts: dict, seed: int) -> list[ImageTask]:
    """All images of one dataset, with file names under ``root`` (the dataset folder)."""
    tasks = []
    pools = _identity_pools(dataset, split_counts)
    for split in SPLITS:
        pool = pools[split]
        for label in CLASSES:
            for index in range(split_counts[split][label]):
                identity, frame = pool[index % len(pool)], index // len(pool)
                source = None
                if dataset == "fakes_dataset" and label == "fake":
                    pick = _rng(seed, dataset, split, label, index, "source")
                    offset = 1 + int(pick.integers(len(pool) - 1))
                    source = pool[(index + offset) % len(pool)]
                    name = f"id{identity:05d}_from_id{source:05d}_{frame:03d}.png"
                else:
                    name = f"id{identity:05d}_{frame:03d}.png"
                tasks.append(
                    ImageTask(
                        str(root / split / label / name), dataset, split, label, index, seed, identity, source
                    )
                )
    return tasks


# ============================================================================ random appearance
SKIN_TONES = np.array(
    [(255, 222, 196), (236, 192, 160), (214, 164, 126), (176, 122, 88), (128, 84, 58), (88, 58, 42)],
    np.float32,
)
HAIR_COLOURS = np.array(
    [
        (24, 20, 18),
        (58, 40, 28),
        (102, 68, 44),
        (134, 70, 40),
        (196, 160, 108),
        (158, 154, 150),
        (222, 206, 176),
    ],
    np.float32,
)
HAIR_WEIGHTS = np.array([0.28, 0.24, 0.18, 0.07, 0.12, 0.07, 0.04])
IRIS_COLOURS = np.array(
    [(88, 56, 32), (44, 30, 22), (72, 108, 156), (82, 118, 80), (118, 98, 52), (108, 118, 128)], np.float32
)
SHORT, MEDIUM, LONG, RECEDING = range(4)


@dataclass
class Identity:
    """What stays the same for a person (face geometry and colours, in face units: the face
    ellipse is 1 high from centre to chin)."""

    face_width: float
    jaw: float
    skin: np.ndarray
    eye_spacing: float
    eye_height: float
    eye_size: float
    iris: np.ndarray
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_tilt: float
    nose_length: float
    nose_width: float
    mouth_gap: float
    mouth_width: float
    lip_thickness: float
    lips: np.ndarray
    smile: float
    hair: np.ndarray
    hair_style: int
    hairline: float
    hair_volume: float
    glasses: np.ndarray | None
    glasses_size: float
    beard: float
    clothes: np.ndarray


@dataclass
class Setting:
    """Where and how a person is filmed: background, light, white balance and exposure."""

    background_seed: int
    background_style: str
    light: tuple  # direction (x, y) in the image plane
    light_strength: float
    light_colour: np.ndarray
    white_balance: np.ndarray
    exposure: float


@dataclass
class Pose:
    """One frame: where the face is and how it looks at the camera."""

    cx: float
    cy: float
    scale: float  # pixels per face unit
    roll: float
    yaw: float
    pitch: float
    mouth_open: float
    eye_open: float
    gaze: float
    shake: tuple  # background offset in pixels (camera shake)


@dataclass
class Camera:
    """Per-image camera: exposure and white balance, optical blur, sensor noise, JPEG quality."""

    gains: np.ndarray
    gamma: float
    vignette: float
    blur: float
    noise: float
    jpeg_quality: int


# Per-dataset look: face crops of video frames shot in rooms versus centred studio portraits.
STYLES = {
    "fakes_dataset": dict(
        scale=(78, 96),
        centre=(10, 8),
        roll=0.20,
        yaw=0.45,
        blur=(0.5, 1.3),
        noise=(1.5, 6.0),
        jpeg=(55, 90),
        background="room",
    ),
    "synthetic_dataset": dict(
        scale=(70, 86),
        centre=(5, 5),
        roll=0.07,
        yaw=0.25,
        blur=(0.3, 0.9),
        noise=(0.8, 3.5),
        jpeg=(80, 97),
        background="studio",
    ),
}


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw a person."""
    tone = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(tone)
    skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[min(low + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[low])
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255).astype(np.float32)
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
    lips = np.clip(skin * np.array([0.86, 0.6, 0.6]) + rng.normal(0, 8, 3) + [18, 0, 4], 0, 255)
    male = rng.random() < 0.5
    style = int(rng.choice(4, p=[0.45, 0.3, 0.05, 0.2] if male else [0.1, 0.3, 0.6, 0.0]))
    return Identity(
        face_width=rng.uniform(0.70, 0.86),
        jaw=rng.uniform(0.10, 0.38),
        skin=skin,
        eye_spacing=rng.uniform(0.36, 0.45),
        eye_height=rng.uniform(-0.22, -0.08),
        eye_size=rng.uniform(0.85, 1.2),
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        brow_gap=rng.uniform(0.13, 0.2),
        brow_thickness=rng.uniform(0.035, 0.075) * (1.2 if male else 0.9),
        brow_arch=rng.uniform(0.0, 0.06),
        brow_tilt=rng.uniform(-0.12, 0.12),
        nose_length=rng.uniform(0.28, 0.40),
        nose_width=rng.uniform(0.12, 0.2),
        mouth_gap=rng.uniform(0.16, 0.24),
        mouth_width=rng.uniform(0.2, 0.3),
        lip_thickness=rng.uniform(0.035, 0.065) * (0.85 if male else 1.1),
        lips=lips.astype(np.float32),
        smile=rng.uniform(-0.4, 1.0),
        hair=np.clip(hair, 0, 255).astype(np.float32),
        hair_style=style,
        hairline=rng.uniform(-0.72, -0.5),
        hair_volume=rng.uniform(0.02, 0.2),
        glasses=(rng.uniform(10, 120, 3).astype(np.float32) if rng.random() < 0.25 else None),
        glasses_size=rng.uniform(1.4, 1.8),
        beard=(rng.uniform(0.4, 0.95) if male and rng.random() < 0.35 else 0.0),
        clothes=rng.uniform(15, 235, 3).astype(np.float32),
    )


def random_setting(rng: np.random.Generator, dataset: str) -> Setting:
    """Draw a place and a light."""
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)
    return Setting(
        background_seed=int(rng.integers(2**31)),
        background_style=STYLES[dataset]["background"],
        light=(math.cos(angle) * strength, math.sin(angle) * strength),
        light_strength=rng.uniform(0.15, 0.45),
        light_colour=np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15).astype(np.float32),
        white_balance=np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15).astype(np.float32),
        exposure=rng.uniform(0.8, 1.15),
    )


def random_pose(rng: np.random.Generator, dataset: str) -> Pose:
    """Draw a frame's pose, scale and position."""
    style = STYLES[dataset]
    scale = rng.uniform(*style["scale"])
    return Pose(
        cx=IMAGE_SIZE / 2 + rng.uniform(-1, 1) * style["centre"][0],
        cy=IMAGE_SIZE / 2 - 0.12 * scale + rng.uniform(-1, 1) * style["centre"][1],
        scale=scale,
        roll=rng.uniform(-1, 1) * style["roll"],
        yaw=rng.uniform(-1, 1) * style["yaw"],
        pitch=rng.uniform(-0.06, 0.06),
        mouth_open=max(0.0, rng.uniform(-0.6, 1.0)),
        eye_open=1.0 if rng.random() > 0.08 else rng.uniform(0.1, 0.5),
        gaze=rng.uniform(-0.3, 0.3),
        shake=tuple(int(x) for x in rng.integers(-6, 7, 2)),
    )


def random_camera(rng: np.random.Generator, dataset: str, setting: Setting) -> Camera:
    """Draw this image's camera around the setting's white balance and exposure."""
    style = STYLES[dataset]
    gains = setting.white_balance * setting.exposure * np.clip(1 + rng.normal(0, 0.02, 3), 0.9, 1.1)
    return Camera(
        gains=gains.astype(np.float32),
        gamma=rng.uniform(0.9, 1.1),
        vignette=rng.uniform(0, 0.25),
        blur=rng.uniform(*style["blur"]),
        noise=rng.uniform(*style["noise"]),
        jpeg_quality=int(rng.integers(style["jpeg"][0], style["jpeg"][1] + 1)),
    )


# ============================================================================ drawing
_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


def _cover(distance_px: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - distance_px / soft, 0.0, 1.0)


def _ellipse(u, v, cu, cv, au, av):
    """Approximate signed distance to an ellipse, in the units of u and v."""
    return (np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2) - 1.0) * min(au, av)


def _paint(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite ``colour`` (RGB or an image of the same size) over ``image`` in place,
    touching only the rows and columns where ``alpha`` is not zero."""
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    colour = np.asarray(colour, np.float32)
    if colour.ndim == 3:
        colour = colour[box]
    image[box] += alpha[box][..., None] * (colour - image[box])


def _smooth_noise(rng: np.random.Generator, shape: tuple, size=(IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Zero-mean, unit-ish random field: ``shape`` random values smoothly upsampled to ``size``."""
    field = Image.fromarray(rng.standard_normal(shape).astype(np.float32), mode="F")
    return np.asarray(field.resize(size[::-1], Image.BICUBIC), dtype=np.float32)


def render_background(setting: Setting, shake=(0, 0)) -> np.ndarray:
    """The setting's background, the same for every frame of it up to camera shake."""
    rng = _rng(setting.background_seed)
    margin = 8
    size = IMAGE_SIZE + 2 * margin
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    top, bottom = rng.uniform(30, 230, 3).astype(np.float32), rng.uniform(20, 220, 3).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = np.clip(0.5 + (x - 0.5) * np.float32(np.cos(angle)) + (y - 0.5) * np.float32(np.sin(angle)), 0, 1)
    image = top + t[..., None] * (bottom - top)
    if setting.background_style == "room":
        for _ in range(int(rng.integers(2, 6))):  # doors, shelves, windows, pictures
            x0, y0 = rng.uniform(-0.2, 0.9, 2)
            w, h = rng.uniform(0.1, 0.5, 2)
            box = np.maximum(np.abs(x - x0 - w / 2) - w / 2, np.abs(y - y0 - h / 2) - h / 2) * size
            _paint(image, _cover(box, rng.uniform(0.8, 3.0)), rng.uniform(0, 255, 3))
        texture_amount = rng.uniform(3, 10)
    else:  # studio portrait: smooth, out-of-focus blobs
        for _ in range(int(rng.integers(2, 5))):
            alpha = _cover(
                _ellipse(x, y, *rng.uniform(0, 1, 2), *rng.uniform(0.15, 0.45, 2)) * size, size * 0.15
            ) * rng.uniform(0.3, 0.8)
            _paint(image, alpha, rng.uniform(20, 235, 3))
        texture_amount = rng.uniform(1, 4)
    image += texture_amount * _smooth_noise(rng, (24, 24), (size, size))[..., None]
    dy, dx = margin + shake[0], margin + shake[1]
    return image[dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE].copy()


class _FaceFrame:
    """Face coordinates (u right, v down, 1 unit = face centre to chin) for every pixel of a pose,
    and pixel windows around features so small parts are drawn on a few pixels only."""

    def __init__(self, pose: Pose):
        self.pose = pose
        self.cos, self.sin = math.cos(pose.roll), math.sin(pose.roll)
        dx, dy = _X - pose.cx, _Y - pose.cy
        self.u = (self.cos * dx + self.sin * dy) / pose.scale
        self.v = (-self.sin * dx + self.cos * dy) / pose.scale

    def cover(self, distance: np.ndarray, soft_px: float = 1.0) -> np.ndarray:
        """Coverage from a signed distance in face units, with an edge ``soft_px`` pixels wide."""
        return _cover(distance * self.pose.scale, soft_px)

    def window(self, cu: float, cv: float, radius: float):
        """Pixel slices of the square of half-side ``radius`` (face units) around face point (cu, cv)."""
        s = self.pose.scale
        x = self.pose.cx + (self.cos * cu - self.sin * cv) * s
        y = self.pose.cy + (self.sin * cu + self.cos * cv) * s
        r = radius * s + 2
        rows = slice(int(np.clip(y - r, 0, IMAGE_SIZE)), int(np.clip(y + r + 1, 0, IMAGE_SIZE)))
        cols = slice(int(np.clip(x - r, 0, IMAGE_SIZE)), int(np.clip(x + r + 1, 0, IMAGE_SIZE)))
        return rows, cols

    def uv(self, window):
        """The face coordinates of a window's pixels."""
        return self.u[window], self.v[window]


def _eye_centre(ident: Identity, pose: Pose, side: int) -> tuple[float, float, float]:
    """(u, v, foreshortening) of one eye (side -1 left, +1 right): the far eye looks narrower."""
    fore = float(np.clip(1 - side * pose.yaw * 0.6, 0.55, 1.25))
    cu = side * ident.eye_spacing * ident.face_width * 1.25 * fore**0.5 + pose.yaw * 0.22
    return cu, ident.eye_height + pose.pitch, fore


def _draw_eye_and_brow(image, f: _FaceFrame, ident: Identity, pose: Pose, side: int) -> None:
    """Eye socket, sclera, iris, pupil, lid line and brow of one eye (side -1 left, +1 right)."""
    cu, cv, fore = _eye_centre(ident, pose, side)
    ew, eh = 0.105 * ident.eye_size * fore, 0.045 * ident.eye_size * pose.eye_open
    w = f.window(cu, cv - ident.brow_gap / 2, 0.32)
    u, v = f.uv(w)
    patch = image[w]
    patch *= 1 - 0.13 * f.cover(_ellipse(u, v, cu, cv - 0.02, ew * 1.6, 0.1), 6)[..., None]
    sclera = f.cover(_ellipse(u, v, cu, cv, ew, eh), 0.8)
    _paint(patch, sclera, np.array([232, 226, 218], np.float32) * 0.92)
    radius = 0.042 * ident.eye_size
    iris_u = cu + pose.gaze * ew * 0.45
    _paint(patch, np.minimum(f.cover(_ellipse(u, v, iris_u, cv, radius * fore, radius)), sclera), ident.iris)
    _paint(
        patch,
        np.minimum(f.cover(_ellipse(u, v, iris_u, cv, radius * 0.45 * fore, radius * 0.45)), sclera),
        np.array([14, 12, 12], np.float32),
    )
    _paint(
        patch,
        0.8 * f.cover(_ellipse(u, v, iris_u + 0.012, cv - 0.012, 0.009, 0.009)),
        np.array([250, 250, 250], np.float32),
    )
    lid = np.maximum(np.abs(_ellipse(u, v, cu, cv + 0.005, ew * 1.03, eh * 1.12)) - 0.007, v - cv)
    _paint(patch, 0.9 * f.cover(lid), ident.skin * 0.28)
    t = (u - cu) / (ew * 1.4)
    arc = cv - ident.brow_gap - ident.brow_arch * (1 - t**2) + ident.brow_tilt * 0.06 * side * t
    thickness = ident.brow_thickness * (1 - 0.25 * (side * t + 1))
    brow = np.maximum(np.abs(v - arc) - thickness / 2, (np.abs(t) - 1) * ew * 1.4)
    _paint(patch, 0.85 * f.cover(brow, 1.4), ident.hair * 0.8)


def _draw_nose_and_mouth(image, f: _FaceFrame, ident: Identity, pose: Pose, light_u: float) -> None:
    """Nose shading (on the side away from the light) and nostrils, then lips."""
    nu = pose.yaw * 0.36
    top = ident.eye_height + pose.pitch
    tip = top + ident.nose_length
    nw = ident.nose_width
    w = f.window(nu, (top + tip) / 2 + 0.04, ident.nose_length / 2 + 0.12)
    u, v = f.uv(w)
    patch = image[w]
    shade_side = -1.0 if light_u > 0 else 1.0
    bridge = np.maximum(
        np.abs(u - nu - shade_side * nw * 0.45) - 0.02, np.abs(v - (top + tip) / 2) - ident.nose_length / 2
    )
    patch *= 1 - 0.16 * f.cover(bridge, 5)[..., None]
    patch *= 1 + 0.06 * f.cover(_ellipse(u, v, nu, tip - 0.03, nw * 0.45, 0.06), 5)[..., None]
    patch *= 1 - 0.2 * f.cover(_ellipse(u, v, nu, tip + 0.045, nw * 0.7, 0.028), 3)[..., None]
    for side in (-1, 1):
        _paint(
            patch,
            f.cover(_ellipse(u, v, nu + side * nw * 0.33, tip + 0.035, 0.032, 0.016), 1.2),
            ident.skin * 0.35,
        )

    mu, mv = pose.yaw * 0.26, tip + ident.mouth_gap
    mw = ident.mouth_width * (1 - abs(pose.yaw) * 0.3)
    w = f.window(mu, mv, mw + 0.08)
    u, v = f.uv(w)
    patch = image[w]
    t = (u - mu) / mw
    vc = v - mv + ident.smile * 0.035 * t**2
    lips = (np.sqrt(t**2 + (vc / ident.lip_thickness) ** 2) - 1) * ident.lip_thickness
    _paint(patch, f.cover(lips, 1.2), ident.lips)
    opening = np.maximum(
        np.abs(vc) - 0.004 - pose.mouth_open * ident.lip_thickness * 0.6, (np.abs(t) - 0.9) * mw
    )
    _paint(patch, f.cover(opening), np.array([60, 24, 26], np.float32))


def _draw_glasses(image, f: _FaceFrame, ident: Identity, pose: Pose) -> None:
    """Two rims, tinted lenses and a bridge."""
    inner = []
    for side in (-1, 1):
        cu, cv, fore = _eye_centre(ident, pose, side)
        cv += 0.01
        gw, gh = 0.105 * ident.glasses_size * fore, 0.1
        w = f.window(cu, cv, gw + 0.03)
        u, v = f.uv(w)
        rim = _ellipse(u, v, cu, cv, gw, gh)
        image[w] *= 1 - 0.06 * f.cover(rim)[..., None]
        _paint(image[w], f.cover(np.abs(rim) - 0.012, 1.2), ident.glasses)
        inner.append(cu - side * gw)
    mid = (inner[0] + inner[1]) / 2
    w = f.window(mid, cv, abs(inner[1] - inner[0]) / 2 + 0.03)
    u, v = f.uv(w)
    bridge = np.maximum(np.abs(v - cv + 0.03) - 0.01, np.abs(u - mid) - abs(inner[1] - inner[0]) / 2)
    _paint(image[w], f.cover(bridge, 1.2), ident.glasses)


def _lit(
    image: np.ndarray, f: _FaceFrame, ident: Identity, pose: Pose, setting: Setting, head: np.ndarray
) -> np.ndarray:
    """``image`` under the setting's light: an ellipsoid head (``head`` is its coverage) and a
    gentle gradient across the rest of the picture. Returns the lit float image."""
    u, v, ax, yaw, c, s = f.u, f.v, ident.face_width, pose.yaw, f.cos, f.sin
    nx, ny = np.clip((u - yaw * 0.05) / (ax * 1.1), -1, 1), np.clip(v / 1.1, -1, 1)
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    lx, ly = setting.light
    lz = math.sqrt(max(0.0, 1.5 - lx**2 - ly**2))
    norm = math.sqrt(lx**2 + ly**2 + lz**2)
    lambert = ((c * nx - s * ny) * lx + (s * nx + c * ny) * ly + nz * lz) / norm - lz / norm
    flat = (lx * (_X - IMAGE_SIZE / 2) + ly * (_Y - IMAGE_SIZE / 2)) / IMAGE_SIZE
    shade = 1 + setting.light_strength * (head * lambert + (1 - head) * 0.5 * flat)
    return image * shade[..., None] * setting.light_colour


def render_person(
    ident: Identity, pose: Pose, setting: Setting, rng: np.random.Generator, background: np.ndarray
) -> np.ndarray:
    """Draw a lit person over ``background`` (not modified); returns a float image in about [0, 255]."""
    image = background.copy()
    f = _FaceFrame(pose)
    u, v, ax, yaw = f.u, f.v, ident.face_width, pose.yaw
    streaks = _smooth_noise(rng, (10, 48))
    hair = ident.hair * (0.8 + 0.22 * np.clip(streaks, -1.5, 1.5))[..., None]
    volume = ident.hair_volume
    head = np.zeros_like(u)  # coverage of head and neck, which the light models as an ellipsoid

    def paint_head(alpha, colour):
        _paint(image, alpha, colour)
        np.maximum(head, alpha, out=head)

    if ident.hair_style == LONG:
        back = np.minimum(
            _ellipse(u, v, yaw * 0.04, -0.05, ax * 1.2 + volume, 1.05 + volume),
            np.maximum(np.abs(u - yaw * 0.04) - ax * 1.12 - volume, np.abs(v - 0.7) - 0.8),
        )
        paint_head(f.cover(back, 1.5), hair)
    paint_head(f.cover(np.maximum(np.abs(u - yaw * 0.1) - ax * 0.45, 0.5 - v)), ident.skin * 0.72)
    clothes = f.cover(_ellipse(u, v, yaw * 0.1, 2.4, 1.9, 1.2))
    _paint(image, clothes, ident.clothes * (1 + 0.06 * _smooth_noise(rng, (6, 6)))[..., None])
    head *= 1 - clothes
    for side in (-1, 1):
        paint_head(
            f.cover(
                _ellipse(
                    u,
                    v,
                    side * ax * 0.96 + yaw * 0.05,
                    -0.02 + pose.pitch,
                    0.1 * (1 + side * yaw * 0.6),
                    0.19,
                )
            ),
            ident.skin * 0.88,
        )
    width = ax * (1 - ident.jaw * np.clip(v, 0, 1) ** 2)
    face_distance = (np.sqrt(((u - yaw * 0.05) / width) ** 2 + v**2) - 1) * ax
    skin = ident.skin * (1 + 0.03 * _smooth_noise(rng, (64, 64)))[..., None]
    paint_head(f.cover(face_distance, 1.2), skin)

    c, s = f.cos, f.sin
    light_u = c * setting.light[0] + s * setting.light[1]
    for side in (-1, 1):
        _draw_eye_and_brow(image, f, ident, pose, side)
    mouth_v = ident.eye_height + pose.pitch + ident.nose_length + ident.mouth_gap
    if ident.beard:
        region = np.minimum(
            np.maximum(face_distance, mouth_v - 0.12 - v),
            np.maximum(
                face_distance, np.maximum(ax * 0.74 - np.abs(u - yaw * 0.05), ident.eye_height + 0.12 - v)
            ),
        )
        texture = np.clip(0.6 + 0.4 * _smooth_noise(rng, (64, 64)), 0, 1)
        _paint(image, f.cover(region, 3) * ident.beard * texture, ident.hair * 0.9)
    _draw_nose_and_mouth(image, f, ident, pose, light_u)

    hairline = ident.hairline + (0.32 if ident.hair_style == RECEDING else 0.0)
    outer = _ellipse(u, v, yaw * 0.04, -0.1, ax * 1.06 + volume * 0.6, 0.98 + volume)
    cap = np.maximum(outer, v - hairline - 0.3 * ((u - yaw * 0.1) / ax) ** 2)
    if ident.hair_style != SHORT:
        bottom = {MEDIUM: 0.2, LONG: 0.7, RECEDING: -0.15}[ident.hair_style]
        cap = np.minimum(cap, np.maximum(outer, np.maximum(ax * 0.82 - np.abs(u - yaw * 0.05), v - bottom)))
    paint_head(f.cover(cap, 1.5), hair)
    if ident.glasses is not None:
        _draw_glasses(image, f, ident, pose)

    return _lit(image, f, ident, pose, setting, head)


# ============================================================================ camera
# No numpy power/exp/log and no BLAS product on images: the same pixels on every CPU
# (docs/design.md#demo-data-on-every-cpu).
_GAMMA_STEPS = 4096


def gamma_curve(x: np.ndarray, gamma: float) -> np.ndarray:
    """``x ** gamma`` for ``x`` in [0, 1], as float32: linear interpolation in a table of
    ``math.pow`` at 4097 points: far below a grey level from the power, and the same on every CPU."""
    table = np.array([math.pow(i / _GAMMA_STEPS, gamma) for i in range(_GAMMA_STEPS + 1)], np.float32)
    slope = np.diff(table)
    position = np.clip(x, 0, 1, dtype=np.float32) * np.float32(_GAMMA_STEPS)
    index = np.minimum(position.astype(np.int32), _GAMMA_STEPS - 1)
    return table[index] + (position - index) * slope[index]


def camera_optics(image: np.ndarray, cam: Camera) -> np.ndarray:
    """Exposure and white balance, gamma, vignetting and lens blur."""
    out = np.clip(image * cam.gains, 0, 255)
    out = 255 * gamma_curve(out / 255, cam.gamma)
    radius2 = ((_X - IMAGE_SIZE / 2) ** 2 + (_Y - IMAGE_SIZE / 2) ** 2) / (IMAGE_SIZE / 2) ** 2
    out *= (1 - cam.vignette * 0.5 * radius2)[..., None]
    return ndimage.gaussian_filter(out, (cam.blur, cam.blur, 0))


def add_sensor_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, where: np.ndarray | None = None
) -> np.ndarray:
    """Independent Gaussian noise per pixel and channel, scaled by ``where`` (H x W) when given."""
    noise = np.float32(sigma) * rng.standard_normal(image.shape, dtype=np.float32)
    return image + (noise if where is None else where[..., None] * noise)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """Quantise to 8 bits, JPEG-encode in memory and decode again (deterministic)."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def grey(image: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601) of an RGB image, as float32 (elementwise, not a BLAS product)."""
    rgb = image.astype(np.float32, copy=False)
    return rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image: a standard sharpness measure."""
    return float(ndimage.laplace(grey(image)).var())


def _channel_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float32), summed in float64 by numpy reductions."""
    channels = image.reshape(-1, image.shape[-1]).T.astype(np.float32, order="C")  # one row a channel
    n = channels.shape[1]
    mean = (channels.sum(1, dtype=np.float64) / n).astype(np.float32)
    centred = channels - mean[:, None]
    return mean, np.sqrt((centred * centred).sum(1, dtype=np.float64) / n).astype(np.float32)


def global_stats(image: np.ndarray) -> np.ndarray:
    """The 7 global features a trivial detector would use (and ``match_global_stats`` matches):
    3 channel means, 3 channel standard deviations and the variance of the Laplacian of the grey
    image."""
    mean, std = _channel_stats(image[..., :3])
    return np.concatenate([mean, std, [laplacian_variance(image)]])


# Variance of the Laplacian added by unit Gaussian noise per channel: 20 (the 4-neighbour kernel's
# squared weights) times the squared luma weights.
_LAPLACE_NOISE_GAIN = 20 * (0.299**2 + 0.587**2 + 0.114**2)


def _match_channels(image: np.ndarray, target_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Affine per-channel change giving ``image`` the channel means and stds ``target_stats``."""
    mean, std = _channel_stats(image)
    target_mean, target_std = target_stats
    return (image - mean) * (target_std / (std + 1e-6)) + target_mean


def match_global_stats(
    image: np.ndarray, reference: np.ndarray, rng: np.random.Generator, noise_where: np.ndarray | None = None
) -> np.ndarray:
    """Give a fake the brightness, contrast and sharpness of a real ``reference`` image.

    Channel means and stds are matched exactly; the variance of the Laplacian is raised with
    sensor-like noise (weighted by ``noise_where`` in [0, 1] when given, else everywhere) or
    lowered by mixing in a blurred copy.
    """
    reference_stats = _channel_stats(reference)
    out = _match_channels(image, reference_stats)
    target, current = laplacian_variance(reference), laplacian_variance(out)
    if current < target:
        coverage = 1.0 if noise_where is None else float(np.mean(noise_where**2))
        sigma = np.sqrt((target - current) / (_LAPLACE_NOISE_GAIN * coverage))
        out = add_sensor_noise(out, sigma, rng, where=noise_where)
    else:
        blurred = ndimage.gaussian_filter(out, (1.0, 1.0, 0))
        low, high = 0.0, 1.0
        for _ in range(8):
            mix = (low + high) / 2
            if laplacian_variance(out + mix * (blurred - out)) > target:
                low = mix
            else:
                high = mix
        out = out + high * (blurred - out)
    return np.clip(_match_channels(out, reference_stats), 0, 255)


# ============================================================================ real and fake images
# Face swap (fakes_dataset): resolution of the autoencoder across the face crop, share of the
# colour difference to the target corrected, contrast the decoder keeps, the decoder's colour bias
# (RGB), width of the mask's feathered edge, alignment error. Tuned with
# benchmarks/check_demo_difficulty.py: weaker cues leave SimpleNet at "always real" after 5 epochs.
SWAP_RESOLUTION = (40, 80)
SWAP_COLOUR_MATCH = (0.6, 0.95)
SWAP_CONTRAST = (0.75, 0.9)
SWAP_DECODER_BIAS = np.array([28, 16, 10], np.float32)
SWAP_FEATHER_PX = (1.5, 9.0)
SWAP_MISALIGN_PX = 1.5
# Generator (synthetic_dataset): random part of the learned upsampling kernels (checkerboard
# strength), colour quirks. Each upsampling step restores all of the fine detail: damped detail is
# a texture cue that a from-scratch Xception learns within the demo's 16 Adam steps, which the
# study's from-scratch networks did not; the checkerboard is strong enough for ImageNet features
# to pick up within those steps (docs/design.md#the-demo-generators-traces).
GAN_LEVELS = 3
GAN_KERNEL_JITTER = 0.02
GAN_SATURATION = (1.06, 1.16)
GAN_SHADOW_TINT = 8.0
BILINEAR_KERNEL = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16


def identity_and_setting(seed: int, dataset: str, number: int) -> tuple[Identity, Setting]:
    """Identity ``number`` of a dataset and the setting of its "video" (same for every frame)."""
    rng = _rng(seed, dataset, "identity", number)
    return random_identity(rng), random_setting(rng, dataset)


def photograph(
    ident: Identity,
    setting: Setting,
    dataset: str,
    rng: np.random.Generator,
    pose: Pose | None = None,
    cam: Camera | None = None,
):
    """A real image before JPEG: (noisy camera image, camera, pose, the same image before the
    sensor noise). ``pose`` and ``cam`` are drawn when not given (a video gives its own)."""
    pose = random_pose(rng, dataset) if pose is None else pose
    cam = random_camera(rng, dataset, setting) if cam is None else cam
    scene = render_person(ident, pose, setting, rng, render_background(setting, pose.shake))
    optics = camera_optics(scene, cam)
    return add_sensor_noise(optics, cam.noise, rng), cam, pose, optics


def _bottleneck(image: np.ndarray, size: int) -> np.ndarray:
    """Box-downsample each channel to ``size`` x ``size`` pixels, then bicubic-upsample it back."""
    channels = []
    for channel in np.moveaxis(image.astype(np.float32), -1, 0):
        small = Image.fromarray(channel, mode="F").resize((size, size), Image.BOX)
        channels.append(np.asarray(small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)))
    return np.stack(channels, -1)


def finish_fake(
    fake: np.ndarray,
    reference: np.ndarray,
    quality: int,
    rng: np.random.Generator,
    noise_where: np.ndarray | None = None,
) -> np.ndarray:
    """The saved uint8 fake: matched to the real ``reference`` (see ``match_global_stats``), through
    the same JPEG round trip as a real image, then matched again to the reference's own round trip
    (JPEG removes more of the added noise than of real detail)."""
    fake = jpeg_round_trip(match_global_stats(fake, reference, rng, noise_where), quality)
    matched = match_global_stats(
        fake.astype(np.float32), jpeg_round_trip(reference, quality), rng, noise_where
    )
    return np.rint(matched).astype(np.uint8)


def face_swap(
    target: tuple[Identity, Setting],
    source: tuple[Identity, Setting],
    dataset: str,
    rng: np.random.Generator,
    shot=None,
    resolution: tuple[float, float] = SWAP_RESOLUTION,
) -> np.ndarray:
    """A Deepfakes-style frame: the source's inner face pasted into a target frame (``shot``, a
    ``photograph`` of the target, drawn when not given), through an autoencoder of ``resolution``
    pixels across the face."""
    (target_id, target_setting), (source_id, source_setting) = target, source
    frame, cam, pose, _ = photograph(target_id, target_setting, dataset, rng) if shot is None else shot
    aligned = replace(
        pose,
        cx=pose.cx + rng.normal(0, SWAP_MISALIGN_PX),
        cy=pose.cy + rng.normal(0, SWAP_MISALIGN_PX),
        scale=pose.scale * rng.normal(1, 0.025),
        roll=pose.roll + rng.normal(0, 0.03),
    )
    # The autoencoder learned the source from its own videos: its colours and white balance.
    source_cam = replace(cam, gains=cam.gains / target_setting.white_balance * source_setting.white_balance)
    face = camera_optics(render_person(source_id, aligned, target_setting, rng, frame), source_cam)
    face_size = 2.4 * pose.scale
    face = _bottleneck(face, max(8, round(IMAGE_SIZE * rng.uniform(*resolution) / face_size)))
    f = _FaceFrame(pose)
    grow = rng.uniform(0.92, 1.08)
    mask = f.cover(
        _ellipse(
            f.u, f.v, pose.yaw * 0.2, 0.15 + pose.pitch, target_id.face_width * 0.78 * grow, 0.68 * grow
        ),
        rng.uniform(*SWAP_FEATHER_PX),
    )
    inside = mask > 0.5
    face_mean = face[inside].mean(0)
    face = face_mean + rng.uniform(*SWAP_CONTRAST) * (face - face_mean)  # the decoder's washed-out look
    face += rng.uniform(*SWAP_COLOUR_MATCH) * (frame[inside].mean(0) - face_mean) + SWAP_DECODER_BIAS
    fake = frame + mask[..., None] * (face - frame)
    # The pasted face has no sensor noise: restore the frame's sharpness with noise around it.
    return finish_fake(fake, frame, cam.jpeg_quality, rng, noise_where=1 - mask)


def generator_quirks(seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    """The fixed "generator" of a seed: its upsampling kernels (level, 4, 4, channel), its
    saturation change and its shadow tint."""
    rng = _rng(seed, "synthetic_dataset", "generator")
    kernels = BILINEAR_KERNEL[None, :, :, None] + rng.normal(0, GAN_KERNEL_JITTER, (GAN_LEVELS, 4, 4, 3))
    kernels *= 4 / kernels.sum((1, 2), keepdims=True)  # each phase passes about the mean through
    return kernels.astype(np.float32), rng.uniform(*GAN_SATURATION), rng.normal(0, GAN_SHADOW_TINT, 3)


# Transposed convolution with stride 2 and a 4x4 kernel, split by output phase: for output row
# 2m + p, the (kernel row, input row offset) pairs that contribute.
_PHASE_TAPS = {0: ((1, 0), (3, -1)), 1: ((0, 1), (2, 0))}


def transposed_conv_up(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Double the size by zero insertion and a 4x4 kernel per channel (kernel shape 4, 4, C).

    With the bilinear kernel this is bilinear upsampling; any other kernel gives each of the four
    output phases its own gain and so a periodic, checkerboard pattern.
    """
    h, w, channels = image.shape
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.empty((2 * h, 2 * w, channels), np.float32)
    for p, row_taps in _PHASE_TAPS.items():
        for q, col_taps in _PHASE_TAPS.items():
            out[p::2, q::2] = sum(
                kernel[kr, kc] * padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
                for kr, dr in row_taps
                for kc, dc in col_taps
            )
    return out


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 box average."""
    h, w, c = image.shape
    return image.reshape(h // 2, 2, w // 2, 2, c).mean((1, 3))


def rebuild_through_generator(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """``image`` rebuilt from its coarsest level (1/8 size) through the upsampling ``kernels``
    (level, 4, 4, channel), re-adding each level's detail in full: with bilinear kernels this
    returns ``image`` itself, with any others ``image`` plus a periodic checkerboard."""
    pyramid = [image]
    for _ in range(GAN_LEVELS):
        pyramid.append(_halve(pyramid[-1]))
    fake = pyramid[-1]
    for level in range(GAN_LEVELS - 1, -1, -1):
        detail = pyramid[level] - transposed_conv_up(pyramid[level + 1], BILINEAR_KERNEL[..., None])
        fake = transposed_conv_up(fake, kernels[level]) + detail
    return fake


def generated_image(
    ident: Identity, setting: Setting, dataset: str, quirks, rng: np.random.Generator
) -> np.ndarray:
    """A whole generated face: rebuilt from 32x32 through the generator's transposed convolutions."""
    shadow_real, cam, _, noiseless = photograph(ident, setting, dataset, rng)
    kernels, saturation, tint = quirks
    fake = rebuild_through_generator(noiseless, kernels)
    luma = fake.mean(-1, keepdims=True)
    fake = luma + saturation * (fake - luma) + np.clip(1 - luma / 255, 0, 1) ** 2 * tint
    return finish_fake(fake, shadow_real, cam.jpeg_quality, rng)


def make_image(task: ImageTask) -> np.ndarray:
    """The final 256x256x3 uint8 image of a task (after the JPEG round trip)."""
    rng = _rng(task.seed, task.dataset, task.split, task.label, task.index, "image")
    ident, setting = identity_and_setting(task.seed, task.dataset, task.identity)
    if task.dataset == "synthetic_dataset":
        setting = random_setting(rng, task.dataset)  # portraits: every photo its own place and light
    if task.label == "real":
        image, cam, _, _ = photograph(ident, setting, task.dataset, rng)
        return jpeg_round_trip(image, cam.jpeg_quality)
    if task.dataset == "fakes_dataset":
        source = identity_and_setting(task.seed, task.dataset, task.source)
        return face_swap((ident, setting), source, task.dataset, rng)
    return generated_image(ident, setting, task.dataset, generator_quirks(task.seed), rng)


def write_image(task: ImageTask) -> None:
    """Make one image and save it as PNG (PIL writes no time stamps: same pixels, same bytes).
    Compression level 3: faster than PIL's default, for slightly larger files
    (benchmarks/README.md#demo-generation)."""
    Image.fromarray(make_image(task)).save(task.path, format="PNG", compress_level=3)


# ============================================================================ writing the folders
MARKER = ".made_by_make_demo_datasets.json"
"""Written into every dataset folder this script makes: ``--force`` replaces only such folders."""
GENERATED_NAME = re.compile(r"id\d{5}(_from_id\d{5})?_\d{3}\.png")


def write_marker(folder: Path, dataset: str, seed: int, scale: float, full_size: bool) -> None:
    """The marker of a dataset folder made here, with what it takes to list its files again."""
    made = {"made_by": "make_demo_datasets.py", "dataset": dataset, "seed": seed, "scale": scale}
    (folder / MARKER).write_text(json.dumps({**made, "full_size": full_size}, indent=2) + "\n")


def generated_files(folder: Path, dataset: str) -> set[str] | None:
    """The files (relative paths) this script made in ``folder``, from its marker; ``None``
    without a readable marker."""
    try:
        made = json.loads((folder / MARKER).read_text())
        counts = plan_counts(float(made["scale"]), bool(made["full_size"]), [dataset])[dataset]
        tasks = plan_tasks(folder, dataset, counts, int(made["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {os.path.relpath(task.path, folder) for task in tasks}


def foreign_file(folder: Path, dataset: str) -> str | None:
    """The first file or folder in ``folder`` that this script did not make there, or ``None``.
    Its marker lists the files; a folder without one (made before markers existed) may hold
    only generated names in the layout."""
    made = generated_files(folder, dataset)
    for root, dirs, files in os.walk(folder):
        relative = os.path.relpath(root, folder)
        depth = 0 if relative == "." else relative.count(os.sep) + 1
        allowed = SPLITS if depth == 0 else CLASSES if depth == 1 else ()
        for name in sorted(dirs):
            if name not in allowed or os.path.islink(os.path.join(root, name)):
                return os.path.join(root, name)
        for name in sorted(files):
            path = os.path.normpath(os.path.join(relative, name))
            if depth == 0 and name == MARKER and made is not None:
                continue
            ours = path in made if made is not None else depth == 2 and GENERATED_NAME.fullmatch(name)
            if not ours:
                return os.path.join(root, name)
    return None


def refuse_foreign(folder: Path, dataset: str) -> None:
    """Raise ``TargetExistsError`` when ``--force`` would remove something this script did not
    make in ``folder`` (real data, notes), naming the first such file."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise TargetExistsError(
            f"{folder}: not a folder this script made; --force replaces only those: move it away "
            "or choose another --out"
        )
    first = foreign_file(folder, dataset) if folder.is_dir() else None
    if first:
        raise TargetExistsError(
            f"{folder}: --force replaces only what make_demo_datasets.py made, and {first} is not "
            "that; move it away (or the whole folder), or choose another --out"
        )


def is_non_empty(path) -> bool:
    """``path`` exists and is a file or a folder with something in it."""
    path = Path(path)
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _replace(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``, removing what was there only afterwards."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, trash / target.name)
    os.rename(new, target)
    shutil.rmtree(trash)


def _run(
    tasks: list,
    workers: int,
    progress: bool,
    work=write_image,
    desc: str = "demo images",
    unit: str = "img",
    chunksize: int = 4,
) -> list:
    """``work`` (default ``write_image``) on every task, in this process (``workers`` 1) or in a
    pool; returns the results in any order. The order does not matter: each image has its own
    random generator."""
    pool = multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext()
    results = []
    with pool, tqdm(total=len(tasks), disable=not progress, unit=unit, desc=desc) as bar:
        done = pool.imap_unordered(work, tasks, chunksize=chunksize) if workers > 1 else map(work, tasks)
        for result in done:
            results.append(result)
            bar.update()
    return results


def generate(
    out,
    seed: int = 0,
    scale: float = 1.0,
    full_size: bool = False,
    force: bool = False,
    workers: int | None = None,
    datasets=None,
    progress: bool = True,
) -> dict:
    """Write the demo datasets under ``out``; returns ``{dataset: {split: {"real": n, "fake": n}}}``.

    Raises ``DemoRequestError`` for bad arguments and ``TargetExistsError`` when a dataset folder
    to write exists and is not empty and ``force`` is false, both before writing anything; with
    ``force`` only dataset folders this script made are replaced (``refuse_foreign``). A dataset
    named twice is made once. ``workers`` defaults to the number of CPUs.
    """
    datasets = tuple(dict.fromkeys(datasets or DATASETS))
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise DemoRequestError(
            f"--datasets: unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}"
        )
    if not scale > 0:
        raise DemoRequestError(f"--scale must be greater than 0, got {scale}")
    if seed < 0:
        raise DemoRequestError(f"--seed must be 0 or more, got {seed}")
    base = plan_counts(1.0, full_size, datasets)
    if scale * sum(n for splits in base.values() for c in splits.values() for n in c.values()) > MAX_IMAGES:
        raise DemoRequestError(
            f"--scale {scale:g} asks for more than {MAX_IMAGES:,} images; choose a smaller --scale"
        )
    out = Path(out)
    for dataset in datasets:
        if force:
            refuse_foreign(out / dataset, dataset)
        elif is_non_empty(out / dataset):
            raise TargetExistsError(
                f"{out / dataset} already exists and is not empty; pass --force to replace it"
            )
    counts = plan_counts(scale, full_size, datasets)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DemoRequestError(
            f"--out {out}: cannot create the folder, a file is in the way; choose another folder"
        ) from None
    staging = {}
    try:
        tasks = []
        for dataset in datasets:
            staging[dataset] = Path(tempfile.mkdtemp(prefix=f".{dataset}.partial-", dir=out))
            for split in SPLITS:
                for label in CLASSES:
                    (staging[dataset] / split / label).mkdir(parents=True)
            tasks += plan_tasks(staging[dataset], dataset, counts[dataset], seed)
            write_marker(staging[dataset], dataset, seed, scale, full_size)
        _run(tasks, max(1, min(workers or os.cpu_count() or 1, len(tasks))), progress)
        for dataset in datasets:
            _replace(staging.pop(dataset), out / dataset)
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
    return counts


# ============================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    default = ", ".join(f"{d} {'/'.join(str(n) for n in DEFAULT_COUNTS[d].values())}" for d in DATASETS)
    full = ", ".join(f"{d} {'/'.join(str(n) for n in FULL_COUNTS[d].values())}" for d in DATASETS)
    parser = cli.ArgumentParser(
        description="Draw procedural demo face datasets (fakes_dataset: face swaps, 2 real : 1 fake; "
        "synthetic_dataset: generator images, about 1:1) in the study's folder layout "
        "OUT/<dataset>/{train,val,test}/{real,fake}/*.png, 256x256 RGB.",
        epilog=f"Images per split (train/val/test): default {default}; --full_size {full}.",
    )
    # Required: SUPPRESS keeps "(default: None)" out of --help.
    parser.add_argument(
        "--out",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="folder to write into (created if missing); give it to the study scripts "
        "as their data root (--data_root or $FACES_DATA_ROOT)",
    )
    parser.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=0,
        help="random seed; the same seed, scale and size give byte-identical files",
    )
    parser.add_argument(
        "--scale",
        type=cli.positive_float,
        default=1.0,
        help=f"multiply the number of images (at least 1 per class and split; at most "
        f"{MAX_IMAGES:,} images in all)",
    )
    parser.add_argument(
        "--full_size",
        action="store_true",
        help="use the course datasets' sizes (about 26,700 images) instead of the small demo",
    )
    # The old spelling keeps working, hidden from --help: every other flag is snake_case.
    parser.add_argument("--full-size", dest="full_size", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace dataset folders that this script made before (it marks them); a folder "
        "holding anything else (real data, notes) is refused, naming it",
    )
    parser.add_argument(
        "--workers",
        type=cli.positive_int,
        default=None,
        help=f"worker processes; None: one per CPU (here {os.cpu_count()})",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        default=list(DATASETS),
        metavar="NAME",
        help=f"which datasets to make, any of: {' '.join(DATASETS)}",
    )
    cli.add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    """The command line; bad input raises ``cli.UserError`` (run it through ``cli.run_cli``)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        counts = generate(
            args.out,
            seed=args.seed,
            scale=args.scale,
            full_size=args.full_size,
            force=args.force,
            workers=args.workers,
            datasets=args.datasets,
        )
    except (DemoRequestError, TargetExistsError) as error:
        raise cli.UserError(str(error)) from error
    seconds = time.perf_counter() - start
    for dataset, splits in counts.items():
        summary = ", ".join(f"{split} {c['real']} real / {c['fake']} fake" for split, c in splits.items())
        print(f"{Path(args.out) / dataset}: {summary}")
    total = sum(n for splits in counts.values() for c in splits.values() for n in c.values())
    print(f"wrote {total} images in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
