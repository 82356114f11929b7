"""Runs the study's steps: each one a subprocess whose output goes, line by line, to its log and
the console; a step that fails stops the study with a message naming its log."""

from __future__ import annotations

import codecs
import os
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from lib.cli import UserError
from lib.fileio import ensure_dir
from lib.memory import ru_maxrss_mb
from lib.study.plan import Step
from lib.study.stamps import Stamp, Stamps, resume_reason, stale_reason

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

            self.bar = tqdm(
                total=total,
                desc="study",
                unit="step",
                dynamic_ncols=True,
                disable=None,
                leave=False,
                bar_format="{desc} {n_fmt}/{total_fmt} steps [{elapsed}]{postfix}",
            )

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
        if now - self._last_refresh > 0.3:  # a progress bar's updates would flood a slow terminal
            self.bar.refresh()
            self._last_refresh = now

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepFailed(UserError):
    """A step exited with an error (or cannot start): names the step and its log."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


@dataclass
class Outcome:
    """How a subprocess ended: exit code, wall seconds, its last lines, CPU seconds, peak memory."""

    code: int
    seconds: float
    tail: list[str]
    cpu_seconds: float | None = None
    max_rss_mb: float | None = None

    def usage_text(self) -> str:
        if self.cpu_seconds is None:
            return ""
        return f" (CPU {self.cpu_seconds:.1f} s, peak memory {self.max_rss_mb:.0f} MB)"


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are printed
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _stream(proc: subprocess.Popen, name: str, log, console: Console, tail: deque) -> None:
    """Copy the child's output to the log and console line by line; a partial line (a progress
    bar) goes to the console's status."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""

    def emit(raw: str) -> None:
        line = clean_line(raw)
        if line:
            log.write(line + "\n")
            tail.append(line)
            console.output(line)

    while chunk := os.read(proc.stdout.fileno(), 65536):
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for raw in lines:
            emit(raw)
        if lines:
            log.flush()
        if partial := clean_line(pending):
            console.status(name, partial)
    emit(pending + decoder.decode(b"", final=True))


def run_command(name: str, argv: list[str], log_path: str, console: Console) -> Outcome:
    """Run ``argv``; its output goes to the log (appended) and the console."""
    ensure_dir(os.path.dirname(log_path))
    tail: deque = deque(maxlen=25)
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} step {name}: {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env()
        )
        try:
            _stream(proc, name, log, console, tail)
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
        outcome = Outcome(code, time.monotonic() - start, list(tail), **usage)
        log.write(f"===== exit code {code} after {outcome.seconds:.1f} s{outcome.usage_text()}\n")
    return outcome


def _wait_with_usage(proc: subprocess.Popen) -> tuple[int, dict]:
    """Wait for the child; its exit code and, on POSIX, its own CPU seconds and peak memory."""
    if not hasattr(os, "wait4"):
        return proc.wait(), {}
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, {
        "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 2),
        "max_rss_mb": round(ru_maxrss_mb(rusage)),
    }


# ----------------------------------------------------------------------------- the steps
@dataclass
class StepRecord:
    """One step's line in the report and the summary JSON."""

    name: str
    command: list[str]
    log: str
    status: str = "not selected"
    seconds: float = 0.0
    cpu_seconds: float | None = None
    max_rss_mb: float | None = None
    last_run_seconds: float | None = None
    last_run_cpu_seconds: float | None = None
    last_run_max_rss_mb: float | None = None
    resumed: str | None = None


@dataclass
class StepRun:
    """What running the selected steps gave: one record per step, and the failure, if any."""

    records: list[StepRecord] = field(default_factory=list)
    failure: StepFailed | None = None

    def record(self, name: str) -> StepRecord | None:
        return next((r for r in self.records if r.name == name), None)


def new_records(plan: list[Step], stamps: Stamps, logs_dir: str) -> list[StepRecord]:
    records = []
    for step in plan:
        last = stamps.read(step) or Stamp(command=[], started_ns=0)
        records.append(
            StepRecord(
                step.name,
                step.command,
                os.path.join(logs_dir, f"{step.name}.log"),
                last_run_seconds=last.seconds,
                last_run_cpu_seconds=last.cpu_seconds,
                last_run_max_rss_mb=last.max_rss_mb,
            )
        )
    return records


def run_steps(
    plan: list[Step],
    selected: list[Step],
    stamps: Stamps,
    records: list[StepRecord],
    force: bool,
    console: Console,
) -> StepRun:
    """Run each selected step that is not up to date, in order; stop at the first failure."""
    result = StepRun(records)
    try:
        for position, step in enumerate(selected, 1):
            run_one(
                step,
                f"[{position}/{len(selected)}] {step.name}",
                plan,
                stamps,
                result.record(step.name),
                force,
                console,
            )
            console.advance()
    except StepFailed as exc:
        result.failure = exc
        for record in records:
            if record.status == "not selected" and any(s.name == record.name for s in selected):
                record.status = "not reached"
    finally:
        console.close()
    return result


def run_one(
    step: Step, head: str, plan: list[Step], stamps: Stamps, record: StepRecord, force: bool, console: Console
) -> None:
    """Run one step unless it is up to date; raises StepFailed naming its log when it fails."""
    previous = stamps.read(step)
    reason = "--force" if force else stale_reason(step, previous)
    if reason is None:
        record.status = "skipped (up to date)"
        console.say(f"{head}: up to date, skipped")
        return
    missing = [p for p in step.inputs if not os.path.exists(p)]
    if missing:
        maker = next((s.name for s in plan if missing[0] in s.outputs), "an earlier step")
        record.status = "not run (missing input)"
        raise StepFailed(
            step.name,
            f"step {step.name} needs {missing[0]}, which step {maker} makes; "
            "run that step first (it was not selected or has not run)",
        )
    record.resumed = resume_reason(step, previous)
    extra = ["--resume"] if record.resumed else []
    console.say(f"{head}: running ({record.resumed or reason}) - log {record.log}")
    stamp = stamps.start(step, previous)
    outcome = run_command(step.name, step.argv(extra), record.log, console)
    record.seconds = round(outcome.seconds, 2)
    record.cpu_seconds, record.max_rss_mb = outcome.cpu_seconds, outcome.max_rss_mb
    if outcome.code != 0:
        record.status = "failed"
        console.close()
        print(f"---- last lines of {record.log}:", file=sys.stderr)
        for line in outcome.tail[-15:]:
            print(f"    {line}", file=sys.stderr)
        raise StepFailed(
            step.name,
            f"step {step.name} failed (exit code {outcome.code}) after "
            f"{outcome.seconds:.1f} s; see its log {record.log}",
        )
    stamps.finish(step, stamp, outcome.seconds, outcome.cpu_seconds, outcome.max_rss_mb)
    record.status = "ran"
    record.last_run_seconds, record.last_run_cpu_seconds = record.seconds, record.cpu_seconds
    record.last_run_max_rss_mb = record.max_rss_mb
    console.say(f"{head}: done in {outcome.seconds:.1f} s")


def print_plan(
    plan: list[Step], selected: list[Step], stamps: Stamps, force: bool, report: bool, console: Console
) -> int:
    """--dry_run: each step, whether and why it would run, and its command."""
    for index, step in enumerate(plan, 1):
        if step not in selected:
            state = "not selected"
        else:
            reason = "--force" if force else stale_reason(step, stamps.read(step))
            state = f"would run ({reason})" if reason else "up to date, would skip"
        console.say(f"[{index:2d}] {step.name:30s} {state}")
        console.say(f"     {shlex.join([os.path.basename(sys.executable)] + step.command)}")
    console.say(f"report: {'would be written' if report else 'skipped'}")
    return 0
