"""The command-line flags that several scripts share, declared once: the data root, the checkpoint
and model of the analysis scripts, their output folders and batch sizes."""

from __future__ import annotations

import argparse

from lib.cli import add_debug_flag, non_negative_int, path_text, positive_int
from lib.data_root import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, DEMO_DATA_ROOT
from lib.figure_output import DEFAULT_DPI, DEFAULT_FIGURE_FORMAT, FIGURE_FORMATS
from lib.names import COURSE_CHECKPOINT, DATASET_NAMES, MODEL_NAMES, run_name_type


def add_data_root_flag(parser, fallback: str = f", else {DEMO_DATA_ROOT} (the demo data)") -> None:
    """``--data_root`` on ``parser`` (or an argument group); ``fallback``: what the script does
    when the course's folder is missing too (``lib.data_root.resolve_data_root``'s by default)."""
    parser.add_argument(
        "--data_root",
        default=None,
        type=path_text,
        help=f"folder holding fakes_dataset/ and synthetic_dataset/; default: "
        f"${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT}{fallback}",
    )


def add_device_and_figures_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--figures_dir`` of the analysis scripts."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--figures_dir", default="figures", help="where figures are written")


CHECKPOINT_DEFAULT = f"{COURSE_CHECKPOINT} where it exists, else the one train_main.py wrote for -d (and -m)"


def add_checkpoint_flags(parser: argparse.ArgumentParser, default: str = CHECKPOINT_DEFAULT) -> None:
    """``--model`` and ``--checkpoint_path``: which trained model a script loads; ``default``
    says which checkpoint it loads without ``-cpp``."""
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        choices=MODEL_NAMES,
        help="which model the checkpoint holds (default: the one it records; a contradiction is an error)",
    )
    parser.add_argument(
        "--checkpoint_path",
        "-cpp",
        default=None,
        type=path_text,
        help=f"checkpoint written by train_main.py (its 'model' entry is loaded); default: {default}",
    )


def add_run_name_flag(parser, help_text: str) -> None:
    """``--run_name NAME``, the suffix that keeps a run's files apart (timm's ``--experiment``;
    docs/design.md#output-names); ``help_text`` says what it names in this script."""
    parser.add_argument("--run_name", default=None, type=run_name_type, metavar="NAME", help=help_text)


RUN_NAME_OF_CHECKPOINT = (
    "the run the outputs belong to: they are named <D>_<M>_NAME_...; default: the name the "
    "checkpoint records (none: <D>_<M>_...); another one is an error"
)


def add_dataset_flag(parser, what: str) -> None:
    """``--dataset``/``-d``: any dataset folder under the data root; ``what`` says what it is for."""
    parser.add_argument(
        "--dataset",
        "-d",
        default="fakes_dataset",
        metavar="NAME",
        help=f"{what}: a dataset folder under the data root (the course's: {', '.join(DATASET_NAMES)})",
    )


def add_analysis_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every analysis script of one checkpoint shares (docs/design.md#analysis)."""
    add_checkpoint_flags(parser)
    add_run_name_flag(parser, RUN_NAME_OF_CHECKPOINT)
    add_dataset_flag(parser, "dataset whose test split is analysed")
    add_data_root_flag(parser)
    add_device_and_figures_flags(parser)
    add_workers_flag(parser)
    add_debug_flag(parser)


def add_workers_flag(parser) -> None:
    """``-j/--workers`` of the analysis scripts: worker processes that decode the test images
    (the same flag, spelling and meaning as train_main.py's; docs/design.md#command-line-habits)."""
    parser.add_argument(
        "--workers",
        "-j",
        dest="num_workers",
        default=0,
        type=non_negative_int,
        help="worker processes decoding images (0: in the main process)",
    )


def add_gradient_batch_flag(parser: argparse.ArgumentParser) -> None:
    """``--batch_size`` of the scripts that backpropagate to the input (saliency, Grad-CAM)."""
    parser.add_argument(
        "--batch_size",
        "-b",
        default=16,
        type=positive_int,
        help="images per forward/backward pass (lower it if memory runs short)",
    )


def add_mean_maps_flag(parser: argparse.ArgumentParser) -> None:
    """``--shared_scale`` of the scripts that draw the two class means (saliency, Grad-CAM)."""
    parser.add_argument(
        "--shared_scale",
        action="store_true",
        help="draw the real and the fake mean map on one colour scale instead of scaling each "
        "to [0, 1] again (the study's)",
    )


def add_out_dir_flag(parser: argparse.ArgumentParser, section: str) -> None:
    """``--out_dir`` of an analysis script that writes the ``section`` of the metrics JSON."""
    parser.add_argument(
        "--out_dir",
        default="out",
        help=f"folder of <D>_<M>_metrics.json (its '{section}' section is replaced, other sections kept)",
    )


def add_multi_dataset_flags(parser: argparse.ArgumentParser, what: str, out_help: str) -> None:
    """The flags of the analysis scripts that work on several datasets' test splits
    (``--datasets``, all by default; ``what`` says what is done to them), and write figures and
    JSON sections (``out_help`` says which)."""
    parser.add_argument(
        "--datasets",
        "-d",
        nargs="+",
        default=list(DATASET_NAMES),
        metavar="NAME",
        help=f"{what}: dataset folders under the data root (default: the course's {' '.join(DATASET_NAMES)})",
    )
    add_data_root_flag(parser)
    add_device_and_figures_flags(parser)
    parser.add_argument("--batch_size", "-b", default=64, type=positive_int, help="images per batch")
    add_workers_flag(parser)
    parser.add_argument("--out_dir", default="out", help=out_help)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)


def add_detector_flags(group, used_for: str) -> None:
    """``--detector`` and ``--min_face``, the face detector's flags, the same in every script that
    finds faces; ``used_for`` says where the script uses it."""
    from lib import face_crops, face_detectors  # OpenCV and facenet stay unimported for the other scripts

    group.add_argument(
        "--detector",
        choices=face_detectors.DETECTORS,
        default=face_detectors.DEFAULT_DETECTOR,
        help=f"face detector {used_for}: MTCNN (facenet-pytorch; install: {face_detectors.FACENET_INSTALL}) "
        f"or OpenCV's Haar cascade (needs {face_crops.OPENCV_INSTALL})",
    )
    group.add_argument(
        "--min_face",
        type=positive_int,
        default=face_detectors.MIN_FACE_PX,
        help="MTCNN: smallest face looked for, in pixels",
    )


def add_figure_flags(parser) -> None:
    """``--figure_format`` and ``--dpi`` of every plotting script (docs/design.md#figure-formats);
    ``lib.figure_output.write_figure`` reads them."""
    group = parser.add_argument_group("figures")
    group.add_argument(
        "--figure_format",
        default=DEFAULT_FIGURE_FORMAT,
        choices=FIGURE_FORMATS,
        help="file type of the figures; pdf and svg keep lines and text as vectors",
    )
    group.add_argument(
        "--dpi",
        default=DEFAULT_DPI,
        type=positive_int,
        help="resolution of the figures in dots per inch (in pdf and svg: of the images drawn in them)",
    )
