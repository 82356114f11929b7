"""How XceptionBased starts: from ImageNet weights when they can be found, else from random
initialisation, said loudly (the study's XceptionBased result needs the ImageNet weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from lib.cli import UserError
from lib.study.numbers import imagenet_note
from lib.study.plan import HERE
from lib.study.runner import Console, child_env

LOUD = "!" * 78
CHECK_COMMAND = "./run_me.sh --xception_weights PATH"  # the one command that checks the ImageNet rows


@dataclass
class WeightsChoice:
    """Whether XceptionBased starts from ImageNet weights, the train_main.py flags that say so,
    and why."""

    pretrained: bool
    args: list[str]
    reason: str
    details: str | None = None


def probe_xception_weights(explicit: str | None, allow_download: bool) -> dict:
    """``train_main.py -m XceptionBased --check_weights`` in a subprocess (the search may
    download ~90 MB): {"found": True, "source", "origin"} or {"found": False, "error"}."""
    env = child_env()
    if not allow_download:
        env["XCEPTION_NO_DOWNLOAD"] = "1"
    argv = [sys.executable, os.path.join(HERE, "train_main.py"), "-m", "XceptionBased", "--check_weights"]
    argv += ["--xception_weights", explicit] if explicit else []
    done = subprocess.run(
        argv, env=env, cwd=HERE, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        result = None
    if done.returncode != 0 or not isinstance(result, dict):
        raise UserError(
            f"looking for the Xception ImageNet weights failed (exit code {done.returncode}): "
            f"{' '.join(lines[-3:]) or 'no output'}; pass --xception_weights PATH or --no_pretrained"
        )
    return result


def choose_xception_weights(args, console: Console) -> WeightsChoice:
    """How XceptionBased starts: ImageNet weights when xception.py finds them, else random.

    An explicit --xception_weights / $XCEPTION_WEIGHTS that cannot be used is an error (it was
    asked for); not finding any weights falls back to random initialisation, announced loudly.
    """
    if args.no_pretrained:
        return WeightsChoice(False, ["--no_pretrained"], "--no_pretrained was given")
    explicit = args.xception_weights or os.environ.get("XCEPTION_WEIGHTS", "").strip() or None
    console.say(
        f"XceptionBased: looking for ImageNet weights{' (dry run: no download)' if args.dry_run else ' ...'}"
    )
    given = args.xception_weights and os.path.abspath(args.xception_weights)
    result = probe_xception_weights(given, allow_download=not args.dry_run)
    if result.get("found"):
        source, origin = os.path.abspath(result["source"]), result.get("origin")
        console.say(f"XceptionBased: ImageNet weights {source} (found via {origin})")
        return WeightsChoice(True, ["--xception_weights", source], f"ImageNet weights {source} ({origin})")
    details = str(result.get("error", "not found"))
    if explicit or args.require_pretrained:
        asked = "--xception_weights/$XCEPTION_WEIGHTS" if explicit else "--require_pretrained"
        raise UserError(f"XceptionBased ImageNet weights ({asked}): {details}")
    warn_random_init(console, details, args.dry_run)
    tried = "no download tried (--dry_run)" if args.dry_run else "no download possible"
    reason = "no ImageNet weights were found: none given (--xception_weights, $XCEPTION_WEIGHTS), none in "
    return WeightsChoice(False, ["--no_pretrained"], f"{reason}the torch hub cache, {tried}", details)


def warn_random_init(console: Console, details: str, dry_run: bool) -> None:
    """The console's loud warning that XceptionBased trains from random initialisation."""
    console.say(LOUD)
    console.say("WARNING: NO IMAGENET WEIGHTS FOUND FOR XceptionBased.")
    console.say("XceptionBased WILL TRAIN FROM RANDOM INITIALISATION (--no_pretrained).")
    console.say(imagenet_note())
    console.say(
        "To use ImageNet weights: --xception_weights PATH (or XCEPTION_WEIGHTS=PATH), or "
        "put the file in the torch hub cache; details:"
    )
    for line in details.splitlines():
        console.say(f"  {line}")
    if dry_run:
        console.say("(--dry_run: no download was tried; a real run tries it first)")
    console.say(LOUD)
