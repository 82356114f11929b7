"""lib/fileio.py's primitives against planted files, a full disk and non-finite numbers: a link or
a device planted in a shared folder is never written through, a failed write is one line naming
the file and leaves the old file and no temp file, and every JSON written is standard."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
import torch

from conftest import ROOT
from lib import fileio
from lib.cli import UserError, run_cli

VICTIM_TEXT = "a file the victim owns\n"


@pytest.fixture
def victim(tmp_path):
    """A file outside the shared folder that a planted link points at."""
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def strict_json(path):
    """Parse ``path`` as standard JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")

    return json.loads(open(path).read(), parse_constant=refuse)


# ----------------------------------------------------------------------------- planted files
def test_lock_through_a_planted_link_is_refused_and_the_target_untouched(tmp_path, victim):
    lock = tmp_path / "shared" / ".run.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)
    refused = pytest.raises(
        UserError, match=r"\.run\.lock: the lock file is a symbolic link .*remove the link"
    )
    with refused, fileio.exclusive_lock(str(lock), "pid 1"):
        pytest.fail("ran under a planted lock")
    assert victim.read_text() == VICTIM_TEXT and lock.is_symlink()


def test_lock_that_is_a_fifo_or_a_hard_link_is_refused(tmp_path, victim):
    fifo = tmp_path / ".fifo.lock"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"), fileio.exclusive_lock(str(fifo), "pid 1"):
        pass
    hard = tmp_path / ".hard.lock"
    os.link(victim, hard)
    with pytest.raises(UserError, match="a hard link to another file"), fileio.exclusive_lock(str(hard), "x"):
        pass
    assert victim.read_text() == VICTIM_TEXT


def test_lock_is_written_and_removed_as_before(tmp_path):
    lock = tmp_path / ".run.lock"
    with fileio.exclusive_lock(str(lock), "pid 7 on here"):
        assert lock.read_text() == "pid 7 on here"
    assert not lock.exists()


def test_a_temp_file_swapped_for_a_link_mid_write_writes_nothing_through_it(tmp_path, victim, monkeypatch):
    """Another user of the folder replaces the temp file with a link to the victim's file while
    the JSON is written: nothing goes through the link, and the link is not renamed into place."""
    real_mkstemp = fileio.tempfile.mkstemp

    def mkstemp_then_swap(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        os.unlink(tmp)
        os.symlink(victim, tmp)  # what a watcher of the shared folder could do
        return fd, tmp

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp_then_swap)
    out = tmp_path / "shared" / "metrics.json"
    out.parent.mkdir()
    out.write_text('{"kept": 1}\n')
    with pytest.raises(fileio.WriteError, match="this temp file was replaced by another file"):
        fileio.atomic_write_json(str(out), {"new": 2})
    assert victim.read_text() == VICTIM_TEXT
    assert not out.is_symlink() and json.loads(out.read_text()) == {"kept": 1}
    assert os.listdir(out.parent) == ["metrics.json"]


def test_a_link_at_the_output_path_is_replaced_not_followed(tmp_path, victim):
    out = tmp_path / "figure.png"
    out.symlink_to(victim)
    fileio.save_figure(plt.figure(), str(out))
    assert victim.read_text() == VICTIM_TEXT
    assert not out.is_symlink() and out.read_bytes().startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- failed writes
def _fail_temp_writes(monkeypatch, code=errno.ENOSPC):
    """``os.write`` to a ``.tmp`` file fails with ``code``, as on a full disk; other writes pass."""
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


WRITERS = {
    "JSON": lambda path: fileio.atomic_write_json(path, {"a": 1}),
    "figure": lambda path: fileio.save_figure(plt.figure(), path),
    "checkpoint": lambda path: fileio.atomic_torch_save({"model": {"w": torch.zeros(1000)}}, path),
    "text file": lambda path: fileio.atomic_write_text(path, "report"),
}


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_disk_full_is_one_line_naming_the_file_and_keeps_the_old_file(what, tmp_path, monkeypatch):
    path = tmp_path / "out" / "result"
    path.parent.mkdir()
    path.write_bytes(b"the old file")
    _fail_temp_writes(monkeypatch)
    with pytest.raises(fileio.DiskFullError) as caught:
        WRITERS[what](str(path))
    message = str(caught.value)
    assert message == (
        f"{path}: cannot write the {what}: disk full ({os.strerror(errno.ENOSPC)}); "
        "free disk space or choose another folder"
    )
    assert caught.value.path == str(path)
    assert path.read_bytes() == b"the old file" and os.listdir(path.parent) == ["result"]


def test_other_write_failures_are_a_write_error_but_not_disk_full(tmp_path, monkeypatch):
    _fail_temp_writes(monkeypatch, errno.EIO)
    with pytest.raises(
        fileio.WriteError, match=r"cannot write the checkpoint \(Input/output error\)"
    ) as caught:
        fileio.atomic_torch_save({"w": torch.zeros(10)}, str(tmp_path / "c.pt"))
    assert not isinstance(caught.value, fileio.DiskFullError)


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_an_output_path_that_is_a_folder_is_one_line(what, tmp_path):
    folder = tmp_path / "taken"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(fileio.WriteError, match=f"{folder}: is a folder, but the {what} is written there"):
        WRITERS[what](str(folder))
    assert os.listdir(folder) == ["inside"] and os.listdir(tmp_path) == ["taken"]


def test_run_cli_gives_one_line_for_an_os_error_of_the_user(tmp_path, capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.npy"))

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"error: {tmp_path / 'x.npy'}: No space left on device; free disk space or choose another folder"
    )

    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):  # not the user's to fix: the traceback stays
        run_cli(bug, [])


def _tmpfs_available() -> bool:
    """Whether this machine lets a process mount a tmpfs in a private mount namespace."""
    if not shutil.which("unshare"):
        return False
    script = 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d"; s=$?; rmdir "$d" 2>/dev/null; exit $s'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True).returncode == 0


def run_on_a_full_disk(full_dir, size: str, argv: list[str], timeout: int = 300):
    """Run ``python argv`` in a private mount namespace where ``full_dir`` is a tmpfs of ``size``:
    a real full disk, no mock."""
    full_dir.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(full_dir), sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


needs_tmpfs = pytest.mark.skipif(not _tmpfs_available(), reason="needs unshare -rm and a tmpfs mount")


@needs_tmpfs
def test_a_real_full_disk_under_a_checkpoint_says_disk_full(tmp_path):
    """torch's own zip writer on a full tmpfs (``[enforce fail at inline_container.cc]``)."""
    code = (
        "import sys, torch; sys.path.insert(0, '.'); from lib import fileio\n"
        "try:\n"
        f"    fileio.atomic_torch_save({{'w': torch.zeros(10**6)}}, {str(tmp_path / 'full' / 'c.pt')!r})\n"
        "except fileio.DiskFullError as exc:\n"
        "    print('DiskFullError', exc)\n"
    )
    proc = run_on_a_full_disk(tmp_path / "full", "256k", ["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"DiskFullError {tmp_path / 'full' / 'c.pt'}: cannot write the checkpoint: disk full"
    )


# ----------------------------------------------------------------------------- standard JSON
def test_json_is_standard_with_null_where_a_number_is_undefined(tmp_path):
    import numpy as np

    path = tmp_path / "x.json"
    data = {
        "eer_threshold": float("inf"),
        "loss": [0.5, float("nan"), -np.inf],
        "nested": {"auc": np.float32("nan"), "n": np.int64(3), "ok": np.float64(0.25)},
        "pair": (1.0, float("-inf")),
    }
    fileio.atomic_write_json(str(path), data)
    assert strict_json(path) == {
        "eer_threshold": None,
        "loss": [0.5, None, None],
        "nested": {"auc": None, "n": 3, "ok": 0.25},
        "pair": [1.0, None],
    }


def test_a_log_is_appended_but_never_through_a_planted_link(tmp_path, victim):
    log = tmp_path / "train.log"
    with fileio.open_for_append(str(log)) as handle:
        handle.write("one\n")
    with fileio.open_for_append(str(log)) as handle:
        handle.write("two\n")
    assert log.read_text() == "one\ntwo\n"
    planted = tmp_path / "planted.log"
    planted.symlink_to(victim)
    with pytest.raises(UserError, match=r"planted\.log: the log is a symbolic link"):
        fileio.open_for_append(str(planted))
    assert victim.read_text() == VICTIM_TEXT
