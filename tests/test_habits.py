"""Habits of the command line (issue 21 items 1 and 5) and two guards of the scoring paths:
models whose outputs overflow, and file names that would forge predict.py's text fields."""

from __future__ import annotations

import os

import pytest
import torch

import cross_dataset_analysis
import grad_cam_analysis
import numerical_analysis
import predict
import robustness_analysis
import saliency_map
from conftest import ROOT, analysis_argv, make_image, one_line_error
from models import SimpleNet


@pytest.fixture(scope="module")
def overflowing_checkpoint(module_tmp) -> str:
    """A SimpleNet whose finite weights are scaled by 1e7: its logits overflow to inf/NaN."""
    torch.manual_seed(0)
    state = {k: v * 1e7 for k, v in SimpleNet().state_dict().items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    path = module_tmp("overflow") / "fakes_dataset_SimpleNet_Adam.pt"
    torch.save({"model": state, "epoch": 1, "model_name": "SimpleNet"}, path)
    return str(path)


def test_the_overflowing_model_really_overflows(overflowing_checkpoint):
    """The control: the model's own logits on a test-sized input are not finite."""
    model = SimpleNet()
    model.load_state_dict(torch.load(overflowing_checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        assert not torch.isfinite(model.eval()(torch.randn(2, 3, 256, 256))).all()


@pytest.mark.parametrize(
    "main, extra",
    [
        (numerical_analysis.main, ["--bootstrap", "10"]),
        (robustness_analysis.main, []),
        (saliency_map.main, []),
        (grad_cam_analysis.main, []),
    ],
    ids=["numerical", "robustness", "saliency", "grad_cam"],
)
def test_non_finite_outputs_are_one_line_in_every_analysis(
    overflowing_checkpoint, tiny_root, tmp_path, capsys, main, extra
):
    argv = analysis_argv(tiny_root, tmp_path, "-m", "SimpleNet", "-cpp", overflowing_checkpoint, *extra)
    if main is saliency_map.main:  # it writes no JSON
        at = argv.index("--out_dir")
        argv = argv[:at] + argv[at + 2 :]
    one_line_error(capsys, main, argv, overflowing_checkpoint, "not finite", "retrain")


def test_non_finite_outputs_in_cross_dataset_and_predict(overflowing_checkpoint, tiny_root, tmp_path, capsys):
    spec = f"fakes_dataset:SimpleNet:{overflowing_checkpoint}"
    argv = ["--checkpoints", spec, "--data_root", tiny_root, "--figures_dir", str(tmp_path / "fig")]
    argv += ["--out_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress", "-d", "fakes_dataset"]
    one_line_error(capsys, cross_dataset_analysis.main, argv, overflowing_checkpoint, "not finite")
    image = os.path.join(tiny_root, "fakes_dataset", "test", "real", "img000.png")
    for flags in ([], ["--json"]):
        argv = ["-m", "SimpleNet", "-cpp", overflowing_checkpoint, image, "--device", "cpu", *flags]
        one_line_error(capsys, predict.main, argv + ["--no_progress"], overflowing_checkpoint, "not finite")
        assert "nan" not in capsys.readouterr().out.lower()


def test_predict_text_fields_cannot_be_forged(simplenet_checkpoint, tmp_path, capsys):
    """A file name holding a tab and a newline stays one line of three fields, its name escaped."""
    import numpy as np

    from lib.cli import run_cli

    name = "a\tP(fake)=0.0000\treal\nforged.png"
    make_image(np.random.default_rng(0), fake=True).save(tmp_path / name)
    argv = [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        str(tmp_path),
        "--device",
        "cpu",
        "--no_progress",
    ]
    assert run_cli(predict.main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    path, score, label = lines[0].split("\t")
    assert path == str(tmp_path / "a\\tP(fake)=0.0000\\treal\\nforged.png")
    assert score.startswith("P(fake)=") and label in ("real", "fake")


SCRIPTS = {  # every top-level command, with the least it needs to parse
    "cross_dataset_analysis": [],
    "grad_cam_analysis": [],
    "make_demo_datasets": ["--out", "d"],
    "make_demo_videos": ["--out", "d"],
    "numerical_analysis": [],
    "plot_accuracy_and_loss": ["-j", "x.json"],
    "plot_samples_of_faces_datasets": [],
    "predict": ["x.png"],
    "prepare_videos": ["--input", "i", "--out", "o", "--dataset", "d"],
    "robustness_analysis": [],
    "run_study": [],
    "saliency_map": [],
    "spectrum_analysis": [],
    "train_main": [],
}
ANALYSES = ("cross_dataset_analysis", "grad_cam_analysis", "numerical_analysis", "robustness_analysis")
ANALYSES += ("saliency_map", "spectrum_analysis")
WORKER_SCRIPTS = ("make_demo_datasets", "make_demo_videos", "prepare_videos", "run_study", "train_main")
WORKER_SCRIPTS += ANALYSES


def test_every_command_is_listed():
    def is_command(name):
        with open(os.path.join(ROOT, name)) as handle:
            return name.endswith(".py") and "__main__" in handle.read()

    commands = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py") and is_command(name)}
    assert commands == set(SCRIPTS)


def long_flags(parser) -> list[tuple[str, str]]:
    """(flag, dest) of every multi-word long flag of ``parser``."""
    return [(f, a.dest) for a in parser._actions for f in a.option_strings if f.startswith("--") and "_" in f]


def value_for(action) -> list[str]:
    """A value ``action`` accepts on the command line (none for a switch)."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(iter(action.choices)))]
    return ["1"] * (action.nargs if isinstance(action.nargs, int) else 1)  # --blur_sigma LOW HIGH


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_data_root_help_names_every_place_tried_in_order(script):
    """--help's default of --data_root is the order resolve_data_root tries (run_study.py's last
    place is its --demo_dir, which it generates)."""
    import importlib

    from lib.data_root import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, DEMO_DATA_ROOT

    parser = importlib.import_module(script).build_parser()
    [action] = [a for a in parser._actions if "--data_root" in a.option_strings] or [None]
    if action is None:
        pytest.skip(f"{script} has no --data_root")
    last = "--demo_dir" if script == "run_study" else DEMO_DATA_ROOT
    places = [f"${DATA_ROOT_ENV}", DEFAULT_DATA_ROOT, last]
    assert -1 not in map(action.help.find, places) and sorted(places, key=action.help.find) == places


# Flags whose absence means a fallback folder or file: an empty value (an unset shell variable) is
# refused, not taken for the flag left out.
FALLBACK_PATHS = ("--data_root", "--checkpoint_path", "--xception_weights", "--pretrained_weights")
FALLBACK_PATHS += ("--demo_dir", "--out_dir", "--figures_dir", "--checkpoint_dir")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_an_empty_fallback_path_is_refused(script, capsys):
    import importlib

    parser = importlib.import_module(script).build_parser()
    declared = {f for a in parser._actions for f in a.option_strings if a.default is None}
    flags = [flag for flag in FALLBACK_PATHS if flag in declared]
    if not flags:
        pytest.skip(f"{script} has no flag that falls back when left out")
    for flag in flags:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*SCRIPTS[script], flag, ""])
        assert info.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err.splitlines()[-1]
        assert parser.parse_args([*SCRIPTS[script], flag, "p"]) is not None


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_kebab_case_help_and_nearest_flag(script, capsys):
    import importlib

    parser = importlib.import_module(script).build_parser()
    base = SCRIPTS[script]
    by_flag = {f: a for a in parser._actions for f in a.option_strings}
    for flag, _ in long_flags(parser):
        action = by_flag[flag]
        if action.dest in ("help",) or (action.nargs == "+" and action.choices):
            continue
        value = value_for(action)
        snake = vars(parser.parse_args(base + [flag, *value]))
        kebab = vars(parser.parse_args(base + [flag.replace("_", "-"), *value]))
        assert kebab == snake, flag
    text = parser.format_help()
    assert "(default: None)" not in text
    for flag, _ in long_flags(parser):
        assert flag.replace("_", "-") not in text.replace(flag, ""), flag  # one spelling in --help
    flags = [f for f, _ in long_flags(parser)]
    if flags:
        misspelt = flags[0][:-1] + "x" + flags[0][-1]
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(base + [misspelt, "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert f"did you mean {flags[0]}?" in err[0]


@pytest.mark.parametrize("script", WORKER_SCRIPTS)
def test_workers_flag_means_the_same_everywhere(script):
    import importlib

    parser = importlib.import_module(script).build_parser()
    base = SCRIPTS[script]
    actions = {f: a for a in parser._actions for f in a.option_strings}
    assert actions["-j"] is actions["--workers"]
    dest = actions["-j"].dest
    for spelling in (
        ["-j", "3"],
        ["--workers", "3"],
        ["--workers=3"],
        ["--num-workers", "3"],
        ["--num_workers", "3"],
    ):
        assert getattr(parser.parse_args(base + spelling), dest) == 3, spelling
    assert "--num_workers" not in parser.format_help()


@pytest.fixture()
def clone(tmp_path, tiny_root, simplenet_checkpoint, monkeypatch):
    """A working folder as after the README's first steps: demo data in data/demo, SimpleNet
    trained with Adam on fakes_dataset (train_main.py's checkpoint name), no course paths."""
    import shutil

    work = tmp_path / "clone"
    shutil.copytree(tiny_root, work / "data" / "demo")
    (work / "checkpoints").mkdir()
    shutil.copy(simplenet_checkpoint, work / "checkpoints" / "fakes_dataset_SimpleNet_Adam.pt")
    monkeypatch.chdir(work)
    monkeypatch.delenv("FACES_DATA_ROOT", raising=False)
    return work


def test_defaults_find_demo_data_model_and_checkpoint(clone, capsys):
    """No --data_root, -m or -cpp: data/demo, train_main.py's checkpoint and the model it holds,
    each choice said; the figures carry the checkpoint's model name."""
    from lib.cli import run_cli

    argv = ["--device", "cpu", "--no_progress", "--bootstrap", "10"]
    assert run_cli(numerical_analysis.main, argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "data root data/demo" in err.replace(os.sep, "/")
    assert os.path.join("checkpoints", "fakes_dataset_SimpleNet_Adam.pt") in err
    assert (clone / "figures" / "fakes_dataset_SimpleNet_roc_curve.png").is_file()
    # -m that contradicts the checkpoint: one line naming the model it holds
    ckpt = os.path.join("checkpoints", "fakes_dataset_SimpleNet_Adam.pt")
    wrong = argv + ["-m", "XceptionBased", "-cpp", ckpt]
    one_line_error(capsys, numerical_analysis.main, wrong, "holds a SimpleNet model", "-m SimpleNet")


def test_default_checkpoint_prefers_the_course_file_and_refuses_to_guess(clone, capsys):
    from lib.checkpoints import default_checkpoint

    with pytest.raises(Exception, match="no checkpoint found"):
        default_checkpoint(None, "synthetic_dataset")
    (clone / "checkpoints" / "fakes_dataset_SimpleNet_SGD.pt").write_bytes(b"")
    with pytest.raises(Exception, match="several checkpoints fit"):
        default_checkpoint("SimpleNet", "fakes_dataset")
    (clone / "checkpoints" / "XceptionBased.pt").write_bytes(b"")
    assert default_checkpoint(None, "fakes_dataset") == os.path.join("checkpoints", "XceptionBased.pt")
    assert default_checkpoint("XceptionBased", "x") == os.path.join("checkpoints", "XceptionBased.pt")


def test_predict_reads_the_model_from_the_checkpoint(clone, capsys):
    from lib.cli import run_cli

    image = os.path.join("data", "demo", "fakes_dataset", "test", "fake", "img000.png")
    ckpt = os.path.join("checkpoints", "fakes_dataset_SimpleNet_Adam.pt")
    assert run_cli(predict.main, ["-cpp", ckpt, image, "--device", "cpu", "--no_progress"]) == 0
    assert capsys.readouterr().out.startswith(image + "\tP(fake)=")


def test_plot_needs_only_the_json(tmp_path, capsys):
    import json

    import plot_accuracy_and_loss

    run = {"model": "SimpleNet", "dataset": "synthetic_dataset", "optimizer": {"name": "Adam", "params": {}}}
    run.update({k: [1.0, 0.5] for k in ("train_loss", "val_loss", "test_loss")})
    run.update({k: [50.0, 60.0] for k in ("train_acc", "val_acc", "test_acc")})
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([run]))
    assert plot_accuracy_and_loss.main(["-j", str(path), "--figures_dir", str(tmp_path)]) == 0
    assert (tmp_path / "synthetic_dataset_SimpleNet_losses_plot.png").is_file()
    argv = ["-j", str(path), "--figures_dir", str(tmp_path), "-d", "fakes_dataset"]
    one_line_error(capsys, plot_accuracy_and_loss.main, argv, "SimpleNet on synthetic_dataset")
