"""Hostile and bad input through the command line: every case ends with one clear line that names
the file or flag, a non-zero exit, no traceback (unless --debug), and nothing the user had is lost.

Most cases run ``cli.run_cli(main, argv)`` in this process (what ``python train_main.py`` runs,
without paying for a new interpreter); the DataLoader-worker case runs a real subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import train_main
import utils
from conftest import ROOT, SMALL_COUNTS, make_image, make_tree, one_line_error, pickled_calls, train_argv
from faces_dataset import DataError
from lib import checkpoints as checkpoints_lib
from lib import cli
from lib.xception_weights import XceptionWeightsError, load_xception_weights
from models import SimpleNet
from xception import Xception

STEM = "fakes_dataset_SimpleNet_SGD"


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def clean_tree(module_tmp) -> str:
    return make_tree(str(module_tmp("hostile_clean")), SMALL_COUNTS, seed=9)


@pytest.fixture
def tree(clean_tree, tmp_path):
    """A private copy of the clean tree to damage."""
    return shutil.copytree(clean_tree, tmp_path / "data")


def _argv(data, tmp_path, *extra) -> list[str]:
    return train_argv(data, tmp_path, "-e", "1", "-b", "2", *extra)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid 120-byte PNG that declares 100000 x 100000 pixels (40 GB decoded)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- data
DAMAGE = {
    "truncated": ("train/real/img000.png", lambda old: old[: len(old) // 3], "truncated"),
    "zero_byte": ("val/fake/img000.png", lambda old: b"", "cannot identify image file"),
    "not_an_image": ("test/real/img000.png", lambda old: b"name,label\nface.png,1\n", "cannot identify"),
    "decompression_bomb": ("train/fake/img001.png", lambda old: _bomb_png(), "decompression bomb"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_bad_image_file_one_line_naming_it(case, tree, tmp_path, capsys):
    relative, damage, needle = DAMAGE[case]
    path = tree / "fakes_dataset" / relative
    bad = damage(path.read_bytes())
    path.write_bytes(bad)
    one_line_error(capsys, train_main.main, _argv(tree, tmp_path), path, needle)
    assert path.read_bytes() == bad  # the file is left as it was
    assert not (tmp_path / "out").exists() and not (tmp_path / "ck").exists()  # stopped before training


def test_bomb_is_caught_by_pils_limit(tmp_path):
    """Independent check of the fixture: PIL itself refuses to open it (no 40 GB allocation)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png())
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def test_corrupt_image_in_dataloader_worker_subprocess(tree, tmp_path):
    """Images read by a worker process (no cache): the worker's traceback must not leak out."""
    path = tree / "fakes_dataset" / "train" / "fake" / "img000.png"
    path.write_bytes(path.read_bytes()[:500])
    command = [
        sys.executable,
        os.path.join(ROOT, "train_main.py"),
        *_argv(tree, tmp_path, "--cache_images", "off"),
    ]
    command[command.index("--num_workers") + 1] = "1"
    proc = subprocess.run(command, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("train_main.py: error: ") and str(path) in lines[0]
    assert "DataLoader worker" not in lines[0]


def test_debug_shows_the_traceback(tree, tmp_path):
    path = tree / "fakes_dataset" / "val" / "real" / "img000.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"img000\.png"):
        cli.run_cli(train_main.main, _argv(tree, tmp_path, "--debug"))


def test_missing_split_folder(tree, tmp_path, capsys):
    shutil.rmtree(tree / "fakes_dataset" / "val")
    one_line_error(
        capsys, train_main.main, _argv(tree, tmp_path), tree / "fakes_dataset" / "val", "missing split folder"
    )


def test_missing_class_folder(tree, tmp_path, capsys):
    shutil.rmtree(tree / "fakes_dataset" / "test" / "fake")
    one_line_error(capsys, train_main.main, _argv(tree, tmp_path), tree / "fakes_dataset" / "test", "fake")


def test_empty_dataset(tree, tmp_path, capsys):
    for class_dir in ("real", "fake"):
        folder = tree / "fakes_dataset" / "train" / class_dir
        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "Thumbs.db").write_bytes(b"\x00" * 10)  # clutter is not an image
    one_line_error(
        capsys, train_main.main, _argv(tree, tmp_path), tree / "fakes_dataset" / "train", "no images"
    )


@pytest.fixture(scope="module")
def survivor_run(clean_tree, module_tmp):
    """One real training run over a tree with a wrong-size image, into an out folder whose metrics
    JSON is corrupt (not even UTF-8)."""
    tmp = module_tmp("survivor")
    data = shutil.copytree(clean_tree, tmp / "data")
    odd = data / "fakes_dataset" / "val" / "real" / "img000.png"
    make_image(np.random.default_rng(1), fake=False, size=256).resize((300, 200)).save(odd)
    (tmp / "out").mkdir()
    corrupt = b'\xff\xfe[{"model": "SimpleNet", \x00 half a run'
    (tmp / "out" / f"{STEM}.json").write_bytes(corrupt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.run_cli(train_main.main, _argv(data, tmp))
    return tmp, code, [str(w.message) for w in caught], odd, corrupt


def test_wrong_size_image_is_resized_with_warning(survivor_run):
    _, code, messages, odd, _ = survivor_run
    assert code == 0
    assert any(str(odd) in m and "300x200" in m and "resized to 256x256" in m for m in messages), messages
    # documented behaviour, against PIL directly: a bilinear resize to 256x256
    from faces_dataset import load_image_tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensor = load_image_tensor(str(odd))
    expected = np.asarray(Image.open(odd).convert("RGB").resize((256, 256), Image.BILINEAR))
    assert torch.equal(tensor, torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_corrupt_metrics_json_moved_aside_never_overwritten(survivor_run):
    tmp, code, messages, _, corrupt = survivor_run
    assert code == 0
    names = os.listdir(tmp / "out")
    aside = [n for n in names if n.startswith(f"{STEM}.json.corrupt-")]
    assert len(aside) == 1 and (tmp / "out" / aside[0]).read_bytes() == corrupt
    assert any("moved aside" in m and aside[0] in m for m in messages), messages
    runs = json.loads((tmp / "out" / f"{STEM}.json").read_text())
    assert len(runs) == 1 and len(runs[0]["train_loss"]) == 1


# ----------------------------------------------------------------------------- checkpoints
class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def checkpoints(module_tmp):
    """A SimpleNet best checkpoint, a truncated copy, and one whose pickle would run code."""
    tmp = module_tmp("checkpoints")
    torch.manual_seed(0)
    good = tmp / "simplenet.pt"
    torch.save(
        {
            "model": SimpleNet().state_dict(),
            "val_acc": 50.0,
            "test_acc": 50.0,
            "epoch": 1,
            "model_name": "SimpleNet",
        },
        good,
    )
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    marker = tmp / "payload_ran"
    evil = tmp / "evil.pt"
    torch.save(
        {
            "model": {"fc3.bias": torch.zeros(2)},
            "epoch": 1,
            "optimizer": {},
            "run": {},
            "extra": _Payload(str(marker)),
        },
        evil,
    )
    return {"good": good, "truncated": truncated, "evil": evil, "marker": marker}


def test_checkpoint_of_the_other_model(checkpoints):
    with pytest.raises(cli.UserError, match=r"simplenet\.pt: holds a SimpleNet model.*-m SimpleNet"):
        utils.load_model_from_checkpoint("XceptionBased", str(checkpoints["good"]))


def test_bare_state_dict_of_the_other_model(tmp_path):
    """No model_name in the file: the keys tell which model it is."""
    path = tmp_path / "bare.pt"
    torch.save(utils.load_model("XceptionBased", pretrained=False).state_dict(), path)
    with pytest.raises(cli.UserError, match=r"bare\.pt: holds a XceptionBased model"):
        utils.load_model_from_checkpoint("SimpleNet", str(path))


def test_truncated_checkpoint(checkpoints):
    with pytest.raises(cli.UserError, match=r"truncated\.pt: not a readable checkpoint"):
        utils.load_model_from_checkpoint("SimpleNet", str(checkpoints["truncated"]))


def test_code_in_checkpoint_is_refused_and_never_run(checkpoints):
    """One line with the real reason, the global the pickle would call, and no hint to load it
    with weights_only=False."""
    marker = checkpoints["marker"]
    with pytest.raises(cli.UserError) as caught:
        utils.load_model_from_checkpoint("SimpleNet", str(checkpoints["evil"]))
    message = str(caught.value)
    assert message.startswith(f"{checkpoints['evil']}: refused: its pickle would call posix.mkdir")
    assert "\n" not in message and "weights_only" not in message and "..." not in message
    assert not marker.exists()


def _zip_bomb(path, declared_mb: int) -> None:
    """A torch.save file whose records are re-packed with deflate: ``declared_mb`` MB of zeros in
    a few hundred KB (torch.load inflates deflated records). Written in 1 MB chunks, so making
    it costs no memory."""
    plain = path.with_suffix(".plain")
    torch.save({"model": {"fc3.bias": torch.zeros(2)}, "extra": torch.zeros(declared_mb * 2**18)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as record, dst.open(info.filename, "w", force_zip64=True) as packed:
                shutil.copyfileobj(record, packed, 2**20)
    plain.unlink()


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt"
    _zip_bomb(bomb, 400)
    assert bomb.stat().st_size < 2 * 1024**2
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load inflated the bomb"))
    with pytest.raises(cli.UserError) as caught:
        utils.load_model_from_checkpoint("SimpleNet", str(bomb))
    assert str(caught.value).startswith(f"{bomb}: refused before loading: its archive declares 419 MB")
    assert "zip bomb" in str(caught.value)
    with pytest.raises(XceptionWeightsError, match=f"{bomb}: refused before loading.*zip bomb"):
        load_xception_weights(Xception(), bomb)


def test_a_checkpoint_larger_than_its_model_can_be_is_refused(checkpoints):
    """SimpleNet's checkpoint (67 MB) where a model of 1 MB is expected: more than its weights and
    two optimizer moments (plus room for the rest) could be; for a SimpleNet, it fits."""
    good = str(checkpoints["good"])
    with pytest.raises(cli.UserError, match=r"refused before loading: its archive declares 68 MB, more than"):
        checkpoints_lib.check_declared_size(good, expected_bytes=10**6)
    checkpoints_lib.check_declared_size(good, expected_bytes=checkpoints_lib.state_dict_bytes(SimpleNet()))


def test_payload_control_would_run_when_unpickled_unsafely(checkpoints, tmp_path):
    """Control: the payload is live, so the check above proves something. The file's pickle
    calls os.mkdir (read statically, never unpickled), and that call creates a marker."""
    assert (os.mkdir.__module__, "mkdir") in pickled_calls(checkpoints["evil"])
    function, args = _Payload(str(tmp_path / "marker")).__reduce__()
    function(*args)
    assert (tmp_path / "marker").is_dir()


def _save_last_checkpoint(path, state, run_model: str, **extra) -> None:
    """A full-state ``_last.pt`` checkpoint of ``state`` after epoch 1, its run saying ``run_model``."""
    torch.save(
        {
            "model": state,
            "optimizer": {"state": {}, "param_groups": []},
            "epoch": 1,
            "best_val_acc": 50.0,
            "run": {"model": run_model},
            **extra,
        },
        path,
    )


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("truncated", "not a readable checkpoint"),
        ("evil", "refused"),
        ("other_model", "holds a XceptionBased run"),
        ("wrong_shapes", "does not fit this model"),
    ],
)
def test_resume_from_planted_last_checkpoint(kind, needle, clean_tree, checkpoints, tmp_path, capsys):
    """``--resume`` loads checkpoints/<stem>_last.pt: bad ones stop with one line, and stay as they were."""
    (tmp_path / "ck").mkdir()
    planted = tmp_path / "ck" / f"{STEM}_last.pt"
    if kind == "other_model":  # an XceptionBased full-state checkpoint under the SimpleNet name
        state = utils.load_model("XceptionBased", pretrained=False).state_dict()
        _save_last_checkpoint(planted, state, "XceptionBased", model_name="XceptionBased")
    elif kind == "wrong_shapes":  # no model name; a 3-class head
        state = SimpleNet().state_dict()
        state["fc3.weight"], state["fc3.bias"] = torch.zeros(3, 256), torch.zeros(3)
        _save_last_checkpoint(planted, state, "SimpleNet")
    else:
        shutil.copy(checkpoints[kind], planted)
    before = planted.read_bytes()
    one_line_error(capsys, train_main.main, _argv(clean_tree, tmp_path, "--resume"), planted, needle)
    assert planted.read_bytes() == before
    assert not checkpoints["marker"].exists()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_a_file_name_that_is_not_utf8_is_scored_and_written_as_its_bytes(checkpoints, tree, tmp_path):
    """A legal Linux name such as b'\\xff.png' is scored, and the scores CSV holds a row per scored
    image, that one under its own bytes (it crashed the CSV writer after the JSON was written)."""
    import csv
    import json

    numerical_analysis = pytest.importorskip("numerical_analysis")
    real = os.path.join(str(tree), "fakes_dataset", "test", "real")
    odd = os.path.join(os.fsencode(real), b"\xff.png")
    shutil.copy(os.path.join(real, sorted(os.listdir(real))[0]), odd)
    out = tmp_path / "out"
    argv = ["-m", "SimpleNet", "-cpp", str(checkpoints["good"]), "-d", "fakes_dataset", "--data_root",
            str(tree), "--device", "cpu", "--figures_dir", str(tmp_path / "fig"), "--out_dir", str(out),
            "--bootstrap", "10", "--no_progress"]  # fmt: skip
    assert numerical_analysis.main(argv) == 0
    n = json.loads((out / "fakes_dataset_SimpleNet_metrics.json").read_text())["numerical"]["n_samples"]
    raw = (out / "fakes_dataset_SimpleNet_scores.csv").read_bytes()
    rows = list(csv.reader(raw.decode("utf-8", "surrogateescape").splitlines()))[1:]
    test_split = os.path.join(str(tree), "fakes_dataset", "test")
    assert len(rows) == n == sum(len(os.listdir(os.path.join(test_split, c))) for c in ("real", "fake"))
    assert os.fsencode(os.path.join(real, os.fsdecode(b"\xff.png"))) in raw
    assert [row[1] for row in rows if row[0].endswith(os.fsdecode(b"\xff.png"))] == ["0"]


def test_analysis_script_refuses_bad_checkpoints(checkpoints, clean_tree, tmp_path, capsys):
    numerical_analysis = pytest.importorskip("numerical_analysis")
    for name, model, needle in (
        ("good", "XceptionBased", "holds a SimpleNet model"),
        ("truncated", "SimpleNet", "not a readable checkpoint"),
        ("evil", "SimpleNet", "refused"),
    ):
        argv = [
            "-m",
            model,
            "-cpp",
            str(checkpoints[name]),
            "-d",
            "fakes_dataset",
            "--data_root",
            clean_tree,
            "--device",
            "cpu",
            "--figures_dir",
            str(tmp_path / "fig"),
            "--out_dir",
            str(tmp_path / "out"),
            "--no_progress",
        ]
        one_line_error(capsys, numerical_analysis.main, argv, checkpoints[name], needle)
    assert not checkpoints["marker"].exists()
    assert not (tmp_path / "fig").exists()


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize(
    "flags, needle",
    [
        (["-m", "ResNet50"], "--model"),
        (["-m", "ResNet"], "--model"),
        (["-o", "RMSprop"], "--optimizer"),
        (["-e", "0"], "--epochs"),
        (["-e", "-3"], "--epochs"),
        (["-b", "0"], "--batch_size"),
        (["-b", "-8"], "--batch_size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--num_workers", "-1"], "--workers"),  # the old spelling, answered under the new name
        (["--eval_batch_size", "0"], "--eval_batch_size"),
        (["--momentum", "-0.5"], "--momentum"),
    ],
)
def test_bad_flag_one_line_naming_it(flags, needle, tmp_path, capsys):
    try:
        code = cli.run_cli(train_main.main, _argv(tmp_path / "nowhere", tmp_path, *flags))
    except SystemExit as exc:  # argparse exits itself; --momentum is checked after parsing
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], lines


def test_zero_workers_is_valid():
    """--num_workers 0 is not an error: it means loading in the main process (the DataLoader's 0)."""
    assert train_main.build_parser().parse_args(["--num_workers", "0"]).num_workers == 0


# ----------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("flag", ["--out_dir", "--checkpoint_dir"])
def test_output_folder_under_a_regular_file(flag, clean_tree, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("my notes\n")
    argv = _argv(clean_tree, tmp_path)
    argv[argv.index(flag) + 1] = str(blocker / "sub")
    one_line_error(capsys, train_main.main, argv, blocker / "sub", "cannot create output folder")
    assert blocker.read_text() == "my notes\n"


def _chmod_blocks_writes(folder) -> bool:
    """False for root (CAP_DAC_OVERRIDE writes into a 0555 folder anyway)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "file").write_text("x")
        return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)


def test_read_only_output_folder(clean_tree, tmp_path, capsys):
    if not _chmod_blocks_writes(tmp_path):
        pytest.skip(
            "running as root: chmod does not stop root from writing, so a read-only folder "
            "cannot be simulated (test_output_folder_under_a_regular_file runs instead; as "
            "root without CAP_DAC_OVERRIDE, e.g. under setpriv, this test runs)"
        )
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{STEM}.json").write_text("[]\n")
    out.chmod(0o555)
    try:
        one_line_error(capsys, train_main.main, _argv(clean_tree, tmp_path), out, "not writable")
    finally:
        out.chmod(0o755)
    assert (out / f"{STEM}.json").read_text() == "[]\n"
    assert not (tmp_path / "ck").exists() or not os.listdir(tmp_path / "ck")  # refused before training


def test_activation_checkpointing_is_for_xception_only(tree, tmp_path, capsys):
    one_line_error(
        capsys,
        train_main.main,
        _argv(tree, tmp_path, "--activation_checkpointing"),
        "--activation_checkpointing",
        "SimpleNet",
    )
    assert not (tmp_path / "out").exists(), "nothing is written before the error"


@pytest.mark.parametrize(
    "script",
    [
        "grad_cam_analysis",
        "saliency_map",
        "plot_samples_of_faces_datasets",
        "numerical_analysis",
        "robustness_analysis",
        "spectrum_analysis",
        "run_study",
    ],
)
def test_a_negative_seed_is_an_argparse_error(script, capsys):
    """Every script's --seed takes cli.seed_int: -1 is refused up front, in one line naming it."""
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(module.main, ["--seed", "-1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--seed" in err.strip().splitlines()[-1], err


def test_a_lock_link_planted_in_the_checkpoint_folder_is_refused(clean_tree, tmp_path, capsys):
    """Another user plants ``checkpoints/.<stem>.lock`` as a link to the victim's file: the run is
    refused in one line before any training, and the link's target is not touched."""
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work\n")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / f".{STEM}.lock").symlink_to(victim)
    one_line_error(
        capsys, train_main.main, _argv(clean_tree, tmp_path), f".{STEM}.lock", "is a symbolic link"
    )
    assert victim.read_text() == "years of work\n"
    assert sorted(os.listdir(ck)) == [f".{STEM}.lock"]
