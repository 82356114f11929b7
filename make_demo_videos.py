"""Make a small FaceForensics++-style set of demo videos, with known face boxes, so that
``prepare_videos.py``, ``predict.py`` on videos and their tests run without FaceForensics++.

Usage::

    python make_demo_videos.py --out data/demo_videos                 # 10 pairs, 32 frames a video
    python make_demo_videos.py --out /tmp/v --pairs 3 --frames 8 --methods Deepfakes

What it writes (the layout of FaceForensics++, docs/design.md#videos)::

    OUT/original_sequences/youtube/c23/videos/000.mp4           one person, one place, moving
    OUT/manipulated_sequences/Deepfakes/c23/videos/000_003.mp4  video 000 with the face of 003
    OUT/manipulated_sequences/FaceSwap/c23/videos/000_003.mp4   the same pair, another method
    OUT/splits/{train,val,test}.json                            the pairs, as FF++'s split files
    OUT/boxes.json                                              the face box of every frame

The people, places and cameras are those of ``make_demo_datasets.py``: the pose moves smoothly
from frame to frame (position, turn, tilt, mouth, blinks) in a 256x192 frame, about 90 px of face.
A fake ``a_b`` is video ``a``, frame for frame, with the inner face of ``b`` pasted in:
``Deepfakes`` through the autoencoder-like bottleneck of the image demo, ``FaceSwap`` at a higher
resolution (a sharper paste). The pairs are split about 70/15/15 with ``--seed``. ``boxes.json`` maps
each video's path (relative to OUT) to one ``[x, y, w, h]`` per frame: the bounding box of the
drawn face (centre to chin is one face unit; the face ellipse, without hair or ears), in frame
pixels. Videos are MPEG-4 Part 2 (OpenCV's ``mp4v``), 25 frames/s. The same seed gives the same
frames; the files are written into a hidden folder beside OUT and moved into place when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import make_demo_datasets as demo
from lib import cli
from lib.fileio import atomic_write_json
from lib.video import video_writer

METHOD_RESOLUTION = {"Deepfakes": (70.0, 110.0), "FaceSwap": (130.0, 170.0)}
METHODS = tuple(METHOD_RESOLUTION)
COMPRESSION = "c23"
FPS = 25.0
FRAME_ROWS = (32, 224)  # the rows of the generator's 256x256 picture kept: a 256x192 frame
FACE_SCALE = 0.7  # the face's size relative to the image demo's face crops
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # the rest is train
STYLE = "fakes_dataset"  # the image demo's look of video frames shot in rooms


@dataclass(frozen=True)
class VideoTask:
    """One original video and its fakes: everything a worker needs."""

    root: str
    seed: int
    target: int
    source: int
    frames: int
    methods: tuple[str, ...]


def video_name(number: int) -> str:
    return f"{number:03d}"


def original_path(number: int) -> str:
    return f"original_sequences/youtube/{COMPRESSION}/videos/{video_name(number)}.mp4"


def fake_path(method: str, target: int, source: int) -> str:
    return (
        f"manipulated_sequences/{method}/{COMPRESSION}/videos/{video_name(target)}_{video_name(source)}.mp4"
    )


def person(seed: int, number: int) -> tuple[demo.Identity, demo.Setting]:
    """The identity and the place of video ``number``."""
    rng = demo._rng(seed, "videos", "identity", number)
    ident, setting = demo.random_identity(rng), demo.random_setting(rng, STYLE)
    # Drawn at this size, the image demo's faces are hard for face detectors, most of all once
    # swapped: bolder eyes and brows, no receding fringe over the brows, no beard to smear.
    hair_style = demo.SHORT if ident.hair_style == demo.RECEDING else ident.hair_style
    ident = replace(
        ident,
        eye_size=ident.eye_size * 1.4,
        brow_thickness=ident.brow_thickness * 1.5,
        hair_style=hair_style,
        beard=0.0,
    )
    return ident, setting


def video_poses(seed: int, number: int, n_frames: int) -> list[demo.Pose]:
    """One pose a frame: a drawn pose, made smaller, then moving smoothly (sines of a few
    seconds' period) in position, turn, tilt, nod and mouth, with a blink now and then."""
    rng = demo._rng(seed, "videos", "motion", number)
    base = demo.random_pose(rng, STYLE)
    scale = base.scale * FACE_SCALE
    cx, cy = 128 + rng.uniform(-20, 20), 128 - 0.12 * scale + rng.uniform(-6, 6)
    periods = rng.uniform(25, 70, 6)
    phases = rng.uniform(0, 2 * np.pi, 6)
    amplitudes = (rng.uniform(6, 16), rng.uniform(2, 6), 0.08, 0.15, 0.04, 1.0)
    blinks = set(rng.choice(max(n_frames, 1), size=max(1, n_frames // 30), replace=False).tolist())
    poses = []
    for t in range(n_frames):
        wave = [a * math.sin(2 * math.pi * t / p + f) for a, p, f in zip(amplitudes, periods, phases)]
        poses.append(
            replace(
                base,
                cx=cx + wave[0],
                cy=cy + wave[1],
                scale=scale,
                roll=0.5 * base.roll + wave[2],
                yaw=0.5 * base.yaw + wave[3],
                pitch=wave[4],
                mouth_open=max(0.0, wave[5]),
                eye_open=0.2 if t in blinks else 1.0,
            )
        )
    return poses


def face_box(ident: demo.Identity, pose: demo.Pose) -> list[int]:
    """``[x, y, w, h]`` in frame pixels of the drawn face ellipse (half-width ``face_width``,
    half-height 1 face unit, turned by the roll), rounded outwards."""
    a, b = ident.face_width * pose.scale, pose.scale
    half_w = math.hypot(a * math.cos(pose.roll), b * math.sin(pose.roll))
    half_h = math.hypot(a * math.sin(pose.roll), b * math.cos(pose.roll))
    cx = pose.cx + pose.yaw * 0.05 * pose.scale * math.cos(pose.roll)
    cy = pose.cy + pose.yaw * 0.05 * pose.scale * math.sin(pose.roll) - FRAME_ROWS[0]
    x0, y0 = math.floor(cx - half_w), math.floor(cy - half_h)
    return [x0, y0, math.ceil(cx + half_w) - x0, math.ceil(cy + half_h) - y0]


def make_video(task: VideoTask) -> dict[str, list[list[int]]]:
    """Write the original video of ``task.target`` and its fakes with the face of ``task.source``;
    returns the face boxes of each file written (path relative to the root)."""
    target, source = person(task.seed, task.target), person(task.seed, task.source)
    camera = demo.random_camera(demo._rng(task.seed, "videos", "camera", task.target), STYLE, target[1])
    poses = video_poses(task.seed, task.target, task.frames)
    paths = [original_path(task.target)] + [fake_path(m, task.target, task.source) for m in task.methods]
    root, size = Path(task.root), (256, FRAME_ROWS[1] - FRAME_ROWS[0])
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
    top, bottom = FRAME_ROWS
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(video_writer(str(root / p), FPS, size)) for p in paths]
        for t, pose in enumerate(poses):
            rng = demo._rng(task.seed, "videos", "frame", task.target, t)
            shot = demo.photograph(*target, STYLE, rng, pose=pose, cam=camera)
            writers[0](demo.jpeg_round_trip(shot[0], camera.jpeg_quality)[top:bottom])
            for method, write in zip(task.methods, writers[1:]):
                swap_rng = demo._rng(task.seed, "videos", method, task.target, task.source, t)
                fake = demo.face_swap(target, source, STYLE, swap_rng, shot, METHOD_RESOLUTION[method])
                write(fake[top:bottom])
    box_list = [face_box(target[0], pose) for pose in poses]
    return {path: box_list for path in paths}


def plan_pairs(n_pairs: int, seed: int) -> dict[str, list[list[str]]]:
    """The pairs of each split, as FF++'s split files hold them: ``{split: [[a, b], ...]}``.
    Videos 0 .. 2 n - 1 are paired at random; val and test get 15 % of the pairs each (rounded,
    at least one), train the rest."""
    rng = demo._rng(seed, "videos", "pairs")
    order = rng.permutation(2 * n_pairs)
    pairs = [
        sorted((video_name(int(order[2 * k])), video_name(int(order[2 * k + 1])))) for k in range(n_pairs)
    ]
    n_val = max(1, min((n_pairs - 1) // 2, round(SPLIT_FRACTIONS["val"] * n_pairs)))
    n_train = n_pairs - 2 * n_val
    return {
        "train": pairs[:n_train],
        "val": pairs[n_train : n_train + n_val],
        "test": pairs[n_train + n_val :],
    }


def generate(
    out,
    pairs: int = 10,
    frames: int = 32,
    methods=METHODS,
    seed: int = 0,
    force=False,
    workers=None,
    progress=True,
) -> dict:
    """Write the demo videos under ``out`` (see the module's docstring); returns the split pairs.

    A non-empty ``out`` is refused (``demo.TargetExistsError``) unless ``force``, and then replaced
    only once the new set is complete."""
    if pairs < 3:
        raise demo.DemoRequestError(f"--pairs must be at least 3 (one pair for each split), got {pairs}")
    out = Path(out)
    if demo.is_non_empty(out) and not force:
        raise demo.TargetExistsError(f"{out} already exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    splits = plan_pairs(pairs, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tasks = [
            VideoTask(str(staging), seed, int(a), int(b), frames, tuple(methods))
            for split_pairs in splits.values()
            for pair in split_pairs
            for a, b in (pair, pair[::-1])
        ]
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
        boxes: dict = {}
        for result in demo._run(tasks, n_workers, progress, make_video, "demo videos", "video", chunksize=1):
            boxes.update(result)
        for split, split_pairs in splits.items():
            atomic_write_json(str(staging / "splits" / f"{split}.json"), split_pairs)
        atomic_write_json(str(staging / "boxes.json"), dict(sorted(boxes.items())))
        demo._replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return splits


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        description="Draw demo videos in the FaceForensics++ layout (originals, fakes of each method, "
        "the official-style split files) with the face box of every frame in OUT/boxes.json."
    )
    parser.add_argument(
        "--out",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="folder to write (the FF++ root)",
    )
    parser.add_argument(
        "--pairs",
        type=cli.positive_int,
        default=10,
        help="pairs of people: 2 originals and 2 fakes a method each (at least 3)",
    )
    parser.add_argument("--frames", type=cli.positive_int, default=32, help="frames a video")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        metavar="METHOD",
        help=f"manipulation methods, any of: {' '.join(METHODS)}",
    )
    parser.add_argument(
        "--seed", type=cli.seed_int, default=0, help="random seed; the same seed gives the same frames"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    parser.add_argument(
        "--workers",
        type=cli.positive_int,
        default=None,
        help=f"worker processes; default one per CPU (here {os.cpu_count()})",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    cli.add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    methods = tuple(dict.fromkeys(args.methods))
    try:
        splits = generate(
            args.out,
            args.pairs,
            args.frames,
            methods,
            args.seed,
            args.force,
            args.workers,
            not args.no_progress,
        )
    except (demo.DemoRequestError, demo.TargetExistsError) as error:
        raise cli.UserError(str(error)) from error
    n_videos = 2 * args.pairs * (1 + len(methods))
    summary = ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items())
    print(
        f"{args.out}: {n_videos} videos of {args.frames} frames ({2 * args.pairs} originals, "
        f"{len(methods)} methods); pairs: {summary}"
    )
    print(f"wrote them in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
