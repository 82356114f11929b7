"""The names every script shares: datasets, splits, models, optimizers, their titles, and the
names of the files a run writes (docs/design.md#output-names)."""

from __future__ import annotations

import argparse
import os
import re

from lib.model_specs import MODEL_SPECS

DATASET_NAMES = ("fakes_dataset", "synthetic_dataset")
SPLITS = ("train", "val", "test")
MODEL_NAMES = tuple(MODEL_SPECS)  # the registry's order: the course's two, then the torchvision backbones
OPTIMIZER_NAMES = ("SGD", "Adam", "AdamW")
DATASET_TITLES = {"fakes_dataset": "Deepfakes dataset", "synthetic_dataset": "Synthetic images dataset"}


def dataset_title(dataset_name: str) -> str:
    """How figures and the report name a dataset: the course's titles, else the folder's name."""
    return DATASET_TITLES.get(dataset_name, dataset_name)


RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
"""What ``--run_name`` may be: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot."""


def run_name_type(text: str) -> str:
    """argparse type of ``--run_name``: a ``RUN_NAME`` that cannot be taken for another file of a
    run (``last``, which names the full-state checkpoint)."""
    if not re.fullmatch(RUN_NAME, text) or text == "last" or text.endswith("_last"):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name files: use letters, digits, '.', '_' and '-' (not first a dot; not 'last')"
        )
    return text


def _named(stem: str, run_name: str | None) -> str:
    """``stem``, with ``_<run_name>`` when a run name is given (docs/design.md#output-names)."""
    return f"{stem}_{run_name}" if run_name else stem


def output_stem(dataset_name: str, model_name: str, optimizer_name: str, run_name: str | None = None) -> str:
    """``<dataset>_<model>_<optimizer>[_<run_name>]``: the stem of a run's JSON, CSV and checkpoints."""
    return _named(f"{dataset_name}_{model_name}_{optimizer_name}", run_name)


def analysis_stem(dataset_name: str, model_name: str, run_name: str | None = None) -> str:
    """``<dataset>_<model>[_<run_name>]``: the stem of the analyses' figures and JSON of one run."""
    return _named(f"{dataset_name}_{model_name}", run_name)


COURSE_CHECKPOINT = os.path.join("checkpoints", "XceptionBased.pt")
"""The course's default ``-cpp`` of the analyses, a name train_main.py never writes."""
MANIFEST = "manifest.json"
"""A dataset prepared from videos: which video each frame image comes from (prepare_videos.py)."""


def metrics_json_path(out_dir: str, dataset_name: str, model_name: str, run_name: str | None = None) -> str:
    """``<out_dir>/<D>_<M>[_<run_name>]_metrics.json``: the analyses' JSON of one trained model."""
    return os.path.join(out_dir, f"{analysis_stem(dataset_name, model_name, run_name)}_metrics.json")


def scores_csv_path(out_dir: str, dataset_name: str, model_name: str, run_name: str | None = None) -> str:
    """``<out_dir>/<D>_<M>[_<run_name>]_scores.csv``: numerical_analysis.py's per-image scores."""
    return os.path.join(out_dir, f"{analysis_stem(dataset_name, model_name, run_name)}_scores.csv")


DEMO_MARKER = ".made_by_make_demo_datasets.json"
"""What make_demo_datasets.py writes into each dataset folder it makes: its seed, scale and full_size."""

SAMPLES_FIGURE = "datasets_samples.png"
"""The samples figure of plot_samples_of_faces_datasets.py (in the figures folder)."""

FIGURE_SUFFIXES = {
    "curves": ("losses_plot", "accuracies_plot"),  # plot_accuracy_and_loss.py
    "numerical": ("roc_curve", "det_curve", "reliability_diagram"),  # numerical_analysis.py
    "gradcam": ("Real_Image_grad_cam", "Fake_Image_grad_cam", "mean_grad_cam"),  # grad_cam_analysis.py
    "saliency": ("saliency_maps_and_images_pairs", "mean_saliency_maps"),  # saliency_map.py
    "robustness": ("robustness",),  # robustness_analysis.py
}
"""The figures of one run, ``<D>_<M>_<suffix>.png``, by the script that writes them: the study's
figures (docs/design.md#output-names), the reliability diagram of P(fake), the mean Grad-CAM maps and
the robustness curves. Grad-CAM's first two are of label 0 and 1, in that order."""


def figure_path(
    figures_dir: str, dataset_name: str, model_name: str, suffix: str, run_name: str | None = None
) -> str:
    """``<figures_dir>/<D>_<M>[_<run_name>]_<suffix>.png`` (docs/design.md#output-names)."""
    return os.path.join(figures_dir, f"{analysis_stem(dataset_name, model_name, run_name)}_{suffix}.png")


def spectrum_paths(figures_dir: str, out_dir: str, dataset_name: str) -> tuple[str, str]:
    """(figure, JSON) that spectrum_analysis.py writes for one dataset: ``<D>_spectrum.png`` and
    ``<D>_spectrum.json`` (no model: the spectra belong to the data)."""
    return (os.path.join(figures_dir, f"{dataset_name}_spectrum.png"),
            os.path.join(out_dir, f"{dataset_name}_spectrum.json"))  # fmt: skip


def cross_dataset_paths(figures_dir: str, out_dir: str) -> tuple[str, str]:
    """(figure, JSON) of the whole matrix that cross_dataset_analysis.py writes."""
    return os.path.join(figures_dir, "cross_dataset.png"), os.path.join(out_dir, "cross_dataset.json")


CLASS_NAMES = ("Real", "Fake")  # label 0, label 1


def describe(dataset_name: str, model_name: str) -> str:
    """A figure title's subject: the model and the dataset's title ('SimpleNet on Deepfakes dataset')."""
    return f"{model_name} on {dataset_title(dataset_name)}"
