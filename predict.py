"""Classify image files as real or fake with a trained checkpoint.

    python predict.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt face.png photos/

Prints, for each image, its path, P(fake) (softmax of the model's two outputs) and the predicted
label (fake when P(fake) > 0.5). Folders are searched for image files (sorted; --recursive for
sub-folders). Preprocessing is the evaluation one: RGB, 256x256 (other sizes are resized, with a
notice), the study's normalisation. An unreadable file is reported on stderr and the others still
run; the exit code is 1 if any path failed, 2 for a usage error (bad checkpoint, wrong -m).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import analysis
from faces_dataset import IMAGE_SIZE, DataError, is_image_file, pil_to_uint8_tensor, read_rgb_image
from utils import (MODEL_NAMES, ArgumentParser, UserError, atomic_write, add_debug_flag,
                   get_device, load_model_from_checkpoint, normalize_batch, positive_int, run_cli)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Predict real or fake for image files. P(fake) is the softmax probability of "
                    "the model's column 1; the label is fake when P(fake) > 0.5.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files and/or folders of images")
    parser.add_argument("--model", "-m", default="XceptionBased", choices=MODEL_NAMES,
                        help="which model the checkpoint holds")
    parser.add_argument("--checkpoint_path", "-cpp", default="checkpoints/XceptionBased.pt",
                        help="checkpoint written by train_main.py (its 'model' entry is loaded)")
    parser.add_argument("--recursive", "-r", action="store_true",
                        help="also look for images in the sub-folders of a folder PATH")
    parser.add_argument("--batch_size", "-b", default=32, type=positive_int,
                        help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--grad_cam", metavar="DIR", default=None,
                        help="write a Grad-CAM overlay PNG per image into DIR "
                             "(<name>_grad_cam.png, for the predicted class)")
    parser.add_argument("--target_layer", default=analysis.DEFAULT_TARGET_LAYER,
                        help="Grad-CAM layer (dotted module path) for --grad_cam")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of text lines")
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
            found = sorted(f for f in found if is_image_file(f))
            if not found:
                hint = "" if recursive else " (pass --recursive to search sub-folders)"
                errors.append({"path": path, "error": f"{path}: no image files in this folder{hint}"})
            files += found
        elif os.path.exists(path):
            files.append(path)
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


def overlay_name(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, k = f"{stem}_grad_cam.png", 1
    while name in used:
        name, k = f"{stem}_{k}_grad_cam.png", k + 1
    used.add(name)
    return name


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.grad_cam and os.path.exists(args.grad_cam) and not os.path.isdir(args.grad_cam):
        raise UserError(f"--grad_cam {args.grad_cam}: exists and is not a folder")
    device = get_device(args.device)
    model = load_model_from_checkpoint(args.model, args.checkpoint_path, device)
    layer = analysis.resolve_layer(model, args.target_layer) if args.grad_cam else None

    errors: list[dict] = []

    def fail(record: dict) -> None:
        errors.append(record)
        print(f"predict.py: error: {record['error']}", file=sys.stderr)

    files, path_errors = collect_paths(args.paths, args.recursive)
    for record in path_errors:
        fail(record)
    results: list[dict] = []
    used_names: set[str] = set()
    bar = tqdm(total=len(files), desc="predict", unit="img", leave=False,
               disable=True if args.no_progress else None)
    for start in range(0, len(files), args.batch_size):
        batch_paths, images, resized = [], [], []
        for path in files[start:start + args.batch_size]:
            try:
                image, original = load_for_model(path)
            except DataError as exc:  # the dataset's hint about --skip_corrupt does not apply here
                fail({"path": path, "error": str(exc).replace(", or pass --skip_corrupt", "")})
                continue
            if original is not None:
                print(f"predict.py: note: {path}: image is {original[0]}x{original[1]}, resized to "
                      f"{IMAGE_SIZE}x{IMAGE_SIZE}", file=sys.stderr)
            batch_paths.append(path)
            images.append(image)
            resized.append(original)
        bar.update(min(args.batch_size, len(files) - start))
        if not images:
            continue
        batch = torch.stack(images)
        logits = analysis.predict_logits(model, batch, args.batch_size)
        probs = analysis.soft_scores(logits.numpy())
        predicted = (probs[:, 1] > 0.5).astype(np.int64)  # ties go to real, like argmax
        overlays = [None] * len(batch_paths)
        if layer is not None:
            cams = analysis.grad_cam_maps(model, layer, normalize_batch(batch.to(device)), predicted)
            for i, (image, cam) in enumerate(zip(analysis.uint8_to_rgb_float(batch), cams)):
                out = os.path.join(args.grad_cam, overlay_name(batch_paths[i], used_names))
                picture = Image.fromarray(analysis.grad_cam_overlay(image, cam))
                atomic_write(out, lambda tmp, p=picture: p.save(tmp, format="PNG"))
                overlays[i] = out
        for i, path in enumerate(batch_paths):
            record = {"path": path, "p_fake": float(probs[i, 1]), "p_real": float(probs[i, 0]),
                      "label": analysis.CLASS_NAMES[predicted[i]].lower(),
                      "logits": [float(v) for v in logits[i]],
                      "resized_from": list(resized[i]) if resized[i] else None,
                      "grad_cam": overlays[i]}
            results.append(record)
            if not args.json:
                extra = f"\t{overlays[i]}" if overlays[i] else ""
                print(f"{path}\tP(fake)={record['p_fake']:.4f}\t{record['label']}{extra}", flush=True)
    bar.close()
    if args.json:
        document = {"model": args.model, "checkpoint": args.checkpoint_path, "threshold": 0.5,
                    "results": results, "errors": errors}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
