"""Frequency traces of the test images: mean Fourier spectra of real and fake images per dataset.

    python spectrum_analysis.py --datasets fakes_dataset synthetic_dataset

Needs no model. For each dataset: figures/<D>_spectrum.png (mean log-magnitude 2-D spectra of the
real and the fake test images and their difference; azimuthally averaged 1-D power spectra of
both classes and fake - real) and the "spectrum" section of out/<D>_spectrum.json (the 1-D
spectra as arrays; other sections kept). The file is per dataset, not per run: the spectra belong
to the data, whatever model is trained on it.
"""

from __future__ import annotations

import sys

from faces_dataset import IMAGE_SIZE
from lib import batching, metrics_json, sampling, spectrum
from lib.cli import ArgumentParser, non_negative_int, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import add_figure_flags, add_multi_dataset_flags
from lib.names import dataset_title
from utils import get_device, load_dataset, spectrum_paths


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Mean Fourier spectra of the real and the fake test images of each dataset (grey, "
        "mean removed): 2-D log-magnitude maps and azimuthally averaged 1-D power "
        "spectra, where generators leave upsampling traces. Needs no model."
    )
    add_multi_dataset_flags(
        parser,
        "datasets whose test split is analysed",
        "folder of <D>_spectrum.json (its 'spectrum' section is replaced, other sections kept)",
    )
    parser.add_argument(
        "--max_images",
        default=0,
        type=non_negative_int,
        help="test images per dataset: a random subset, half real and half fake where "
        "possible, drawn with --seed (0: the whole test split)",
    )
    parser.add_argument("--seed", default=0, type=seed_int, help="seed of the subset")
    add_figure_flags(parser)
    return parser


def dataset_spectra(args, name: str, device) -> tuple[spectrum.SpectrumAccumulator, dict]:
    """The accumulated spectra of one dataset's test split (or its subset) and the JSON section."""
    dataset = load_dataset(name, "test", args.data_root)
    labels = dataset.labels.numpy()
    indices = sampling.subset_indices(labels, args.max_images, args.seed)
    acc = spectrum.SpectrumAccumulator()
    for images, batch_labels, _ in batching.iter_batches(
        dataset,
        args.batch_size,
        indices,
        args.num_workers,
        progress=not args.no_progress,
        desc=f"spectra {name}",
    ):
        acc.add(images.to(device), batch_labels.to(device))
    section = {
        "dataset": name,
        "split": "test",
        "subset": None
        if indices is None
        else f"random, half real and half fake where possible, seed {args.seed}",
        **acc.summary(IMAGE_SIZE),
    }
    return acc, section


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = get_device(args.device)
    for name in dict.fromkeys(args.datasets):
        acc, section = dataset_spectra(args, name, device)
        path, json_path = spectrum_paths(args.figures_dir, args.out_dir, name)
        path = write_figure(
            spectrum.plot_spectra(acc, section, f"Mean spectra of the test images, {dataset_title(name)}"),
            path,
            args,
        )
        metrics_json.update_metrics_json(json_path, {"spectrum": section})
        diff = section["fake_minus_real_db"]
        if diff is not None:
            peak = spectrum.largest_difference(diff)
            print(
                f"{name}: {section['n_real']} real, {section['n_fake']} fake; largest |fake - real| "
                f"{diff[peak]:+.2f} dB at {section['cycles_per_pixel'][peak]:.3f} cycles/pixel"
            )
        print(f"wrote {path}\nwrote {json_path} (section 'spectrum')")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
