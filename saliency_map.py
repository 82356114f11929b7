"""Saliency maps (Simonyan et al. 2014) of a trained model on a test split (docs/design.md#saliency).

    python saliency_map.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt -d fakes_dataset

Writes figures/<D>_<M>_saliency_maps_and_images_pairs.png (36 test images, each beside its map and
titled with its class and P(fake), 6 pairs a row, as many rows as the images need) and
figures/<D>_<M>_mean_saliency_maps.png (mean map of the real and of the fake test images, over the
whole test split, on one colour scale).
"""

from __future__ import annotations

import sys

import torch

from lib import class_means, names, saliency, sampling, scores
from lib.cli import ArgumentParser, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import add_analysis_flags, add_figure_flags, add_gradient_batch_flag, add_mean_maps_flag
from utils import FIGURE_SUFFIXES, figure_path, load_analysis_inputs

N_PAIRS = 36


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Saliency maps: the absolute gradient of each image's raw logit for its TRUE "
        "class with respect to the input, maximum over the colour channels (one "
        "backward per batch). Pairs figure of 36 test images (half real, half fake "
        "where possible) and mean maps per class over the whole test split (each map "
        "scaled to [0, 1], averaged per class, scaled to [0, 1] again; --shared_scale: not again)."
    )
    add_analysis_flags(parser)
    add_gradient_batch_flag(parser)
    add_mean_maps_flag(parser)
    add_figure_flags(parser)
    parser.add_argument(
        "--seed",
        default=0,
        type=seed_int,
        help="chooses the 36 images of the pairs figure (same seed, same images)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device, model, dataset = load_analysis_inputs(args)
    progress = not args.no_progress
    title = names.describe(args.dataset, args.model)

    chosen = sampling.pick_mixed_indices(dataset.labels.numpy(), N_PAIRS, args.seed)
    maps, images, labels = saliency.saliency_of_dataset(
        model, dataset, chosen, args.batch_size, progress=progress, num_workers=args.num_workers
    )
    pairs_path, mean_path = (
        figure_path(args.figures_dir, args.dataset, args.model, suffix, args.run_name)
        for suffix in FIGURE_SUFFIXES["saliency"]
    )
    p_fake = scores.soft_scores(scores.predict_logits(model, torch.from_numpy(images)))[:, 1]
    pairs_path = write_figure(
        saliency.plot_saliency_pairs(
            images, maps, labels, p_fake, f"Images and their saliency maps: {title}"
        ),
        pairs_path,
        args,
    )

    means, counts = class_means.mean_maps_per_class(
        dataset,
        lambda x, y: saliency.saliency_maps(model, x, y),
        args.batch_size,
        device,
        progress=progress,
        desc="mean saliency",
        num_workers=args.num_workers,
    )
    mean_path = write_figure(
        class_means.plot_mean_maps(
            means, counts, f"Mean saliency maps: {title}", "hot", "saliency", args.shared_scale
        ),
        mean_path,
        args,
    )
    print(
        f"{title}: saliency of {len(chosen)} chosen images (seed {args.seed}) and mean maps over "
        f"{counts[0]} real and {counts[1]} fake test images"
    )
    print(f"wrote {pairs_path}\nwrote {mean_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
