"""Classify image files and videos as real or fake with a trained checkpoint.

    python predict.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt face.png photos/
    python predict.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt --crop_faces group.jpg
    python predict.py -m SimpleNet -cpp checkpoints/ffpp_c23_SimpleNet_Adam.pt clip.mp4 --annotate out.mp4

Prints, for each image, its path, P(fake) (softmax of the model's two outputs) and the predicted
label (fake when P(fake) > 0.5). Folders are searched for image files (sorted; --recursive for
sub-folders). Preprocessing is the evaluation one: RGB, 256x256 (other sizes are resized, with a
notice), the study's normalisation. With --crop_faces, the faces of each photo are found and each
is cropped (face_crops.py) and scored on its own; a photo without a face is reported, not an error.
A video is scored on --frames evenly spaced frames: every face of each is cropped and scored, a
frame's P(fake) is its highest-scoring face's, the video's the mean (--aggregate) over the frames
with a face (lib/video_predict.py); --annotate draws the boxes and scores on a copy of the video.
An unreadable file is reported on stderr and the others still run; the exit code is 1 if any path
failed, 2 for a usage error (bad checkpoint, wrong -m).
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from faces_dataset import IMAGE_SIZE, DataError, is_image_file, pil_to_uint8_tensor, read_rgb_image
from lib import face_crops, face_detectors, gradcam, names, scores, transforms, video_predict
from lib.cli import ArgumentParser, UserError, add_debug_flag, non_negative_int, positive_int, run_cli
from lib.fileio import atomic_write
from lib.flags import add_checkpoint_flags, add_detector_flags
from lib.transforms import normalize_batch
from lib.video import DEFAULT_FRAMES, WRITER_CODECS, VideoError, is_video_file
from utils import get_device, load_checkpoint_model


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Predict real or fake for image files and videos. P(fake) is the softmax "
        "probability of the model's column 1; the label is fake when P(fake) > 0.5."
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, video files and/or folders of them"
    )
    add_checkpoint_flags(parser, f"{names.COURSE_CHECKPOINT} (the course's XceptionBased)")
    parser.add_argument(
        "--recursive",
        "-r",
        action="store_true",
        help="also look for images and videos in the sub-folders of a folder PATH",
    )
    parser.add_argument("--batch_size", "-b", default=32, type=positive_int, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument(
        "--crop_faces",
        action="store_true",
        help="find the faces in each image (--detector), crop each "
        f"with a margin ({face_crops.MARGIN}x the face box), resize it to "
        f"{IMAGE_SIZE}x{IMAGE_SIZE} and score every face; for whole photos (videos always are)",
    )
    add_detector_flags(parser, "of --crop_faces and videos")
    video = parser.add_argument_group("videos")
    video.add_argument(
        "--frames",
        type=non_negative_int,
        default=DEFAULT_FRAMES,
        help="evenly spaced frames scored a video (0: every frame)",
    )
    video.add_argument(
        "--aggregate",
        choices=("mean", "median"),
        default="mean",
        help="a video's P(fake) from its frames' (each frame: its highest-scoring face)",
    )
    video.add_argument(
        "--annotate",
        metavar="OUT.mp4",
        default=None,
        help="with one video: write a copy with each face's box and P(fake) drawn (.mp4 or .avi; "
        "frames between two scored ones show the earlier one's boxes)",
    )
    parser.add_argument(
        "--grad_cam",
        metavar="DIR",
        default=None,
        help="write a Grad-CAM overlay PNG per image into DIR "
        "(<name>_grad_cam.png, for the predicted class; with --crop_faces "
        "one per face, drawn on the crop: <name>_face<k>_grad_cam.png)",
    )
    parser.add_argument(
        "--target_layer",
        default=None,
        help=f"Grad-CAM layer (dotted module path) for --grad_cam; default: the model's "
        f"({gradcam.default_layers_text()})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of text lines"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    return parser


def collect_paths(paths: list[str], recursive: bool) -> tuple[list[str], list[dict]]:
    """Files to classify (in the order given; folders expanded, sorted) and path errors."""
    files, errors = [], []
    for path in paths:
        if os.path.isdir(path):
            found = []
            if recursive:
                for folder, subdirs, names in os.walk(path):
                    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                    found += [os.path.join(folder, n) for n in names]
            else:
                found = [os.path.join(path, n) for n in os.listdir(path)]
            found = sorted(f for f in found if is_image_file(f) or is_video_file(f))
            if not found:
                hint = "" if recursive else " (pass --recursive to search sub-folders)"
                errors.append(
                    {"path": path, "error": f"{path}: no image or video files in this folder{hint}"}
                )
            files += found
        elif os.path.exists(path):
            if stat.S_ISREG(os.stat(path).st_mode):
                files.append(path)
            else:  # reading a FIFO or a device would block or never end
                errors.append(
                    {
                        "path": path,
                        "error": f"{path}: not a regular file (a FIFO, device "
                        "or socket); give image files or folders",
                    }
                )
        else:
            errors.append({"path": path, "error": f"{path}: no such file or folder"})
    return files, errors


def load_for_model(path: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """The evaluation preprocessing up to uint8: RGB, resized to 256x256 when needed.
    Returns (3 x 256 x 256 uint8, original size if it was resized)."""
    image = read_rgb_image(path)
    original = None
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        original = image.size
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return pil_to_uint8_tensor(image), original


def load_inputs(path: str, detector) -> list[tuple[dict, torch.Tensor | None]]:
    """The model inputs of one file as (record fields, 3 x 256 x 256 uint8): the whole image, or
    with a detector one per face, left to right; a photo without a face gives one entry whose
    image is None."""
    if detector is None:
        image, original = load_for_model(path)
        if original is not None:
            print(
                f"predict.py: note: {path}: image is {original[0]}x{original[1]}, resized to "
                f"{IMAGE_SIZE}x{IMAGE_SIZE}",
                file=sys.stderr,
            )
        fields = {"resized_from": list(original) if original else None}
        return [({"face": None, "box": None, "crop": None, "face_score": None, **fields}, image)]
    photo = read_rgb_image(path)
    inputs = []
    for k, (box, face_score) in enumerate(detector.detect(photo), start=1):
        crop, square = face_crops.crop_face(photo, box)
        side = square[2]
        inputs.append(
            (
                {
                    "face": k,
                    "box": list(box),
                    "crop": list(square),
                    "face_score": face_score,
                    "resized_from": [side, side] if side != IMAGE_SIZE else None,
                },
                pil_to_uint8_tensor(crop),
            )
        )
    return inputs or [({"face": None, "box": None}, None)]


def overlay_name(path: str, used: set[str], face: int | None = None) -> str:
    """The overlay file name of ``path`` (of its face ``face``), unique among ``used``."""
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    if face is not None:
        stem = f"{stem}_face{face}"
    name, k = f"{stem}_grad_cam.png", 1
    while name in used:
        name, k = f"{stem}_{k}_grad_cam.png", k + 1
    used.add(name)
    return name


def score_batch(model, layer, entries: list, args, used_names: set[str]) -> list[dict]:
    """Result records of a batch of (path, fields, uint8 image) entries that have an image:
    P(fake), label, logits and, with --grad_cam, the overlay written for each."""
    batch = torch.stack([image for _, _, image in entries])
    logits = scores.predict_logits(model, batch, args.batch_size)
    probs = scores.soft_scores(logits.numpy())
    predicted = (probs[:, 1] > 0.5).astype(np.int64)  # ties go to real, like argmax
    overlays = [None] * len(entries)
    if layer is not None:
        device = scores.model_device(model)
        cams = gradcam.grad_cam_maps(model, layer, normalize_batch(batch.to(device)), predicted)
        for i, (image, cam) in enumerate(zip(transforms.uint8_to_rgb_float(batch), cams)):
            path, fields, _ = entries[i]
            out = os.path.join(args.grad_cam, overlay_name(path, used_names, fields["face"]))
            picture = Image.fromarray(gradcam.grad_cam_overlay(image, cam))
            atomic_write(out, lambda tmp, p=picture: p.save(tmp, format="PNG"))
            overlays[i] = out
    return [
        {
            "path": path,
            **{k: fields[k] for k in ("face", "box", "crop", "face_score")},
            "p_fake": float(probs[i, 1]),
            "p_real": float(probs[i, 0]),
            "label": names.CLASS_NAMES[predicted[i]].lower(),
            "logits": [float(v) for v in logits[i]],
            "resized_from": fields["resized_from"],
            "grad_cam": overlays[i],
        }
        for i, (path, fields, _) in enumerate(entries)
    ]


FIELD_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def field(text: str) -> str:
    r"""``text`` as one field of a text-output line: backslash, tab, newline and carriage return
    written as ``\\``, ``\t``, ``\n``, ``\r``, so that a file name cannot forge fields or lines
    (docs/edge-cases.md#predict-output)."""
    return text.translate(FIELD_ESCAPES)


def text_line(record: dict) -> str:
    """One line of the text output: path, P(fake), label, then the face and the overlay if any."""
    line = f"{field(record['path'])}\tP(fake)={record['p_fake']:.4f}\t{record['label']}"
    if record["box"] is not None:
        line += f"\tface {record['face']} box={','.join(str(v) for v in record['box'])}"
    return line + (f"\t{field(record['grad_cam'])}" if record["grad_cam"] else "")


def batches_of_inputs(files: list[str], batch_size: int, detector, fail, bar):
    """Lists of (path, fields, image) entries in file order, each with about ``batch_size`` images
    (all the faces of one photo stay in one list); unreadable files go to ``fail``."""
    pending, count = [], 0
    for path in files:
        try:
            inputs = load_inputs(path, detector)
        except DataError as exc:  # the dataset's hint about --skip_corrupt does not apply here
            fail({"path": path, "error": str(exc).replace(", or pass --skip_corrupt", "")})
            inputs = []
        pending += [(path, fields, image) for fields, image in inputs]
        count += sum(image is not None for _, image in inputs)
        bar.update(1)
        if count >= batch_size:
            yield pending
            pending, count = [], 0
    if pending:
        yield pending


class Outcome:
    """What a run found: the result records, the paths without a face, the errors (each also
    said on stderr as it happens)."""

    def __init__(self):
        self.results: list[dict] = []
        self.no_face: list[str] = []
        self.errors: list[dict] = []

    def fail(self, record: dict) -> None:
        self.errors.append(record)
        print(f"predict.py: error: {record['error']}", file=sys.stderr)


def predict_images(files, model, layer, detector, args, out: Outcome, bar, used_names: set[str]) -> None:
    """Score image files (each face with a detector), printing a line per result unless --json."""
    for entries in batches_of_inputs(files, args.batch_size, detector, out.fail, bar):
        scored = [entry for entry in entries if entry[2] is not None]
        records = iter(score_batch(model, layer, scored, args, used_names) if scored else [])
        for path, _, image in entries:
            if image is None:  # a photo without a face: said, not an error
                out.no_face.append(path)
                if not args.json:
                    print(f"{field(path)}\tno face found", flush=True)
                continue
            record = next(records)
            out.results.append(record)
            if not args.json:
                print(text_line(record), flush=True)


def predict_video(path: str, model, detector, args, out: Outcome) -> None:
    """Score one video (lib/video_predict.py), with --annotate write its annotated copy, and
    print its line unless --json; a video without any face is said, not scored."""
    try:
        result = video_predict.score_video(
            path, detector, model, args.frames, args.batch_size, args.aggregate
        )
        if args.annotate:
            video_predict.annotate_video(path, args.annotate, result)
            result["annotated"] = args.annotate
            print(f"predict.py: wrote {args.annotate}", file=sys.stderr)
    except VideoError as exc:
        out.fail({"path": path, "error": str(exc)})
        return
    sampled, with_face = result["frames_sampled"], result["frames_with_face"]
    if result["p_fake"] is None:
        out.no_face.append(path)
        if not args.json:
            print(f"{field(path)}\tno face found in {sampled} sampled frames", flush=True)
        return
    out.results.append(result)
    if not args.json:
        line = (
            f"{field(path)}\tP(fake)={result['p_fake']:.4f}\t{result['label']}\tvideo: {args.aggregate} of "
        )
        print(f"{line}{with_face} frames with a face (of {sampled} sampled)", flush=True)


def check_output_flags(args, videos: list[str]) -> None:
    """One-line errors for --grad_cam and --annotate targets that cannot be written, before any work."""
    if args.grad_cam and os.path.exists(args.grad_cam) and not os.path.isdir(args.grad_cam):
        raise UserError(f"--grad_cam {args.grad_cam}: exists and is not a folder")
    if args.annotate is None:
        return
    if len(videos) != 1:
        raise UserError(f"--annotate writes one video: give exactly one video file (found {len(videos)})")
    if os.path.splitext(args.annotate)[1].lower() not in WRITER_CODECS:
        raise UserError(f"--annotate {args.annotate}: use a {' or '.join(WRITER_CODECS)} file name")
    if os.path.exists(args.annotate):
        raise UserError(f"--annotate {args.annotate}: exists; remove it or choose another name")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    files, path_errors = collect_paths(args.paths, args.recursive)
    videos = [f for f in files if is_video_file(f)]
    check_output_flags(args, videos)
    device = get_device(args.device)
    detector = None
    if args.crop_faces or videos:  # before the model: fail fast
        detector = face_detectors.make_detector(args.detector, device, args.min_face)
    model = load_checkpoint_model(args, device)
    args.target_layer = gradcam.target_layer_name(args.model, args.target_layer)
    layer = gradcam.resolve_layer(model, args.target_layer) if args.grad_cam else None
    if layer is not None and videos:
        print("predict.py: note: --grad_cam draws overlays for images only", file=sys.stderr)
    out = Outcome()
    for record in path_errors:
        out.fail(record)
    used_names: set[str] = set()
    bar = tqdm(
        total=len(files), desc="predict", unit="file", leave=False, disable=True if args.no_progress else None
    )
    for is_video, group in itertools.groupby(files, key=is_video_file):  # the order given
        if not is_video:
            photo_faces = detector if args.crop_faces else None
            predict_images(list(group), model, layer, photo_faces, args, out, bar, used_names)
            continue
        for path in group:
            predict_video(path, model, detector, args, out)
            bar.update(1)
    bar.close()
    if args.json:
        document = {
            "model": args.model,
            "checkpoint": args.checkpoint_path,
            "threshold": 0.5,
            "crop_faces": args.crop_faces,
            "detector": detector.params() if detector is not None else None,
            "results": out.results,
            "no_face": out.no_face,
            "errors": out.errors,
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 1 if out.errors else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
