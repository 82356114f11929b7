"""The report's numbers and sentences (study/numbers.py, study/report.py), without training."""

from __future__ import annotations

import pytest

from lib.study.numbers import STUDY_NUMBERS, Protocol, RunNumbers, verdict
from lib.study.plan import RUNS
from lib.study.report import render_html, render_markdown, score_label
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
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    blocks = [
        ("h1", "T <1>"),
        ("warn", "careful | x"),
        ("table", ["a|b"], [["1"]]),
        ("figure", str(png), "a.png"),
        ("figure", str(tmp_path / "none.png"), "none.png"),
    ]
    md = render_markdown(blocks, str(tmp_path))
    assert "# T <1>" in md and "> **WARNING:** careful | x" in md and "| a\\|b |" in md
    assert "![a.png](a.png)" in md and "*none.png: missing (its step has not run)*" in md
    page = render_html(blocks)
    assert "<h1>T &lt;1&gt;</h1>" in page and 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in page
