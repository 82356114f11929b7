"""Safe files: atomic writes (a crash leaves the old file or the new one, never half a file),
advisory locks for files that several processes update, the runs JSON reader that repairs a
damaged file by moving it aside, and the output-folder checks done before any work starts."""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import math
import os
import stat
import tempfile
import time
import warnings
from collections.abc import Callable

from lib.cli import DataWarning, UserError, one_line_message

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; absent on Windows
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


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
    write; a no-op where flock is unavailable. The folder is opened read-only as a folder
    (``O_DIRECTORY``): nothing is written through it."""
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
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


def open_no_follow(path: str, flags: int, what: str) -> int:
    """``os.open(path, flags | O_CREAT)`` without following a symbolic link and without blocking
    on a FIFO; anything but a regular file of one link (a planted link, device or hard link) is
    a ``UserError`` naming ``path`` and ``what`` it is, never written into
    (docs/design.md#planted-files). Returns the descriptor."""
    flags |= os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666 & ~_UMASK)
    except OSError as exc:
        if os.path.islink(path):  # O_NOFOLLOW refused it (ELOOP)
            raise UserError(
                f"{path}: the {what} is a symbolic link (to {os.readlink(path)}), which another user "
                "may have planted to make this run overwrite its target; remove the link and check "
                "that folder"
            ) from None
        raise write_error(path, exc, what) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        kind = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise UserError(
            f"{path}: the {what} is {kind}, so this run will not write into it; remove it and "
            "check that folder"
        )
    return fd


def open_for_append(path: str, encoding: str = "utf-8"):
    """``open(path, "a")`` for a log in a shared folder, through ``open_no_follow``."""
    return open(open_no_follow(path, os.O_WRONLY | os.O_APPEND, "log"), "a", encoding=encoding)


@contextlib.contextmanager
def exclusive_lock(lock_path: str, note: str):
    """Hold an advisory lock (POSIX flock) on ``lock_path`` for the block, without waiting.

    ``note`` (who holds it) is written into the file. The OS releases the lock when the process
    ends, however it ends; a normal exit also removes the file. Raises ``LockHeldError`` holding
    the other process's note when it holds the lock. A symbolic link, a hard link or anything
    but a regular file at ``lock_path`` is refused (``UserError``), never written through. A
    no-op where flock is unavailable.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    while True:
        fd = open_no_follow(lock_path, os.O_RDWR, "lock file")
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
        if _same_file(lock_path, fd):  # the holder may have removed it between our open and flock
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, note.encode("utf-8"))
        yield
    finally:
        if _same_file(lock_path, fd):  # still locked here, so no other process holds this file
            os.unlink(lock_path)
        os.close(fd)


def _same_file(path: str, fd: int) -> bool:
    """Whether ``path`` (not following a link) is still the file open as ``fd``."""
    try:
        here, there = os.lstat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()

NO_SPACE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the file size limit",
}


class WriteError(UserError):
    """An output file could not be written; ``path`` names it, the message says what to do.
    Whatever was at ``path`` before is unchanged."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class DiskFullError(WriteError):
    """A write failed for lack of space (disk full, quota, file size limit): the caller may keep
    what it holds in memory and say so (the trainer keeps the epoch's metrics)."""


def write_error(path: str, exc: OSError, what: str = "file") -> WriteError:
    """The one-line error for an ``OSError`` while writing ``what`` to ``path``: a
    ``DiskFullError`` for lack of space, else a ``WriteError``."""
    if exc.errno in NO_SPACE_ERRNOS:
        return DiskFullError(
            f"{path}: cannot write the {what}: {NO_SPACE_ERRNOS[exc.errno]} ({exc.strerror}); "
            "free disk space or choose another folder",
            path,
        )
    if exc.errno == errno.EISDIR or os.path.isdir(path):
        return WriteError(
            f"{path}: is a folder, but the {what} is written there; move it away or choose another path",
            path,
        )
    return WriteError(
        f"{path}: cannot write the {what} ({exc.strerror or one_line_message(exc)}); choose another folder",
        path,
    )


class _Descriptor(io.RawIOBase):
    """Writes to an open file descriptor, keeping the first ``OSError`` in ``error``: torch's
    zip writer turns a failed write into a RuntimeError without the errno."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd, self.error = fd, None

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()

    def write(self, data) -> int:
        try:
            return os.write(self.fd, data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def atomic_write(path: str, write: Callable[[io.BufferedIOBase], None], what: str = "file") -> None:
    """Write ``path`` atomically: ``write(handle)`` writes into a binary file object on a new temp
    file beside ``path``, which is then fsynced and renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written file.
    The temp file is created with ``O_EXCL | O_NOFOLLOW`` and written through that descriptor
    only, so a link planted in a shared folder is never written through; a link at ``path``
    itself is replaced, not followed. The file gets the usual permissions (0666 less the umask),
    not mkstemp's 0600. A failure (disk full, ``path`` a folder ...) removes the temp file and is
    a ``WriteError`` (``DiskFullError`` for lack of space) naming ``path`` and ``what`` it is.
    """
    if os.path.isdir(path):  # before any work, and before the temp file takes space
        raise write_error(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), what)
    folder = os.path.dirname(os.path.abspath(path))
    ensure_dir(folder)
    try:
        # mkstemp opens O_CREAT | O_EXCL | O_NOFOLLOW; remove_unfinished_writes knows this name pattern
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except PermissionError:
        raise UserError(f"{folder}: folder is not writable; choose another output folder") from None
    except OSError as exc:
        raise write_error(path, exc, what) from None
    raw = _Descriptor(fd)
    try:
        with io.BufferedWriter(raw, buffer_size=1024**2) as handle:  # closing it closes fd
            write(handle)
            handle.flush()
            os.fchmod(fd, 0o666 & ~_UMASK)
            os.fsync(fd)
            if not _same_file(tmp, fd):  # renaming it would put another file (or a link) at path
                raise WriteError(
                    f"{tmp}: this temp file was replaced by another file while the {what} {path} was "
                    f"written, so {path} was left unchanged; check who else writes into {folder}",
                    path,
                )
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        error = raw.error or exc
        if isinstance(error, OSError) and not isinstance(error, UserError):
            raise write_error(path, error, what) from None
        raise


def json_safe(data):
    """``data`` with every non-finite float (NaN, inf: a number that is undefined) replaced by
    ``None``, recursively through dicts, lists and tuples; NumPy scalars and arrays become plain
    Python values. What every JSON of the project is written from, so each one is standard JSON."""
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):  # numpy scalar or array
        return json_safe(data.tolist())
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def json_text(data, indent: int | None = 2) -> str:
    """``data`` as standard JSON (``json_safe``, then ``allow_nan=False``), ending with a newline
    when indented."""
    text = json.dumps(json_safe(data), indent=indent, allow_nan=False)
    return text + "\n" if indent is not None else text


def atomic_write_json(path: str, data) -> None:
    """Write ``data`` as standard JSON to ``path`` (``json_text``, ``atomic_write``)."""
    content = json_text(data).encode("utf-8")  # before the temp file: a bad value writes nothing
    atomic_write(path, lambda handle: handle.write(content), "JSON")


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_write``. A file name that is not UTF-8
    (``os.fsdecode`` keeps its bytes as surrogates) is written as its own bytes."""
    content = text.encode("utf-8", "surrogateescape")
    atomic_write(path, lambda handle: handle.write(content), "text file")


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save`` through ``atomic_write``. A failed write is a one-line ``WriteError`` naming
    ``path``; for lack of space (torch's zip writer reports only ``[enforce fail at
    inline_container.cc]``) a ``DiskFullError``, which says "disk full"."""
    import torch  # here: the rest of this module works without torch

    atomic_write(path, lambda handle: torch.save(obj, handle), "checkpoint")


def remove_unfinished_writes(path: str, delete: bool = True) -> list[str]:
    """Delete the temp files (``.<name>.<random>.tmp``) that an ``atomic_write`` of ``path``
    killed before its rename left beside it (with ``delete`` False only find them); returns their
    paths. Only call it while no other process can be writing ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = sorted(glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")))
    for tmp in removed if delete else ():
        os.unlink(tmp)
    return removed


def save_figure(fig, path: str, **kwargs) -> str:
    """Save a matplotlib figure atomically (format from the extension) and close it, also when
    the write fails (a ``WriteError`` naming ``path``); returns ``path``."""
    import matplotlib.pyplot as plt

    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **kwargs), "figure")
    finally:
        plt.close(fig)
    return path


def move_aside(path: str, reason: str) -> str:
    """Rename a bad file to ``<path>.corrupt-<time>`` (never delete it) and warn."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    while os.path.exists(aside):
        aside += "_"
    os.replace(path, aside)
    warnings.warn(f"{path}: {reason}; moved aside to {aside}", DataWarning, stacklevel=2)
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
