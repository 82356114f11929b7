"""``train_main.py`` with the crash tests' hooks, for tests only (run as a script by the tests).

The hooks make a kill land at a known moment, from the test side (production code has none):
- ``FACES_TEST_PAUSE_AT=<epoch>:<batch>`` (1-based): after that batch's optimizer step, print
  ``FACES_TEST_PAUSED`` to stderr and sleep, so the test can send SIGKILL or start another run;
- ``FACES_TEST_KILL_IN_SAVE=<file name>:<n>``: SIGKILL this process in its n-th atomic write of
  a file of that name, after the temp file is complete and before the rename.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_main
from lib.cli import run_cli
from trainer import Trainer


def pause_after_step(epoch: int, batch: int) -> None:
    """Wrap ``Trainer.train_one_epoch`` and each optimizer's ``step`` to pause after that step."""
    where = {"epoch": 0, "batch": 0}
    train_one_epoch, make_optimizer = Trainer.train_one_epoch, train_main.make_optimizer

    def counting_epoch(self):
        where.update(epoch=self.epoch + 1, batch=0)
        return train_one_epoch(self)

    def pausing_optimizer(*args, **kwargs):
        optimizer = make_optimizer(*args, **kwargs)
        step = optimizer.step

        def paused_step(*a, **k):
            result = step(*a, **k)
            where["batch"] += 1
            if (where["epoch"], where["batch"]) == (epoch, batch):
                print(f"FACES_TEST_PAUSED epoch {epoch} batch {batch}", file=sys.stderr, flush=True)
                time.sleep(600)
            return result

        optimizer.step = paused_step
        return optimizer

    Trainer.train_one_epoch = counting_epoch
    train_main.make_optimizer = pausing_optimizer


def kill_in_save(name: str, count: int) -> None:
    """SIGKILL in the ``count``-th rename of a temp file onto a file called ``name``."""
    replace, seen = os.replace, {"n": 0}

    def killing_replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            seen["n"] += 1
            if seen["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *args, **kwargs)

    os.replace = killing_replace


if __name__ == "__main__":
    if os.environ.get("FACES_TEST_PAUSE_AT"):
        pause_after_step(*(int(v) for v in os.environ["FACES_TEST_PAUSE_AT"].split(":")))
    if os.environ.get("FACES_TEST_KILL_IN_SAVE"):
        target, _, n = os.environ["FACES_TEST_KILL_IN_SAVE"].rpartition(":")
        kill_in_save(target, int(n))
    sys.exit(run_cli(train_main.main))
