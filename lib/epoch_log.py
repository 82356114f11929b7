"""Per-epoch logs people plot (docs/design.md#epoch-logs): a CSV beside the runs JSON, one row per
epoch of every run (like timm's summary.csv), and optional TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import os

from lib.cli import UserError
from lib.fileio import atomic_write_text, file_lock, move_aside, remove_unfinished_writes

CSV_COLUMNS = (
    "run_id",
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_auc",
    "test_loss",
    "test_acc",
    "test_auc",
)
TB_SCALARS = {  # TensorBoard tag -> the run key of its per-epoch list
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "loss/test": "test_loss",
    "acc/train": "train_acc",
    "acc/val": "val_acc",
    "acc/test": "test_acc",
    "auc/val": "val_auc",
    "auc/test": "test_auc",
    "lr": "lr",
}


def csv_path(json_path: str) -> str:
    """The per-epoch CSV beside a runs JSON: ``<stem>.csv``."""
    return os.path.splitext(json_path)[0] + ".csv"


def epoch_rows(run: dict) -> list[dict]:
    """One CSV row per finished epoch of ``run`` (an empty cell where a value is missing)."""
    rows = []
    for i in range(len(run.get("train_loss", []))):
        row = {"run_id": run["run_id"], "epoch": i + 1}
        for key in CSV_COLUMNS[2:]:
            values = run.get(key) or []
            row[key] = "" if i >= len(values) or values[i] is None else values[i]
        rows.append(row)
    return rows


def write_csv(path: str, run: dict) -> None:
    """Put ``run``'s rows into the CSV at ``path``, keeping every other run's rows (in order; this
    run's rows replace its earlier ones), written atomically under a lock; a killed write's temp
    file is removed. A CSV with other columns, or one that cannot be read as such, is kept aside
    (``move_aside``) and a new one started."""
    with file_lock(path):
        remove_unfinished_writes(path)  # this run's rows are all in ``run``; other runs' in the file
        kept = _other_runs_rows(path, run["run_id"]) if os.path.exists(path) else []
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept + epoch_rows(run))
        atomic_write_text(path, text.getvalue())


def _other_runs_rows(path: str, run_id: str) -> list[dict]:
    """The rows of the CSV at ``path`` that belong to other runs; [] after moving aside a file
    that is not a CSV of ``CSV_COLUMNS`` (other columns, a row of another width, not UTF-8)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) == CSV_COLUMNS:
                rows = list(reader)
                if all(None not in row and None not in row.values() for row in rows):
                    return [row for row in rows if row["run_id"] != run_id]
    except (UnicodeDecodeError, csv.Error):
        pass
    move_aside(path, f"not a CSV of the columns {','.join(CSV_COLUMNS)}")
    return []


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; a one-line ``UserError`` naming what to install
    when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard: needs the tensorboard package; pip install tensorboard (or drop the flag)"
        ) from None
    return SummaryWriter


class EpochLog:
    """What the Trainer calls after each epoch's JSON is written: rewrites the CSV beside it and,
    with ``tensorboard_dir``, adds the epoch's scalars under ``<dir>/<stem>-<run_id[:8]>`` (a
    resumed run continues its folder)."""

    def __init__(self, tensorboard_dir: str | None = None):
        self.tensorboard_dir, self.writer = tensorboard_dir, None
        # checked now, so that a missing package stops the run before the data is read
        self.writer_class = tensorboard_writer_class() if tensorboard_dir is not None else None

    def __call__(self, run: dict, json_path: str) -> None:
        write_csv(csv_path(json_path), run)
        if self.tensorboard_dir is None:
            return
        if self.writer is None:
            stem = os.path.splitext(os.path.basename(json_path))[0]
            self.writer = self.writer_class(os.path.join(self.tensorboard_dir, f"{stem}-{run['run_id'][:8]}"))
        epoch = len(run["train_loss"])
        for tag, key in TB_SCALARS.items():
            values = run.get(key) or []
            if len(values) >= epoch and values[epoch - 1] is not None:
                self.writer.add_scalar(tag, values[epoch - 1], epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
