"""ROC and DET curves, detection metrics and their uncertainty for a trained model on a test split
(docs/design.md#roc-and-det-scores).

    python numerical_analysis.py -m SimpleNet -d fakes_dataset \
        -cpp checkpoints/fakes_dataset_SimpleNet_Adam.pt

Writes figures/<D>_<M>_roc_curve.png, figures/<D>_<M>_det_curve.png and the "numerical" section of
out/<D>_<M>_metrics.json (other sections, such as "grad_cam", are kept), and prints the numbers.
How sure they are goes to the "uncertainty" section: 95 % stratified-bootstrap intervals of
accuracy, AUC, EER and AP (--bootstrap resamples, --seed), and the expected calibration error of
P(fake) with its reliability diagram, figures/<D>_<M>_reliability_diagram.png (--ece_bins).
"""

from __future__ import annotations

import os
import sys

from lib import metrics_json, names, scores, uncertainty, video_scores
from lib.cli import ArgumentParser, positive_int, run_cli, seed_int
from lib.figure_output import write_figure
from lib.flags import add_analysis_flags, add_figure_flags, add_out_dir_flag
from utils import FIGURE_SUFFIXES, figure_path, load_analysis_inputs


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="ROC and DET curves, AUC, EER, AP, accuracy and confusion matrix of a checkpoint "
        "on the test split. As in the course, the ROC/DET soft scores are the model's raw "
        "outputs: score A = column 0 (how real), score B = column 1 (how fake); the "
        "positive label is 1 (fake). EER, AP and accuracy use P(fake), the softmax "
        "probability of column 1 (fake when P(fake) > 0.5)."
    )
    add_analysis_flags(parser)
    add_figure_flags(parser)
    parser.add_argument("--batch_size", "-b", default=64, type=positive_int, help="images per forward pass")
    add_out_dir_flag(parser, "numerical")
    parser.add_argument(
        "--bootstrap",
        default=uncertainty.DEFAULT_RESAMPLES,
        type=positive_int,
        help="bootstrap resamples for the 95 %% confidence intervals",
    )
    parser.add_argument(
        "--ece_bins",
        default=uncertainty.DEFAULT_BINS,
        type=positive_int,
        help="equal-width bins of P(fake) for the ECE and the reliability diagram",
    )
    parser.add_argument("--seed", default=0, type=seed_int, help="seed of the bootstrap resamples")
    parser.add_argument(
        "--aggregate",
        default="mean",
        choices=video_scores.AGGREGATES,
        help="when the test images are frames of videos (a manifest, or <video>_f<frame> file names): "
        "a video's score is this of its frames' P(fake)",
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _, model, dataset = load_analysis_inputs(args)
    logits, labels = scores.predict_scores(
        model, dataset, args.batch_size, progress=not args.no_progress, num_workers=args.num_workers
    )
    metrics = scores.roc_det_metrics(labels, logits)
    p_fake = scores.soft_scores(logits)[:, 1]
    paths = [dataset.path_and_label(i)[0] for i in range(len(dataset))]
    keys, grouping = video_scores.video_keys(os.path.dirname(os.path.normpath(dataset.root_path)), paths)
    grouped = video_scores.group_videos(keys, labels, p_fake, args.aggregate) if keys else None

    roc_path, det_path, reliability_path = (
        figure_path(args.figures_dir, args.dataset, args.model, suffix, args.run_name)
        for suffix in FIGURE_SUFFIXES["numerical"]
    )
    roc_path = write_figure(scores.plot_roc(labels, logits, args.model, args.dataset), roc_path, args)
    det_path = write_figure(scores.plot_det(labels, logits, args.model, args.dataset), det_path, args)
    sure = uncertainty_section(args, labels, p_fake, grouped)
    reliability_path = write_figure(
        uncertainty.plot_reliability(
            sure["calibration"], f"Reliability of P(fake), {names.describe(args.dataset, args.model)}"
        ),
        reliability_path,
        args,
    )

    json_path = names.metrics_json_path(args.out_dir, args.dataset, args.model, args.run_name)
    section = {
        **metrics_json.section_header(args),
        "score_definition": scores.SCORE_DESCRIPTION,
        **metrics,
    }
    if grouped is not None:
        section["video"] = video_scores.video_figures(grouped, grouping, args.aggregate)
    csv_path = names.scores_csv_path(args.out_dir, args.dataset, args.model, args.run_name)
    video_scores.write_scores_csv(csv_path, paths, labels, keys, logits, p_fake)  # before the JSON says done
    metrics_json.update_metrics_json(json_path, {"numerical": section, "uncertainty": sure})

    print(
        f"{names.describe(args.dataset, args.model)}, test split, {len(labels)} images "
        f"({args.checkpoint_path})"
    )
    print(scores.metrics_table(metrics))
    kind = "stratified" if grouped is None else "video"
    print(uncertainty.summary_table(sure["bootstrap"], sure["calibration"], kind))
    if grouped is not None:
        print(video_summary(section["video"], sure["video"]["bootstrap"], metrics))
    print(
        f"wrote {roc_path}\nwrote {det_path}\nwrote {reliability_path}\n"
        f"wrote {json_path} (sections 'numerical' and 'uncertainty')\nwrote {csv_path}"
    )
    return 0


def video_summary(video: dict, boot: dict, frame_metrics: dict) -> str:
    """The video-level lines: how the videos were found and scored, frames beside videos, and
    the bootstrap intervals of the video figures."""
    head = (
        f"video level: {video['n_videos']} videos ({video['n_real']} real / {video['n_fake']} fake; "
        f"{video['frames_per_video']['min']} to {video['frames_per_video']['max']} frames each), "
        f"found from the {video['grouping']}; a video's score is the {video['score']}"
    )
    table = video_scores.comparison_table(frame_metrics, video)
    return "\n".join([head, table, uncertainty.interval_table(boot, "stratified video")])


def uncertainty_section(args, labels, fake_scores, grouped: dict | None) -> dict:
    """The 'uncertainty' JSON section: bootstrap intervals and calibration of P(fake). When the
    images are frames of videos (``grouped``), the resamples draw whole videos, and a 'video'
    part holds the intervals of the video-level figures."""
    progress = not args.no_progress
    if grouped is None:
        boot = uncertainty.bootstrap_intervals(
            labels, fake_scores, args.bootstrap, args.seed, progress=progress
        )
    else:
        boot = uncertainty.bootstrap_intervals(
            labels,
            fake_scores,
            args.bootstrap,
            args.seed,
            progress=progress,
            resamples=video_scores.video_resamples(grouped, args.bootstrap, args.seed),
            method=video_scores.VIDEO_BOOTSTRAP_METHOD,
        )
    section = {
        **metrics_json.section_header(args),
        "scores": "P(fake) = softmax column 1",
        "bootstrap": boot,
        "calibration": uncertainty.calibration(labels, fake_scores, args.ece_bins),
    }
    if grouped is not None:
        video_boot = uncertainty.bootstrap_intervals(
            grouped["labels"], grouped["scores"], args.bootstrap, args.seed
        )
        section["video"] = {"scores": "the video's aggregate of its frame P(fake)", "bootstrap": video_boot}
    return section


if __name__ == "__main__":
    sys.exit(run_cli(main))
