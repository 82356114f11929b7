"""Show one real and one fake training image of each dataset (docs/design.md#output-names).

    python plot_samples_of_faces_datasets.py [--data_root DIR] [--seed 0]

Writes figures/datasets_samples.png. Images are picked by their label, never by their position
in the dataset (the course code took "fake" from the second half, which with the 2:1 Deepfakes
set was often a real image).
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from faces_dataset import FAKE_LABEL, REAL_LABEL
from lib.cli import ArgumentParser, add_debug_flag, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import add_data_root_flag, add_figure_flags
from utils import DATASET_NAMES, DATASET_TITLES, SAMPLES_FIGURE, load_dataset


def pick_index(labels: np.ndarray, label: int, rng: np.random.Generator) -> int:
    """A random index whose label is ``label``."""
    candidates = np.flatnonzero(labels == label)
    if candidates.size == 0:
        raise ValueError(f"no image with label {label}")
    return int(rng.choice(candidates))


def sample_images(data_root: str | None, seed: int) -> list[tuple[str, np.ndarray, int, str]]:
    """(title, HxWx3 uint8 image, label, path) for real then fake of each dataset."""
    rng = np.random.default_rng(seed)
    samples = []
    for dataset_name in DATASET_NAMES:
        dataset = load_dataset(dataset_name, "train", data_root)
        dataset.require_both_classes()
        labels = dataset.labels.numpy()
        for label, kind in ((REAL_LABEL, "real"), (FAKE_LABEL, "fake")):
            index = pick_index(labels, label, rng)
            path, true_label = dataset.path_and_label(index)
            image = dataset.load_uint8(index).permute(1, 2, 0).numpy()
            samples.append((f"{DATASET_TITLES[dataset_name]} {kind} image", image, true_label, path))
    return samples


def plot_samples(samples, path: str, args) -> str:
    """The 2 x 2 figure of ``samples``, written to ``path`` in ``args.figure_format``; returns the path."""
    fig, axes = plt.subplots(2, 2, figsize=(8, 8.6))
    for ax, (title, image, _, source) in zip(axes.flat, samples):
        ax.imshow(image)
        ax.set_title(title)
        ax.set_xlabel(os.path.basename(source), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return write_figure(fig, path, args)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Plot one real and one fake training image of each dataset.")
    add_data_root_flag(parser)
    parser.add_argument("--seed", default=0, type=seed_int, help="seed for picking the images")
    parser.add_argument("--figures_dir", default="figures", help="where the figure is written")
    add_figure_flags(parser)
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = plot_samples(
        sample_images(args.data_root, args.seed), os.path.join(args.figures_dir, SAMPLES_FIGURE), args
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
