"""From frame scores to video scores (docs/design.md#video-level-scores).

- ``video_keys``: the video of each test image, from the dataset's ``manifest.json`` (written by
  ``prepare_videos.py``) or from file names of the form ``<video>_f<frame>.<ext>``;
- ``group_videos``: each video's label and the mean (or median) of its frames' P(fake), as
  DeepfakeBench scores a video (grouping by the video's key, which holds the method, so the same
  pair under two methods stays two videos);
- ``video_figures``: AUC, EER, AP and accuracy of the video scores, with the video counts;
- ``video_resamples``: bootstrap resamples that draw whole videos (reals from the real videos,
  fakes from the fake ones), for intervals of the frame-level figures that do not pretend the
  frames of one video are independent;
- ``write_scores_csv``: the per-image scores, for any other analysis.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np

from lib.cli import UserError
from lib.fileio import atomic_write_text
from lib.metrics import binary_metrics, fmt
from lib.names import MANIFEST

FRAME_FILE = re.compile(r"^(?P<video>.+)_f(?P<frame>\d+)\.[A-Za-z0-9]+$")  # <video>_f<frame>.<ext>
AGGREGATES = ("mean", "median")
VIDEO_BOOTSTRAP_METHOD = (
    "video bootstrap: each resample draws the real videos from the real ones and the fake videos "
    "from the fake ones, with replacement, and takes every frame of each video drawn; percentile "
    "intervals"
)
CSV_COLUMNS = ("path", "label", "video", "p_fake", "score_a", "score_b")


def manifest_videos(dataset_folder: str) -> dict[str, str]:
    """``{normalised image path: video key}`` from the dataset's manifest; ``{}`` without one."""
    path = os.path.join(dataset_folder, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as handle:
            images = json.load(handle).get("images", [])
        return {os.path.normpath(os.path.join(dataset_folder, r["file"])): str(r["video"]) for r in images}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a manifest of prepare_videos.py ({exc}); fix or remove it") from None


def video_keys(dataset_folder: str, paths: list[str]) -> tuple[list[str] | None, str | None]:
    """(the video key of each image of ``paths``, where the keys came from: ``"manifest"``,
    ``"file names"`` or both); ``(None, None)`` when an image has neither."""
    by_file = manifest_videos(dataset_folder)
    keys, sources = [], set()
    for path in paths:
        key = by_file.get(os.path.normpath(path))
        if key is not None:
            sources.add("manifest")
        else:
            match = FRAME_FILE.match(os.path.basename(path))
            if match is None:
                return None, None
            key = match["video"]
            sources.add("file names")
        keys.append(key)
    return keys, " and ".join(sorted(sources, reverse=True)) if keys else None


def group_videos(keys, labels, fake_scores, aggregate: str = "mean") -> dict:
    """Per video (sorted by key): ``videos``, ``labels``, ``scores`` (the ``aggregate`` of its
    frames' P(fake)), ``frames`` (its image count) and ``members`` (its image indices); and
    ``index``, each image's video number.
    A video whose images carry both labels is a ``UserError``."""
    videos, index = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    labels = np.asarray(labels, dtype=np.int64)
    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    frames = np.bincount(index, minlength=len(videos))
    fakes = np.bincount(index, weights=labels, minlength=len(videos))
    mixed = np.flatnonzero((fakes > 0) & (fakes < frames))
    if len(mixed):
        raise UserError(
            f"video {videos[mixed[0]]} has both real and fake images; its key must name one video"
        )
    members = np.split(np.argsort(index, kind="stable"), np.cumsum(frames)[:-1])
    if aggregate == "mean":
        scores = np.bincount(index, weights=fake_scores, minlength=len(videos)) / frames
    else:
        scores = np.array([np.median(fake_scores[m]) for m in members])
    return {
        "videos": videos,
        "labels": (fakes > 0).astype(np.int64),
        "scores": scores,
        "frames": frames,
        "members": members,
        "index": index,
    }


def video_figures(grouped: dict, grouping: str, aggregate: str = "mean") -> dict:
    """The JSON-ready video-level figures: ``binary_metrics`` of the video scores (AUC, EER, AP,
    accuracy at 0.5, ...), the counts of videos per class and of frames per video, and how the
    videos were found and scored."""
    frames = grouped["frames"]
    return {
        "grouping": grouping,
        "score": f"{aggregate} of the video's frame P(fake) (softmax column 1)",
        "n_videos": len(grouped["videos"]),
        **binary_metrics(grouped["labels"], grouped["scores"]),
        "frames_per_video": {
            "min": int(frames.min()),
            "median": float(np.median(frames)),
            "max": int(frames.max()),
        },
    }


def video_resamples(grouped: dict, n_resamples: int, seed: int) -> list[np.ndarray]:
    """``n_resamples`` bootstrap resamples of the images (index arrays, of varying length): each
    draws as many real videos as there are from the real ones and as many fake videos from the
    fake ones, with replacement (``numpy.random.default_rng(seed)``), and takes all their images."""
    rng = np.random.default_rng(seed)
    members = grouped["members"]
    by_class = [np.flatnonzero(grouped["labels"] == label) for label in (0, 1)]
    draws = [
        videos[rng.integers(0, len(videos), (n_resamples, len(videos)))] for videos in by_class if len(videos)
    ]
    chosen = np.concatenate(draws, axis=1) if draws else np.zeros((n_resamples, 0), np.int64)
    return [
        np.concatenate([members[v] for v in row]) if len(row) else np.zeros(0, np.int64) for row in chosen
    ]


def comparison_table(frame: dict, video: dict) -> str:
    """Frame-level beside video-level figures, as text: AUC, EER, AP, accuracy, balanced
    accuracy and the counts per class."""
    rows = [
        ("AUC of P(fake)", "auc", 4, ""),
        ("EER", "eer", 4, ""),
        ("average precision (fake)", "ap", 4, ""),
        ("accuracy at 0.5", "accuracy", 2, " %"),
        ("balanced accuracy", "balanced_acc", 2, " %"),
    ]
    width = max(len(name) for name, *_ in rows + [("real / fake counted", 0, 0, "")])
    lines = [f"{'':<{width}}  {'frames':>12}  {'videos':>12}"]
    for name, key, digits, unit in rows:
        lines.append(
            f"{name:<{width}}  {fmt(frame.get(key), digits, unit):>12}  "
            f"{fmt(video.get(key), digits, unit):>12}"
        )
    counts = [f"{m['n_real']} / {m['n_fake']}" for m in (frame, video)]
    lines.append(f"{'real / fake counted':<{width}}  {counts[0]:>12}  {counts[1]:>12}")
    return "\n".join(lines)


def write_scores_csv(path: str, paths, labels, keys, logits, fake_scores) -> None:
    """``path`` (atomically): one row an image with ``CSV_COLUMNS``: its path, label (0 real,
    1 fake), video key (empty when unknown), P(fake), score A and score B (raw outputs 0 and 1)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    keys = keys if keys is not None else [""] * len(paths)
    for row in zip(paths, labels, keys, fake_scores, np.asarray(logits)[:, 0], np.asarray(logits)[:, 1]):
        path_, label, key, p_fake, score_a, score_b = row
        writer.writerow(
            [path_, int(label), key, repr(float(p_fake)), repr(float(score_a)), repr(float(score_b))]
        )
    atomic_write_text(path, buffer.getvalue())
