"""Which videos a source folder holds, their labels, keys and splits (docs/design.md#videos).

Two layouts:
- FaceForensics++: ``original_sequences/youtube/<comp>/videos/000.mp4`` (real) and
  ``manipulated_sequences/<Method>/<comp>/videos/000_003.mp4`` (fake: video 000 with the face of
  003). With the official split files (JSON lists of ``[a, b]`` pairs), the fakes ``a_b`` and
  ``b_a`` and the originals ``a`` and ``b`` go to that pair's split. Without them, the pairs are
  split 70/15/15 with a seed, each pair kept whole.
- A plain folder with ``real/`` and ``fake/`` (videos in them or in their sub-folders), split
  70/15/15 by video with a seed; a ``--group`` rule (a regular expression on the file name) keeps
  the videos it groups in one split.

A video's key names it in the prepared dataset (file names, manifest, video-level scores). It
holds the method (``Deepfakes_000_003``, ``original_000``; ``fake_<sub-folders>_<name>``), so the
same pair under two methods stays two videos, and only letters, digits, ``.``, ``-`` and ``_``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from lib.cli import UserError
from lib.images import FAKE_LABEL, REAL_LABEL
from lib.names import SPLITS
from lib.video import VIDEO_EXTENSIONS

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
DEFAULT_FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")  # DeepfakeBench's FF++
COMPRESSIONS = ("c23", "c40", "raw")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
ORIGINAL = "original"


@dataclass(frozen=True)
class VideoItem:
    """One source video: its path, its path relative to the input folder (``source``), key,
    label (0 real, 1 fake), method, group (videos of one group share a split) and split."""

    path: str
    source: str
    key: str
    label: int
    method: str
    group: str
    split: str | None = None


def safe_key(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``-`` and ``_``
    replaced by ``_``: a key that is also a safe file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "video"


def _videos_in(folder: str, recursive: bool) -> list[str]:
    """The video files in ``folder`` (relative paths, sorted; hidden files and folders skipped)."""
    found = []
    for top, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(top, name), folder))
    return sorted(found)


def is_ffpp_root(folder: str) -> bool:
    """Whether ``folder`` has the FaceForensics++ layout (``original_sequences/`` or
    ``manipulated_sequences/``)."""
    return any(
        os.path.isdir(os.path.join(folder, d)) for d in ("original_sequences", "manipulated_sequences")
    )


def ffpp_methods_found(root: str, compression: str) -> list[str]:
    """The methods under ``manipulated_sequences/`` that have ``<compression>/videos/``."""
    folder = os.path.join(root, "manipulated_sequences")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [m for m in names if os.path.isdir(os.path.join(folder, m, compression, "videos"))]


def ffpp_videos(root: str, compression: str, methods: list[str]) -> list[VideoItem]:
    """The originals and the fakes of ``methods`` at ``compression``; the group of a video is its
    pair (the two ids of its name, joined through the fakes), its split is not set yet."""
    items = []
    originals = os.path.join("original_sequences", "youtube", compression, "videos")
    for name in _videos_in(os.path.join(root, originals), recursive=False):
        stem = os.path.splitext(name)[0]
        source = os.path.join(originals, name)
        items.append(
            VideoItem(
                os.path.join(root, source), source, safe_key(f"{ORIGINAL}_{stem}"), REAL_LABEL, ORIGINAL, stem
            )
        )
    for method in methods:
        folder = os.path.join("manipulated_sequences", method, compression, "videos")
        for name in _videos_in(os.path.join(root, folder), recursive=False):
            stem = os.path.splitext(name)[0]
            if stem.count("_") != 1:
                raise UserError(
                    f"{os.path.join(root, folder, name)}: not a FaceForensics++ fake name "
                    f"(target_source.mp4); prepare --methods without {method}, or use the real/ and "
                    "fake/ folder layout"
                )
            source = os.path.join(folder, name)
            items.append(
                VideoItem(
                    os.path.join(root, source), source, safe_key(f"{method}_{stem}"), FAKE_LABEL, method, stem
                )
            )
    return _join_pairs(items)


def _pair_ids(item: VideoItem) -> list[str]:
    return item.group.split("_")


def _join_pairs(items: list[VideoItem]) -> list[VideoItem]:
    """Each video's group: the smallest id among the ids its fakes link it with (union-find)."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for item in items:
        ids = _pair_ids(item)
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            parent[max(a, b)] = min(a, b)
    return [replace(item, group=find(_pair_ids(item)[0])) for item in items]


def read_ffpp_splits(folder: str) -> dict[str, str]:
    """``{video id: split}`` from FF++'s ``train.json``, ``val.json`` and ``test.json`` in ``folder``."""
    id_split: dict[str, str] = {}
    for split in SPLITS:
        path = os.path.join(folder, f"{split}.json")
        try:
            with open(path) as handle:
                pairs = json.load(handle)
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise ValueError("expected a JSON list of [a, b] pairs")
        except FileNotFoundError:
            raise UserError(
                f"--splits {folder}: no {split}.json there (FaceForensics++'s dataset/splits folder)"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a FaceForensics++ split file ({exc})") from None
        for pair in pairs:
            for video_id in (str(v) for v in pair):
                if id_split.setdefault(video_id, split) != split:
                    raise UserError(f"{path}: video {video_id} is also in {id_split[video_id]}.json")
    return id_split


def apply_ffpp_splits(
    items: list[VideoItem], id_split: dict[str, str]
) -> tuple[list[VideoItem], list[VideoItem]]:
    """(videos with the split of their pair, videos whose ids are in no split file). A fake whose
    two ids are in different splits is an error (the pair rule cannot hold)."""
    placed, unplaced = [], []
    for item in items:
        ids = os.path.splitext(os.path.basename(item.source))[0].split("_")
        splits = {id_split.get(i) for i in ids}
        if None in splits:
            unplaced.append(item)
        elif len(splits) > 1:
            raise UserError(
                f"{item.path}: its two videos are in different split files ({', '.join(sorted(splits))})"
            )
        else:
            placed.append(replace(item, split=splits.pop()))
    return placed, unplaced


def folder_videos(root: str, group_rule: str | None) -> tuple[list[VideoItem], int]:
    """The videos of ``root/real/`` and ``root/fake/`` (and their sub-folders), and how many did
    not match the group rule (a regular expression searched in the file's name without extension;
    its first group, or else the whole match, names the group). Without a rule, or where it does
    not match, a video is its own group."""
    try:
        pattern = re.compile(group_rule) if group_rule else None
    except re.error as exc:
        raise UserError(f"--group {group_rule!r}: not a regular expression ({exc})") from None
    items, unmatched = [], 0
    for label, class_dir in ((REAL_LABEL, "real"), (FAKE_LABEL, "fake")):
        for relative in _videos_in(os.path.join(root, class_dir), recursive=True):
            source = os.path.join(class_dir, relative)
            key = safe_key(os.path.splitext(source)[0].replace(os.sep, "_"))
            group = f"video:{key}"
            match = pattern.search(os.path.splitext(os.path.basename(relative))[0]) if pattern else None
            if match:
                group = f"group:{match.group(1) if match.groups() else match.group(0)}"
            elif pattern:
                unmatched += 1
            items.append(VideoItem(os.path.join(root, source), source, key, label, class_dir, group))
    return items, unmatched


def split_by_group(items: list[VideoItem], seed: int, fractions=SPLIT_FRACTIONS) -> list[VideoItem]:
    """Each video's split, whole groups at a time: the groups, in an order drawn with ``seed``,
    each go to the split whose real and fake counts it brings closest to ``fractions`` of each
    class (least squares), so every split gets about its share of both classes; no split is left
    empty while there are groups enough to fill it."""
    groups: dict[str, np.ndarray] = {}
    for item in items:
        groups.setdefault(item.group, np.zeros(2))[item.label] += 1
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    totals = np.sum(list(groups.values()), axis=0) if groups else np.zeros(2)
    targets = np.outer(np.asarray(fractions, dtype=np.float64), totals)
    assigned, split_of, steps = np.zeros_like(targets), {}, np.eye(len(SPLITS))[:, :, None]
    for position, g in enumerate(order):
        counts = groups[names[g]]
        empty = [s for s in range(len(SPLITS)) if not assigned[s].any()]
        candidates = empty if len(order) - position <= len(empty) else range(len(SPLITS))
        best = min(candidates, key=lambda s: np.sum((assigned + steps[s] * counts - targets) ** 2))
        assigned[best] += counts
        split_of[names[g]] = SPLITS[best]
    return [replace(item, split=split_of[item.group]) for item in items]


def check_unique_keys(items: list[VideoItem]) -> None:
    """A ``UserError`` naming two videos that got the same key."""
    seen: dict[str, str] = {}
    for item in items:
        if seen.setdefault(item.key, item.path) != item.path:
            raise UserError(
                f"{seen[item.key]} and {item.path} get the same video key {item.key!r}; rename one"
            )


def split_counts(items: list[VideoItem]) -> dict[str, dict[str, int]]:
    """``{split: {"real": n, "fake": n}}`` videos."""
    counts = {split: {"real": 0, "fake": 0} for split in SPLITS}
    for item in items:
        counts[item.split]["fake" if item.label == FAKE_LABEL else "real"] += 1
    return counts
