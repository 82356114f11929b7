"""The report's numbers and sentences (lib/study/numbers.py, lib/study/report.py), without training."""

from __future__ import annotations

import os

import pytest

import run_study
from lib.study.data import DataChoice
from lib.study.numbers import STUDY_NUMBERS, Protocol, RunNumbers, collect_numbers, verdict
from lib.study.plan import RUNS, samples_figure
from lib.study.report import Status, Study, page_context, render, score_label
from lib.study.runner import StepRecord
from run_study import model_facts

RUN = {run.tag: run for run in RUNS}


def _numbers(run, **values) -> RunNumbers:
    return RunNumbers(run.model, run.dataset, "j", "m", epochs=run.default_epochs, **values)


def test_model_facts_match_closed_forms():
    """Q21, Q22, Q24 from the built models, against counts written out from the layer shapes."""
    facts = model_facts()
    head = (2048 * 1000 + 1000) + (1000 * 256 + 256) + (256 * 64 + 64) + (64 * 2 + 2)
    assert facts["head_in_features"] == 2048
    assert facts["head_params"] == head == 2_321_834
    # the backbone as the study counts it: XceptionBased without its head, with the 1000-class fc
    assert facts["backbone_params"] == facts["XceptionBased"] - head + (2048 * 1000 + 1000) == 22_855_952
    assert facts["SimpleNet"] == 16_901_762


def test_about_fifty_percent_is_shown_beside_without_a_verdict():
    run = RUN["simplenet-synthetic"]
    sentence = verdict(run, _numbers(run, best_val_acc=65.0, test_acc_at_best=50.0, auc_b=0.56), demo=True)
    assert (
        "beside the study's val about 50 %, test about 50 %, AUC(B) about 0.5 (a constant classifier)"
        in sentence
    )
    assert not any(word in sentence for word in ("within", "below", "above", "outside"))


@pytest.mark.parametrize(
    "val, test, auc, position",
    [
        (87.0, 85.0, 0.9, "within"),
        (60.0, 55.0, 0.6, "below"),
        (87.0, 70.0, 0.9, "partly within, partly outside"),
        (80.0, 90.0, 0.8, "partly below, partly above"),  # none within
        (83.96, 80.96, 0.876, "within"),  # shown as 84.0, 81.0, 0.88: judged as shown
        (91.04, 88.04, 0.952, "within"),  # 91.0, 88.0, 0.95
    ],
)
def test_ranges_give_a_verdict(val, test, auc, position):
    run = RUN["simplenet-fakes"]
    sentence = verdict(run, _numbers(run, best_val_acc=val, test_acc_at_best=test, auc_b=auc), demo=False)
    assert sentence.startswith(
        f"val {val:.1f} %, test {test:.1f} %, AUC(B) {auc:.2f}: {position} the "
        "study's val 84-91 %, test 81-88 %, AUC(B) 0.88-0.95"
    )
    assert STUDY_NUMBERS["simplenet-fakes"].source().endswith("its report: 83.95 / 76.57 %")


def test_protocol_comes_from_the_run_and_names_differences():
    run = {
        "args": {"optimizer": "SGD", "lr": 0.01, "batch_size": 8, "epochs": 3, "precise_bn": 64},
        "optimizer": {"name": "SGD", "params": {"lr": 0.01}},
        "precise_bn": 64,
    }
    protocol = Protocol.of_run(run)
    assert protocol.text() == "SGD, lr 0.01, batch 8, 3 epochs, precise BatchNorm over 64 training batches"
    assert protocol.differences(has_batchnorm=False) == [
        "optimizer SGD instead of Adam",
        "lr 0.01 instead of 0.001",
        "batch 8 instead of 32",
    ]
    assert protocol.differences(has_batchnorm=True) == [
        "optimizer SGD instead of Adam",
        "lr 0.01 instead of 0.001",
        "batch 8 instead of 32",
        "precise BatchNorm statistics (64 batches), which the study did not use",
    ]
    course = Protocol.of_run(
        {"args": {"optimizer": "Adam", "lr": 0.001, "batch_size": 32, "epochs": 5, "precise_bn": 0}}
    )
    assert course.text().endswith("precise BatchNorm off") and course.differences(True) == []
    assert (
        Protocol.of_run({"optimizer": {"name": "Adam", "params": {"lr": 0.001}}}).text()
        == "Adam, lr 0.001, batch ?, ? epochs, precise BatchNorm statistics not recorded"
    )


def test_protocol_names_the_training_options_the_study_did_not_use():
    course = {"optimizer": "Adam", "lr": 0.001, "batch_size": 32, "epochs": 5, "precise_bn": 0}
    off = {"weight_decay": 0.0, "lr_schedule": "none", "warmup_epochs": 0, "label_smoothing": 0.0}
    off |= {"clip_grad": None, "select_by": "val_acc", "balance": "none", "blur_prob": 0.0, "jpeg_prob": 0}
    recorded = {"model": "resnet50", "head": "linear", **off}

    def differences(**protocol) -> list[str]:
        run = {"args": course, "protocol": recorded | protocol}
        return Protocol.of_run(run).differences(has_batchnorm=True)

    assert differences() == []
    assert differences(weight_decay=1e-4, lr_schedule="cosine", select_by="val_auc") == [
        "weight_decay 0.0001, which the study did not use",
        "lr_schedule cosine, which the study did not use",
        "select_by val_auc, which the study did not use",
    ]
    assert differences(select_by="val_acc", lr_schedule="none") == []
    assert differences(head="mlp", jpeg_prob=0.5) == [
        "jpeg_prob 0.5, which the study did not use",
        "head mlp instead of linear",
    ]
    assert Protocol.of_run({"args": course}).differences(True) == []  # no protocol recorded


def test_score_columns_are_labelled_as_the_metrics_json_says():
    run = RUN["simplenet-fakes"]
    said = {"auc_a": "raw output column 0", "auc_b": "raw output column 1"}
    assert score_label({"a": _numbers(run, score_of=said), "b": _numbers(run)}, 1) == "raw output column 1"
    assert score_label({"a": _numbers(run, scores="softmax")}, 0) == "softmax column 0"
    assert (
        score_label(
            {"a": _numbers(run, score_of=said), "b": _numbers(run, score_of={"auc_a": "softmax column 0"})}, 0
        )
        == "column 0"
    )


def test_renderers_escape_and_embed(tmp_path):
    """Markdown: the text as it is, '|' escaped in table cells, figures linked relative to the report;
    HTML: every value escaped, every figure embedded as a data URI, a missing one said."""
    args = run_study.build_parser().parse_args(["--workdir", str(tmp_path)])
    settings = run_study.make_settings(args, "T <1> & x", [])
    png = b"\x89PNG\r\n\x1a\nfake"
    os.makedirs(settings.figures_dir)
    with open(samples_figure(settings), "wb") as handle:
        handle.write(png)
    runs = collect_numbers(settings, demo=False, pretrained=False)  # XceptionBased will start at random
    data = DataChoice("T <1> & x", "--data_root", False)
    study = Study(settings, data, {}, runs, records=[StepRecord("a|b", [], "log")], status=Status("done."))
    context = page_context(study)
    md = render(context, html=False, md_dir=settings.out_dir)
    assert md.startswith("# Facial manipulation detection: the study, re-run\n\nGenerated ")
    assert "\nData root: T <1> & x (from --data_root).\n" in md and "\n| a\\|b | not selected |" in md
    assert "\n![datasets_samples.png](../figures/datasets_samples.png)\n" in md
    assert "\n*cross_dataset.png: missing (its step has not run)*\n" in md and "\n\n\n" not in md
    assert "\n> **WARNING:** XceptionBased was trained from RANDOM INITIALISATION, not from ImageNet " in md
    assert "its training run records pretrained = false). The study's 96-99 % needs ImageNet weights" in md
    page = render(context, html=True)
    assert "<p>Data root: T &lt;1&gt; &amp; x (from --data_root).</p>" in page and "<td>a|b</td>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in page
    assert '<p class="missing">cross_dataset.png: missing (its step has not run)</p>' in page
    assert page.count("<figure>") == 1 and "T <1>" not in page


@pytest.mark.parametrize("figure_format", ["svg", "pdf"])
def test_the_page_embeds_svg_and_links_pdf(tmp_path, figure_format):
    """The study's --figure_format reaches the page: an SVG is embedded as such, a PDF (which an
    <img> cannot show) is linked relative to the page; both pages name the file."""
    argv = ["--workdir", str(tmp_path), "--figure_format", figure_format]
    settings = run_study.make_settings(run_study.build_parser().parse_args(argv), "root", [])
    os.makedirs(settings.figures_dir)
    content = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'
        if figure_format == "svg"
        else b"%PDF-1.4"
    )
    with open(samples_figure(settings), "wb") as handle:
        handle.write(content)
    assert samples_figure(settings).endswith(f"datasets_samples.{figure_format}")
    runs = collect_numbers(settings, demo=False, pretrained=False)
    context = page_context(Study(settings, DataChoice("root", "--data_root", False), {}, runs))
    page = render(context, html=True, md_dir=settings.out_dir)
    md = render(context, html=False, md_dir=settings.out_dir)
    assert f"(../figures/datasets_samples.{figure_format})" in md
    if figure_format == "svg":
        assert 'src="data:image/svg+xml;base64,' in page and page.count("<figure>") == 1
    else:
        assert '<a href="../figures/datasets_samples.pdf">datasets_samples.pdf</a>' in page
        assert "<figure>" not in page


def _epochs(run_id: str, val: list, test: list) -> dict:
    """A runs-JSON entry of SimpleNet on fakes_dataset with these per-epoch accuracies."""
    run = {"model": "SimpleNet", "dataset": "fakes_dataset", "run_id": run_id, "val_acc": val}
    run |= {"test_acc": test, "train_acc": val, "train_loss": [0.5] * len(val), "val_loss": [0.5] * len(val)}
    return run | {
        "test_loss": [0.5] * len(val),
        "args": {"optimizer": "Adam", "lr": 0.001, "epochs": len(val)},
    }


def test_the_run_shown_is_the_checkpoints_not_the_last_in_the_json(tmp_path):
    """A side run appended to the study's runs JSON (another run, sharing --out_dir) is not the
    one whose checkpoint the analyses read: the report shows the checkpoint's run, and says so
    when that run is not in the JSON, never showing another run's numbers instead."""
    import json

    import torch

    from lib.study.numbers import run_numbers
    from lib.study.plan import checkpoint_path, runs_json_path

    settings = run_study.make_settings(
        run_study.build_parser().parse_args(["--workdir", str(tmp_path)]), "r", []
    )
    run = RUN["simplenet-fakes"]
    study_run = _epochs("study", [60.0, 80.0], [55.0, 75.0])
    side_run = _epochs("side", [100.0] * 3, [50.0] * 3)
    os.makedirs(settings.out_dir)
    with open(runs_json_path(settings, run), "w") as handle:
        json.dump([study_run, side_run], handle)
    checkpoint = checkpoint_path(settings, run)
    os.makedirs(os.path.dirname(checkpoint))
    torch.save({"model": {}, "epoch": 2, "run_id": "study"}, checkpoint)
    n = run_numbers(settings, run)
    assert (n.best_val_acc, n.test_acc_at_best, n.epochs, n.best_val_epoch) == (80.0, 75.0, 2, 2)
    assert n.run_id == "study" and n.n_runs_in_json == 2 and n.problem is None
    for saved in ({"model": {}, "run_id": "gone"}, {"model": {}}):  # a run not in the JSON; no id at all
        torch.save(saved, checkpoint)
        n = run_numbers(settings, run)
        assert n.best_val_acc is None and n.epochs == 0 and n.protocol is None
        assert checkpoint in n.problem and "training numbers are left out" in n.problem
        runs = collect_numbers(settings, demo=False, pretrained=None)
        context = page_context(Study(settings, DataChoice("r", "--data_root", False), {}, runs))
        md = render(context, html=False)
        assert f"> **WARNING:** SimpleNet on fakes_dataset: {n.problem}" in md
        assert "| SimpleNet, fakes_dataset | - | - | - |" in md  # no accuracies of the side run
    os.remove(checkpoint)
    assert "missing, so which run" in run_numbers(settings, run).problem


def test_analyses_of_an_earlier_training_run_are_left_out(tmp_path):
    """Retrained without its analyses run again (--steps train-...), a run's row must not put the
    new model's accuracies beside the old model's AUC: a section or matrix row whose run id is not
    the checkpoint's is left out and said; one without a run id (an older version) is kept."""
    import json

    import torch

    from lib.study.numbers import cross_dataset_numbers, run_numbers
    from lib.study.plan import checkpoint_path, cross_dataset_json_path, metrics_json_path, runs_json_path

    settings = run_study.make_settings(
        run_study.build_parser().parse_args(["--workdir", str(tmp_path)]), "r", []
    )
    run = RUN["simplenet-fakes"]
    os.makedirs(settings.out_dir)
    with open(runs_json_path(settings, run), "w") as handle:
        json.dump([_epochs("new", [60.0, 80.0], [55.0, 75.0])], handle)
    checkpoint = checkpoint_path(settings, run)
    os.makedirs(os.path.dirname(checkpoint))
    torch.save({"model": {}, "epoch": 2, "run_id": "new"}, checkpoint)
    sections = {
        "numerical": {"run_id": "old", "auc": 0.9, "eer": 0.1},
        "grad_cam": {"run_id": "new", "faithfulness_gap": 0.25},
        "robustness": {"clean": {"auc": 0.7}},
    }
    with open(metrics_json_path(settings, run), "w") as handle:
        json.dump(sections, handle)
    n = run_numbers(settings, run)
    assert (n.best_val_acc, n.auc, n.eer, n.grad_cam_faithfulness_gap, n.robustness_clean_auc) == (
        80.0,
        None,
        None,
        0.25,
        0.7,
    )
    assert n.other_run_sections == ["numerical"]
    assert "Its numerical numbers are left out: they are of an earlier training run" in verdict(
        run, n, demo=False
    )
    cells = {"fakes_dataset": {"auc": 0.9, "accuracy": 80.0, "eer": 0.1, "in_distribution": True}}
    rows = [{"label": label, "checkpoint": checkpoint, "run_id": run_id, "results": cells}
            for label, run_id in (("old model", "old"), ("new model", "new"), ("no id", None))]  # fmt: skip
    with open(cross_dataset_json_path(settings), "w") as handle:
        json.dump({"cross_dataset": {"test_datasets": ["fakes_dataset"], "rows": rows}}, handle)
    shown = cross_dataset_numbers(settings)["rows"]
    assert [(row["label"], bool(row["cells"])) for row in shown] == [
        ("old model [left out: an earlier training run than its checkpoint's]", False),
        ("new model", True),
        ("no id", True),
    ]
