"""When a step is up to date (``RULE``), and when an interrupted training is resumed: a training
step that did not finish continues when its ``_last.pt`` holds an unfinished run of that command."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields

from lib.checkpoints import torch_load
from lib.fileio import atomic_write_json, read_json_object
from lib.images import class_dirs, list_images
from lib.study.plan import HERE, Step

STAMP_VERSION = 3
RULE = (
    "a step is skipped when it last finished with the same command, its outputs are still the "
    "ones it wrote, and its inputs (data, earlier steps' files, weights, manifests, its code) are "
    "still the ones it read (size, modification and change time of every file); --force runs it anyway"
)


@dataclass
class Stamp:
    """What a step last ran: its command, when it started, whether it finished, what it wrote."""

    command: list[str]
    started_ns: int
    finished: bool = False
    inputs: dict[str, str | None] = field(default_factory=dict)  # what it read -> signature at start
    outputs: dict[str, str | None] = field(default_factory=dict)  # path -> signature when done
    seconds: float | None = None  # of the last run that finished
    cpu_seconds: float | None = None
    max_rss_mb: float | None = None
    finished_at: str | None = None
    version: int = STAMP_VERSION

    @classmethod
    def from_json(cls, content) -> Stamp | None:
        """The stamp a JSON object holds; None when it is not one (unknown keys are left out)."""
        names = {f.name for f in fields(cls)}
        if not isinstance(content, dict) or not {"command", "started_ns"} <= set(content):
            return None
        return cls(**{k: v for k, v in content.items() if k in names})


# ----------------------------------------------------------------------------- signatures
def missing_sections(path: str, sections: tuple[str, ...], content: dict | None = None) -> list[str]:
    """The ``sections`` that the JSON at ``path`` (or its ``content``, already read) lacks."""
    content = read_json_object(path) if content is None else content
    return [name for name in sections if content.get(name) is None]


def file_signature(path: str) -> str | None:
    """What a file is now: its size, modification time and status-change time (a copy that keeps
    the modification time, ``cp -p`` or ``rsync -a``, still changes the ctime); None: missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def output_signature(path: str, sections: tuple[str, ...] = ()) -> str | None:
    """What an output is now: the file's signature, or for sections of a shared JSON (which other
    steps also write), a digest of those sections. None: missing."""
    if not sections:
        return file_signature(path)
    content = read_json_object(path)
    if missing_sections(path, sections, content):
        return None
    content = {name: content[name] for name in sections}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def data_signature(folder: str) -> str | None:
    """A digest of a split folder's images: each one's class folder, name and file signature;
    None when the folder is missing."""
    if not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for class_dir in class_dirs(folder) or ():
        path = os.path.join(folder, class_dir)
        for name in list_images(path):
            digest.update(f"{class_dir}/{name}\0{file_signature(os.path.join(path, name))}\n".encode())
    return digest.hexdigest()


def _module_file(name: str) -> str | None:
    """The repository file of module ``name`` (``utils``, ``lib.fileio``, ``lib``), relative to
    the repository; None for a module from elsewhere (torch, the standard library)."""
    base = name.replace(".", os.sep)
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(os.path.join(HERE, candidate)):
            return candidate
    return None


def _imported_files(tree: ast.AST) -> list[str]:
    """The repository files that the module ``tree`` imports: ``import a.b``, ``from a.b import
    c`` (module ``a.b``, and ``a/b/c.py`` when ``c`` is a module itself), and every package
    ``__init__.py`` on the way."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    files = []
    for name in names:
        parts = name.split(".")
        files += [_module_file(".".join(parts[: i + 1])) for i in range(len(parts))]
    return [f for f in files if f]


@functools.cache  # once per script and invocation: every step's stale check asks again
def code_files(script: str) -> tuple[str, ...]:
    """The script and every repository module it imports, directly or not, the ``lib`` package's
    modules included (paths relative to the repository)."""
    seen, todo = [], [script]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        try:
            with open(os.path.join(HERE, name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
        except (OSError, SyntaxError, ValueError):
            continue
        todo += _imported_files(tree)
    return tuple(sorted(seen))


def input_signatures(step: Step) -> dict[str, str | None]:
    """What the step reads, as it is now, each under the name its stale reason gives: the files of
    earlier steps and the code files (``file_signature``), the split folders (``data_signature``),
    the other files it reads when they exist (their absence is a signature too)."""
    found = {f"input {path}": file_signature(path) for path in step.inputs}
    found |= {f"data in {path}": data_signature(path) for path in step.data}
    found |= {_optional(path): file_signature(path) or "absent" for path in step.files}
    code = code_files(step.script)
    return found | {f"code {name}": file_signature(os.path.join(HERE, name)) for name in code}


def _optional(path: str) -> str:
    """The name of a file a step reads when it exists (``Step.files``), in its stamp and reason."""
    return f"file {path}"


def changed_input(step: Step, recorded: dict) -> str | None:
    """Why what the step reads is not what it read when ``recorded`` (None: all of it the same)."""
    optional = {_optional(path) for path in step.files}
    for what, signature in input_signatures(step).items():
        if what in optional and what not in recorded:  # a stamp from before such files were signed
            continue
        if signature is None:
            return f"{what} is missing"
        if signature != recorded.get(what):
            return f"{what} changed"
    return None


# ----------------------------------------------------------------------------- stamps
class Stamps:
    """One JSON per step under ``<out_dir>/.study_stamps``: what the step last ran."""

    def __init__(self, out_dir: str):
        self.folder = os.path.join(out_dir, ".study_stamps")

    def path(self, step: Step) -> str:
        """The stamp file of the step."""
        return os.path.join(self.folder, f"{step.name}.json")

    def read(self, step: Step) -> Stamp | None:
        """The step's stamp; None when it has none (or an unreadable one)."""
        return Stamp.from_json(read_json_object(self.path(step)) or None)

    def start(self, step: Step, previous: Stamp | None) -> Stamp:
        """Record that the step starts now (unfinished until ``finish``); the last finished run's
        usage is kept for the report."""
        stamp = Stamp(command=step.command, started_ns=time.time_ns(), inputs=input_signatures(step))
        if previous is not None:
            stamp.seconds, stamp.cpu_seconds = previous.seconds, previous.cpu_seconds
            stamp.max_rss_mb = previous.max_rss_mb
        atomic_write_json(self.path(step), asdict(stamp))
        return stamp

    def finish(
        self, step: Step, stamp: Stamp, seconds: float, cpu_seconds: float | None, max_rss_mb: float | None
    ) -> None:
        """Record that the step finished, with the signatures of what it wrote."""
        stamp.finished = True
        stamp.outputs = {path: output_signature(path, sections) for path, sections in step.outputs.items()}
        stamp.seconds, stamp.cpu_seconds, stamp.max_rss_mb = round(seconds, 3), cpu_seconds, max_rss_mb
        stamp.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self.path(step), asdict(stamp))


def stale_reason(step: Step, stamp: Stamp | None) -> str | None:
    """None when the step is up to date (see ``RULE``), else why it must run."""
    if stamp is None:
        return "not run yet"
    if stamp.version != STAMP_VERSION:
        return "its stamp is from an older run_study.py"
    if stamp.command != step.command:
        return "its command changed"
    if not stamp.finished:
        return "it did not finish last time"
    for path, sections in step.outputs.items():
        signature = output_signature(path, sections)
        if signature is None:
            if not sections:
                return f"output {path} is missing"
            return f"{path} has no '{missing_sections(path, sections)[0]}' section"
        if signature != stamp.outputs.get(path):
            return f"output {path} was changed since this step made it"
    return changed_input(step, stamp.inputs)


def resume_reason(step: Step, stamp: Stamp | None) -> str | None:
    """Why the step can continue its own interrupted training (None: it starts afresh).

    It can when its last start had the same command, nothing it reads changed since, and its
    ``_last.pt`` holds an unfinished run of exactly that command (so resuming keeps the run's id:
    no other run's checkpoint is moved aside).
    """
    if (
        step.resume_from is None
        or stamp is None
        or stamp.finished
        or stamp.command != step.command
        or stamp.version != STAMP_VERSION
        or changed_input(step, stamp.inputs)
    ):
        return None
    try:
        last = torch_load(step.resume_from, "cpu", mmap=True)
        run, epoch = last["run"], int(last["epoch"])
    except Exception:  # missing, unreadable or not a full-state checkpoint: start afresh
        return None
    argv = [a for a in (run.get("argv") or [])[1:] if a != "--resume"] if isinstance(run, dict) else []
    if argv != step.args or run.get("completed"):
        return None
    return f"resuming its interrupted training after epoch {epoch}"
