"""Scoring one video with a trained model, and drawing the scores on it (``predict.py clip.mp4``;
docs/design.md#videos).

The sampled frames are read in one pass; in each, every face the detector finds is cropped as
for a photo (a square 1.3 times the box, 256x256) and scored. A frame's P(fake) is that of its
highest-scoring face; the video's is the mean (or median) over the frames with a face. A video
with no face in any sampled frame has no score (``p_fake`` None), not a made-up 0.5.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from PIL import Image

from lib import scores
from lib.face_crops import crop_face
from lib.face_detectors import MTCNN_BATCH
from lib.images import pil_to_uint8_tensor
from lib.video import VideoReport, sampled_frames, video_writer

FAKE_COLOUR, REAL_COLOUR = (230, 40, 40), (40, 200, 60)  # RGB of the boxes drawn


def score_frames(chunk: list[tuple[int, np.ndarray]], detector, model, batch_size: int) -> list[dict]:
    """One record a frame of ``chunk`` ((index, RGB frame) pairs): ``frame``, its ``faces``
    (``box``, ``crop`` square, ``face_score`` of the detector, ``p_fake``), and the ``box`` and
    ``p_fake`` of its highest-scoring face (None without a face)."""
    found = detector.detect_batch([frame for _, frame in chunk])
    crops, records = [], []
    for (index, frame), faces in zip(chunk, found):
        picture = Image.fromarray(frame)
        record = {"frame": index, "box": None, "p_fake": None, "faces": []}
        for face in faces:
            crop, square = crop_face(picture, face.box)
            crops.append(pil_to_uint8_tensor(crop))
            record["faces"].append({"box": list(face.box), "crop": list(square), "face_score": face.score})
        records.append(record)
    if crops:
        p_fake = scores.soft_scores(scores.predict_logits(model, torch.stack(crops), batch_size).numpy())[
            :, 1
        ]
        faces_in_order = [face for record in records for face in record["faces"]]
        for face, p in zip(faces_in_order, p_fake):
            face["p_fake"] = float(p)
    for record in records:
        if record["faces"]:
            top = max(record["faces"], key=lambda face: face["p_fake"])
            record["box"], record["p_fake"] = top["box"], top["p_fake"]
    return records


def score_video(path: str, detector, model, n_frames: int, batch_size: int, aggregate: str = "mean") -> dict:
    """The JSON-ready result of one video: its P(fake) (``aggregate`` of the frames with a face;
    None when no sampled frame has one), label, what was sampled and every frame's record
    (``score_frames``). Raises ``VideoError`` for a video that does not decode."""
    report, frames, chunk = VideoReport(), [], []
    for index, frame in sampled_frames(path, n_frames, report):
        chunk.append((index, frame))
        if len(chunk) == MTCNN_BATCH:
            frames += score_frames(chunk, detector, model, batch_size)
            chunk = []
    if chunk:
        frames += score_frames(chunk, detector, model, batch_size)
    with_face = [f["p_fake"] for f in frames if f["p_fake"] is not None]
    p_fake = None
    if with_face:
        p_fake = float(np.mean(with_face) if aggregate == "mean" else np.median(with_face))
    return {
        "path": path,
        "video": True,
        "p_fake": p_fake,
        "p_real": None if p_fake is None else 1.0 - p_fake,
        "label": None if p_fake is None else ("fake" if p_fake > 0.5 else "real"),
        "aggregate": f"{aggregate} over the frames with a face of the frame P(fake) (its top face)",
        "frames_header": report.frames_header,
        "frames_decoded": report.frames_decoded,
        "fps": report.fps,
        "frames_sampled": len(frames),
        "frames_with_face": len(with_face),
        "frames": frames,
    }


def draw_frame(frame: np.ndarray, record: dict | None, caption: str) -> np.ndarray:
    """A copy of ``frame`` with each face of ``record`` boxed (red when P(fake) > 0.5, else
    green) and labelled with its P(fake), and ``caption`` at the top left."""
    import cv2

    out = np.ascontiguousarray(frame).copy()
    thickness = max(1, round(min(out.shape[:2]) / 200))
    scale = max(0.35, min(out.shape[:2]) / 700)
    for face in (record or {}).get("faces", []):
        x, y, w, h = face["box"]
        colour = FAKE_COLOUR if face["p_fake"] > 0.5 else REAL_COLOUR
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, thickness)
        label = f"{face['p_fake']:.2f}"
        cv2.putText(
            out, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA
        )
    cv2.putText(
        out,
        caption,
        (6, 6 + round(22 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
    return out


def annotate_video(path: str, out_path: str, result: dict) -> int:
    """Write ``out_path``: every frame of ``path`` with the boxes and scores of the latest scored
    frame at or before it (each scored frame shows its own), and the video's P(fake) as caption.
    Returns the number of frames written."""
    scored = {f["frame"]: f for f in result["frames"]}
    video_score = "no face found" if result["p_fake"] is None else f"video P(fake) {result['p_fake']:.2f}"
    report, written, held = VideoReport(), 0, None
    frames = sampled_frames(path, 0, report)
    first_index, first = next(frames)
    size = (first.shape[1], first.shape[0])
    with video_writer(out_path, report.fps, size) as write:
        for index, frame in itertools.chain([(first_index, first)], frames):
            held = scored.get(index, held)
            where = "" if held is None else f", faces of frame {held['frame']}"
            write(draw_frame(frame, held, f"{video_score}{where}"))
            written += 1
    return written
