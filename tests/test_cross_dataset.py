"""cross_dataset.py and cross_dataset_analysis.py: checkpoint discovery, and every matrix cell
against an independent forward pass and sklearn."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision import transforms as T

import cross_dataset_analysis
from conftest import analysis_argv, one_line_error
from lib import cross_dataset
from lib.cli import UserError, run_cli
from lib.metrics import equal_error_rate
from lib.transforms import NORMALIZE_MEAN, NORMALIZE_STD
from models import SimpleNet

DATASETS = ("fakes_dataset", "synthetic_dataset")


def test_checkpoint_specs_parse_and_refuse():
    spec = cross_dataset.parse_checkpoint_spec("fakes_dataset:SimpleNet:runs/a:b.pt")
    assert (spec.dataset, spec.model, spec.path, spec.optimizer) == (
        "fakes_dataset",
        "SimpleNet",
        "runs/a:b.pt",
        None,
    )
    spec = cross_dataset.parse_checkpoint_spec("x/synthetic_dataset_XceptionBased_SGD.pt")
    assert (spec.dataset, spec.model, spec.optimizer) == ("synthetic_dataset", "XceptionBased", "SGD")
    for bad in ("model.pt", ":SimpleNet:x.pt", "fakes_dataset:Net:x.pt"):
        with pytest.raises(UserError, match="DATASET:MODEL:PATH"):
            cross_dataset.parse_checkpoint_spec(bad)


def test_discovery_takes_only_best_checkpoints(tmp_path):
    for name in (
        "fakes_dataset_SimpleNet_Adam.pt",
        "fakes_dataset_SimpleNet_Adam_last.pt",
        "synthetic_dataset_SimpleNet_SGD.run-3.pt",
        "notes.txt",
        "synthetic_dataset_XceptionBased_Adam.pt",
    ):
        (tmp_path / name).write_bytes(b"")
    found = cross_dataset.discover_checkpoints(str(tmp_path))
    assert [(s.dataset, s.model, s.optimizer) for s in found] == [
        ("fakes_dataset", "SimpleNet", "Adam"),
        ("synthetic_dataset", "XceptionBased", "Adam"),
    ]
    with pytest.raises(UserError, match="no checkpoints"):
        cross_dataset.discover_checkpoints(str(tmp_path / "missing"))


def test_a_checkpoint_of_another_model_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "fakes_dataset_SimpleNet_Adam.pt"
    torch.save({"model": SimpleNet().state_dict()}, path)
    spec_text = f"fakes_dataset:XceptionBased:{path}"
    monkeypatch.setattr(cross_dataset_analysis, "load_dataset", lambda *a: pytest.fail("decoded images"))
    with pytest.raises(UserError, match=f"give it as fakes_dataset:SimpleNet:{path}"):
        cross_dataset_analysis.main(["--checkpoints", spec_text, "--device", "cpu"])


def test_a_checkpoint_that_does_not_fit_is_refused_before_decoding(tmp_path, monkeypatch):
    """No model name and keys of no model: refused by the one load, before any image is read."""
    path = tmp_path / "fakes_dataset_SimpleNet_Adam.pt"
    torch.save({"model": {"conv9.weight": torch.zeros(2)}}, path)
    monkeypatch.setattr(cross_dataset_analysis, "load_dataset", lambda *a: pytest.fail("decoded images"))
    with pytest.raises(UserError, match="does not fit a SimpleNet model"):
        cross_dataset_analysis.main(["--checkpoints", f"fakes_dataset:SimpleNet:{path}", "--device", "cpu"])


def independent_scores(state_dict, folder):
    """P(fake) and labels of a test split: PIL -> torchvision v1 transforms -> one image at a time."""
    model = SimpleNet()
    model.load_state_dict(state_dict)
    model.eval()
    transform = T.Compose([T.ToTensor(), T.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)])
    scores, labels = [], []
    for label, class_dir in enumerate(("real", "fake")):
        for name in sorted(os.listdir(os.path.join(folder, class_dir))):
            image = Image.open(os.path.join(folder, class_dir, name)).convert("RGB")
            with torch.no_grad():
                scores.append(torch.softmax(model(transform(image)[None]).double(), 1)[0, 1].item())
            labels.append(label)
    return np.array(scores), np.array(labels)


def test_matrix_cells_match_an_independent_evaluation(tiny_root, tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    states = {}
    for seed, dataset in enumerate(DATASETS):
        torch.manual_seed(10 + seed)
        states[dataset] = SimpleNet().state_dict()
        torch.save({"model": states[dataset]}, folder / f"{dataset}_SimpleNet_Adam.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fakes_dataset_SimpleNet_metrics.json").write_text(json.dumps({"numerical": {"kept": 1}}))
    args = ["--checkpoint_dir", str(folder), *analysis_argv(tiny_root, tmp_path, "-b", "4")]
    assert run_cli(cross_dataset_analysis.main, args) == 0

    matrix = json.loads((out / "cross_dataset.json").read_text())["cross_dataset"]
    assert matrix["test_datasets"] == list(DATASETS) and len(matrix["rows"]) == 2
    for row in matrix["rows"]:
        for test in DATASETS:
            scores, labels = independent_scores(
                states[row["train_dataset"]], os.path.join(tiny_root, test, "test")
            )
            cell = row["results"][test]
            assert cell["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
            assert cell["accuracy"] == pytest.approx(100 * np.mean((scores > 0.5) == labels))
            assert cell["eer"] == pytest.approx(equal_error_rate(labels, scores)[0], abs=1e-9)
            assert cell["in_distribution"] == (test == row["train_dataset"])
            assert (cell["n_real"], cell["n_fake"]) == (4, 2)
    run = json.loads((out / "fakes_dataset_SimpleNet_metrics.json").read_text())
    assert run["numerical"] == {"kept": 1}  # another script's section is kept
    assert run["cross_dataset"]["rows"] == [matrix["rows"][0]]
    assert (tmp_path / "fig" / "cross_dataset.png").is_file()
    assert "* in-distribution" in capsys.readouterr().out


def test_heat_map_labels_exactly_the_in_distribution_cells():
    def cell(inside):
        return {"auc": 0.7, "accuracy": 60.0, "eer": 0.3, "in_distribution": inside}

    rows = [
        {
            "label": "A, trained on fakes_dataset",
            "results": {"fakes_dataset": cell(True), "synthetic_dataset": cell(False)},
        },
        {
            "label": "B, trained on synthetic_dataset",
            "results": {"fakes_dataset": cell(False), "synthetic_dataset": cell(True)},
        },
        {
            "label": "C, trained on synthetic_dataset",
            "results": {"fakes_dataset": cell(False), "synthetic_dataset": cell(True)},
        },
    ]
    fig = cross_dataset.plot_matrix(rows, list(DATASETS))
    for ax in fig.axes[:3]:  # the heat maps (the colour bars come after them)
        labelled = [t.get_position() for t in ax.texts if "in-distribution" in t.get_text()]
        assert sorted(labelled) == [(0, 0), (1, 1), (1, 2)]  # (column, row)


def _recorded_checkpoint(path, dataset: str, optimizer: str = "Adam", run_id: str = "abc123") -> dict:
    """A best checkpoint as train_main.py writes it: it records its dataset, model, optimizer, run."""
    torch.manual_seed(5)
    state = SimpleNet().state_dict()
    torch.save(
        {
            "model": state,
            "val_acc": 50.0,
            "test_acc": 50.0,
            "epoch": 1,
            "model_name": "SimpleNet",
            "dataset": dataset,
            "optimizer": {"name": optimizer, "params": {"lr": 0.001}},
            "run_id": run_id,
        },
        path,
    )
    return state


def test_a_spec_contradicting_the_checkpoint_is_refused_and_nothing_is_overwritten(
    tmp_path, monkeypatch, capsys
):
    """A fakes_dataset checkpoint given as synthetic_dataset:SimpleNet:PATH was framed as
    in-distribution on the wrong column and overwrote the synthetic run's section."""
    path = tmp_path / "fakes_dataset_SimpleNet_Adam.pt"
    _recorded_checkpoint(path, "fakes_dataset")
    out = tmp_path / "out"
    out.mkdir()
    real_run = out / "synthetic_dataset_SimpleNet_metrics.json"
    real_run.write_text(json.dumps({"cross_dataset": {"rows": ["the real synthetic run"]}}))
    before = real_run.read_bytes()
    monkeypatch.setattr(cross_dataset_analysis, "load_dataset", lambda *a: pytest.fail("decoded images"))
    spec = f"synthetic_dataset:SimpleNet:{path}"
    argv = [
        "--checkpoints",
        spec,
        "--device",
        "cpu",
        "--out_dir",
        str(out),
        "--figures_dir",
        str(tmp_path / "f"),
    ]
    one_line_error(
        capsys,
        cross_dataset_analysis.main,
        argv,
        f"{path}: the checkpoint records dataset fakes_dataset, but --checkpoints {spec} says "
        f"dataset synthetic_dataset; give it as fakes_dataset:SimpleNet:{path}",
    )
    assert real_run.read_bytes() == before and os.listdir(out) == [real_run.name]
    assert not (tmp_path / "f").exists()


def test_a_file_name_contradicting_the_checkpoint_is_refused_in_discovery(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    renamed = folder / "synthetic_dataset_SimpleNet_SGD.pt"  # records fakes_dataset and Adam
    _recorded_checkpoint(renamed, "fakes_dataset")
    monkeypatch.setattr(cross_dataset_analysis, "load_dataset", lambda *a: pytest.fail("decoded images"))
    one_line_error(
        capsys,
        cross_dataset_analysis.main,
        ["--checkpoint_dir", str(folder), "--device", "cpu", "--out_dir", str(tmp_path / "out")],
        f"{renamed}: the checkpoint records dataset fakes_dataset and optimizer Adam, but its file name "
        "says dataset synthetic_dataset and optimizer SGD; give it as fakes_dataset:SimpleNet:",
    )
    assert not (tmp_path / "out").exists()


def test_the_recorded_optimizer_and_run_id_label_the_row(tiny_root, tmp_path):
    path = tmp_path / "best.pt"  # a name that says nothing
    _recorded_checkpoint(path, "synthetic_dataset", optimizer="SGD", run_id="run-42")
    args = [
        "--checkpoints",
        f"synthetic_dataset:SimpleNet:{path}",
        *analysis_argv(tiny_root, tmp_path, "-b", "4"),
    ]
    assert run_cli(cross_dataset_analysis.main, args) == 0
    (row,) = json.loads((tmp_path / "out" / "cross_dataset.json").read_text())["cross_dataset"]["rows"]
    assert (row["train_dataset"], row["optimizer"], row["run_id"]) == ("synthetic_dataset", "SGD", "run-42")
    assert row["label"] == "SimpleNet, SGD, trained on synthetic_dataset"
    assert row["results"]["synthetic_dataset"]["in_distribution"] is True
    assert row["results"]["fakes_dataset"]["in_distribution"] is False
