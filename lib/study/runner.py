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
from dataclasses import dataclass

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

            bar_format = "{desc} {n_fmt}/{total_fmt} steps [{elapsed}]{postfix}"
            options = {"dynamic_ncols": True, "disable": None, "leave": False, "bar_format": bar_format}
            self.bar = tqdm(total=total, desc="study", unit="step", **options)

    def _live(self) -> bool:
        return self.bar is not None and not self.bar.disable

    def say(self, text: str = "") -> None:
        """A line on the console, above the progress bar when there is one."""
        if self._live():
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def output(self, line: str) -> None:
        """One line of a step's own output (not with --quiet)."""
        if not self.quiet:
            self.say(f"    | {line}")

    def status(self, step: str, text: str) -> None:
        """A step's partial line (its progress bar) as the study bar's postfix."""
        if not self._live():
            return
        self.bar.set_postfix_str(f"{step}: {text[-80:]}", refresh=False)
        now = time.monotonic()
        if now - self._last_refresh > 0.3:  # a progress bar's updates would flood a slow terminal
            self.bar.refresh()
            self._last_refresh = now

    def advance(self) -> None:
        """One more step done."""
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Remove the progress bar (the lines said stay)."""
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

    def check(self, name: str, log: str, message: str) -> None:
        """Raise StepFailed(``message``, naming the log) after printing the log's last lines, when
        the subprocess failed."""
        if self.code != 0:
            print(f"---- last lines of {log}:", file=sys.stderr)
            for line in self.tail[-15:]:
                print(f"    {line}", file=sys.stderr)
            raise StepFailed(
                name, f"{message} (exit code {self.code}) after {self.seconds:.1f} s; see its log {log}"
            )


def child_env() -> dict:
    """The environment of every subprocess: unbuffered output, a headless matplotlib."""
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
        if line := clean_line(raw):
            log.write(line + "\n")
            tail.append(line)
            console.output(line)

    while chunk := os.read(proc.stdout.fileno(), 65536):
        *lines, pending = (pending + decoder.decode(chunk)).split("\n")
        for raw in lines:
            emit(raw)
        if lines:
            log.flush()
        if partial := clean_line(pending):
            console.status(name, partial)
    emit(pending + decoder.decode(b"", final=True))


def run_command(name: str, argv: list[str], log_path: str, console: Console) -> Outcome:
    """Run ``argv``, its output appended to the log and shown on the console; how it ended."""
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
        usage_text = (
            f" (CPU {outcome.cpu_seconds:.1f} s, peak memory {outcome.max_rss_mb:.0f} MB)" if usage else ""
        )
        log.write(f"===== exit code {code} after {outcome.seconds:.1f} s{usage_text}\n")
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

    def ran(self, outcome: Outcome) -> None:
        """Record this invocation's usage, and as the last successful run's when it succeeded."""
        self.seconds = round(outcome.seconds, 2)
        self.cpu_seconds, self.max_rss_mb = outcome.cpu_seconds, outcome.max_rss_mb
        self.status = "ran" if outcome.code == 0 else "failed"
        if outcome.code == 0:
            self.last_run_seconds, self.last_run_cpu_seconds = self.seconds, self.cpu_seconds
            self.last_run_max_rss_mb = self.max_rss_mb


@dataclass
class Runner:
    """Runs the plan's steps in order under the skip rule (their ``stamps``); ``force``: --force."""

    plan: list[Step]
    stamps: Stamps
    force: bool

    def reason(self, step: Step) -> str | None:
        """Why the step would run now; None: it is up to date."""
        return "--force" if self.force else stale_reason(step, self.stamps.read(step))

    def records(self, logs_dir: str) -> list[StepRecord]:
        """One record per step: not selected yet, with its last finished run's usage."""
        records = []
        for step in self.plan:
            last = self.stamps.read(step) or Stamp(command=[], started_ns=0)
            record = StepRecord(step.name, step.command, os.path.join(logs_dir, f"{step.name}.log"))
            record.last_run_seconds, record.last_run_cpu_seconds = last.seconds, last.cpu_seconds
            record.last_run_max_rss_mb = last.max_rss_mb
            records.append(record)
        return records

    def run(self, selected: list[Step], records: list[StepRecord], console: Console) -> StepFailed | None:
        """Run each selected step that is not up to date, updating its record; stop at the first
        failure and return it (None: none failed)."""
        by_name = {record.name: record for record in records}
        try:
            for position, step in enumerate(selected, 1):
                self.run_one(step, f"[{position}/{len(selected)}] {step.name}", by_name[step.name], console)
                console.advance()
        except StepFailed as exc:
            for step in selected:
                if by_name[step.name].status == "not selected":
                    by_name[step.name].status = "not reached"
            return exc
        finally:
            console.close()
        return None

    def run_one(self, step: Step, head: str, record: StepRecord, console: Console) -> None:
        """Run one step unless it is up to date; raises StepFailed naming its log when it fails."""
        if (reason := self.reason(step)) is None:
            record.status = "skipped (up to date)"
            console.say(f"{head}: up to date, skipped")
            return
        if missing := [p for p in step.inputs if not os.path.exists(p)]:
            maker = next((s.name for s in self.plan if missing[0] in s.outputs), "an earlier step")
            record.status = "not run (missing input)"
            raise StepFailed(
                step.name,
                f"step {step.name} needs {missing[0]}, which step {maker} makes; "
                "run that step first (it was not selected or has not run)",
            )
        previous = self.stamps.read(step)
        record.resumed = resume_reason(step, previous)
        console.say(f"{head}: running ({record.resumed or reason}) - log {record.log}")
        stamp = self.stamps.start(step, previous)
        outcome = run_command(
            step.name, step.argv(["--resume"] if record.resumed else []), record.log, console
        )
        record.ran(outcome)
        if outcome.code != 0:
            console.close()  # the failure's lines go below the bar, not into it
        outcome.check(step.name, record.log, f"step {step.name} failed")
        self.stamps.finish(step, stamp, outcome.seconds, outcome.cpu_seconds, outcome.max_rss_mb)
        console.say(f"{head}: done in {outcome.seconds:.1f} s")

    def print_plan(self, selected: list[Step], report: bool, console: Console) -> int:
        """--dry_run: each step, whether and why it would run, and its command; returns 0. A step
        reading a file that an earlier step would rewrite would run after it."""
        rewritten = {}  # output -> the step that would rewrite it
        for index, step in enumerate(self.plan, 1):
            reason = self.reason(step) if step in selected else None
            after = next((rewritten[p] for p in step.inputs if p in rewritten), None)
            if step in selected and reason is None and after:
                reason = f"after {after}, which rewrites its input"
            if reason:
                rewritten |= dict.fromkeys(step.outputs, step.name)
            state = "not selected" if step not in selected else "up to date, would skip"
            state = f"would run ({reason})" if reason else state
            console.say(f"[{index:2d}] {step.name:30s} {state}")
            console.say(f"     {shlex.join([os.path.basename(sys.executable)] + step.command)}")
        console.say(f"report: {'would be written' if report else 'skipped'}")
        return 0
