"""Robustness of a trained model to JPEG compression, blur, resizing and noise on its test split.

    python robustness_analysis.py -m SimpleNet -d fakes_dataset \
        -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt

Each perturbation is applied to the uint8 test images before the evaluation transform, at graded
severities: JPEG quality 90/70/50/30, Gaussian blur sigma 0.5/1/2/3 px, down-then-up scaling
0.75/0.5/0.25, Gaussian noise sigma 2/5/10 (0-255). Writes figures/<D>_<M>_robustness.png (AUC
against severity, the clean AUC as a reference line) and the "robustness" section of
out/<D>_<M>_metrics.json (other sections kept), and prints the numbers.
"""

from __future__ import annotations

import sys

from lib import metrics_json, names, perturbations, sampling
from lib.cli import ArgumentParser, non_negative_int, positive_int, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import add_analysis_flags, add_figure_flags, add_out_dir_flag
from lib.metrics import HEADLINE_METRICS, fmt
from utils import FIGURE_SUFFIXES, figure_path, load_analysis_inputs

DEFAULT_MAX_IMAGES = 60


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="AUC, accuracy, EER and AP of P(fake) on the test split, clean and under JPEG "
        "compression, Gaussian blur, down-then-up scaling and Gaussian noise at graded "
        "severities, with a figure of AUC against severity."
    )
    add_analysis_flags(parser)
    add_figure_flags(parser)
    parser.add_argument(
        "--perturbations",
        nargs="+",
        default=list(perturbations.PERTURBATIONS),
        choices=list(perturbations.PERTURBATIONS),
        metavar="NAME",
        help=f"which perturbations, any of: {' '.join(perturbations.PERTURBATIONS)}",
    )
    parser.add_argument(
        "--max_images",
        default=DEFAULT_MAX_IMAGES,
        type=non_negative_int,
        help="test images to perturb: a random subset, half real and half fake where "
        "possible, drawn with --seed (0: the whole test split); each is "
        "forwarded once clean and once per severity (15 times for all)",
    )
    parser.add_argument(
        "--seed", default=0, type=seed_int, help="seed of the subset and of the Gaussian noise"
    )
    parser.add_argument("--batch_size", "-b", default=64, type=positive_int, help="images per forward pass")
    add_out_dir_flag(parser, "robustness")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def robustness_table(metrics: dict) -> str:
    """One line per condition: AUC, accuracy, EER and AP."""

    def row(name, values):
        cells = [fmt(values[k]) for k in ("auc", "eer", "ap")]
        acc = fmt(values["accuracy"], 2, " %")
        return f"{name:<18} {cells[0]:>7} {acc:>9} {cells[1]:>7} {cells[2]:>7}"

    lines = [
        f"{'condition':<18} {'AUC':>7} {'accuracy':>9} {'EER':>7} {'AP':>7}",
        row("clean", metrics["clean"]),
    ]
    for name, entry in metrics["perturbations"].items():
        for i, severity in enumerate(entry["severities"]):
            lines.append(row(f"{name} {severity:g}", {k: entry[k][i] for k in HEADLINE_METRICS}))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _, model, dataset = load_analysis_inputs(args)
    labels = dataset.labels.numpy()
    subset = sampling.subset_indices(labels, args.max_images, args.seed)
    whole = subset is None
    indices = list(range(len(labels))) if whole else subset.tolist()
    chosen = perturbations.conditions(dict.fromkeys(args.perturbations))
    logits, labels = perturbations.score_perturbed(
        model,
        dataset,
        chosen,
        indices,
        args.batch_size,
        args.seed,
        progress=not args.no_progress,
        num_workers=args.num_workers,
    )
    metrics = perturbations.robustness_metrics(labels, logits)

    (path,) = (
        figure_path(args.figures_dir, args.dataset, args.model, suffix, args.run_name)
        for suffix in FIGURE_SUFFIXES["robustness"]
    )
    what = "whole test split" if whole else f"{len(indices)} test images (subset, seed {args.seed})"
    path = write_figure(
        perturbations.plot_robustness(
            metrics, f"Robustness of {names.describe(args.dataset, args.model)}\n{what}"
        ),
        path,
        args,
    )
    json_path = names.metrics_json_path(args.out_dir, args.dataset, args.model, args.run_name)
    section = {
        **metrics_json.section_header(args),
        "scores": "P(fake) = softmax column 1",
        "n_images": len(indices),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
        "subset": None if whole else "random, half real and half fake where possible",
        "seed": args.seed,
        **metrics,
    }
    metrics_json.update_metrics_json(json_path, {"robustness": section})

    print(f"{names.describe(args.dataset, args.model)}, {what} ({args.checkpoint_path})")
    print(robustness_table(metrics))
    print(f"wrote {path}\nwrote {json_path} (section 'robustness')")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
