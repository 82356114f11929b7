"""Every analysis command x every model: each writes the figures and JSON sections it promises.

The test is a table. A row (``Analysis``) is one command: how to call it with the smallest
settings it offers, which figures it writes, which JSON sections and what they hold. A column
(``Model``) is one model: the dataset its commands analyse and its Grad-CAM layer. Every row runs
on every column (a model-free row runs once), on a tiny tree of random images (test splits of
2 real / 1 fake in fakes_dataset and 1 real / 2 fake in synthetic_dataset), with a random-init
checkpoint of each model and a two-epoch runs JSON, both in train_main.py's format (made once per
module, on first use).

The expectations are the contract's, written here: file names literally, class counts from
listing the test folders, numbers within their ranges. Each figure must be a PNG that decodes,
of plausible size and not blank; the figures folder and the JSON folder must hold exactly what the
row promises, nothing more; a JSON file keeps the sections other scripts wrote into it. One cell:
``pytest tests/test_analysis_matrix.py -k "grad_cam and XceptionBased"``.

To add an analysis (a row): add an ``Analysis`` to ``ANALYSES`` with the command's module name,
its flags (``command_flags`` gives the shared ones), the figure names it promises, and for each
JSON file it writes (``STDOUT`` for a document printed on stdout) a check per section: a function
of (section, case) that asserts the key numbers. Copy the closest row. A new figure suffix in
``lib/names.FIGURE_SUFFIXES`` fails ``test_every_named_figure_is_promised`` until a row lists it.

To add a model (a column): add a ``Model`` to ``MODELS`` with the dataset its commands analyse,
and its Grad-CAM target layer; ``utils.load_model(name, pretrained=False)`` must build it offline.
``test_every_model_has_a_column`` fails until a model of ``lib/names.MODEL_NAMES`` has one.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import analysis_argv, make_split
from lib import names
from lib.cli import run_cli
from utils import load_model

pytestmark = pytest.mark.usefixtures("flush_denormals")

COUNTS = {"fakes_dataset": (2, 1), "synthetic_dataset": (1, 2)}  # test (n_real, n_fake): a wrong -d shows
MIN_SIDE, MAX_SIDE = 200, 10_000  # pixels: a plausible figure, or a Grad-CAM overlay of 256 x 256
STDOUT = "<stdout>"  # a row's JSON document printed on stdout instead of written to a file
OTHER_SECTION = {"another_script": {"kept": True}}  # in every JSON file before a command writes it


# ----------------------------------------------------------------------------- the columns
@dataclass(frozen=True)
class Model:
    """A column: a model and what its cells need."""

    name: str
    dataset: str  # the dataset its per-model commands analyse (the study's pairing)
    target_layer: str = "conv3"  # Grad-CAM layer of grad_cam_analysis.py and predict.py --grad_cam


MODELS = (
    Model("SimpleNet", "fakes_dataset"),
    Model("XceptionBased", "synthetic_dataset"),
    Model("resnet50", "fakes_dataset", "layer4"),  # the torchvision backbones, default (linear) head
    Model("efficientnet_b4", "synthetic_dataset", "features.8"),
)


# ----------------------------------------------------------------------------- a cell
@dataclass
class Case:
    """One cell of the matrix: where its command reads and writes. ``model`` is None in a
    model-free row."""

    model: Model | None
    root: str  # the data root
    work: Path  # figures under work/fig, JSON under work/out
    checkpoint: str | None = None
    runs_json: str | None = None
    stdout: str = ""

    @property
    def dataset(self) -> str:
        return self.model.dataset if self.model else "fakes_dataset"

    @property
    def stem(self) -> str:
        return f"{self.dataset}_{self.model.name}"

    @property
    def fig(self) -> Path:
        return self.work / "fig"

    @property
    def out(self) -> Path:
        return self.work / "out"

    def test_files(self, dataset: str | None = None) -> dict[str, list[str]]:
        """The test split's image files per class folder, listed here, not by the code under test."""
        split = os.path.join(self.root, dataset or self.dataset, "test")
        return {
            kind: sorted(os.path.join(split, kind, n) for n in os.listdir(os.path.join(split, kind)))
            for kind in ("real", "fake")
        }

    def counts(self, dataset: str | None = None) -> tuple[int, int]:
        """(n_real, n_fake) of the test split, from listing its folders."""
        files = self.test_files(dataset)
        return len(files["real"]), len(files["fake"])


# ----------------------------------------------------------------------------- checks
def in_range(value, low: float = 0.0, high: float = 1.0) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def check_header(section: dict, case: Case) -> None:
    """The header of an analysis section: which model, dataset, split and checkpoint it is about,
    and the training run that saved that checkpoint (``trained`` gives every one this id)."""
    assert (section["model"], section["dataset"], section["split"]) == (case.model.name, case.dataset, "test")
    assert (section["checkpoint"], section["run_id"]) == (case.checkpoint, "0" * 32)


def check_headline(metrics: dict) -> None:
    """AUC, EER and AP of P(fake) in [0, 1], accuracy in [0, 100] %."""
    for key in ("auc", "eer", "ap"):
        assert in_range(metrics[key]), (key, metrics[key])
    assert in_range(metrics["accuracy"], 0, 100), metrics["accuracy"]


def check_numerical(section: dict, case: Case) -> None:
    check_header(section, case)
    check_headline(section)
    for key in ("auc_a", "auc_b"):  # the course's scores A and B, the raw columns
        assert in_range(section[key]), (key, section[key])
    n_real, n_fake = case.counts()
    assert (section["n_real"], section["n_fake"], section["n_samples"]) == (n_real, n_fake, n_real + n_fake)
    matrix = section["confusion_matrix"]
    assert [sum(row) for row in matrix] == [n_real, n_fake]  # rows: the true class
    assert section["accuracy"] == pytest.approx(100 * (matrix[0][0] + matrix[1][1]) / (n_real + n_fake))


def check_scores_csv(path: Path, case: Case) -> None:
    """One row a test image, in the loader's order, whose P(fake) is the softmax of its two scores."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    files = case.test_files()
    assert [row["path"] for row in rows] == files["real"] + files["fake"]
    assert [int(row["label"]) for row in rows] == [0] * len(files["real"]) + [1] * len(files["fake"])
    for row in rows:
        a, b = float(row["score_a"]), float(row["score_b"])
        assert float(row["p_fake"]) == pytest.approx(1 / (1 + math.exp(a - b)), rel=1e-5, abs=1e-7)


def check_uncertainty(section: dict, case: Case) -> None:
    check_header(section, case)
    boot = section["bootstrap"]
    assert boot["n_resamples"] == 20
    for key, high in (("accuracy", 100), ("auc", 1), ("eer", 1), ("ap", 1)):
        low_ci, high_ci = boot[key]["ci"]  # both classes in every stratified resample: defined
        assert in_range(boot[key]["value"], 0, high) and 0 <= low_ci <= high_ci <= high, (key, boot[key])
    calibration = section["calibration"]
    assert calibration["n_bins"] == 4 and len(calibration["bin_edges"]) == 5
    assert sum(calibration["counts"]) == sum(case.counts())
    assert in_range(calibration["ece"])


def check_grad_cam(section: dict, case: Case) -> None:
    check_header(section, case)
    assert section["target_layer"] == case.model.target_layer
    n_real, n_fake = case.counts()
    assert (section["n_real"], section["n_fake"], section["n_images"]) == (n_real, n_fake, n_real + n_fake)
    assert section["fractions"] == [0.1, 0.3]
    assert in_range(section["mean_confidence"])
    for key in ("map_drop", "random_drop"):  # drops of a softmax confidence
        assert len(section[key]) == 2 and all(in_range(v, -1, 1) for v in section[key]), section[key]
    gap = section["mean_map_drop"] - section["mean_random_drop"]
    assert section["faithfulness_gap"] == pytest.approx(gap)


def check_robustness(section: dict, case: Case) -> None:
    check_header(section, case)
    n_real, n_fake = case.counts()
    assert (section["n_real"], section["n_fake"], section["n_images"]) == (n_real, n_fake, n_real + n_fake)
    assert section["subset"] is None  # --max_images 0: the whole test split
    check_headline(section["clean"])
    (name, entry), *others = section["perturbations"].items()
    assert name == "resize" and not others
    assert entry["severities"] == [0.75, 0.5, 0.25]  # the documented grades, mildest first
    for i in range(3):
        check_headline({key: entry[key][i] for key in ("auc", "eer", "ap", "accuracy")})


def check_cross_dataset(section: dict, case: Case) -> None:
    """The matrix (here one checkpoint's row) over the test splits of both datasets."""
    assert section["split"] == "test" and section["test_datasets"] == list(COUNTS)
    (row,) = section["rows"]
    assert (row["train_dataset"], row["model"], row["checkpoint"]) == (
        case.dataset,
        case.model.name,
        case.checkpoint,
    )
    assert list(row["results"]) == list(COUNTS)
    for dataset, cell in row["results"].items():
        check_headline(cell)
        assert (cell["n_real"], cell["n_fake"]) == case.counts(dataset), dataset
        assert cell["in_distribution"] == (dataset == case.dataset)


def check_spectrum(dataset: str) -> Callable[[dict, Case], None]:
    def check(section: dict, case: Case) -> None:
        assert (section["dataset"], section["split"], section["image_size"]) == (dataset, "test", 256)
        assert section["subset"] is None
        assert (section["n_real"], section["n_fake"]) == case.counts(dataset)
        freq = section["cycles_per_pixel"]
        assert freq[0] == 1 / 256 and all(a < b for a, b in itertools.pairwise(freq)) and freq[-1] <= 0.5**0.5
        for key in ("real_db", "fake_db", "fake_minus_real_db"):
            assert len(section[key]) == len(freq) and all(math.isfinite(v) for v in section[key]), key
        assert section["fake_minus_real_db"] == pytest.approx(
            [f - r for f, r in zip(section["fake_db"], section["real_db"])]
        )

    return check


def check_predictions(results: list, case: Case) -> None:
    """One record per test image, in the order given (the real folder, then the fake one)."""
    files = case.test_files()
    assert [r["path"] for r in results] == files["real"] + files["fake"]
    for record in results:
        assert in_range(record["p_fake"]) and record["p_fake"] + record["p_real"] == pytest.approx(1)
        assert record["label"] == ("fake" if record["p_fake"] > 0.5 else "real")
        stem = os.path.splitext(os.path.basename(record["path"]))[0]
        assert record["grad_cam"] == str(case.fig / f"{stem}_grad_cam.png")


def equals(expected: Callable[[Case], object]) -> Callable[[object, Case], None]:
    """A check that a section is ``expected(case)``."""

    def check(value, case: Case) -> None:
        assert value == expected(case)

    return check


def check_png(path: Path) -> None:
    """A PNG that decodes to the last byte, of plausible size, and not one flat colour."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        image.load()
        assert min(image.size) >= MIN_SIDE and max(image.size) <= MAX_SIDE, (path, image.size)
        low, high = image.convert("L").getextrema()
        assert low < high, f"{path}: blank"


# ----------------------------------------------------------------------------- the rows
def command_flags(case: Case, out: bool = True) -> list[str]:
    """The flags of a command of ``lib.flags.add_analysis_flags`` for this cell (``--out_dir``
    where the command writes JSON)."""
    flags = ["-m", case.model.name, "-cpp", case.checkpoint, "-d", case.dataset]
    flags += ["--data_root", case.root, "--figures_dir", str(case.fig), "--device", "cpu", "--no_progress"]
    return flags + (["--out_dir", str(case.out)] if out else [])


@dataclass(frozen=True)
class Analysis:
    """A row: one command and what it promises."""

    command: str  # the module of the top-level script
    argv: Callable[[Case], list[str]]  # its flags, with the smallest settings it offers
    figures: Callable[[Case], list[str]]  # the file names it writes into case.fig
    sections: Callable[[Case], dict] = (
        lambda case: {}
    )  # JSON file in case.out (or STDOUT) -> {section: check}
    prints: Callable[[Case], list[str]] = lambda case: []  # text its stdout must hold
    per_model: bool = True  # False: model-free, one cell instead of one per model
    tables: Callable[[Case], dict] = lambda case: {}  # CSV file in case.out -> its check


def metrics_json(case: Case) -> str:
    return f"{case.stem}_metrics.json"


ANALYSES = (
    Analysis(
        "numerical_analysis",
        lambda c: command_flags(c) + ["-b", "4", "--bootstrap", "20", "--ece_bins", "4"],
        lambda c: [f"{c.stem}_{s}.png" for s in ("roc_curve", "det_curve", "reliability_diagram")],
        lambda c: {metrics_json(c): {"numerical": check_numerical, "uncertainty": check_uncertainty}},
        tables=lambda c: {f"{c.stem}_scores.csv": check_scores_csv},
    ),
    Analysis(
        "saliency_map",
        lambda c: command_flags(c, out=False) + ["-b", "4"],
        lambda c: [f"{c.stem}_{s}.png" for s in ("saliency_maps_and_images_pairs", "mean_saliency_maps")],
        prints=lambda c: ["mean maps over {} real and {} fake test images".format(*c.counts())],
    ),
    Analysis(
        "grad_cam_analysis",
        lambda c: (
            command_flags(c)
            + ["-b", "4", "--target_layer", c.model.target_layer, "--fractions", "0.1", "0.3"]
        ),
        lambda c: [
            f"{c.stem}_{s}.png" for s in ("Real_Image_grad_cam", "Fake_Image_grad_cam", "mean_grad_cam")
        ],
        lambda c: {metrics_json(c): {"grad_cam": check_grad_cam}},
        prints=lambda c: ["faithfulness gap"],
    ),
    Analysis(
        "robustness_analysis",
        lambda c: command_flags(c) + ["-b", "4", "--max_images", "0", "--perturbations", "resize"],
        lambda c: [f"{c.stem}_robustness.png"],
        lambda c: {metrics_json(c): {"robustness": check_robustness}},
    ),
    Analysis(
        "plot_accuracy_and_loss",
        lambda c: ["-m", c.model.name, "-j", c.runs_json, "-d", c.dataset, "--figures_dir", str(c.fig)],
        lambda c: [f"{c.stem}_{s}.png" for s in ("losses_plot", "accuracies_plot")],
    ),
    Analysis(
        "cross_dataset_analysis",
        lambda c: [
            "--checkpoints",
            f"{c.dataset}:{c.model.name}:{c.checkpoint}",
            *analysis_argv(c.root, c.work, "-b", "4"),
        ],
        lambda c: ["cross_dataset.png"],
        lambda c: {
            "cross_dataset.json": {"cross_dataset": check_cross_dataset},
            metrics_json(c): {"cross_dataset": check_cross_dataset},
        },
    ),
    Analysis(
        "predict",
        lambda c: [
            "-m",
            c.model.name,
            "-cpp",
            c.checkpoint,
            os.path.join(c.root, c.dataset, "test", "real"),
            os.path.join(c.root, c.dataset, "test", "fake"),
            "--json",
            "--grad_cam",
            str(c.fig),
            "--target_layer",
            c.model.target_layer,
            "-b",
            "4",
            "--device",
            "cpu",
            "--no_progress",
        ],
        lambda c: [
            f"{os.path.splitext(os.path.basename(path))[0]}_grad_cam.png"
            for files in c.test_files().values()
            for path in files
        ],
        lambda c: {
            STDOUT: {
                "model": equals(lambda c: c.model.name),
                "checkpoint": equals(lambda c: c.checkpoint),
                "errors": equals(lambda c: []),
                "results": check_predictions,
            }
        },
    ),
    Analysis(
        "spectrum_analysis",
        lambda c: analysis_argv(c.root, c.work, "-b", "4"),
        lambda c: [f"{d}_spectrum.png" for d in COUNTS],
        lambda c: {f"{d}_spectrum.json": {"spectrum": check_spectrum(d)} for d in COUNTS},
        per_model=False,
    ),
)

CELLS = [
    pytest.param(analysis, model, id=f"{analysis.command}-{model.name}" if model else analysis.command)
    for analysis in ANALYSES
    for model in (MODELS if analysis.per_model else (None,))
]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def matrix_root(module_tmp) -> str:
    """The test splits of COUNTS; file names carry the class (``real0.png``, ``fake0.png``), so the
    Grad-CAM overlays of predict.py have one name each."""
    root = module_tmp("matrix_data")
    for d, (dataset, (n_real, n_fake)) in enumerate(COUNTS.items()):
        make_split(str(root / dataset / "test"), n_real, n_fake, 50 + d, name="{kind}{i}.png")
    return str(root)


def runs_document(model: Model) -> list[dict]:
    """A metrics JSON of train_main.py (the contract's keys, in order) holding one two-epoch run."""
    run = {
        "model": model.name,
        "dataset": model.dataset,
        "optimizer": {"name": "Adam", "params": {"lr": 0.001}},
    }
    for split in ("train", "val", "test"):
        run[f"{split}_loss"], run[f"{split}_acc"] = [0.7, 0.6], [50.0, 62.5]
    return [{**run, "completed": True}]


@pytest.fixture(scope="module")
def trained(module_tmp):
    """``trained(model)``: (checkpoint, runs JSON) of ``model`` in train_main.py's format: the
    random-init weights (seed 0) and a two-epoch run; made on first use, kept for the module."""
    done = {}

    def make(model: Model) -> tuple[str, str]:
        if model.name not in done:
            torch.manual_seed(0)
            folder = module_tmp(f"trained_{model.name}")
            stem = names.output_stem(model.dataset, model.name, "Adam")
            checkpoint, runs = folder / f"{stem}.pt", folder / f"{stem}.json"
            state = load_model(model.name, pretrained=False).state_dict()
            run = {"model_name": model.name, "dataset": model.dataset, "run_id": "0" * 32}
            torch.save({"model": state, "val_acc": 62.5, "test_acc": 62.5, "epoch": 2, **run}, checkpoint)
            runs.write_text(json.dumps(runs_document(model)))
            done[model.name] = (str(checkpoint), str(runs))
        return done[model.name]

    return make


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("analysis, model", CELLS)
def test_command_writes_what_it_promises(analysis, model, matrix_root, trained, tmp_path, capsys):
    case = Case(model, matrix_root, tmp_path)
    if model is not None:
        case.checkpoint, case.runs_json = trained(model)
    promised = analysis.sections(case)
    files = sorted(name for name in promised if name != STDOUT)
    case.out.mkdir()
    for name in files:  # another script's section, which the command must keep
        (case.out / name).write_text(json.dumps(OTHER_SECTION))

    code = run_cli(importlib.import_module(analysis.command).main, analysis.argv(case))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    case.stdout = captured.out

    figures = sorted(analysis.figures(case))
    assert sorted(os.listdir(case.fig)) == figures
    for name in figures:
        check_png(case.fig / name)
    tables = analysis.tables(case)
    assert sorted(os.listdir(case.out)) == sorted(files + list(tables))
    for name, check in tables.items():
        check(case.out / name, case)
    for where, checks in promised.items():
        document = json.loads(case.stdout if where == STDOUT else (case.out / where).read_text())
        if where != STDOUT:
            assert document.items() >= OTHER_SECTION.items(), f"{where}: another script's section lost"
        for section, check in checks.items():
            assert section in document, f"{where}: no '{section}' section"
            check(document[section], case)
    for text in analysis.prints(case):
        assert text in case.stdout, text


def test_every_model_has_a_column():
    assert sorted(model.name for model in MODELS) == sorted(names.MODEL_NAMES)


def test_every_named_figure_is_promised(matrix_root, tmp_path):
    """Every figure that lib/names.py names is promised by a row, under the same file name."""
    promised = set()
    for model in MODELS:
        case = Case(model, matrix_root, tmp_path, checkpoint="c.pt", runs_json="r.json")
        promised |= {name for analysis in ANALYSES for name in analysis.figures(case)}
        for suffixes in names.FIGURE_SUFFIXES.values():
            for suffix in suffixes:
                path = names.figure_path("", model.dataset, model.name, suffix)
                assert path in promised, f"{path} has no row in ANALYSES"
    assert os.path.basename(names.cross_dataset_paths("f", "o")[0]) in promised
    for dataset in COUNTS:
        assert os.path.basename(names.spectrum_paths("f", "o", dataset)[0]) in promised


VECTOR_MAGIC = {"pdf": b"%PDF-", "svg": b"<?xml"}
PLOTTING = [a for a in ANALYSES if a.command != "predict"]  # predict.py's overlays stay PNG


@pytest.mark.parametrize(
    "analysis, figure_format",
    [pytest.param(a, f, id=f"{a.command}-{f}") for a, f in zip(PLOTTING, itertools.cycle(VECTOR_MAGIC))],
)
def test_figure_format_gives_every_promised_figure_in_that_format(
    analysis, figure_format, matrix_root, trained, tmp_path, capsys
):
    """``--figure_format pdf|svg``: the same figures, under the same names with that extension,
    each a file of that format (its magic bytes); no PNG beside them."""
    model = MODELS[0] if analysis.per_model else None
    case = Case(model, matrix_root, tmp_path)
    if model is not None:
        case.checkpoint, case.runs_json = trained(model)
    argv = analysis.argv(case) + ["--figure_format", figure_format, "--dpi", "50"]
    assert run_cli(importlib.import_module(analysis.command).main, argv) == 0, capsys.readouterr().err
    expected = sorted(f"{os.path.splitext(name)[0]}.{figure_format}" for name in analysis.figures(case))
    assert sorted(os.listdir(case.fig)) == expected
    for name in expected:
        head = (case.fig / name).read_bytes()[:400]
        assert head.startswith(VECTOR_MAGIC[figure_format]), (name, head[:20])
        assert figure_format != "svg" or b"<svg" in head, name


@pytest.mark.parametrize(
    "analysis", [pytest.param(a, id=a.command) for a in PLOTTING if a.command != "plot_accuracy_and_loss"]
)
def test_workers_reach_every_data_loader(analysis, matrix_root, trained, tmp_path, monkeypatch, capsys):
    """``-j 3``: every DataLoader the command builds gets 3 workers (run here in-process, so the
    cell stays fast: the loader is built with the workers asked for recorded, then 0)."""
    from lib import batching

    asked = []
    real_loader = batching.DataLoader

    def loader(*args, num_workers=0, **kwargs):
        asked.append(num_workers)
        return real_loader(*args, num_workers=0, **kwargs)

    monkeypatch.setattr(batching, "DataLoader", loader)
    model = MODELS[0] if analysis.per_model else None
    case = Case(model, matrix_root, tmp_path)
    if model is not None:
        case.checkpoint, case.runs_json = trained(model)
    argv = analysis.argv(case) + ["-j", "3"]
    assert run_cli(importlib.import_module(analysis.command).main, argv) == 0, capsys.readouterr().err
    assert asked and set(asked) == {3}, asked
