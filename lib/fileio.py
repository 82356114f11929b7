"""Safe files: atomic writes (a crash leaves the old file or the new one, never half a file),
advisory locks for files that several processes update, the runs JSON reader that repairs a
damaged file by moving it aside, and the output-folder checks done before any work starts."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable

from lib.cli import UserError, one_line_message


def ensure_dir(path: str) -> str:
    """Create ``path`` (and parents) when missing; a failure is a one-line ``UserError``."""
    if path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:  # a regular file in the way, read-only parent, disk full ...
            raise UserError(
                f"{path}: cannot create output folder ({exc.strerror or exc}); choose another folder"
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):  # fail now, not after the first epoch
            raise UserError(f"{path}: folder is not writable; choose another folder")
    return path


def check_creatable_dir(path: str) -> None:
    """Raise ``UserError`` (as ``ensure_dir`` would) when folder ``path`` could not be made or
    written, without creating anything."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(
            f"{path}: cannot create output folder ({existing} is not a folder); choose another folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{path}: folder is not writable; choose another folder")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive lock (POSIX flock on the file's folder, so no lock file is left behind) that
    keeps two processes doing a read-modify-write of the same JSON at once from losing one's
    write; a no-op where flock is unavailable."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # Windows, or a folder that cannot be opened
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class LockHeldError(UserError):
    """``exclusive_lock`` found the lock held by another process; the message is the holder's note."""


@contextlib.contextmanager
def exclusive_lock(lock_path: str, note: str):
    """Hold an advisory lock (POSIX flock) on ``lock_path`` for the block, without waiting.

    ``note`` (who holds it) is written into the file. The OS releases the lock when the process
    ends, however it ends; a normal exit also removes the file. Raises ``LockHeldError`` holding
    the other process's note when it holds the lock. A no-op where flock is unavailable.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            os.close(fd)
            raise LockHeldError(holder or "another process") from None
        except OSError:  # a file system without flock: run unlocked, as before
            os.close(fd)
            yield
            return
        try:  # the holder may have removed the file between our open and flock: lock the new one
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, note.encode("utf-8"))
        yield
    finally:
        os.unlink(lock_path)  # still locked here, so no other process holds this file
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a half-written file.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    try:
        # remove_unfinished_writes knows this name pattern
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except PermissionError:
        raise UserError(f"{folder}: folder is not writable; choose another output folder") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, data) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")

    atomic_write(path, write)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` through ``atomic_write``; a failed write (disk full: torch's zip writer
    raises RuntimeError, the file system OSError) is a one-line ``UserError`` naming ``path``."""
    try:
        import torch  # here: the rest of this module works without torch

        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except (RuntimeError, OSError) as exc:
        raise UserError(
            f"{path}: cannot write the checkpoint ({one_line_message(exc)[:200]}); "
            "free disk space or choose another folder"
        ) from None


def remove_unfinished_writes(path: str) -> list[str]:
    """Delete the temp files (``.<name>.<random>.tmp``) that an ``atomic_write`` of ``path``
    killed before its rename left beside it; returns their paths. Only call it while no other
    process can be writing ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))
    for tmp in removed:
        os.unlink(tmp)
    return removed


def save_figure(fig, path: str, **kwargs) -> str:
    """Save a matplotlib figure atomically (format from the extension) and close it."""
    import matplotlib.pyplot as plt

    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
    plt.close(fig)
    return path


def move_aside(path: str, reason: str) -> str:
    """Rename a bad file to ``<path>.corrupt-<time>`` (never delete it) and warn."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    while os.path.exists(aside):
        aside += "_"
    os.replace(path, aside)
    warnings.warn(f"{path}: {reason}; moved aside to {aside}", stacklevel=2)
    return aside


def read_json_object(path: str, what: str | None = None) -> dict:
    """The JSON object at ``path``; ``{}`` when the file is missing. A file that is not a JSON
    object (corrupt, truncated, a list) gives ``{}`` too: with ``what`` (a writer about to start a
    new file) it is first moved aside with a warning naming ``what``, never overwritten; without
    (a reader of another tool's file, such as the study runner) it is left as it is, and an
    unreadable file counts as missing."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as handle:
            content = json.load(handle)
        if not isinstance(content, dict):
            raise ValueError("expected a JSON object")
        return content
    except (ValueError, UnicodeDecodeError) as exc:
        if what is not None:
            move_aside(path, f"corrupt {what} ({exc})")
        return {}
    except OSError:
        if what is not None:
            raise
        return {}


def read_runs(path: str, missing_ok: bool = True, repair: bool = False) -> list:
    """Read a metrics JSON (a list of runs).

    A missing file is ``[]`` when ``missing_ok``. A corrupt file is moved aside with a warning
    when ``repair`` (the trainer, before appending), else it is an error naming the file.
    """
    if not os.path.exists(path):
        if missing_ok:
            return []
        raise UserError(f"{path}: no such metrics JSON; train first with train_main.py")
    try:
        with open(path) as handle:
            runs = json.load(handle)
        if isinstance(runs, dict):  # a single run written by other tools
            runs = [runs]
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError("expected a JSON list of runs")
        return runs
    except (ValueError, UnicodeDecodeError) as exc:
        if repair:
            move_aside(path, f"corrupt metrics JSON ({exc})")
            return []
        raise UserError(f"{path}: corrupt metrics JSON ({exc}); fix or remove the file") from None
