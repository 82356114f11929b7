"""Preparing videos: the face crops of sampled frames, written into the project's dataset layout,
one record a video for resuming, and the manifest of the dataset (docs/design.md#videos).

A video's crops are ``<split>/<real|fake>/<key>_f<frame>.png`` under the dataset folder. When all
of them are written, its record ``.prepare/<key>.json`` follows (atomically): a video with a
record whose parameters match is done; one without (never started, or in flight when a run was
stopped) or with other parameters is done again, after its old crops are removed. The manifest is
rebuilt from the records at the end of every run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from PIL import Image
from tqdm import tqdm

from lib.cli import UserError
from lib.face_crops import MARGIN, crop_face
from lib.face_detectors import MTCNN_BATCH, make_detector, pick_face
from lib.fileio import atomic_write_json, file_lock, read_json_object
from lib.images import CLASS_DIRS, IMAGE_SIZE
from lib.names import MANIFEST, SPLITS
from lib.video import VideoError, VideoReport, sampled_frames
from lib.video_sets import VideoItem

RECORDS_DIR = ".prepare"
IMAGE_NAME = re.compile(r"^(?P<video>.+)_f(?P<frame>\d+)\.png$")  # <key>_f<frame>.png
PNG_LEVEL = 1  # zlib level of the crops: the fastest that compresses (benchmarks/README.md#videos)


@dataclass(frozen=True)
class PrepSettings:
    """How every video is prepared: frames a video (0: all), detector, its device and smallest
    face, which face of a frame is kept, the crop's margin and size."""

    frames: int
    detector: str
    device: str = "cpu"
    min_face: int = 40
    pick: str = "largest"
    margin: float = MARGIN
    size: int = IMAGE_SIZE


def image_file(item: VideoItem, frame: int) -> str:
    """The crop of ``frame`` of ``item``, relative to the dataset folder."""
    return f"{item.split}/{CLASS_DIRS[item.label]}/{item.key}_f{frame:05d}.png"


def record_path(dataset_dir: str, key: str) -> str:
    return os.path.join(dataset_dir, RECORDS_DIR, f"{key}.json")


def video_params(item: VideoItem, settings: PrepSettings, detector_params: dict) -> dict:
    """What a video's crops depend on: the source file (size and modification time), its split
    and label, and the settings; a record with other parameters is redone."""
    stat = os.stat(item.path)
    params = {
        "source": item.source,
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "split": item.split,
        "label": item.label,
        "frames": settings.frames,
        "detector": detector_params,
        "pick": settings.pick,
        "margin": settings.margin,
        "size": settings.size,
    }
    return json.loads(json.dumps(params))  # as it reads back from the record


def prepare_video(item: VideoItem, dataset_dir: str, settings: PrepSettings, detector) -> dict:
    """Crop the face of each sampled frame of ``item`` and write its record; returns the record.
    A frame without a face is listed in ``no_face``. Raises ``VideoError`` for a video that does
    not decode."""
    report, images, no_face, pending = VideoReport(), [], [], []
    params = video_params(item, settings, detector.params())

    def flush():
        for (index, frame), faces in zip(pending, detector.detect_batch([f for _, f in pending])):
            face = pick_face(faces, settings.pick)
            if face is None:
                no_face.append(index)
                continue
            crop, _ = crop_face(Image.fromarray(frame), face.box, settings.size, settings.margin)
            name = image_file(item, index)
            crop.save(os.path.join(dataset_dir, name), format="PNG", compress_level=PNG_LEVEL)
            images.append(
                {
                    "file": name,
                    "video": item.key,
                    "frame": index,
                    "box": list(face.box),
                    "score": face.score,
                    "split": item.split,
                    "label": item.label,
                }
            )
        pending.clear()

    for index, frame in sampled_frames(item.path, settings.frames, report):
        pending.append((index, frame))
        if len(pending) == MTCNN_BATCH:
            flush()
    flush()
    record = {
        "video": item.key,
        "source": item.source,
        "method": item.method,
        "group": item.group,
        "split": item.split,
        "label": item.label,
        "params": params,
        "frames_header": report.frames_header,
        "frames_decoded": report.frames_decoded,
        "fps": report.fps,
        "frame_size": list(report.size),
        "sampled": report.delivered,
        "no_face": no_face,
        "images": images,
    }
    atomic_write_json(record_path(dataset_dir, item.key), record)
    return record


def files_on_disk(dataset_dir: str) -> dict[str, list[str]]:
    """``{video key: [crop files]}`` of every ``<key>_f<frame>.png`` in the dataset's class
    folders (relative to the dataset folder): one listing of each folder."""
    found: dict[str, list[str]] = {}
    for split in SPLITS:
        for class_dir in CLASS_DIRS:
            folder = os.path.join(dataset_dir, split, class_dir)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                match = IMAGE_NAME.match(name)
                if match:
                    found.setdefault(match["video"], []).append(f"{split}/{class_dir}/{name}")
    return found


def read_records(dataset_dir: str) -> dict[str, dict]:
    """The records of the videos prepared so far, by key (an unreadable record counts as none)."""
    folder = os.path.join(dataset_dir, RECORDS_DIR)
    records = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and not name.startswith("."):
            record = read_json_object(os.path.join(folder, name))
            if record.get("video") == name[: -len(".json")]:
                records[record["video"]] = record
    return records


def plan_work(
    items: list[VideoItem],
    planned: set[str],
    dataset_dir: str,
    settings: PrepSettings,
    detector_params: dict,
    prune: bool,
) -> tuple[list[VideoItem], int]:
    """(videos to prepare, videos already done) of ``items`` (this run's share of the ``planned``
    keys). The crops of each video to prepare are removed first, and its stale record. Videos on
    disk whose keys are not ``planned`` are a ``UserError`` unless ``prune``, which removes them."""
    records, on_disk = read_records(dataset_dir), files_on_disk(dataset_dir)
    strangers = sorted((set(records) | set(on_disk)) - planned)
    if strangers and not prune:
        raise UserError(
            f"{dataset_dir} holds {len(strangers)} prepared video(s) that this run would not prepare "
            f"(for example {strangers[0]}): another --input, --methods or --compression? Choose "
            "another --dataset name, or pass --prune to delete them"
        )
    todo = []
    for item in items:
        record = records.get(item.key)
        if record is None or record.get("params") != video_params(item, settings, detector_params):
            todo.append(item)
    removed = [*strangers, *(item.key for item in todo)]
    if any(key in records or key in on_disk for key in removed):
        mark_incomplete(dataset_dir)  # before the first crop goes
    for key in removed:
        _remove_video(dataset_dir, key, on_disk.get(key, []))
    return todo, len(items) - len(todo)


def _remove_video(dataset_dir: str, key: str, files: list[str]) -> None:
    """Delete the crops and the record of video ``key``."""
    for name in [*files, os.path.relpath(record_path(dataset_dir, key), dataset_dir)]:
        path = os.path.join(dataset_dir, name)
        if os.path.exists(path):
            os.unlink(path)


_WORKER: dict = {}


def _init_worker(settings: PrepSettings, detector=None) -> None:
    """A worker process (or this one): one thread, its own detector unless ``detector`` is given."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _WORKER["detector"] = detector or make_detector(settings.detector, settings.device, settings.min_face)


def _prepare_one(job: tuple[VideoItem, str, PrepSettings]) -> dict:
    """``prepare_video`` in a worker; a video that fails gives ``{"video", "source", "error"}``
    and leaves no crop behind."""
    import cv2

    item, dataset_dir, settings = job
    try:
        return prepare_video(item, dataset_dir, settings, _WORKER["detector"])
    except (VideoError, cv2.error) as exc:
        _remove_video(dataset_dir, item.key, files_on_disk_of(dataset_dir, item))
        return {"video": item.key, "source": item.source, "error": str(exc).splitlines()[0]}


def files_on_disk_of(dataset_dir: str, item: VideoItem) -> list[str]:
    """The crops of ``item`` in its own class folder."""
    folder = os.path.join(item.split, CLASS_DIRS[item.label])
    names = os.listdir(os.path.join(dataset_dir, folder))
    pattern = re.compile(re.escape(item.key) + r"_f\d+\.png")
    return [os.path.join(folder, n) for n in names if pattern.fullmatch(n)]


def run_videos(
    todo: list[VideoItem],
    dataset_dir: str,
    settings: PrepSettings,
    workers: int,
    progress: bool,
    on_result: Callable[[dict], None],
    detector=None,
) -> None:
    """Prepare every video of ``todo`` in ``workers`` processes (spawned: the same on every
    platform and safe with CUDA) or, with one worker, in this process (with ``detector`` when
    given); ``on_result`` gets each record or failure as it comes, with a progress bar over
    videos."""
    for split in SPLITS:
        for class_dir in CLASS_DIRS:
            os.makedirs(os.path.join(dataset_dir, split, class_dir), exist_ok=True)
    jobs = [(item, dataset_dir, settings) for item in todo]
    bar = tqdm(total=len(jobs), unit="video", desc="preparing", disable=not progress, dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(settings, detector)
            results = map(_prepare_one, jobs)
            for result in results:
                on_result(result)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
            for result in pool.imap_unordered(_prepare_one, jobs, chunksize=1):
                on_result(result)
                bar.update()


def build_manifest(
    dataset: str, items: list[VideoItem], records: dict[str, dict], meta: dict, params: dict[str, dict]
) -> dict:
    """The manifest of the dataset: the source and the settings (``meta``), one entry a video
    and one record an image (``file``, ``video``, ``frame``, ``box``, ``score``, ``split``,
    ``label``), the frames without a face, and whether every planned video is prepared: its record
    has this run's ``params`` (``video_params``; another shard's crops of other settings are not)."""
    videos, images, no_face = {}, [], 0
    for item in sorted(items, key=lambda i: i.key):
        record = records.get(item.key)
        if record is None or record.get("params") != params[item.key]:
            continue
        videos[item.key] = {
            k: record[k]
            for k in ("source", "method", "group", "split", "label", "frames_header", "frames_decoded", "fps")
        }
        videos[item.key].update(
            sampled=len(record["sampled"]), no_face=record["no_face"], images=len(record["images"])
        )
        images += record["images"]
        no_face += len(record["no_face"])
    return {
        "dataset": dataset,
        "written_by": "prepare_videos.py",
        **meta,
        "complete": len(videos) == len(items),
        "videos_planned": len(items),
        "videos_prepared": len(videos),
        "n_images": len(images),
        "frames_without_face": no_face,
        "videos_without_face": sorted(k for k, v in videos.items() if v["images"] == 0),
        "videos": videos,
        "images": sorted(images, key=lambda r: r["file"]),
    }


def write_manifest(
    dataset_dir: str,
    dataset: str,
    items: list[VideoItem],
    meta: dict,
    settings: PrepSettings,
    detector_params: dict,
) -> dict:
    """Rebuild ``manifest.json`` from the records on disk that have these settings (under a lock,
    so that shards finishing together leave the fuller one); returns it."""
    params = {item.key: video_params(item, settings, detector_params) for item in items}
    path = os.path.join(dataset_dir, MANIFEST)
    with file_lock(path):
        manifest = build_manifest(dataset, items, read_records(dataset_dir), meta, params)
        atomic_write_json(path, manifest)
    return manifest


def mark_incomplete(dataset_dir: str) -> None:
    """Say in an existing manifest that the dataset is not complete, before a run removes any
    crop: killed while it re-prepares, it never leaves a manifest that calls deleted files complete."""
    path = os.path.join(dataset_dir, MANIFEST)
    with file_lock(path):
        manifest = read_json_object(path, "manifest")
        if manifest.get("complete"):
            atomic_write_json(path, {**manifest, "complete": False})


def settings_dict(settings: PrepSettings, detector_params: dict) -> dict:
    """The settings as the manifest records them."""
    out = asdict(settings)
    out["detector"] = detector_params
    return out
