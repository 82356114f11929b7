"""Crash safety: a training subprocess SIGKILLed in the middle of an epoch, or while it writes a
checkpoint, loses nothing from finished epochs, leaves only loadable files, and ``--resume`` ends
with the same JSON as an uninterrupted run of the same seed. Also: determinism, and a new run keeps
an earlier run's best checkpoint.

The kills land deterministically through tests/hooked_train_main.py, which runs train_main.py with
two hooks installed from the test side: ``FACES_TEST_PAUSE_AT=<epoch>:<batch>`` prints
FACES_TEST_PAUSED after that batch and sleeps, and the test sends SIGKILL;
``FACES_TEST_KILL_IN_SAVE=<file name>:<n>`` SIGKILLs the process in its n-th atomic write of that
file, after the temp file is complete, before the rename.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import train_main
from conftest import HOOKED, SMALL_COUNTS, make_tree

STEM = "fakes_dataset_SimpleNet_SGD"
VOLATILE = {"epoch_seconds", "train_images_per_sec", "eval_images_per_sec", "started", "argv", "run_id"}
EPOCHS = 2


@pytest.fixture(scope="module")
def data(module_tmp) -> str:
    # 4 training images in batches of 2: 2 steps per epoch
    return make_tree(str(module_tmp("crash_data")), SMALL_COUNTS, seed=5)


def _argv(data: str, *extra: str) -> list[str]:
    """Relative output folders: run from the work folder, so every run records the same args."""
    return [
        "--data_root",
        data,
        "-e",
        str(EPOCHS),
        "-b",
        "2",
        "--lr",
        "0.02",
        "--seed",
        "7",
        "--num_workers",
        "0",
        "--no_progress",
        "--out_dir",
        "out",
        "--checkpoint_dir",
        "ck",
        *extra,
    ]


def _train_here(work, data, *extra) -> None:
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert train_main.main(_argv(data, *extra)) == 0
    finally:
        os.chdir(cwd)


def _runs(work) -> list:
    return json.loads((work / "out" / f"{STEM}.json").read_text())


def _stable(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in VOLATILE}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(module_tmp, data):
    """An uninterrupted run (in this process)."""
    work = module_tmp("reference")
    _train_here(work, data)
    runs = _runs(work)
    assert len(runs) == 1 and runs[0]["completed"] is True and len(runs[0]["train_loss"]) == EPOCHS
    return work, runs[0]


def _env(**hooks) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACES_TEST_")}
    env.update(hooks)
    return env


def _start(work, data, **hooks) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, HOOKED, *_argv(data)],
        cwd=str(work),
        env=_env(**hooks),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_files_on_disk(work, epochs_done: int, reference_run: dict, best_epoch_at_most: int) -> None:
    """Every JSON and checkpoint loads, and all finished epochs are there, as in the reference."""
    names = os.listdir(work / "ck")
    checkpoints = [n for n in names if not n.startswith(".")]  # ".<name>.<random>.tmp": unfinished writes
    assert sorted(checkpoints) == [f"{STEM}.pt", f"{STEM}_last.pt"]
    for name in checkpoints:
        _load(work / "ck" / name)
    last = _load(work / "ck" / f"{STEM}_last.pt")
    assert last["epoch"] == epochs_done
    assert sorted(os.listdir(work / "out")) == [f"{STEM}.csv", f"{STEM}.json"]  # the runs JSON, the epoch CSV
    runs = _runs(work)
    assert len(runs) == 1 and runs[0]["completed"] is False
    for run in (runs[0], last["run"]):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "val_auc"):
            assert run[key] == reference_run[key][:epochs_done], key
    assert _load(work / "ck" / f"{STEM}.pt")["epoch"] <= best_epoch_at_most


def _resume_and_compare(work, data, reference) -> None:
    ref_work, ref_run = reference
    _train_here(work, data, "--resume")
    runs = _runs(work)
    assert len(runs) == 1  # the interrupted run was continued, not appended
    assert _stable(runs[0]) == _stable(ref_run)
    for name in (f"{STEM}.pt", f"{STEM}_last.pt"):
        mine, theirs = _load(work / "ck" / name), _load(ref_work / "ck" / name)
        assert mine["epoch"] == theirs["epoch"]
        for key, value in theirs["model"].items():
            assert torch.equal(mine["model"][key], value), (name, key)
    assert not [n for n in os.listdir(work / "ck") if ".run-" in n]  # its own checkpoint stays put
    assert _csv_rows(work) == _csv_rows(ref_work)  # every epoch's row, as the uninterrupted run wrote


def _csv_rows(work) -> list[dict]:
    """The epoch CSV's rows, without their run id."""
    with open(work / "out" / f"{STEM}.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "run_id"} for row in csv.DictReader(handle)]


def test_sigkill_mid_epoch_then_resume(tmp_path, data, reference):
    proc = _start(tmp_path, data, FACES_TEST_PAUSE_AT=f"{EPOCHS}:1")  # after step 1 of 2 in epoch 2
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    deadline, seen = time.monotonic() + 180, []
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if line.startswith("FACES_TEST_PAUSED"):
                break
        else:
            pytest.fail("no pause marker:\n" + "".join(seen))
        assert any(line.startswith("epoch 1/2:") for line in seen)  # epoch 1 finished before
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [n for n in os.listdir(tmp_path / "ck") if n.endswith(".tmp")]
    _check_files_on_disk(tmp_path, 1, reference[1], best_epoch_at_most=1)
    _resume_and_compare(tmp_path, data, reference)


def test_sigkill_while_writing_checkpoint_then_resume(tmp_path, data, reference):
    # killed in the epoch-2 write of _last.pt: the temp file is complete, the rename not done
    proc = _start(tmp_path, data, FACES_TEST_KILL_IN_SAVE=f"{STEM}_last.pt:{EPOCHS}")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    leftovers = [n for n in os.listdir(tmp_path / "ck") if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(f".{STEM}_last.pt.")
    assert _load(tmp_path / "ck" / leftovers[0])["epoch"] == EPOCHS  # the write that was cut off
    # the old _last.pt (epoch 1) is intact; the best checkpoint is written before it, so it may
    # already hold epoch 2 (resume redoes epoch 2 and gets the same)
    _check_files_on_disk(tmp_path, 1, reference[1], best_epoch_at_most=EPOCHS)
    _resume_and_compare(tmp_path, data, reference)


@pytest.fixture(scope="module")
def second_run(module_tmp, data, reference):
    """A second full run of the same seed, in a folder holding the reference's best checkpoint."""
    ref_work, _ = reference
    work = module_tmp("second")
    (work / "ck").mkdir()
    earlier = (ref_work / "ck" / f"{STEM}.pt").read_bytes()
    (work / "ck" / f"{STEM}.pt").write_bytes(earlier)
    _train_here(work, data)
    return work, earlier


def test_same_seed_same_json_metrics(second_run, reference):
    """Two CPU runs with the same seed: identical JSON apart from timing and run identity."""
    work, _ = second_run
    runs = _runs(work)
    assert len(runs) == 1
    assert runs[0]["run_id"] != reference[1]["run_id"]
    assert _stable(runs[0]) == _stable(reference[1])


def test_new_run_keeps_earlier_best_checkpoint(second_run, reference):
    """The new run moved the other run's best checkpoint to <stem>.run-<run_id[:8]>.pt, byte for
    byte, before writing its own."""
    work, earlier = second_run
    aside = work / "ck" / f"{STEM}.run-{reference[1]['run_id'][:8]}.pt"
    assert aside.read_bytes() == earlier
    assert _load(work / "ck" / f"{STEM}.pt")["run_id"] == _runs(work)[0]["run_id"]
    assert sorted(os.listdir(work / "ck")) == sorted([aside.name, f"{STEM}.pt", f"{STEM}_last.pt"])


def test_unreadable_best_checkpoint_is_kept_too(tmp_path):
    from lib.run_files import keep_other_runs_best as _keep_other_runs_best

    path = tmp_path / f"{STEM}.pt"
    path.write_bytes(b"not a checkpoint")
    _keep_other_runs_best(str(path), "0123456789abcdef")
    kept = [n for n in os.listdir(tmp_path)]
    assert len(kept) == 1 and kept[0].startswith(f"{STEM}.run-") and kept[0].endswith(".pt")
    assert (tmp_path / kept[0]).read_bytes() == b"not a checkpoint"
    # this run's own checkpoint is left in place
    torch.save({"model": {}, "run_id": "0123456789abcdef"}, path)
    _keep_other_runs_best(str(path), "0123456789abcdef")
    assert path.exists() and len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("killed_in", ["json", "csv"])
def test_killed_in_the_last_write_then_resume_writes_the_json_and_csv(tmp_path, data, reference, killed_in):
    """Killed before the last epoch's runs-JSON (or epoch CSV) rename: --resume with the same -e
    trains nothing, yet leaves the complete JSON and CSV, and the killed write's temp file is taken
    in or removed, not left behind."""
    proc = _start(tmp_path, data, FACES_TEST_KILL_IN_SAVE=f"{STEM}.{killed_in}:{EPOCHS}")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    assert len(_runs(tmp_path)[0]["train_loss"]) == (1 if killed_in == "json" else EPOCHS)
    assert [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]
    _resume_and_compare(tmp_path, data, reference)
    assert sorted(os.listdir(tmp_path / "out")) == [f"{STEM}.csv", f"{STEM}.json"]


def test_stale_json_temp_file_is_taken_in_by_the_next_write(tmp_path):
    """A temp file of a killed write holding a run the JSON lacks: the next write keeps that run
    and removes the temp file; an unreadable temp file is removed too."""
    from lib import run_files

    path = tmp_path / f"{STEM}.json"
    lost = {"run_id": "lost", "train_loss": [1.0, 0.5]}
    path.write_text(json.dumps([{"run_id": "lost", "train_loss": [1.0]}]))
    (tmp_path / f".{STEM}.json.abc123.tmp").write_text(json.dumps([lost]))
    (tmp_path / f".{STEM}.json.def456.tmp").write_text("[{")
    run_files.write_run(str(path), {"run_id": "new", "train_loss": []})
    assert json.loads(path.read_text()) == [lost, {"run_id": "new", "train_loss": []}]
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("killed_in", [f"{STEM}_last.pt", f"{STEM}.pt"])
def test_resume_after_another_run_took_the_best_checkpoint(tmp_path, data, capsys, killed_in):
    """Run A is interrupted; run B (another lr, same folders) keeps A's best aside, then is killed
    in its first _last.pt save (or in its first best save, leaving <stem>.pt missing). --resume of
    A ends with A's model in <stem>.pt, B's kept aside, and a done: line naming a file of A."""
    a = _start(tmp_path, data, FACES_TEST_KILL_IN_SAVE=f"{STEM}_last.pt:{EPOCHS}")
    assert a.wait(timeout=180) == -signal.SIGKILL
    run_a = _load(tmp_path / "ck" / f"{STEM}_last.pt")["run"]["run_id"]
    b = subprocess.run(
        [sys.executable, HOOKED, *_argv(data), "--lr", "0.01"],
        cwd=str(tmp_path),
        env=_env(FACES_TEST_KILL_IN_SAVE=f"{killed_in}:1"),
        capture_output=True,
        timeout=180,
    )
    assert b.returncode == -signal.SIGKILL
    assert os.path.exists(tmp_path / "ck" / f"{STEM}.run-{run_a[:8]}.pt")
    capsys.readouterr()
    _train_here(tmp_path, data, "--resume")
    out = capsys.readouterr().out
    best = tmp_path / "ck" / f"{STEM}.pt"
    assert _load(best)["run_id"] == run_a
    assert f"checkpoint ck/{STEM}.pt" in out
    others = [n for n in os.listdir(tmp_path / "ck") if ".run-" in n]
    if killed_in == f"{STEM}_last.pt":  # B's best is kept aside
        assert len(others) == 1 and _load(tmp_path / "ck" / others[0])["run_id"] != run_a
    else:
        assert others == []
