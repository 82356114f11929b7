"""Every file a study step's command writes is among the step's declared outputs (the skip rule
checks exactly those): one step of each kind, its command run in-process on tiny data, the files it
wrote compared with ``Step.outputs``; with the course's names and PNGs, and with named runs drawn
as SVG (the study passes --run_name, --figure_format and --dpi on)."""

from __future__ import annotations

import importlib
import os

import pytest

import run_study
from conftest import make_tree
from lib.study import plan as study_plan

COUNTS = {"train": (3, 2), "val": (1, 1), "test": (2, 2)}
# one step of every kind; the SimpleNet runs are quick (cross-dataset needs both checkpoints)
STEPS = (
    "samples",
    "spectrum",
    "train-simplenet-fakes",
    "train-simplenet-synthetic",
    "curves-simplenet-fakes",
    "numerical-simplenet-fakes",
    "gradcam-simplenet-fakes",
    "robustness-simplenet-fakes",
    "saliency-simplenet-fakes",
    "cross-dataset",
)


def _files(folder: str) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (hidden ones, such as lock files, left out): size and mtime."""
    found = {}
    for where, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                st = os.stat(os.path.join(where, name))
                found[os.path.join(where, name)] = (st.st_size, st.st_mtime_ns)
    return found


NAMED_SVG = ["--run_name", "r1", "--figure_format", "svg", "--dpi", "40"]


@pytest.fixture(scope="module", params=[[], NAMED_SVG], ids=["course-names", "named-svg"])
def written(module_tmp, request):
    """{step name: (the files its command wrote or changed, the step)}, in the plan's order."""
    tmp = module_tmp("outputs" + "-".join(request.param))
    data = make_tree(str(tmp / "data"), COUNTS, seed=4)
    work = str(tmp / "work")
    args = run_study.build_parser().parse_args(
        ["--workdir", work, "--epochs", "1", "-b", "4", "--device", "cpu", "--num_workers", "0"]
        + ["--precise_bn", "0", "--gradcam_max_images", "2", *request.param]
    )
    steps = {step.name: step for step in study_plan.build_plan(run_study.make_settings(args, data, []))}
    assert set(STEPS) <= set(steps) and {steps[n].kind for n in STEPS} == set(study_plan.STEP_KINDS) - {
        "report"
    }
    result = {}
    for name in STEPS:
        step = steps[name]
        before = _files(work)
        script = importlib.import_module(step.script.removesuffix(".py"))
        assert script.main(list(step.args)) == 0, name
        after = _files(work)
        result[name] = ({p for p, sig in after.items() if before.get(p) != sig}, step)
    return result


@pytest.mark.parametrize("name", STEPS)
def test_every_file_a_step_writes_is_among_its_outputs(written, name):
    files, step = written[name]
    declared = set(step.outputs) | ({step.resume_from} if step.resume_from else set())
    assert files == declared, (
        f"written, not declared: {sorted(files - declared)}; declared, not written: "
        + str(sorted(declared - files))
    )


def test_named_svg_steps_name_every_file_after_the_run(written):
    """With --run_name r1 --figure_format svg: every figure is an SVG, and every file of a run
    (training and analyses) carries the name; without them, no file does."""
    files = {path for name in STEPS for path in written[name][0]}
    named = "r1" in {arg for name in STEPS for arg in written[name][1].args}
    figures = [p for p in files if os.path.basename(os.path.dirname(p)) == "figures"]
    assert figures and all(p.endswith(".svg" if named else ".png") for p in figures), figures
    per_run = [p for p in files if "_SimpleNet_" in os.path.basename(p)]
    assert per_run and all(("_r1" in os.path.basename(p)) == named for p in per_run), per_run
