"""The format and resolution every plotting script saves its figures in (``--figure_format``,
``--dpi``; docs/design.md#figure-formats), and the one function that saves them."""

from __future__ import annotations

import os

from lib.fileio import save_figure

FIGURE_FORMATS = ("png", "pdf", "svg")
DEFAULT_FIGURE_FORMAT = "png"
DEFAULT_DPI = 100  # matplotlib's default figure dpi: the PNGs stay as they were


def figure_file(path: str, figure_format: str = DEFAULT_FIGURE_FORMAT) -> str:
    """``path`` (a figure name ending in .png, as lib/names gives it) with the extension of
    ``figure_format``."""
    return f"{os.path.splitext(path)[0]}.{figure_format}"


def write_figure(fig, path: str, args) -> str:
    """Save ``fig`` as ``path`` in ``args.figure_format`` (its extension replaced) at ``args.dpi``,
    atomically, and close it. Returns the path written."""
    return save_figure(fig, figure_file(path, args.figure_format), dpi=args.dpi)
