"""Grad-CAM (Selvaraju et al. 2017, through pytorch-grad-cam) of a trained model (docs/design.md#grad-cam).

    python grad_cam_analysis.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt -d fakes_dataset

Writes figures/<D>_<M>_Real_Image_grad_cam.png and figures/<D>_<M>_Fake_Image_grad_cam.png (a real
and a fake test image with the heat map over it), figures/<D>_<M>_mean_grad_cam.png (mean map per
class over the test split) and a faithfulness figure of merit in the "grad_cam" section of
out/<D>_<M>_metrics.json (other sections kept).
"""

from __future__ import annotations

import argparse
import sys

import torch

from lib import class_means, faithfulness, gradcam, metrics_json, names, sampling, scores, transforms
from lib.cli import ArgumentParser, UserError, non_negative_int, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import (
    add_analysis_flags,
    add_figure_flags,
    add_gradient_batch_flag,
    add_mean_maps_flag,
    add_out_dir_flag,
)
from lib.transforms import normalize_batch
from utils import FIGURE_SUFFIXES, figure_path, load_analysis_inputs


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Grad-CAM heat maps of the true class (raw logit) at a target layer: one real "
        "and one fake test image (the study's figures), the mean map per class over "
        "the test split, and a deletion test of the maps' faithfulness: the drop in "
        "the true class's softmax confidence when the most relevant pixels are "
        "replaced by the image mean, against removing as many random pixels."
    )
    add_analysis_flags(parser)
    parser.add_argument(
        "--target_layer",
        default=None,
        help="dotted module path of the Grad-CAM layer (e.g. block12.rep.4 for XceptionBased); "
        f"default: the model's ({gradcam.default_layers_text()}; conv3 is the study's); a wrong "
        "name lists the convolution layers",
    )
    parser.add_argument(
        "--seed",
        default=0,
        type=seed_int,
        help="chooses the real and the fake image of the two figures, and the "
        "random pixels of the faithfulness baseline",
    )
    add_gradient_batch_flag(parser)
    add_mean_maps_flag(parser)
    add_figure_flags(parser)
    parser.add_argument(
        "--max_images",
        default=0,
        type=non_negative_int,
        help="use only this many test images (chosen with --seed, both classes) for the mean maps; 0: all",
    )
    parser.add_argument(
        "--faithfulness_images",
        default=0,
        type=non_negative_int,
        help="test images (chosen with --seed, both classes) of the faithfulness "
        "test, which costs about 10 forward passes an image; 0: the same "
        "images as the mean maps",
    )
    parser.add_argument(
        "--fractions",
        default=list(faithfulness.DEFAULT_FRACTIONS),
        nargs="+",
        type=fraction,
        metavar="F",
        help="fractions of pixels (between 0 and 1) removed by the faithfulness test",
    )
    add_out_dir_flag(parser, "grad_cam")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device, model, dataset = load_analysis_inputs(args)  # fills in -m from the checkpoint
    args.target_layer = gradcam.target_layer_name(args.model, args.target_layer)
    layer = gradcam.resolve_layer(model, args.target_layer)
    title = names.describe(args.dataset, args.model)
    written = one_image_per_class(args, model, layer, dataset, device)
    means, counts, faith = mean_maps_and_faithfulness(args, model, layer, dataset, device)
    if counts[0] + counts[1] == 0:
        raise UserError("no test images to analyse")
    mean_path = figure_path(args.figures_dir, args.dataset, args.model, "mean_grad_cam", args.run_name)
    figure = class_means.plot_mean_maps(
        means, counts, f"Mean Grad-CAM ({args.target_layer}): {title}", "jet", "Grad-CAM", args.shared_scale
    )
    written.append(write_figure(figure, mean_path, args))

    summary = {
        **metrics_json.section_header(args),
        "target_layer": args.target_layer,
        "target": "true class (raw logit)",
        "seed": args.seed,
        "n_real": counts[0],
        "n_fake": counts[1],
        **faith.summary(),
    }
    json_path = names.metrics_json_path(args.out_dir, args.dataset, args.model, args.run_name)
    metrics_json.update_metrics_json(json_path, {"grad_cam": summary})

    print(f"{title}: Grad-CAM at {args.target_layer} over {counts[0]} real and {counts[1]} fake test images")
    print(faithfulness.faithfulness_table(summary))
    for path in written:
        print(f"wrote {path}")
    print(f"wrote {json_path} (section 'grad_cam')")
    return 0


def one_image_per_class(args, model, layer, dataset, device) -> list[str]:
    """The study's two figures: a real and a fake test image (drawn with the seed) with their
    Grad-CAM overlay. Returns the paths written (a class without test images is skipped)."""
    picks = sampling.pick_one_per_class(dataset.labels.numpy(), args.seed)
    chosen = [(label, index) for label, index in picks.items() if index is not None]
    for label, index in picks.items():
        if index is None:
            print(
                f"note: no {names.CLASS_NAMES[label].lower()} image in the test split; "
                f"its Grad-CAM figure is not written",
                file=sys.stderr,
            )
    if not chosen:
        return []
    images = dataset.load_uint8_batch(torch.tensor([index for _, index in chosen]))
    cams = gradcam.grad_cam_maps(
        model, layer, normalize_batch(images.to(device)), [label for label, _ in chosen]
    )
    p_fake = scores.soft_scores(scores.predict_logits(model, images))[:, 1]
    written = []
    for (label, _), image, cam, p in zip(chosen, transforms.uint8_to_rgb_float(images), cams, p_fake):
        title = (
            f"{names.CLASS_NAMES[label]} Image, P(fake) = {p:.3f}\n{names.describe(args.dataset, args.model)}"
        )
        suffix = FIGURE_SUFFIXES["gradcam"][label]
        path = figure_path(args.figures_dir, args.dataset, args.model, suffix, args.run_name)
        figure = gradcam.plot_overlay(gradcam.grad_cam_overlay(image, cam), title)
        written.append(write_figure(figure, path, args))
    return written


def mean_maps_and_faithfulness(args, model, layer, dataset, device):
    """The per-class mean Grad-CAM maps over ``--max_images`` test images and the deletion test
    over ``--faithfulness_images``. Returns (means, counts per class, the faithfulness
    accumulator)."""
    labels = dataset.labels.numpy()

    def cams(x, y):
        return gradcam.grad_cam_maps(model, layer, x, y)

    def members(chosen) -> set[int]:
        return set(range(len(labels)) if chosen is None else chosen.tolist())

    mean_subset = sampling.subset_indices(labels, args.max_images, args.seed)
    faith_subset = (
        sampling.subset_indices(labels, args.faithfulness_images, args.seed)
        if args.faithfulness_images
        else mean_subset
    )
    # The faithfulness test rides on the mean-map pass (its maps, its decoded images); a second
    # pass only covers the faithfulness images the mean maps do not use.
    faith = faithfulness.FaithfulnessAccumulator(model, args.fractions, args.seed, only=faith_subset)

    def mean_maps(indices, desc):
        return class_means.mean_maps_per_class(
            dataset,
            cams,
            args.batch_size,
            device,
            indices=indices,
            progress=not args.no_progress,
            desc=desc,
            on_batch=faith,
            num_workers=args.num_workers,
        )

    means, counts = mean_maps(mean_subset, "Grad-CAM")
    rest = sorted(members(faith_subset) - members(mean_subset))
    if rest:  # these images' maps feed only the faithfulness test
        mean_maps(rest, "faithfulness")
    return means, counts, faith


if __name__ == "__main__":
    sys.exit(run_cli(main))
