"""Run the whole study (SPEC section 4) in one command and write a one-page report.

    python run_study.py                       # everything, skipping steps that are up to date
    python run_study.py --dry_run             # the plan: every step, its command, why it would run
    python run_study.py --steps train --force # redo the three trainings only
    python run_study.py --skip saliency       # everything but the saliency maps

Steps, in order (each one a subprocess of this Python, its output in out/logs/<step>.log):

    samples                          plot_samples_of_faces_datasets.py
    train-simplenet-fakes            train_main.py, SimpleNet on fakes_dataset      (Adam, lr 0.001, batch 32, 5 epochs)
    train-simplenet-synthetic        train_main.py, SimpleNet on synthetic_dataset  (Adam, lr 0.001, batch 32, 5 epochs)
    train-xception-synthetic         train_main.py, XceptionBased on synthetic_dataset (Adam, lr 0.001, batch 32, 2 epochs)
    curves-<run>                     plot_accuracy_and_loss.py  (for each of the three runs)
    numerical-<run>                  numerical_analysis.py      (for each of the three runs)
    gradcam-<run>                    grad_cam_analysis.py       (for each of the three runs)
    saliency-simplenet-fakes         saliency_map.py
    saliency-xception-synthetic      saliency_map.py

Then out/study_report.md, out/study_report.html (one self-contained page, figures embedded) and
out/study_summary.json (the same numbers, and each step's seconds).

Data: --data_root, else $FACES_DATA_ROOT, else ../Assignment4_datasets; when none of them is there,
demo data is generated once into data/demo (make_demo_datasets.py) and used, and the report says so.

XceptionBased starts from ImageNet weights when xception.py can find them (--xception_weights,
$XCEPTION_WEIGHTS, the torch hub cache, a download). If it cannot, it trains from random
initialisation and the console and the report say so loudly.

A step is skipped when its stamp (out/.study_stamps/<step>.json) records the same command, the same
inputs (the image files it reads, the checkpoint or metrics JSON it reads, the code of the script
and of the project modules it imports, compared without comments and docstrings) and its outputs
still exist; --force redoes the selected steps. Nothing is deleted: training runs append to their
metrics JSON, logs are appended to. A failing step stops the study with a message naming the step
and its log; what earlier steps wrote is kept.

Time: the report's step table (and out/study_summary.json) gives the wall and CPU seconds of every
step. XceptionBased dominates on a CPU; --gradcam_max_images bounds the Grad-CAM faithfulness test.
"""
from __future__ import annotations

import time

_IMPORT_TIME = time.monotonic()  # the budget counts from the start of the command, imports included

import ast
import base64
import codecs
import fnmatch
import hashlib
import html
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field

from analysis import metrics_json_path as analysis_metrics_json_path
from cli import (
    ArgumentParser,
    UserError,
    add_debug_flag,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
)
from faces_dataset import CLASS_DIRS, list_images
from fileio import atomic_write_json, atomic_write_text, ensure_dir, read_runs
from memory import add_activation_checkpointing_flag, ru_maxrss_mb
from trainer import LoggingParameters, output_stem
from utils import (
    DATA_ROOT_ENV,
    DATASET_NAMES,
    DATASET_TITLES,
    DEFAULT_DATA_ROOT,
    FIGURE_SUFFIXES,
    SAMPLES_FIGURE,
    SPLITS,
    figure_path,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OPTIMIZER = "Adam"
DEMO_STAMP = ".study_demo.json"
STAMP_VERSION = 1


# ============================================================================= the study
@dataclass(frozen=True)
class RunSpec:
    """One of the study's three training runs."""
    tag: str
    model: str
    dataset: str
    default_epochs: int
    saliency: bool

    @property
    def stem(self) -> str:
        return f"{self.dataset}_{self.model}"


RUNS = (
    RunSpec("simplenet-fakes", "SimpleNet", "fakes_dataset", 5, saliency=True),
    RunSpec("simplenet-synthetic", "SimpleNet", "synthetic_dataset", 5, saliency=False),
    RunSpec("xception-synthetic", "XceptionBased", "synthetic_dataset", 2, saliency=True),
)
STEP_KINDS = ("samples", "train", "curves", "numerical", "gradcam", "saliency", "report")

# SPEC section 6: (low, high) ranges; "report" is the study report's own figure.
SPEC_PARAMS = {"SimpleNet": 16_901_762, "XceptionBased": 23_128_786}
"""Trainable parameters of the two models as SPEC gives them (the report shows both)."""

STUDY_NUMBERS = {
    "simplenet-fakes": {"label": "SimpleNet, fakes_dataset", "val_acc": (84, 91), "test_acc": (81, 88),
                        "auc_b": (0.88, 0.95), "report": "83.95 / 76.57"},
    "simplenet-synthetic": {"label": "SimpleNet, synthetic_dataset", "val_acc": (48, 52),
                            "test_acc": (48, 52), "auc_b": (0.45, 0.55), "report": "50.12 / 49.95",
                            "about": True, "note": "a constant classifier"},
    "xception-synthetic": {"label": "XceptionBased (ImageNet init), synthetic_dataset",
                           "val_acc": (96, 99), "test_acc": (96, 99), "auc_b": (0.995, 1.0),
                           "report": "98.72 / 98.82"},
    "xception-synthetic-random": {"label": "XceptionBased from random init, synthetic_dataset",
                                  "val_acc": (50, 60), "test_acc": (50, 60), "auc_b": None,
                                  "report": None},
}


def run_figures(run: RunSpec, figures_dir: str) -> dict[str, list[str]]:
    """The SPEC section 4 figures of one run, by the step kind that makes them
    (``utils.FIGURE_SUFFIXES``, the names the scripts write)."""
    return {kind: [figure_path(figures_dir, run.dataset, run.model, suffix) for suffix in suffixes]
            for kind, suffixes in FIGURE_SUFFIXES.items() if kind != "saliency" or run.saliency}


def extra_figures(run: RunSpec, figures_dir: str) -> list[str]:
    """Other figures the steps wrote for this run (e.g. the mean Grad-CAM maps), sorted."""
    spec = {p for paths in run_figures(run, figures_dir).values() for p in paths}
    try:
        names = sorted(os.listdir(figures_dir))
    except OSError:
        return []
    return [os.path.join(figures_dir, name) for name in names
            if name.startswith(run.stem + "_") and name.endswith(".png")
            and os.path.join(figures_dir, name) not in spec]


def samples_figure(figures_dir: str) -> str:
    return os.path.join(figures_dir, SAMPLES_FIGURE)


# ============================================================================= steps and stamps
@dataclass
class Step:
    name: str
    kind: str
    run: RunSpec | None
    script: str
    args: list[str]
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)       # files made by earlier steps
    data: list[str] = field(default_factory=list)         # split folders read
    json_keys: dict[str, str] = field(default_factory=dict)  # output JSON -> section it must hold

    @property
    def command(self) -> list[str]:
        return [self.script, *self.args]

    def argv(self) -> list[str]:
        return [sys.executable, os.path.join(HERE, self.script), *self.args]


def file_signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def folder_signature(folder: str) -> str | None:
    """A digest of the image files (names, sizes, mtimes) of a split folder's real/ and fake/."""
    if not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for class_dir in CLASS_DIRS:
        path = os.path.join(folder, class_dir)
        names = list_images(path) if os.path.isdir(path) else []
        for name in names:
            st = os.stat(os.path.join(path, name))
            digest.update(f"{class_dir}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_CODE_CACHE: dict[str, list[str]] = {}


def local_modules(script: str) -> list[str]:
    """The script and every module of this folder it imports, directly or not (by ast)."""
    if script in _CODE_CACHE:
        return _CODE_CACHE[script]
    seen, todo = [], [script]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        try:
            with open(os.path.join(HERE, name)) as handle:
                tree = ast.parse(handle.read())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            for module in modules:
                candidate = module.split(".")[0] + ".py"
                if os.path.isfile(os.path.join(HERE, candidate)):
                    todo.append(candidate)
    _CODE_CACHE[script] = sorted(seen)
    return _CODE_CACHE[script]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_signature(script: str) -> dict[str, str]:
    """A digest per module the step runs, of its syntax tree without docstrings: editing comments,
    docstrings or layout does not make a step stale; editing code does."""
    out = {}
    for name in local_modules(script):
        path = os.path.join(HERE, name)
        key = (path, tuple(file_signature(path) or ()))
        if key not in _DIGEST_CACHE:
            try:
                with open(path, encoding="utf-8") as handle:
                    tree = _strip_docstrings(ast.parse(handle.read()))
                _DIGEST_CACHE[key] = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
            except (OSError, SyntaxError, ValueError):
                _DIGEST_CACHE[key] = None
        out[name] = _DIGEST_CACHE[key]
    return out


_DIGEST_CACHE: dict[tuple, str | None] = {}


class Stamps:
    """One JSON per step under ``<out_dir>/.study_stamps``: what the step last ran on."""

    def __init__(self, out_dir: str):
        self.folder = os.path.join(out_dir, ".study_stamps")

    def path(self, step: Step) -> str:
        return os.path.join(self.folder, f"{step.name}.json")

    def read(self, step: Step) -> dict | None:
        try:
            with open(self.path(step)) as handle:
                stamp = json.load(handle)
            return stamp if isinstance(stamp, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def current(step: Step) -> dict:
        return {"version": STAMP_VERSION, "command": step.command,
                "inputs": {p: file_signature(p) for p in step.inputs},
                "data": {p: folder_signature(p) for p in step.data},
                "code": code_signature(step.script)}

    def stale_reason(self, step: Step, stamp: dict | None, now: dict | None = None) -> str | None:
        """None when the step is up to date, else why it must run. ``stamp``: ``read(step)``;
        ``now``: ``current(step)`` when the caller has it already."""
        if stamp is None:
            return "not run yet"
        now = now or self.current(step)
        if stamp.get("version") != now["version"] or stamp.get("command") != now["command"]:
            return "its command changed"
        for key, what in (("inputs", "input"), ("data", "data in"), ("code", "code")):
            old = stamp.get(key) or {}
            for path, signature in now[key].items():
                if old.get(path) != signature:
                    return f"{what} {path} changed"
        for path in step.outputs:
            if not os.path.exists(path):
                return f"output {path} is missing"
        for path, key in step.json_keys.items():
            if key not in _read_json_object(path):
                return f"{path} has no '{key}' section"
        return None

    def write(self, step: Step, now: dict, seconds: float, cpu_seconds: float | None = None,
              max_rss_mb: float | None = None) -> None:
        """Record that ``step`` ran on ``now`` (``current(step)`` taken before it ran)."""
        stamp = dict(now)
        stamp.update(step=step.name, outputs=step.outputs, seconds=round(seconds, 3),
                     cpu_seconds=cpu_seconds, max_rss_mb=max_rss_mb,
                     finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        atomic_write_json(self.path(step), stamp)


def _read_json_object(path: str) -> dict:
    try:
        with open(path) as handle:
            content = json.load(handle)
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):
        return {}


# ============================================================================= the plan
@dataclass
class Settings:
    data_root: str
    out_dir: str
    figures_dir: str
    checkpoint_dir: str
    seed: int
    device: str
    batch_size: int
    lr: float
    epochs: dict
    num_workers: int | None
    xception_args: list[str]
    gradcam_max_images: int = 0


def _train_stem(run: RunSpec) -> str:
    """``<D>_<M>_<optimizer>``, as the Trainer names its checkpoint and metrics JSON."""
    return output_stem(LoggingParameters(run.model, run.dataset, OPTIMIZER))


def checkpoint_path(settings: Settings, run: RunSpec) -> str:
    return os.path.join(settings.checkpoint_dir, f"{_train_stem(run)}.pt")


def runs_json_path(settings: Settings, run: RunSpec) -> str:
    return os.path.join(settings.out_dir, f"{_train_stem(run)}.json")


def metrics_json_path(settings: Settings, run: RunSpec) -> str:
    return analysis_metrics_json_path(settings.out_dir, run.dataset, run.model)


def split_folder(settings: Settings, dataset: str, split: str) -> str:
    return os.path.join(settings.data_root, dataset, split)


def build_plan(s: Settings) -> list[Step]:
    """Every step of the study, in order (SPEC section 4, last paragraph)."""
    steps = [Step("samples", "samples", None, "plot_samples_of_faces_datasets.py",
                  ["--data_root", s.data_root, "--seed", str(s.seed), "--figures_dir", s.figures_dir],
                  outputs=[samples_figure(s.figures_dir)],
                  data=[split_folder(s, d, "train") for d in DATASET_NAMES])]
    for run in RUNS:
        args = ["-m", run.model, "-d", run.dataset, "-o", OPTIMIZER, "--lr", repr(s.lr),
                "-b", str(s.batch_size), "-e", str(s.epochs[run.tag]), "--data_root", s.data_root,
                "--seed", str(s.seed), "--device", s.device, "--out_dir", s.out_dir,
                "--checkpoint_dir", s.checkpoint_dir]
        if s.num_workers is not None:
            args += ["--num_workers", str(s.num_workers)]
        if run.model == "XceptionBased":
            args += s.xception_args
        steps.append(Step(f"train-{run.tag}", "train", run, "train_main.py", args,
                          outputs=[checkpoint_path(s, run), runs_json_path(s, run)],
                          data=[split_folder(s, run.dataset, split) for split in SPLITS]))
    saliency_steps = []  # after every other analysis step, as SPEC section 4 lists them
    for run in RUNS:
        figures = run_figures(run, s.figures_dir)
        ckpt, runs_json = checkpoint_path(s, run), runs_json_path(s, run)
        analysis_args = ["-m", run.model, "-cpp", ckpt, "-d", run.dataset, "--data_root", s.data_root,
                         "--device", s.device, "--figures_dir", s.figures_dir]
        test_data = [split_folder(s, run.dataset, "test")]
        steps.append(Step(f"curves-{run.tag}", "curves", run, "plot_accuracy_and_loss.py",
                          ["-m", run.model, "-j", runs_json, "-d", run.dataset,
                           "--figures_dir", s.figures_dir],
                          outputs=figures["curves"], inputs=[runs_json]))
        metrics = metrics_json_path(s, run)
        steps.append(Step(f"numerical-{run.tag}", "numerical", run, "numerical_analysis.py",
                          analysis_args + ["--out_dir", s.out_dir],
                          outputs=figures["numerical"] + [metrics], inputs=[ckpt], data=test_data,
                          json_keys={metrics: "numerical"}))
        gradcam_args = ["--seed", str(s.seed), "--out_dir", s.out_dir]
        if s.gradcam_max_images:
            gradcam_args += ["--faithfulness_images", str(s.gradcam_max_images)]
        steps.append(Step(f"gradcam-{run.tag}", "gradcam", run, "grad_cam_analysis.py",
                          analysis_args + gradcam_args,
                          outputs=figures["gradcam"] + [metrics], inputs=[ckpt], data=test_data,
                          json_keys={metrics: "grad_cam"}))
        if run.saliency:
            saliency_steps.append(Step(f"saliency-{run.tag}", "saliency", run, "saliency_map.py",
                                       analysis_args + ["--seed", str(s.seed)],
                                       outputs=figures["saliency"], inputs=[ckpt], data=test_data))
    return steps + saliency_steps


def step_names_help() -> str:
    """Every step name, in the plan's order, then 'report'."""
    names = ["samples"] + [f"train-{r.tag}" for r in RUNS]
    names += [f"{kind}-{r.tag}" for r in RUNS for kind in ("curves", "numerical", "gradcam")]
    names += [f"saliency-{r.tag}" for r in RUNS if r.saliency] + ["report"]
    return ", ".join(names)


def _split_selectors(values: list[str] | None) -> list[str]:
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def _matches(step_name: str, kind: str, run_tag: str | None, selector: str) -> bool:
    return (selector == kind or selector == run_tag or selector == step_name
            or fnmatch.fnmatchcase(step_name, selector))


def select_steps(plan: list[Step], steps: list[str] | None, skip: list[str] | None
                 ) -> tuple[list[Step], bool]:
    """The steps chosen by --steps (default all) minus --skip; and whether the report is written.

    A selector is a step name, a kind (train, curves, ...), a run (simplenet-fakes, ...) or a
    shell pattern (train-*); one that matches nothing is an error.
    """
    wanted, unwanted = _split_selectors(steps), _split_selectors(skip)
    entries = [(step.name, step.kind, step.run.tag if step.run else None) for step in plan]
    entries.append(("report", "report", None))
    for flag, selectors in (("--steps", wanted), ("--skip", unwanted)):
        for selector in selectors:
            if not any(_matches(*entry, selector) for entry in entries):
                raise UserError(f"{flag} {selector}: matches no step; steps: {step_names_help()}; "
                                f"kinds: {', '.join(STEP_KINDS)}; runs: "
                                f"{', '.join(r.tag for r in RUNS)}")

    def chosen(entry) -> bool:
        if wanted and not any(_matches(*entry, sel) for sel in wanted):
            # The report is written whenever it is not skipped explicitly.
            if entry[0] != "report":
                return False
        return not any(_matches(*entry, sel) for sel in unwanted)

    selected = [step for step, entry in zip(plan, entries) if chosen(entry)]
    return selected, chosen(entries[-1])


# ============================================================================= console and steps
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def clean_line(text: str) -> str:
    """What a terminal would show of a line: the part after its last carriage return."""
    return ANSI.sub("", text.rstrip("\r").split("\r")[-1]).rstrip()


class Console:
    """Step headers and the steps' output lines; a live progress bar over the steps on a TTY."""

    def __init__(self, total: int, progress: bool, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self._last_refresh = 0.0
        if progress and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="study", unit="step", dynamic_ncols=True,
                            disable=None, leave=False,
                            bar_format="{desc} {n_fmt}/{total_fmt} steps [{elapsed}]{postfix}")

    def say(self, text: str = "") -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def output(self, line: str) -> None:
        if not self.quiet:
            self.say(f"    | {line}")

    def status(self, step: str, text: str) -> None:
        if self.bar is None or self.bar.disable:
            return
        self.bar.set_postfix_str(f"{step}: {text[-80:]}", refresh=False)
        now = time.monotonic()
        if now - self._last_refresh > 0.3:
            self.bar.refresh()
            self._last_refresh = now

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def run_command(name: str, argv: list[str], log_path: str, console: Console
                ) -> tuple[int, float, list, dict]:
    """Run ``argv``; its output goes, line by line, to the log (appended) and the console.

    Returns (exit code, seconds, last lines of output, its resource usage: ``cpu_seconds`` and
    ``max_rss_mb`` on POSIX, else empty).
    """
    ensure_dir(os.path.dirname(log_path))
    tail: deque = deque(maxlen=25)
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} step {name}: {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env())
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""

        def emit(raw: str) -> None:
            line = clean_line(raw)
            if line:
                log.write(line + "\n")
                tail.append(line)
                console.output(line)

        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for raw in lines:
                    emit(raw)
                if lines:
                    log.flush()
                partial = clean_line(pending)
                if partial:
                    console.status(name, partial)
            emit(pending + decoder.decode(b"", final=True))
            code, usage = _wait_with_usage(proc)
        except BaseException:  # KeyboardInterrupt: stop the child too, keep the log
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.write(f"===== interrupted after {time.monotonic() - start:.1f} s\n")
            raise
        finally:
            proc.stdout.close()
        seconds = time.monotonic() - start
        log.write(f"===== exit code {code} after {seconds:.1f} s"
                  + (f" (CPU {usage['cpu_seconds']:.1f} s, peak memory {usage['max_rss_mb']:.0f} MB)"
                     if usage else "") + "\n")
    return code, seconds, list(tail), usage


def _wait_with_usage(proc: subprocess.Popen) -> tuple[int, dict]:
    """Wait for the child; its exit code and, on POSIX, its own CPU seconds and peak memory."""
    if not hasattr(os, "wait4"):
        return proc.wait(), {}
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, {"cpu_seconds": rusage.ru_utime + rusage.ru_stime,
                             "max_rss_mb": ru_maxrss_mb(rusage)}


class StepFailed(UserError):
    """A step exited with an error (or cannot start): names the step and its log."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


# ============================================================================= data and weights
def data_counts(data_root: str) -> dict:
    """{dataset: {split: {"real": n, "fake": n}}}; raises UserError naming a missing folder."""
    counts = {}
    for dataset in DATASET_NAMES:
        counts[dataset] = {}
        for split in SPLITS:
            counts[dataset][split] = {}
            for class_dir in CLASS_DIRS:
                folder = os.path.join(data_root, dataset, split, class_dir)
                if not os.path.isdir(folder):
                    raise UserError(f"{folder}: missing; the data root {data_root} must hold "
                                    f"{{fakes_dataset,synthetic_dataset}}/{{train,val,test}}/"
                                    f"{{real,fake}}/ (or use the demo data: leave --data_root out)")
                counts[dataset][split][class_dir] = len(list_images(folder))
    return counts


def read_demo_stamp(demo_dir: str) -> dict | None:
    stamp = _read_json_object(os.path.join(demo_dir, DEMO_STAMP))
    return stamp or None


def demo_complete(demo_dir: str) -> bool:
    return all(os.path.isdir(os.path.join(demo_dir, d, s, c))
               for d in DATASET_NAMES for s in SPLITS for c in CLASS_DIRS)


def choose_data(args, console: Console, logs_dir: str) -> dict:
    """Resolve the data root like ``utils.resolve_data_root``; fall back to demo data (made once)."""
    from utils import resolve_data_root
    explicit = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if explicit or os.path.isdir(DEFAULT_DATA_ROOT):
        root = resolve_data_root(args.data_root)
        origin = ("--data_root" if args.data_root else f"${DATA_ROOT_ENV}" if explicit
                  else "the default location")
        stamp = read_demo_stamp(root)
        demo = stamp is not None or os.path.abspath(root) == os.path.abspath(args.demo_dir)
        console.say(f"data: {root} (from {origin})" + (" - demo data made by make_demo_datasets.py"
                                                      if demo else ""))
        return {"root": root, "origin": origin, "demo": demo, "demo_settings": stamp}

    demo_dir = args.demo_dir
    wanted = {"scale": args.demo_scale, "seed": args.demo_seed}
    stamp = read_demo_stamp(demo_dir)
    have = demo_complete(demo_dir)
    console.say(f"data: no datasets found (--data_root not given, ${DATA_ROOT_ENV} not set, "
                f"{os.path.abspath(DEFAULT_DATA_ROOT)} missing): using DEMO data in {demo_dir}")
    if have and not args.remake_demo:
        if stamp is not None and {k: stamp.get(k) for k in wanted} != wanted:
            raise UserError(f"{demo_dir} holds demo data made with scale {stamp.get('scale')}, seed "
                            f"{stamp.get('seed')}, not the --demo_scale {args.demo_scale} / "
                            f"--demo_seed {args.demo_seed} asked for; pass --remake_demo to "
                            f"regenerate it, or choose another --demo_dir")
        console.say(f"data: demo data already generated in {demo_dir}; reusing it")
    elif args.dry_run:
        console.say(f"data: would generate demo data into {demo_dir} (scale {args.demo_scale})")
        return {"root": demo_dir, "origin": "demo", "demo": True, "demo_settings": wanted,
                "missing": True}
    else:
        console.say(f"data: generating the demo datasets into {demo_dir} (once; scale "
                    f"{args.demo_scale}, seed {args.demo_seed}) ...")
        argv = [sys.executable, os.path.join(HERE, "make_demo_datasets.py"), "--out", demo_dir,
                "--scale", repr(args.demo_scale), "--seed", str(args.demo_seed)]
        if args.remake_demo or stamp is not None:
            argv.append("--force")  # ours (or asked for): only the dataset folders are replaced
        else:
            from make_demo_datasets import is_non_empty
            foreign = [d for d in DATASET_NAMES if is_non_empty(os.path.join(demo_dir, d))]
            if foreign:
                raise UserError(f"{os.path.join(demo_dir, foreign[0])}: exists but is not complete demo "
                                f"data made by run_study.py (no {DEMO_STAMP} in {demo_dir}); pass "
                                "--remake_demo to replace it with demo data, or choose another --demo_dir")
        log = os.path.join(logs_dir, "demo-data.log")
        code, seconds, tail, _ = run_command("demo-data", argv, log, console)
        if code != 0:
            for line in tail[-15:]:
                print(f"    {line}", file=sys.stderr)
            raise StepFailed("demo-data", f"generating the demo data failed (exit code {code}); "
                                          f"see its log {log}")
        atomic_write_json(os.path.join(demo_dir, DEMO_STAMP),
                          {**wanted, "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "seconds": round(seconds, 1)})
        console.say(f"data: demo data ready in {demo_dir} ({seconds:.0f} s)")
        return {"root": demo_dir, "origin": "demo", "demo": True,
                "demo_settings": read_demo_stamp(demo_dir) or wanted,
                "generated_seconds": round(seconds, 2)}
    return {"root": demo_dir, "origin": "demo", "demo": True,
            "demo_settings": stamp or {"scale": None, "seed": None,
                                       "note": "made outside run_study.py; settings unknown"}}


LOUD = "!" * 78


WEIGHTS_PROBE = """
import json, sys
import xception
try:
    model = xception.build_xception_backbone(pretrained=True, weights_path=sys.argv[1] or None,
                                             allow_missing_classifier=True)
except xception.XceptionWeightsError as exc:
    print(json.dumps({"found": False, "error": str(exc)}))
else:
    print(json.dumps({"found": True, "source": str(model.weights_info.source),
                      "origin": model.weights_info.origin}))
"""


def probe_xception_weights(explicit: str | None, allow_download: bool) -> dict:
    """xception.build_xception_backbone's discovery, in a subprocess (it may download ~90 MB):
    {"found": True, "source", "origin"} or {"found": False, "error"}."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    if not allow_download:
        env["XCEPTION_NO_DOWNLOAD"] = "1"
    done = subprocess.run([sys.executable, "-c", WEIGHTS_PROBE, explicit or ""], env=env,
                          stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, text=True)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if done.returncode != 0 or not isinstance(result, dict):
        raise UserError(f"looking for the Xception ImageNet weights failed (exit code "
                        f"{done.returncode}): {' '.join(lines[-3:]) or 'no output'}; pass "
                        f"--xception_weights PATH or --no_pretrained")
    return result


def choose_xception_weights(args, console: Console, dry_run: bool) -> dict:
    """Decide how XceptionBased starts: ImageNet weights when xception.py finds them, else random.

    An explicit --xception_weights / $XCEPTION_WEIGHTS that cannot be used is an error (it was
    asked for); not finding any weights falls back to random initialisation, announced loudly.
    """
    if args.no_pretrained:
        return {"pretrained": False, "args": ["--no_pretrained"],
                "reason": "--no_pretrained was given"}
    explicit = args.xception_weights or os.environ.get("XCEPTION_WEIGHTS", "").strip() or None
    console.say("XceptionBased: looking for ImageNet weights" + (" (dry run: no download)" if dry_run
                                                               else " ..."))
    result = probe_xception_weights(args.xception_weights and os.path.abspath(args.xception_weights),
                                    allow_download=not dry_run)
    if not result.get("found"):
        reason = str(result.get("error", "not found"))
        if explicit or args.require_pretrained:
            asked = "--xception_weights/$XCEPTION_WEIGHTS" if explicit else "--require_pretrained"
            raise UserError(f"XceptionBased ImageNet weights ({asked}): {reason}")
        console.say(LOUD)
        console.say("WARNING: NO IMAGENET WEIGHTS FOUND FOR XceptionBased.")
        console.say("XceptionBased WILL TRAIN FROM RANDOM INITIALISATION (--no_pretrained).")
        console.say(imagenet_note())
        console.say("To use ImageNet weights: --xception_weights PATH (or XCEPTION_WEIGHTS=PATH), or "
                    "put the file in the torch hub cache; details:")
        for line in reason.splitlines():
            console.say(f"  {line}")
        if dry_run:
            console.say("(--dry_run: no download was tried; a real run tries it first)")
        console.say(LOUD)
        return {"pretrained": False, "args": ["--no_pretrained"],
                "reason": "no ImageNet weights were found: none given (--xception_weights, "
                          "$XCEPTION_WEIGHTS), none in the torch hub cache, " +
                          ("no download tried (--dry_run)" if dry_run else "no download possible"),
                "details": reason}
    source = os.path.abspath(result["source"])
    console.say(f"XceptionBased: ImageNet weights {source} (found via {result.get('origin')})")
    return {"pretrained": True, "args": ["--xception_weights", source],
            "reason": f"ImageNet weights {source} ({result.get('origin')})"}


# ============================================================================= numbers
def _finite(value):
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values):
    values = [_finite(v) for v in values or []]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_numbers(settings: Settings, run: RunSpec) -> dict:
    """The report's numbers of one run: last training run, 'numerical' and 'grad_cam' sections."""
    numbers = {"model": run.model, "dataset": run.dataset, "json": runs_json_path(settings, run),
               "metrics_json": metrics_json_path(settings, run)}
    runs = []
    if os.path.exists(numbers["json"]):  # absent: not trained yet
        try:
            runs = read_runs(numbers["json"])
        except UserError as exc:  # names the file and says what to do
            numbers["problem"] = str(exc)
    last = runs[-1] if runs else {}
    best = last.get("best_epoch")
    val_acc = last.get("val_acc") or []
    test_acc = last.get("test_acc") or []
    if best is None and val_acc:  # older runs without the key: first epoch of the best val acc
        best = 1 + max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))
    numbers.update({
        "n_runs_in_json": len(runs),
        "epochs": len(val_acc),
        "pretrained": last.get("pretrained") if run.model == "XceptionBased" else None,
        "n_params_trained": last.get("n_params"),
        "best_val_epoch": best,
        # the Trainer records both; older runs without them: the epoch's entries
        "best_val_acc": _finite(last.get("best_val_acc",
                                         val_acc[best - 1] if best and len(val_acc) >= best else None)),
        "test_acc_at_best": _finite(last.get("test_acc_at_best",
                                             test_acc[best - 1] if best and len(test_acc) >= best else None)),
        "epoch_seconds": _mean(last.get("epoch_seconds")),
        "train_images_per_sec": _mean(last.get("train_images_per_sec")),
        "eval_images_per_sec": _mean(last.get("eval_images_per_sec")),
        "device": last.get("device"),
        "activation_checkpointing": last.get("activation_checkpointing"),
        "run_started": last.get("started"),
    })
    metrics = _read_json_object(metrics_json_path(settings, run))
    numerical = metrics.get("numerical") or {}
    grad_cam = metrics.get("grad_cam") or {}
    numbers.update({
        "auc_a": _finite(numerical.get("auc_a")),
        "auc_b": _finite(numerical.get("auc_b")),
        "eer": _finite(numerical.get("eer")),
        "ap": _finite(numerical.get("ap")),
        "test_accuracy_analysis": _finite(numerical.get("accuracy")),
        "n_test": numerical.get("n_samples"),
        "grad_cam_faithfulness_gap": _finite(grad_cam.get("faithfulness_gap")),
        "grad_cam_images": grad_cam.get("n_images"),
    })
    return numbers


def study_reference(run: RunSpec, pretrained) -> dict:
    if run.model == "XceptionBased" and pretrained is False:
        return STUDY_NUMBERS["xception-synthetic-random"]
    return STUDY_NUMBERS[run.tag]


def _range_text(rng, percent: bool, about: bool = False) -> str:
    if rng is None:
        return "-"
    lo, hi = rng
    if about:  # "about X": shown as the study says it, compared with a small tolerance
        return f"about {(lo + hi) / 2:g}" + (" %" if percent else "")
    return f"{lo}-{hi} %" if percent else f"{lo}-{hi}"


def imagenet_note() -> str:
    """What the study saw with and without ImageNet weights for XceptionBased (STUDY_NUMBERS)."""
    return (f"The study's {_range_text(STUDY_NUMBERS['xception-synthetic']['val_acc'], True)} needs "
            "ImageNet weights; from random initialisation the study saw "
            f"{_range_text(STUDY_NUMBERS['xception-synthetic-random']['val_acc'], True)}.")


def _compare(value, rng) -> str | None:
    if value is None or rng is None:
        return None
    lo, hi = rng
    return "within" if lo <= value <= hi else ("below" if value < lo else "above")


def verdict(run: RunSpec, numbers: dict, demo: bool) -> str:
    """One short, honest sentence: how this run compares with the study, and why where known."""
    ref = study_reference(run, numbers.get("pretrained"))
    val, test, auc = numbers.get("best_val_acc"), numbers.get("test_acc_at_best"), numbers.get("auc_b")
    if val is None:
        if numbers.get("problem"):
            return f"Its training results cannot be read: {numbers['problem']}."
        return "Not trained yet (no run in its metrics JSON): nothing to compare."
    got = [f"val {val:.1f} %"] + ([f"test {test:.1f} %"] if test is not None else []) + \
        ([f"AUC(B) {auc:.2f}"] if auc is not None else [])
    where = [w for w in (_compare(val, ref["val_acc"]), _compare(test, ref["test_acc"]),
                         _compare(auc, ref["auc_b"])) if w]
    if where and all(w == where[0] for w in where):
        position = f"{where[0]} the study's"
    else:
        position = "partly within, partly outside the study's"
    about = ref.get("about", False)
    study = [f"val {_range_text(ref['val_acc'], True, about)}",
             f"test {_range_text(ref['test_acc'], True, about)}"]
    if ref["auc_b"]:
        study.append(f"AUC(B) {_range_text(ref['auc_b'], False, about)}")
    random_init = run.model == "XceptionBased" and numbers.get("pretrained") is False
    why = []
    if demo:
        why.append("demo data, not the course datasets")
    if random_init:
        why.append("RANDOM initialisation, no ImageNet weights (the study's "
                   f"{_range_text(STUDY_NUMBERS['xception-synthetic']['val_acc'], True)} needs them)")
    if numbers.get("epochs") and numbers["epochs"] != run.default_epochs:
        why.append(f"{_plural(numbers['epochs'], 'epoch')} instead of {run.default_epochs}")
    speed = (" Trained with activation checkpointing to fit the memory: the same numbers, about 0.8x "
             "the speed." if numbers.get("activation_checkpointing") else "")
    return (f"{', '.join(got)}: {position} {'random-init ' if random_init else ''}"
            f"{', '.join(study)}" + (f"; differences from the study: {'; '.join(why)}" if why else "")
            + "." + speed)


def parameter_counts() -> dict:
    """Trainable parameters of both models, computed from freshly built (random-init) models."""
    from utils import get_nof_params, load_model
    return {name: get_nof_params(load_model(name, pretrained=False))
            for name in ("SimpleNet", "XceptionBased")}


# ============================================================================= the report
def _or_unknown(value) -> str:
    return "?" if value is None else str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _fmt(value, digits=2, suffix="") -> str:
    value = _finite(value)
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def build_report(settings: Settings, data: dict, counts: dict, params: dict, runs: dict,
                 weights: dict | None, steps: list[dict], status: dict, total_seconds: float
                 ) -> list[tuple]:
    """The report as blocks: ('h1'|'h2'|'p'|'warn', text), ('table', header, rows),
    ('figure', path, caption)."""
    blocks: list[tuple] = [("h1", "Facial manipulation detection: the study, re-run")]
    blocks.append(("p", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by run_study.py; "
                        f"{status['text']}"))
    if status.get("failed"):
        blocks.append(("warn", f"The study stopped: {status['message']}. The numbers below are what "
                               "earlier steps left."))
    xception_random = [tag for tag, n in runs.items() if n.get("pretrained") is False]
    if xception_random or (weights and not weights["pretrained"]):
        reason = weights["reason"] if weights and not weights["pretrained"] else \
            "its training run records pretrained = false"
        blocks.append(("warn", "XceptionBased was trained from RANDOM INITIALISATION, not from ImageNet "
                               f"weights ({reason}). {imagenet_note()} Pass "
                               "--xception_weights PATH (or set XCEPTION_WEIGHTS) to use them."))
    for run in RUNS:
        if runs[run.tag].get("problem"):
            blocks.append(("warn", f"{run.model} on {run.dataset}: {runs[run.tag]['problem']}"))
    if data["demo"]:
        demo = data.get("demo_settings") or {}
        blocks.append(("warn", f"DEMO DATA: no course datasets were found, so this study ran on the "
                               f"procedural demo data in {data['root']} (make_demo_datasets.py, scale "
                               f"{demo.get('scale') or '?'}, seed {_or_unknown(demo.get('seed'))}). Its numbers "
                               f"are not those of the course datasets."))

    blocks.append(("h2", "Data"))
    blocks.append(("p", f"Data root: {data['root']} ({'demo data' if data['demo'] else 'from ' + data['origin']})."))
    rows = []
    for dataset in DATASET_NAMES:
        for split in SPLITS:
            c = counts.get(dataset, {}).get(split, {})
            rows.append([DATASET_TITLES[dataset] + f" ({dataset})", split, str(c.get("real", "-")),
                         str(c.get("fake", "-")), str(c.get("real", 0) + c.get("fake", 0))])
    blocks.append(("table", ["dataset", "split", "real", "fake", "total"], rows))

    blocks.append(("h2", "Models"))
    blocks.append(("table", ["model", "trainable parameters (computed)", "SPEC"],
                   [[name, f"{params.get(name, 0):,}", f"{count:,}"] for name, count in SPEC_PARAMS.items()]))

    blocks.append(("h2", "Results"))
    blocks.append(("p", "Protocol: Adam, lr " + f"{settings.lr:g}" + f", batch {settings.batch_size}; "
                        + ", ".join(f"{r.model} on {r.dataset} {_plural(settings.epochs[r.tag], 'epoch')}"
                                    for r in RUNS)
                        + ". Accuracies in %, at the epoch of the best validation accuracy (val) and "
                          "the test accuracy at that epoch; AUC A/B: ROC AUC of score A (column 0, "
                          "real) and score B (column 1, fake) on the test split; EER and AP of score B; "
                          "epoch seconds and training images/s are means over the epochs; Grad-CAM "
                          "faithfulness: mean drop in true-class confidence when the most Grad-CAM-"
                          "relevant pixels are removed, minus the drop for random pixels (higher = "
                          "more faithful). 'study' columns: SPEC section 6."))
    header = ["run", "init", "best val epoch", "val acc", "study val acc", "test acc", "study test acc",
              "AUC A", "AUC B", "study AUC B", "EER", "AP", "epoch s", "train img/s",
              "Grad-CAM faithfulness"]
    rows = []
    for run in RUNS:
        n = runs[run.tag]
        ref = study_reference(run, n.get("pretrained"))
        about = ref.get("about", False)
        init = ("-" if run.model != "XceptionBased" else
                "ImageNet" if n.get("pretrained") else "RANDOM" if n.get("pretrained") is False else "-")
        rows.append([f"{run.model}, {run.dataset}", init, str(n.get("best_val_epoch") or "-"),
                     _fmt(n.get("best_val_acc")), _range_text(ref["val_acc"], True, about),
                     _fmt(n.get("test_acc_at_best")), _range_text(ref["test_acc"], True, about),
                     _fmt(n.get("auc_a"), 3), _fmt(n.get("auc_b"), 3),
                     _range_text(ref["auc_b"], False, about),
                     _fmt(n.get("eer"), 3), _fmt(n.get("ap"), 3), _fmt(n.get("epoch_seconds"), 1),
                     _fmt(n.get("train_images_per_sec"), 1),
                     _fmt(n.get("grad_cam_faithfulness_gap"), 3)
                     + (f" (n={n['grad_cam_images']})" if n.get("grad_cam_images") else "")])
    blocks.append(("table", header, rows))
    reported = [f"{ref['label']} {ref['report']} %" + (f" ({ref['note']})" if ref.get("note") else "")
                for ref in (STUDY_NUMBERS[run.tag] for run in RUNS)]
    blocks.append(("p", f"The study's report (best val / test accuracy): {'; '.join(reported)}."))
    for run in RUNS:
        blocks.append(("p", f"{run.model} on {run.dataset}: {runs[run.tag]['verdict']}"))

    blocks.append(("h2", "Figures"))
    blocks.append(("figure", samples_figure(settings.figures_dir), "datasets_samples.png"))
    for run in RUNS:
        for kind, paths in run_figures(run, settings.figures_dir).items():
            for path in paths:
                blocks.append(("figure", path, os.path.basename(path)))
        for path in extra_figures(run, settings.figures_dir):
            blocks.append(("figure", path, os.path.basename(path) + " (beyond the study)"))

    blocks.append(("h2", "Steps"))
    blocks.append(("p", f"Total time of this invocation: {total_seconds:.1f} s. Logs: "
                        f"{os.path.join(settings.out_dir, 'logs')}/STEP.log, one per step."))
    blocks.append(("p", "Wall seconds of this invocation; wall seconds, CPU seconds (user + system, "
                        "all threads) and peak memory of the step's last successful run."))
    blocks.append(("table", ["step", "status", "wall s (this time)", "wall s (last run)",
                             "CPU s (last run)", "peak memory MB (last run)"],
                   [[s["name"], s["status"],
                     _fmt(s.get("seconds"), 1) if s["status"] in ("ran", "failed") else "-",
                     _fmt(s.get("last_run_seconds"), 1), _fmt(s.get("last_run_cpu_seconds"), 1),
                     _fmt(s.get("last_run_max_rss_mb"), 0)] for s in steps]))
    return blocks


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple], md_dir: str) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "warn":
            out.append(f"> **WARNING:** {block[1]}\n")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "figure":
            path, caption = block[1], block[2]
            if os.path.exists(path):
                rel = os.path.relpath(os.path.abspath(path), os.path.abspath(md_dir))
                out.append(f"![{caption}]({rel.replace(os.sep, '/')})\n")
            else:
                out.append(f"*{caption}: missing (its step has not run)*\n")
    return "\n".join(out)


HTML_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}th,td{border:1px solid #bbb;padding:3px 6px}
th{background:#eee}td{text-align:right}td:first-child{text-align:left}
.warn{background:#fde2e2;border:2px solid #c00;padding:.6em;font-weight:bold;margin:.6em 0}
figure{display:inline-block;margin:.4em;vertical-align:top}figure img{max-width:560px;border:1px solid #ddd}
figcaption{font-size:80%;color:#555}.missing{color:#a00}"""


def render_html(blocks: list[tuple]) -> str:
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "Study report")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{HTML_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(block[1])}</p>")
        elif kind == "warn":
            out.append(f'<div class="warn">WARNING: {esc(block[1])}</div>')
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in block[1]) + "</tr>")
            for row in block[2]:
                out.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif kind == "figure":
            path, caption = block[1], block[2]
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    data = base64.b64encode(handle.read()).decode("ascii")
                out.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{esc(caption)}</figcaption></figure>")
            else:
                out.append(f'<p class="missing">{esc(caption)}: missing (its step has not run)</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(settings: Settings, data: dict, weights: dict | None, steps: list[dict],
                 status: dict, total_seconds: float, console: Console) -> dict:
    counts = data.get("counts") or {}
    params = parameter_counts()
    runs = {}
    for run in RUNS:
        numbers = run_numbers(settings, run)
        if numbers.get("pretrained") is None and run.model == "XceptionBased" and weights \
                and not numbers.get("best_val_epoch"):
            numbers["pretrained"] = weights["pretrained"]
        numbers["study"] = {k: v for k, v in study_reference(run, numbers.get("pretrained")).items()}
        numbers["verdict"] = verdict(run, numbers, data["demo"])
        runs[run.tag] = numbers
    blocks = build_report(settings, data, counts, params, runs, weights, steps, status, total_seconds)
    md_path = os.path.join(settings.out_dir, "study_report.md")
    html_path = os.path.join(settings.out_dir, "study_report.html")
    atomic_write_text(md_path, render_markdown(blocks, settings.out_dir))
    atomic_write_text(html_path, render_html(blocks))
    figures = [samples_figure(settings.figures_dir)] + [
        p for run in RUNS for paths in run_figures(run, settings.figures_dir).values() for p in paths]
    summary = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "status": status,
        "total_seconds": round(total_seconds, 2),
        "steps_cpu_seconds": round(sum(r.get("cpu_seconds") or 0.0 for r in steps), 2),
        "data": {"root": data["root"], "origin": data["origin"], "demo": data["demo"],
                 "demo_settings": data.get("demo_settings"), "counts": counts,
                 "demo_generation_seconds": data.get("generated_seconds")},
        "params": params,
        "protocol": {"optimizer": OPTIMIZER, "lr": settings.lr, "batch_size": settings.batch_size,
                     "epochs": settings.epochs, "device": settings.device, "seed": settings.seed},
        "xception_init": weights,
        "runs": runs,
        "steps": steps,
        "figures": {p: os.path.exists(p) for p in figures},
        "report": {"markdown": md_path, "html": html_path},
    }
    atomic_write_json(os.path.join(settings.out_dir, "study_summary.json"), summary)
    console.say(f"report: {md_path}, {html_path}; numbers: "
                f"{os.path.join(settings.out_dir, 'study_summary.json')}")
    return summary


# ============================================================================= command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Run the whole study (samples figure; SimpleNet on both datasets and XceptionBased "
                    "on synthetic_dataset; curves, ROC/DET, Grad-CAM, saliency) and write a one-page "
                    "report (out/study_report.md/.html, out/study_summary.json). Steps whose outputs "
                    "are up to date are skipped.",
        epilog=f"Steps: {step_names_help()}. --steps/--skip also take a kind "
               f"({', '.join(STEP_KINDS)}), a run ({', '.join(r.tag for r in RUNS)}) or a pattern "
               "such as 'gradcam-*'.")
    data = parser.add_argument_group("data")
    data.add_argument("--data_root", default=None,
                      help=f"folder holding fakes_dataset/ and synthetic_dataset/; default: "
                           f"${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT}, else demo data (--demo_dir)")
    data.add_argument("--demo_dir", default=None,
                      help="where demo data is generated when no datasets are found; "
                           "None: <workdir>/data/demo")
    data.add_argument("--demo_scale", default=1.0, type=positive_float,
                      help="size of generated demo data (1.0: about 1,300 images; see make_demo_datasets.py)")
    data.add_argument("--demo_seed", default=0, type=non_negative_int, help="seed of generated demo data")
    data.add_argument("--remake_demo", action="store_true",
                      help="regenerate the demo data even when it exists")

    training = parser.add_argument_group("training (the study's protocol by default)")
    training.add_argument("--epochs", "-e", default=None, type=positive_int,
                          help="epochs of all three runs; None: the study's 5 for SimpleNet, 2 for "
                               "XceptionBased")
    training.add_argument("--simplenet_epochs", default=None, type=positive_int,
                          help="epochs of the two SimpleNet runs (overrides --epochs)")
    training.add_argument("--xception_epochs", default=None, type=positive_int,
                          help="epochs of the XceptionBased run (overrides --epochs)")
    training.add_argument("--batch_size", "-b", default=32, type=positive_int, help="training batch size")
    training.add_argument("--lr", default=0.001, type=positive_float, help="Adam learning rate")
    training.add_argument("--seed", default=0, type=int, help="seed of every step")
    training.add_argument("--device", default="auto",
                          help="auto (CUDA when available), cpu or cuda, for training and analysis")
    training.add_argument("--num_workers", default=None, type=non_negative_int,
                          help="DataLoader workers for training; None: train_main.py's default")
    training.add_argument("--gradcam_max_images", default=16, type=non_negative_int,
                          help="test images (both classes, chosen with --seed) of Grad-CAM's "
                               "faithfulness test, per run; 0: the whole test split (about 10 "
                               "forward passes per image: XceptionBased on 2 CPU cores needs ~2 s an "
                               "image). The study's two Grad-CAM figures and the mean maps always "
                               "use the whole test split")
    training.add_argument("--xception_weights", default=None,
                          help="ImageNet weights file for XceptionBased (else $XCEPTION_WEIGHTS, the "
                               "torch hub cache, a download; none found: random init, said loudly)")
    training.add_argument("--no_pretrained", action="store_true",
                          help="train XceptionBased from random initialisation (the study: near chance)")
    add_activation_checkpointing_flag(training)  # passed on to train_main.py for XceptionBased
    training.add_argument("--require_pretrained", action="store_true",
                          help="stop with an error instead of falling back to random initialisation "
                               "when no ImageNet weights are found")

    where = parser.add_argument_group("outputs")
    where.add_argument("--workdir", default=".",
                       help="base folder of out/, figures/, checkpoints/ and data/demo/")
    where.add_argument("--out_dir", default=None,
                       help="metrics JSON, logs, stamps and the report; None: <workdir>/out")
    where.add_argument("--figures_dir", default=None, help="figures; None: <workdir>/figures")
    where.add_argument("--checkpoint_dir", default=None,
                       help="checkpoints; None: <workdir>/checkpoints")

    control = parser.add_argument_group("which steps")
    control.add_argument("--steps", nargs="+", default=None, metavar="STEP",
                         help="run only these steps (names, kinds, runs or patterns; comma or space "
                              "separated); None: all")
    control.add_argument("--skip", nargs="+", default=None, metavar="STEP",
                         help="leave these steps out ('report' leaves the report out)")
    control.add_argument("--force", action="store_true",
                         help="redo the selected steps even when their outputs are up to date")
    control.add_argument("--dry_run", action="store_true",
                         help="print the plan (each step, its command, whether and why it would run); "
                              "run nothing")
    control.add_argument("--quiet", action="store_true",
                         help="do not echo the steps' output (it is always in out/logs/<step>.log)")
    control.add_argument("--no_progress", action="store_true", help="no live progress bar")
    add_debug_flag(parser)
    return parser


def resolve_dirs(args) -> None:
    """Output folders not given explicitly go under --workdir."""
    under = lambda *parts: os.path.normpath(os.path.join(args.workdir, *parts))  # noqa: E731
    args.out_dir = args.out_dir or under("out")
    args.figures_dir = args.figures_dir or under("figures")
    args.checkpoint_dir = args.checkpoint_dir or under("checkpoints")
    args.demo_dir = args.demo_dir or under("data", "demo")


def make_settings(args, data_root: str, xception_args: list[str]) -> Settings:
    resolve_dirs(args)
    epochs = {}
    for run in RUNS:
        specific = args.simplenet_epochs if run.model == "SimpleNet" else args.xception_epochs
        epochs[run.tag] = specific or args.epochs or run.default_epochs
    return Settings(data_root=data_root, out_dir=args.out_dir, figures_dir=args.figures_dir,
                    checkpoint_dir=args.checkpoint_dir, seed=args.seed, device=args.device,
                    batch_size=args.batch_size, lr=args.lr, epochs=epochs,
                    num_workers=args.num_workers,
                    xception_args=xception_args + (
                        [] if args.activation_checkpointing == "auto"
                        else ["--activation_checkpointing", args.activation_checkpointing]),
                    gradcam_max_images=args.gradcam_max_images)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_pretrained and (args.xception_weights or args.require_pretrained):
        raise UserError("--no_pretrained contradicts --xception_weights / --require_pretrained; "
                        "choose one")
    resolve_dirs(args)
    logs_dir = os.path.join(args.out_dir, "logs")
    start = _COMMAND_START or time.monotonic()

    # Which steps, before anything slow happens (a typo in --steps fails at once).
    probe_settings = make_settings(args, "<data>", [])
    selected_names = {s.name for s in select_steps(build_plan(probe_settings), args.steps, args.skip)[0]}

    console = Console(0, False, args.quiet)
    data = choose_data(args, console, logs_dir)
    data["counts"] = None if data.get("missing") else data_counts(data["root"])
    if data["counts"]:
        total = sum(c for d in data["counts"].values() for s in d.values() for c in s.values())
        console.say(f"data: {total} images; " + "; ".join(
            f"{d} " + ", ".join(f"{s} {c['real']}/{c['fake']}" for s, c in data["counts"][d].items())
            for d in DATASET_NAMES) + " (real/fake)")

    weights = None
    if "train-xception-synthetic" in selected_names:
        weights = choose_xception_weights(args, console, args.dry_run)
    settings = make_settings(args, data["root"], weights["args"] if weights else [])
    plan = build_plan(settings)
    selected, write_the_report = select_steps(plan, args.steps, args.skip)
    stamps = Stamps(settings.out_dir)

    if args.dry_run:
        for index, step in enumerate(plan, 1):
            if step not in selected:
                state = "not selected"
            else:
                reason = "--force" if args.force else stamps.stale_reason(step, stamps.read(step))
                state = f"would run ({reason})" if reason else "up to date, would skip"
            console.say(f"[{index:2d}] {step.name:30s} {state}")
            console.say(f"     {shlex.join([os.path.basename(sys.executable)] + step.command)}")
        console.say(f"report: {'would be written' if write_the_report else 'skipped'}")
        return 0

    console = Console(len(selected), not args.no_progress, args.quiet)
    records, stamp_of = [], {}
    for step in plan:
        stamp_of[step.name] = stamps.read(step)
        last = stamp_of[step.name] or {}
        records.append({"name": step.name, "status": "not selected", "seconds": 0.0,
                        "last_run_seconds": last.get("seconds"),
                        "last_run_cpu_seconds": last.get("cpu_seconds"),
                        "last_run_max_rss_mb": last.get("max_rss_mb"),
                        "log": os.path.join(logs_dir, f"{step.name}.log"), "command": step.command})
    if data.get("generated_seconds") is not None:  # the one-time demo data, made by this call
        records.insert(0, {"name": "demo-data", "status": "ran", "seconds": data["generated_seconds"],
                           "last_run_seconds": data["generated_seconds"],
                           "log": os.path.join(logs_dir, "demo-data.log"),
                           "command": ["make_demo_datasets.py", "--out", data["root"]]})
    by_name = {r["name"]: r for r in records}
    failure = None
    try:
        for position, step in enumerate(selected, 1):
            record = by_name[step.name]
            head = f"[{position}/{len(selected)}] {step.name}"
            now = stamps.current(step)  # what the step runs on: checked now, recorded when done
            reason = "--force" if args.force else stamps.stale_reason(step, stamp_of[step.name], now)
            if reason is None:
                record["status"] = "skipped (up to date)"
                console.say(f"{head}: up to date, skipped")
                console.advance()
                continue
            missing = [p for p in step.inputs if not os.path.exists(p)]
            if missing:
                maker = next((s.name for s in plan if missing[0] in s.outputs), "an earlier step")
                record["status"] = "not run (missing input)"
                raise StepFailed(step.name, f"step {step.name} needs {missing[0]}, which step {maker} "
                                            f"makes; run that step first (it was not selected or has "
                                            f"not run)")
            console.say(f"{head}: running ({reason}) - log {record['log']}")
            code, seconds, tail, usage = run_command(step.name, step.argv(), record["log"], console)
            record["seconds"] = round(seconds, 2)
            record["cpu_seconds"] = round(usage["cpu_seconds"], 2) if usage else None
            record["max_rss_mb"] = round(usage["max_rss_mb"]) if usage else None
            if code != 0:
                record["status"] = "failed"
                console.close()
                print(f"---- last lines of {record['log']}:", file=sys.stderr)
                for line in tail[-15:]:
                    print(f"    {line}", file=sys.stderr)
                raise StepFailed(step.name, f"step {step.name} failed (exit code {code}) after "
                                            f"{seconds:.1f} s; see its log {record['log']}")
            stamps.write(step, now, seconds, record["cpu_seconds"], record["max_rss_mb"])
            record["status"] = "ran"
            record["last_run_seconds"] = record["seconds"]
            record["last_run_cpu_seconds"] = record["cpu_seconds"]
            record["last_run_max_rss_mb"] = record["max_rss_mb"]
            console.say(f"{head}: done in {seconds:.1f} s")
            console.advance()
    except StepFailed as exc:
        failure = exc
        for record in records:
            if record["status"] == "not selected" and record["name"] in {s.name for s in selected}:
                record["status"] = "not reached"
    finally:
        console.close()

    total = time.monotonic() - start
    if failure is not None:
        status = {"text": f"stopped: step {failure.step} failed after {total:.1f} s.",
                  "failed": failure.step, "log": by_name.get(failure.step, {}).get("log"),
                  "message": str(failure)}
    else:
        ran = sum(r["status"] == "ran" for r in records)
        skipped = sum(r["status"].startswith("skipped") for r in records)
        status = {"text": f"{ran} step(s) ran, {skipped} up to date, in {total:.1f} s.", "failed": None}
    if write_the_report:
        try:
            write_report(settings, data, weights, records, status, total, console)
        except Exception as exc:  # the report must never hide the real outcome
            if args.debug:
                raise
            print(f"run_study.py: warning: the report could not be written ({type(exc).__name__}: "
                  f"{exc}); rerun with --debug", file=sys.stderr)
            if failure is None:
                return 1
    if failure is not None:
        print(f"run_study.py: error: {failure}", file=sys.stderr)
        return 1
    console.say(f"study done: {status['text']}")
    if weights and not weights["pretrained"]:
        console.say(f"NOTE: XceptionBased was trained from RANDOM INITIALISATION, not ImageNet weights "
                    f"({weights['reason'][:160]}); the report says so.")
    if data["demo"]:
        console.say(f"NOTE: this study ran on DEMO data ({data['root']}), not the course datasets.")
    return 0


_COMMAND_START = None  # set when run as a command: its total time then includes the imports

if __name__ == "__main__":
    _COMMAND_START = _IMPORT_TIME
    sys.exit(run_cli(main))
