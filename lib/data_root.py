"""Where the datasets are (docs/design.md#data-root)."""

from __future__ import annotations

import os

from lib.cli import UserError, note
from lib.images import DEMO_HINT, class_dirs
from lib.names import SPLITS

DATA_ROOT_ENV = "FACES_DATA_ROOT"
DEFAULT_DATA_ROOT = os.path.join("..", "Assignment4_datasets")
DEMO_DATA_ROOT = os.path.join("data", "demo")  # where the README makes the demo data


def resolve_data_root(data_root: str | None = None) -> str:
    """Where the datasets are: ``--data_root``, else $FACES_DATA_ROOT, else ../Assignment4_datasets,
    else data/demo (a default is said once on stderr: docs/design.md#data-root).

    An explicit choice (flag or environment variable) that does not exist is an error; so is
    finding neither default when nothing was chosen. The message lists what was tried.
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
        note(f"data root {DEFAULT_DATA_ROOT} (the course's: --data_root not given, ${DATA_ROOT_ENV} not set)")
        return DEFAULT_DATA_ROOT
    if os.path.isdir(DEMO_DATA_ROOT):
        note(
            f"data root {DEMO_DATA_ROOT} (the demo data: --data_root not given, ${DATA_ROOT_ENV} not "
            f"set, {DEFAULT_DATA_ROOT} missing)"
        )
        return DEMO_DATA_ROOT
    raise UserError(
        f"no datasets found: tried --data_root (not given), ${DATA_ROOT_ENV} (not set), "
        f"{os.path.abspath(DEFAULT_DATA_ROOT)} and {os.path.abspath(DEMO_DATA_ROOT)} (missing); "
        "point --data_root at a folder holding "
        f"fakes_dataset/ and synthetic_dataset/, or {DEMO_HINT}"
    )


def is_dataset(folder: str) -> bool:
    """Whether ``folder`` is a dataset: ``train/``, ``val/`` and ``test/``, each holding ``real/`` and
    ``fake/`` (or ``0_real/`` and ``1_fake/``)."""
    return all(class_dirs(os.path.join(folder, split)) is not None for split in SPLITS)


def datasets_under(root: str) -> list[str]:
    """The names of the dataset folders directly under ``root``, sorted."""
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    return [name for name in entries if not name.startswith(".") and is_dataset(os.path.join(root, name))]


def dataset_folder(dataset_name: str, data_root: str | None = None) -> str:
    """The folder of dataset ``dataset_name`` under the data root (``resolve_data_root``).

    A name that is not a dataset folder there is a ``UserError`` listing the datasets found."""
    root = resolve_data_root(data_root)
    folder = os.path.join(root, dataset_name)
    if dataset_name in ("", ".", "..") or os.sep in dataset_name or not os.path.isdir(folder):
        found = datasets_under(root)
        listing = f"datasets found there: {', '.join(found)}" if found else "no datasets found there"
        raise UserError(
            f"--dataset {dataset_name!r}: no such dataset folder under {root} ({listing}); a dataset "
            f"is a folder with train/, val/ and test/, each holding real/ and fake/ (or 0_real/ and "
            f"1_fake/)"
        )
    return folder
