"""The files of one training run (docs/design.md#metrics-json, docs/design.md#checkpoints).

``RunFiles`` names them: the runs JSON (a list of runs; this run's entry is replaced after every
epoch), the best checkpoint, the full-state ``_last`` checkpoint that ``--resume`` continues, and
the lock that keeps a second live run off them. The rest of the module writes and reads them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import random
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lib.checkpoints import load_checkpoint, state_dict_mismatch, torch_load
from lib.cli import UserError, first_line
from lib.fileio import (
    DiskFullError,
    LockHeldError,
    atomic_torch_save,
    atomic_write_json,
    check_creatable_dir,
    ensure_dir,
    exclusive_lock,
    file_lock,
    json_safe,
    read_runs,
    remove_unfinished_writes,
)

COURSE_KEYS = (
    "model",
    "dataset",
    "optimizer",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
)
EXTRA_SPLIT_KEYS = ("auc", "eer", "ap", "balanced_acc", "per_class_acc")
TIMING_KEYS = ("epoch_seconds", "train_images_per_sec", "eval_images_per_sec")


@dataclass(frozen=True)
class RunFiles:
    """The paths of a run named ``<stem>`` (``<dataset>_<model>_<optimizer>``)."""

    json: str  # <out_dir>/<stem>.json: the list of runs
    best: str  # <checkpoint_dir>/<stem>.pt: the best validation epoch's weights
    last: str  # <checkpoint_dir>/<stem>_last.pt: the full state after the last epoch
    lock: str  # <checkpoint_dir>/.<stem>.lock: held while a run trains

    @classmethod
    def of(cls, out_dir: str, checkpoint_dir: str, stem: str) -> RunFiles:
        return cls(
            json=os.path.join(out_dir, f"{stem}.json"),
            best=os.path.join(checkpoint_dir, f"{stem}.pt"),
            last=os.path.join(checkpoint_dir, f"{stem}_last.pt"),
            lock=os.path.join(checkpoint_dir, f".{stem}.lock"),
        )


# ----------------------------------------------------------------------------- before the first epoch
def check_output_paths(files: RunFiles, create: bool = True) -> None:
    """Create the output folders (or, with ``create`` False, only check that they could be made)
    and refuse a folder standing where a file of the run goes, so that a bad output path stops
    the run before its first epoch, not after it."""
    for path, flag in (
        (files.json, "--out_dir"),
        (files.best, "--checkpoint_dir"),
        (files.last, "--checkpoint_dir"),
    ):
        (ensure_dir if create else check_creatable_dir)(os.path.dirname(path))
        if os.path.isdir(path):
            raise UserError(
                f"{path}: is a folder, but this run writes a file there; move it "
                f"away or choose another {flag}"
            )


@contextlib.contextmanager
def locked(files: RunFiles, argv: list[str] | None = None):
    """Check the output paths, then hold the run's lock for the block, so that a second live run on
    the same checkpoints is refused (``UserError`` naming the holder) instead of mixing its files
    with this one's; first clear what a killed run's unfinished saves left."""
    check_output_paths(files)
    note = (
        f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
        f"{' '.join(argv or sys.argv)}"
    )
    try:
        with exclusive_lock(files.lock, note):
            removed = remove_unfinished_writes(files.best) + remove_unfinished_writes(files.last)
            if removed:
                print(
                    f"removed unfinished checkpoint writes of a killed run: {', '.join(removed)}",
                    file=sys.stderr,
                )
            yield
    except LockHeldError as exc:
        raise UserError(
            f"{files.best} and {files.last} are in use by another training ({exc}); wait for it to "
            "finish, or give this run another --checkpoint_dir (it may share --out_dir)"
        ) from None


# ----------------------------------------------------------------------------- the runs JSON
def json_safe_optimizer_params(param_group: dict) -> dict:
    """An optimizer param group without ``params``, reduced to JSON values (tuples become lists)."""
    out = {}
    for key, value in param_group.items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        if value is None or isinstance(value, (bool, int, float, str, list)):
            out[key] = value
    return out


def new_run(
    model: str,
    dataset: str,
    optimizer: str,
    optimizer_params: dict,
    *,
    seed: int,
    device: str,
    world_size: int,
    extra: dict,
) -> dict:
    """A run entry before its first epoch: the course keys in their order (empty per-epoch lists),
    the extra metric and timing lists, the best-epoch keys, the run's facts and a new ``run_id``,
    then ``extra`` (such as train_main.py's arguments)."""
    run = {
        "model": model,
        "dataset": dataset,
        "optimizer": {"name": optimizer, "params": dict(optimizer_params)},
    }
    run.update({key: [] for key in COURSE_KEYS[3:]})
    run.update({f"{split}_{key}": [] for split in ("val", "test") for key in EXTRA_SPLIT_KEYS})
    run.update({key: [] for key in TIMING_KEYS})
    run.update(best_epoch=None, best_val_acc=None, test_acc_at_best=None)
    run.update(seed=seed, device=device, world_size=world_size, run_id=uuid.uuid4().hex)
    run.update(started=time.strftime("%Y-%m-%dT%H:%M:%S"), completed=False)
    run.update(extra)
    return run


def append_epoch(run: dict, train: tuple[float, float], val, test, train_seconds: float, train_ips: float):
    """Append one epoch to ``run``: the training (loss, accuracy), and of ``val`` and ``test`` (the
    Trainer's ``EvalResult``) the loss, accuracy, extra metrics and timing."""
    run["train_loss"].append(train[0])
    run["train_acc"].append(train[1])
    for split, result in (("val", val), ("test", test)):
        run[f"{split}_loss"].append(result.loss)
        run[f"{split}_acc"].append(result.accuracy)
        metrics = result.metrics()
        for key in EXTRA_SPLIT_KEYS:
            run[f"{split}_{key}"].append(metrics[key])
    eval_seconds = val.seconds + test.seconds
    run["epoch_seconds"].append(train_seconds + eval_seconds)
    run["train_images_per_sec"].append(train_ips)
    run["eval_images_per_sec"].append((len(val.labels) + len(test.labels)) / max(eval_seconds, 1e-9))


def write_run(path: str, run: dict) -> None:
    """Replace this run's entry (by run_id) or append it; earlier runs are kept. Locked, so that
    runs writing the same JSON at once never lose each other's writes; what a killed write left
    in a temp file is taken in first (``take_in_unfinished_writes``)."""
    with file_lock(path):
        runs = take_in_unfinished_writes(path, read_runs(path, repair=True))
        _put_run(runs, run)
        atomic_write_json(path, runs)


def _put_run(runs: list, run: dict) -> None:
    """Replace the entry of ``run``'s run_id in ``runs``, or append ``run``."""
    for i, old in enumerate(runs):
        if old.get("run_id") == run.get("run_id"):
            runs[i] = run
            return
    runs.append(run)


def _epochs(run: dict) -> int:
    return len(run.get("train_loss") or [])


def take_in_unfinished_writes(path: str, runs: list) -> list:
    """``runs`` with what the temp files of killed writes of ``path`` hold: each run there that the
    JSON lacks, or holds with fewer epochs, is taken in; then the temp files are removed (an
    unreadable one is a write cut short, whose epochs the run's ``_last.pt`` holds). Call it only
    under ``file_lock(path)``: every writer of a runs JSON holds it, so no temp file is live."""
    for tmp in remove_unfinished_writes(path, delete=False):
        try:
            with open(tmp) as handle:
                found = json.load(handle)
        except (OSError, ValueError, UnicodeDecodeError):
            found = None
        kept = 0
        for run in [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []:
            mine = next((r for r in runs if r.get("run_id") == run.get("run_id")), None)
            if mine is None or _epochs(mine) < _epochs(run):
                _put_run(runs, run)
                kept += 1
        os.unlink(tmp)
        note = f"took in {kept} run(s) from it" if kept else "nothing in it was newer"
        print(f"{tmp}: unfinished write of a killed run; {note}, removed it", file=sys.stderr)
    return runs


# Keys a resumed run's JSON entry may hold other values of without a hand edit: the JSON lags
# behind the checkpoint (or the checkpoint behind the JSON) by the epochs of one interrupted write.
_LAGGING_KEYS = ("best_epoch", "best_val_acc", "test_acc_at_best", "completed")


def keep_hand_edits(json_path: str, run: dict, last_path: str) -> None:
    """On ``--resume``: keep the keys that were added by hand to this run's entry in
    ``json_path`` (``run`` comes from ``last_path``, which has not seen them), and say in one line
    which keys the checkpoint's values replace where the entry's were edited
    (docs/edge-cases.md#resuming)."""
    try:
        entry = next((r for r in read_runs(json_path) if r.get("run_id") == run["run_id"]), None)
    except UserError:  # a corrupt JSON: write_run moves it aside
        entry = None
    if entry is None:
        return
    saved = json_safe(run)
    lagging = _epochs(entry) != _epochs(saved)
    for key in entry.keys() - run.keys() - {"diverged"}:
        run[key] = entry[key]
    changed = [
        key
        for key in saved
        if key in entry
        and key != "completed"  # --resume itself sets it
        and entry[key] != saved[key]
        and not (lagging and (key in _LAGGING_KEYS or _one_prefix_of_other(entry[key], saved[key])))
    ]
    if changed:
        print(
            f"note: {json_path}: this run's entry was edited ({', '.join(changed)}); --resume "
            f"restores those keys from {last_path} and keeps the keys you added",
            file=sys.stderr,
        )


def _one_prefix_of_other(a, b) -> bool:
    if not (isinstance(a, list) and isinstance(b, list)):
        return False
    n = min(len(a), len(b))
    return a[:n] == b[:n]


# ----------------------------------------------------------------------------- checkpoints
def save_best(path: str, model: nn.Module, run: dict, val_acc: float, test_acc: float, epoch: int) -> None:
    """The best checkpoint of ``run`` (the course's keys, then the run's names and id); another
    run's file there is kept aside first (``keep_other_runs_best``)."""
    keep_other_runs_best(path, run["run_id"])
    best = {"model": model.state_dict(), "val_acc": val_acc, "test_acc": test_acc, "epoch": epoch}
    best.update(
        model_name=run["model"], dataset=run["dataset"], optimizer=run["optimizer"], run_id=run["run_id"]
    )
    best["head"] = run.get("head")  # what the analyses rebuild (lib.model_specs; None: a fixed model)
    best["run_name"] = run.get("run_name")  # the analyses name their outputs after it
    atomic_torch_save(best, path)


def run_id_of(path: str) -> str | None:
    """The ``run_id`` recorded in checkpoint ``path`` (read by the safe loader); None when the
    file is missing, unreadable or records none."""
    if not os.path.isfile(path):
        return None
    try:
        checkpoint = torch_load(path, "cpu", mmap=True)
    except UserError:
        return None
    return checkpoint.get("run_id") if isinstance(checkpoint, dict) else None


def keep_other_runs_best(path: str, run_id: str) -> None:
    """Before a run writes its best checkpoint: if ``path`` holds another run's (or an unreadable)
    checkpoint, rename it to ``<stem>.run-<its run_id[:8]>.pt`` so nothing is lost."""
    if not os.path.exists(path):
        return
    old_id = run_id_of(path)  # None for an unreadable file: keep it too, named after its time
    if old_id == run_id:
        return
    tag = (
        str(old_id)[:8] if old_id else time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    )
    stem, ext = os.path.splitext(path)
    aside, n = f"{stem}.run-{tag}{ext}", 1
    while os.path.exists(aside):
        aside, n = f"{stem}.run-{tag}-{n}{ext}", n + 1
    os.replace(path, aside)
    print(f"kept the earlier run's best checkpoint as {aside}", file=sys.stderr)


def restore_own_best(path: str, run: dict) -> None:
    """On ``--resume``: when another run's best checkpoint took ``path`` while this run was
    interrupted, keep that one aside and put this run's back from its ``<stem>.run-<id>.pt``, so
    a resumed run never ends with another run's model as its best; say so in one line, and also
    when this run's best is nowhere to be found."""
    run_id = run.get("run_id")
    if run.get("best_epoch") is None or run_id is None or run_id_of(path) == run_id:
        return
    stem, ext = os.path.splitext(path)
    for aside in sorted(glob.glob(f"{glob.escape(stem)}.run-{glob.escape(run_id[:8])}*{ext}")):
        if run_id_of(aside) == run_id:
            keep_other_runs_best(path, run_id)
            os.replace(aside, path)
            print(f"put this run's best checkpoint back: {aside} -> {path}", file=sys.stderr)
            return
    print(
        f"warning: {path}: this run's best checkpoint (epoch {run['best_epoch']}) is missing; "
        "a later epoch that beats it writes a new one",
        file=sys.stderr,
    )


def save_epoch(
    files: RunFiles,
    model: nn.Module,
    optimizer,
    run: dict,
    best_val: float,
    best: dict | None,
    scheduler=None,
):
    """After an epoch: the best checkpoint (when ``best`` holds the run's new best_epoch,
    best_val_acc and test_acc_at_best, which go into ``run`` once it is saved), the ``_last`` one
    and the runs JSON. A checkpoint that does not fit on the disk still leaves the epoch's metrics
    in the JSON, and the ``DiskFullError`` says so (docs/edge-cases.md#training); the JSON's best
    epoch stays the one whose checkpoint exists."""
    try:
        if best:
            save_best(
                files.best, model, run, best["best_val_acc"], best["test_acc_at_best"], best["best_epoch"]
            )
            run.update(best)
        save_last(files.last, model, optimizer, _epochs(run), best_val, run, scheduler)
    except DiskFullError as exc:
        run["completed"] = False
        write_run(files.json, run)
        raise DiskFullError(
            f"{exc}; epoch {_epochs(run)}'s metrics are kept in {files.json}", exc.path
        ) from None
    write_run(files.json, run)


def save_last(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    best_val: float,
    run: dict,
    scheduler=None,
) -> None:
    """The full state ``--resume`` continues from: weights, optimizer, epoch, best validation score,
    the run so far, every RNG state and the learning-rate ``scheduler``'s state when there is one."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state.update(best_val_acc=best_val, run=run, rng=_rng_to_safe(rng_state()), model_name=run["model"])
    state["head"], state["run_name"] = run.get("head"), run.get("run_name")
    atomic_torch_save(state, path)


def resume(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    model_name: str | None = None,
    protocol: dict | None = None,
    scheduler=None,
) -> tuple[dict, float, int]:
    """Restore model, optimizer and RNG states from a ``*_last.pt``; return (run, best val, epoch).

    A missing file, a checkpoint of another model (``model_name`` given) or of another
    ``protocol`` (see ``refuse_other_protocol``), one without the state of the given ``scheduler``,
    a truncated file or one whose pickle holds code is
    refused with a one-line ``UserError``; nothing in it is executed (``weights_only=True``).
    """
    if not os.path.exists(path):
        raise UserError(f"--resume: {path} does not exist; start without --resume")
    checkpoint = load_checkpoint(path, device)
    if "optimizer" not in checkpoint or "run" not in checkpoint:
        raise UserError(f"{path}: not a full-state checkpoint written by --resume-capable training")
    found = checkpoint.get("model_name")
    if model_name and found and found != model_name:
        raise UserError(
            f"{path}: holds a {found} run, not {model_name}; move the file away or start without --resume"
        )
    mismatch = state_dict_mismatch(model, checkpoint["model"])
    if mismatch:
        raise UserError(f"{path}: does not fit this model ({mismatch}); start without --resume")
    refuse_other_protocol(path, protocol or {}, checkpoint["run"])
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        epoch = int(checkpoint["epoch"])
        set_rng_state(_rng_from_safe(checkpoint["rng"]))
        best = checkpoint["best_val_acc"]
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path}: does not fit this model/optimizer ({first_line(exc)}); start without --resume"
        ) from None
    return checkpoint["run"], (-math.inf if best is None else float(best)), epoch


def settle_resumed(files: RunFiles, run: dict) -> None:
    """The main process's part of a resume: keep the hand edits of the runs JSON, put this run's own
    best checkpoint back, and write the JSON at once, complete also when no epoch is left to train."""
    keep_hand_edits(files.json, run, files.last)
    restore_own_best(files.best, run)
    write_run(files.json, run)


def refuse_other_protocol(path: str, mine: dict, saved_run) -> None:
    """Refuse to resume a run whose protocol (the flags that define a run: model, data, optimizer,
    lr, batch size, seed ...) differs from ``mine``, naming each difference: a resumed run must be
    the run its JSON describes."""
    theirs = (saved_run.get("protocol") if isinstance(saved_run, dict) else None) or {}
    differences = [
        f"--{key} {mine[key]} differs from the run's {theirs[key]}"
        for key in mine
        if key in theirs and mine[key] != theirs[key]
    ]
    if differences:
        raise UserError(
            f"--resume {path}: {'; '.join(differences)}; resume with the run's flags "
            "(a larger -e is fine), or start a new run without --resume"
        )


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """The torch, NumPy, Python and (when present) CUDA generator states."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_safe(state: dict) -> dict:
    """RNG states as tensors and plain lists, so ``weights_only=True`` can load them."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    py_version, py_state, py_gauss = state["python"]
    safe = {
        "torch": state["torch"],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if "cuda" in state:
        safe["cuda"] = state["cuda"]
    return safe


def _rng_from_safe(safe: dict) -> dict:
    n = safe["numpy"]
    state = {
        "torch": safe["torch"].cpu(),
        "numpy": (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]),
        "python": (safe["python"]["version"], tuple(safe["python"]["state"]), safe["python"]["gauss"]),
    }
    if "cuda" in safe:
        state["cuda"] = [s.cpu() for s in safe["cuda"]]
    return state
