"""Command-line plumbing shared by every script, without torch: ``UserError``, the argparse
types, an ``ArgumentParser`` whose errors are one line, and ``run_cli``, which turns a user error
into one line on stderr and exit code 2 (``--debug`` shows the traceback instead)."""

from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import sys
import warnings
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file): printed as one line, no traceback."""


class DataWarning(UserWarning):
    """A warning about the user's files (an image resized or skipped, a corrupt JSON moved
    aside): shown as one line, ``<script>: warning: <message>``, without Python's source line."""


_python_formatwarning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` that shows a ``DataWarning`` as one line naming the script."""
    if isinstance(category, type) and issubclass(category, DataWarning):
        return f"{os.path.basename(sys.argv[0]) or 'warning'}: warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning  # every script imports this module; workers too


_said: set[str] = set()


def note(message: str) -> None:
    """Say ``message`` once per process on stderr, ``<script>: note: <message>``: a default the
    script chose for the user (a data root, a checkpoint)."""
    if message not in _said:
        _said.add(message)
        print(f"{os.path.basename(sys.argv[0]) or 'note'}: note: {message}", file=sys.stderr)


def check_name(kind: str, name: str, valid) -> str:
    if name not in valid:
        raise UserError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
    return name


def _int_at_least(text: str, low: int, bound: str) -> int:
    """``text`` as an integer of at least ``low``; else an argparse error that says ``bound``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def path_text(text: str) -> str:
    """argparse type: a path, never empty (``--data_root "$DATA"`` with DATA unset must not be
    taken for the flag left out, which falls back to another folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a path, or leave the flag out")
    return text


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "0 or more")


def seed_int(text: str) -> int:
    """argparse type: a seed from 0 to 2**63 - 1 (the range every RNG of the project takes)."""
    value = non_negative_int(text)
    if value > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1 = {2**63 - 1}, got {value}")
    return value


def _finite_float(text: str) -> float:
    """``text`` as a finite float; else an argparse error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, except where there is none to show (``None``)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


FLAG_ALIASES = {"--num_workers": "--workers"}
"""Old spellings still accepted, not listed in ``--help``: the old flag, then the flag that took its
place (docs/design.md#command-line-habits)."""


def declared_spelling(arg: str, known: set[str]) -> str:
    """``arg`` with its flag name as declared among the ``known`` long flags: ``--kebab-case`` as
    ``--kebab_case``, an old spelling of ``FLAG_ALIASES`` as its flag (a ``=value`` kept)."""
    if not arg.startswith("--") or arg == "--":
        return arg
    name, eq, value = arg.partition("=")
    if name in known:
        return arg
    snake = "--" + name[2:].replace("-", "_")
    for candidate in (snake, FLAG_ALIASES.get(snake)):
        if candidate in known:
            return candidate + eq + value
    return arg


def probability(text: str) -> float:
    """argparse type: a finite float from 0 to 1."""
    value = _finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def jpeg_quality(text: str) -> int:
    """argparse type: a JPEG quality, an integer from 1 to 100."""
    value = _int_at_least(text, 1, "from 1 to 100")
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, got {value}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the habits of PyTorch users (docs/design.md#command-line-habits): one-line
    errors, ``<prog>: error: <message> (see --help)``, that suggest the nearest flag to a misspelt
    one; every ``--snake_case`` flag also spelt ``--kebab-case``; ``FLAG_ALIASES``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _long_flags(self) -> set[str]:
        return {flag for action in self._actions for flag in action.option_strings if flag.startswith("--")}

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = self._long_flags()
        if "--" in args:  # what follows "--" is positional, never a flag
            cut = args.index("--")
            args = [declared_spelling(a, known) for a in args[:cut]] + args[cut:]
        else:
            args = [declared_spelling(a, known) for a in args]
        return super().parse_known_args(args, namespace)

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            unknown = [a for a in message.split(": ", 1)[1].split() if a.startswith("-")]
            flags = sorted(f for action in self._actions for f in action.option_strings)
            near = difflib.get_close_matches(unknown[0].partition("=")[0], flags, 1) if unknown else []
            if near:
                message += f"; did you mean {near[0]}?"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help="show full Python tracebacks instead of one-line errors"
    )


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; user errors print one line ``<script>: error: ...`` and exit 2.

    With ``--debug`` in argv the traceback is shown instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) or "script"
    try:
        result = main(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's exit
        return int(result) if isinstance(result, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `script | head` closed stdout: stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except (UserError, FileNotFoundError, PermissionError) as exc:  # data and weights errors are UserErrors
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {one_line_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write outside lib/fileio: disk full, a folder where a file goes ...
        if "--debug" in argv or exc.errno not in OS_ERROR_ADVICE:
            raise
        print(f"{prog}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


OS_ERROR_ADVICE = {
    errno.ENOSPC: "free disk space or choose another folder",
    errno.EDQUOT: "free disk space or choose another folder",
    errno.EFBIG: "free disk space or choose another folder",
    errno.EISDIR: "a folder is where a file goes: move it away or choose another path",
    errno.ENOTDIR: "a file is where a folder goes: move it away or choose another path",
    errno.EROFS: "choose a folder on a writable file system",
}
"""The ``OSError``s that are the user's to fix (``run_cli`` prints them as one line), and what to do."""


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError`` of ``OS_ERROR_ADVICE``: the file, the system's reason, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or one_line_message(exc)}; {OS_ERROR_ADVICE.get(exc.errno, 'see --help')}"


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-blank line of an exception's message (its type name when it has none) or of
    a text, cut to ``limit`` characters: for error messages that quote a library's long,
    multi-line exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else (exc if isinstance(exc, str) else type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def one_line_message(exc: BaseException) -> str:
    """The message of ``exc`` on one line. An error raised in a DataLoader worker arrives wrapped
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): keep only the
    original message, which names the file, not the worker's traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        name = type(exc).__name__
        for i in range(len(lines) - 1, -1, -1):
            head, sep, rest = lines[i].partition(": ")
            if sep and head.rsplit(".", 1)[-1] == name:
                lines = [rest] + lines[i + 1 :]
                break
    return " ".join(lines) or type(exc).__name__
