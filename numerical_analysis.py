"""ROC and DET curves and detection metrics of a trained model on a test split (SPEC section 4).

    python numerical_analysis.py -m SimpleNet -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt -d fakes_dataset

Writes figures/<D>_<M>_roc_curve.png, figures/<D>_<M>_det_curve.png and the "numerical" section of
out/<D>_<M>_metrics.json (other sections, such as "grad_cam", are kept), and prints the numbers.
"""
from __future__ import annotations

import sys

import analysis
from utils import (FIGURE_SUFFIXES, ArgumentParser, add_analysis_flags, figure_path, load_analysis_inputs,
                   non_negative_int, positive_int, run_cli, save_figure)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="ROC and DET curves, AUC, EER, AP, accuracy and confusion matrix of a checkpoint "
                    "on the test split. As in the course, the ROC/DET soft scores are the model's raw "
                    "outputs: score A = column 0 (how real), score B = column 1 (how fake); the "
                    "positive label is 1 (fake). EER, AP and accuracy use P(fake), the softmax "
                    "probability of column 1 (fake when P(fake) > 0.5).")
    add_analysis_flags(parser)
    parser.add_argument("--batch_size", "-b", default=64, type=positive_int,
                        help="images per forward pass")
    parser.add_argument("--num_workers", default=0, type=non_negative_int,
                        help="worker processes decoding images (0: in the main process)")
    parser.add_argument("--out_dir", default="out",
                        help="folder of <D>_<M>_metrics.json (its 'numerical' section is replaced, "
                             "other sections kept)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _, model, dataset = load_analysis_inputs(args)
    logits, labels = analysis.predict_scores(model, dataset, args.batch_size,
                                             progress=not args.no_progress,
                                             num_workers=args.num_workers)
    metrics = analysis.roc_det_metrics(labels, logits)

    roc_path, det_path = (figure_path(args.figures_dir, args.dataset, args.model, suffix)
                          for suffix in FIGURE_SUFFIXES["numerical"])
    save_figure(analysis.plot_roc(labels, logits, args.model, args.dataset), roc_path)
    save_figure(analysis.plot_det(labels, logits, args.model, args.dataset), det_path)

    json_path = analysis.metrics_json_path(args.out_dir, args.dataset, args.model)
    section = {"model": args.model, "dataset": args.dataset, "split": "test",
               "checkpoint": args.checkpoint_path, "score_definition": analysis.SCORE_DESCRIPTION,
               **metrics}
    analysis.update_metrics_json(json_path, "numerical", section)

    print(f"{analysis.describe(args.dataset, args.model)}, test split, {len(labels)} images "
          f"({args.checkpoint_path})")
    print(analysis.metrics_table(metrics))
    print(f"wrote {roc_path}\nwrote {det_path}\nwrote {json_path} (section 'numerical')")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
