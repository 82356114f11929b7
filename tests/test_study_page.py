"""The study report's HTML page in a real browser (headless Chromium): every image loads, figures
keep their natural width (shrunk only to fit), nothing is wider than the page at 1280 and 800 px
(wide tables scroll in their own box), a click shows a figure at full size, no console errors;
steps left out on purpose read "skipped", and the demo banner gives the demo's settings."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

import run_study
from browser import check_page, find_chromium
from lib.study import data as study_data
from lib.study.data import DataChoice
from lib.study.numbers import collect_numbers
from lib.study.report import Status, Study, page_context, render
from lib.study.runner import StepRecord

needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium)"
)


def _png(path: str, size: tuple[int, int]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (200, 220, 240)).save(path)


def _page(tmp_path, records: list[StepRecord], demo_settings: dict | None = None) -> tuple[str, str]:
    """The study page, HTML and Markdown, with every figure of the page a real PNG (some wider
    than any screen, as the saliency grid is), except those of the steps in ``records`` that were
    not selected."""
    args = run_study.build_parser().parse_args(["--workdir", str(tmp_path)])
    settings = run_study.make_settings(args, str(tmp_path / "data"), [])
    data = DataChoice(str(tmp_path / "data"), "demo", demo_settings is not None, demo_settings)
    study = Study(settings, data, {}, collect_numbers(settings, True, None), records=records)
    study.status = Status("done.")
    for figure in (f for part in page_context(study)["figures"].values() for f in part):
        if figure.left_out is None:
            wide = "saliency" in figure.path or "cross_dataset" in figure.path
            _png(figure.path, (2200, 700) if wide else (700, 450))
    context = page_context(study)
    return render(context, html=True), render(context, html=False, md_dir=settings.out_dir)


@needs_chromium
def test_the_page_reads_well_in_a_browser(tmp_path):
    records = [StepRecord(name, [], "log", status="ran") for name in ("samples", "train-simplenet-fakes")]
    records.append(StepRecord("saliency-simplenet-fakes", [], "log"))  # left out: "not selected"
    page, md = _page(tmp_path, records)
    path = tmp_path / "study_report.html"
    path.write_text(page, encoding="utf-8")
    measured = check_page(str(path))
    assert any(i["natural"] == 2200 and i["shown"] < 1280 for i in measured[1280]["images"])
    assert any(i["natural"] == 700 and i["shown"] >= 700 for i in measured[800]["images"])
    skipped = (
        "fakes_dataset_SimpleNet_mean_saliency_maps.png: skipped (step saliency-simplenet-fakes not selected)"
    )
    assert f'<p class="skipped">{skipped}</p>' in page and f"*{skipped}*" in md
    assert "missing" not in page.split("<h2>Figures</h2>")[1].split("<h2>")[0]


def test_demo_banner_gives_the_demos_settings(tmp_path):
    """From make_demo_datasets.py's markers in each dataset folder when run_study.py did not make the
    data; said plainly when nothing records them."""
    root = tmp_path / "demo"
    for dataset in ("fakes_dataset", "synthetic_dataset"):
        (root / dataset).mkdir(parents=True)
        marker = {"made_by": "make_demo_datasets.py", "dataset": dataset, "seed": 3, "scale": 0.5}
        (root / dataset / study_data.DEMO_MARKER).write_text(json.dumps(marker | {"full_size": False}))
    recorded = study_data.recorded_demo(str(root))
    assert recorded == {"scale": 0.5, "seed": 3, "full_size": False}
    _, md = _page(tmp_path, [], recorded)
    assert "(make_demo_datasets.py, scale 0.5, seed 3). Its numbers are not those of the course" in md
    marker["seed"] = 4
    (root / "synthetic_dataset" / study_data.DEMO_MARKER).write_text(json.dumps(marker))
    assert study_data.recorded_demo(str(root))["note"] == (
        "its datasets differ (fakes_dataset: scale 0.5, seed 3; synthetic_dataset: scale 0.5, seed 4)"
    )
    _, md = _page(tmp_path, [], study_data.UNRECORDED)
    assert "(make_demo_datasets.py, made before make_demo_datasets.py recorded its settings)" in md
    assert "?" not in md.split("DEMO DATA")[1].split("\n")[0]
