"""Where the datasets are (docs/design.md#data-root)."""

from __future__ import annotations

import os

from lib.cli import UserError
from lib.images import DEMO_HINT

DATA_ROOT_ENV = "FACES_DATA_ROOT"
DEFAULT_DATA_ROOT = os.path.join("..", "Assignment4_datasets")


def resolve_data_root(data_root: str | None = None) -> str:
    """Where the datasets are: ``--data_root``, else $FACES_DATA_ROOT, else ../Assignment4_datasets.

    An explicit choice (flag or environment variable) that does not exist is an error; so is the
    default when nothing was chosen. The message lists what was tried.
    """
    if data_root:
        if not os.path.isdir(data_root):
            raise UserError(f"--data_root {data_root}: no such folder; {DEMO_HINT}")
        return data_root
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        if not os.path.isdir(env):
            raise UserError(f"${DATA_ROOT_ENV}={env}: no such folder; {DEMO_HINT}")
        return env
    if os.path.isdir(DEFAULT_DATA_ROOT):
        return DEFAULT_DATA_ROOT
    raise UserError(
        f"no datasets found: tried --data_root (not given), ${DATA_ROOT_ENV} (not set) and "
        f"{os.path.abspath(DEFAULT_DATA_ROOT)} (missing); point --data_root at a folder holding "
        f"fakes_dataset/ and synthetic_dataset/, or {DEMO_HINT}"
    )
