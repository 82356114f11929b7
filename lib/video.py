"""Video files: which files are videos, which frames to sample, reading them in one sequential pass,
and writing a video (docs/design.md#videos).

Frames are read with OpenCV's FFmpeg backend: ``grab()`` for every frame, ``retrieve()`` only for
the wanted ones, since seeking to each wanted frame costs far more than decoding the frames between
(benchmarks/README.md#videos). A decoder that ends before the frame count of the header is handled:
the frames past the end are replaced by frames spread over the rest of what did decode.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lib.cli import UserError
from lib.face_crops import import_cv2

# FFmpeg's own log lines would break the one-line errors; read before OpenCV first opens a video.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
WRITER_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}
DEFAULT_FRAMES = 32
VIDEO_PURPOSE = "reading and writing videos"


class VideoError(UserError):
    """A video that cannot be opened or decoded; the message names the file."""


def is_video_file(path: str) -> bool:
    """True for a non-hidden regular file with a video extension."""
    name = os.path.basename(path)
    return (
        not name.startswith(".")
        and os.path.isfile(path)
        and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS
    )


def sample_indices(n_frames: int, n_wanted: int) -> list[int]:
    """``n_wanted`` frame indices evenly spaced over ``0 .. n_frames - 1`` (numpy ``linspace``,
    rounded, first and last included), as DeepfakeBench samples; every frame when ``n_wanted`` is
    0 or at least ``n_frames``."""
    if n_frames <= 0:
        return []
    if n_wanted <= 0 or n_wanted >= n_frames:
        return list(range(n_frames))
    return sorted({int(i) for i in np.rint(np.linspace(0, n_frames - 1, n_wanted))})


@dataclass
class VideoReport:
    """What reading one video found: the header's frame count and rate, the frame size, how many
    frames decoded when the stream ended early (else None) and the indices delivered."""

    frames_header: int = 0
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)  # width, height
    frames_decoded: int | None = None
    delivered: list[int] = field(default_factory=list)


def open_capture(path: str):
    """An opened ``cv2.VideoCapture`` of ``path``; a ``VideoError`` naming it when it cannot be opened."""
    cv2 = import_cv2(VIDEO_PURPOSE)
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise VideoError(
            f"{path}: cannot open the video (not a video, damaged, or a codec OpenCV's FFmpeg lacks)"
        )
    return capture


def _pass(
    path: str, wanted: list[int], report: VideoReport | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """One sequential decode of ``path``: (index, RGB frame) for each index in ``wanted``
    (increasing), each appended to ``report.delivered``; it ends early where the stream ends. With
    ``wanted`` empty it decodes to the end and yields nothing. Returns (as a generator's value) the
    number of frames decoded."""
    cv2 = import_cv2(VIDEO_PURPOSE)
    capture = open_capture(path)
    targets, index = iter(wanted), -1
    target = next(targets, None)
    try:
        while target is not None or not wanted:
            if not capture.grab():
                break
            index += 1
            if index == target:
                ok, frame = capture.retrieve()
                if not ok:
                    break
                if report is not None:
                    report.delivered.append(index)
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                target = next(targets, None)
    finally:
        capture.release()
    return index + 1


def read_header(path: str) -> VideoReport:
    """The header of ``path``: frame count, frame rate and frame size."""
    cv2 = import_cv2(VIDEO_PURPOSE)
    capture = open_capture(path)
    try:
        return VideoReport(
            frames_header=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
            fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
            size=(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))),
        )
    finally:
        capture.release()


def sampled_frames(
    path: str, n_wanted: int, report: VideoReport | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, H x W x 3 uint8 RGB frame) of ``n_wanted`` evenly spaced frames (``sample_indices``;
    0: every frame), in order, decoded sequentially. ``report`` (filled in as reading goes) gets
    the header and what was delivered.

    When the decoder ends before the header's count, the wanted frames past the end are replaced
    by as many others, spread evenly over the frames that did decode (a second pass, so these
    come after, from the start again); a header without a count is counted by decoding first. A
    video of which no frame decodes is a ``VideoError``.
    """
    report = report if report is not None else VideoReport()
    header = read_header(path)
    report.frames_header, report.fps, report.size = header.frames_header, header.fps, header.size
    total = report.frames_header
    if total == 0:  # no count in the header: count by decoding
        total = report.frames_decoded = yield from _pass(path, [])
    wanted = sample_indices(total, n_wanted)
    decoded = yield from _pass(path, wanted, report)
    missing = len(wanted) - len(report.delivered)
    if missing and report.delivered:  # the stream ended before the header said
        report.frames_decoded = decoded
        got = set(report.delivered)
        rest = [i for i in sample_indices(decoded, len(wanted)) if i not in got]
        yield from _pass(path, [rest[i] for i in sample_indices(len(rest), missing)], report)
    if not report.delivered:
        raise VideoError(
            f"{path}: no frame could be decoded (damaged file, or a codec OpenCV's FFmpeg lacks)"
        )


@contextlib.contextmanager
def video_writer(path: str, fps: float, size: tuple[int, int]):
    """Write a video of ``size`` (width, height) frames: yields ``write(rgb_frame)``. The file is
    written under a temporary name beside ``path`` and renamed into place only when the block ends
    without an error. The codec follows the extension (``WRITER_CODECS``)."""
    cv2 = import_cv2(VIDEO_PURPOSE)
    extension = os.path.splitext(path)[1].lower()
    if extension not in WRITER_CODECS:
        raise UserError(f"{path}: cannot write this video type; use one of {', '.join(WRITER_CODECS)}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a fresh name that OpenCV creates itself, so the file gets the usual permissions
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}{extension}")
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*WRITER_CODECS[extension]), fps or 25.0, size)
    try:
        if not writer.isOpened():
            raise UserError(f"{path}: OpenCV cannot write {extension} videos here")

        def write(frame: np.ndarray) -> None:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))

        yield write
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
