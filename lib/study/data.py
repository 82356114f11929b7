"""Which data the study uses: the datasets where they are found, else demo data made once."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

from lib.cli import UserError
from lib.data_root import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, dataset_folder, resolve_data_root
from lib.fileio import atomic_write_json, read_json_object
from lib.images import CLASS_DIRS, class_dirs, list_images
from lib.names import DATASET_NAMES, DEMO_MARKER, SPLITS
from lib.study.plan import HERE
from lib.study.runner import Console, StepRecord, run_command

DEMO_STAMP = ".study_demo.json"


@dataclass
class DataChoice:
    """The data root, where it came from, and whether it is demo data (with its settings)."""

    root: str
    origin: str
    demo: bool
    demo_settings: dict | None = None
    missing: bool = False  # --dry_run: demo data not generated yet
    generated_seconds: float | None = None  # made by this invocation, in this many seconds
    counts: dict | None = None  # {dataset: {split: {"real": n, "fake": n}}}

    def describe_counts(self) -> str:
        """``N images; fakes_dataset train 3/2, ...`` (real/fake) for the console."""
        total = sum(c for d in self.counts.values() for s in d.values() for c in s.values())
        per_dataset = [
            f"{d} " + ", ".join(f"{s} {c['real']}/{c['fake']}" for s, c in self.counts[d].items())
            for d in self.counts
        ]
        return f"{total} images; {'; '.join(per_dataset)} (real/fake)"

    def records(self, logs_dir: str) -> list[StepRecord]:
        """The demo-data generation as a step record when this invocation made it, else none."""
        if self.generated_seconds is None:
            return []
        command = ["make_demo_datasets.py", "--out", self.root]
        log = os.path.join(logs_dir, "demo-data.log")
        seconds = self.generated_seconds
        return [StepRecord("demo-data", command, log, "ran", seconds, last_run_seconds=seconds)]


def data_counts(data_root: str, datasets=()) -> dict:
    """{dataset: {split: {"real": n, "fake": n}}} of the course's datasets, then ``datasets``;
    raises UserError naming a dataset that is not there, or a split without its class folders."""
    counts = {}
    for dataset in dict.fromkeys([*DATASET_NAMES, *datasets]):
        if dataset not in DATASET_NAMES:
            dataset_folder(dataset, data_root)  # an unknown name: the datasets found there are listed
        counts[dataset] = {}
        for split in SPLITS:
            folder = os.path.join(data_root, dataset, split)
            if (layout := class_dirs(folder)) is None:
                raise UserError(
                    f"{folder}: no real/ and fake/ (or 0_real/ and 1_fake/) folders; a dataset under the "
                    f"data root {data_root} holds train/, val/ and test/, each with both (the study needs "
                    "fakes_dataset and synthetic_dataset; for the demo data leave --data_root out)"
                )
            counts[dataset][split] = {
                label: len(list_images(os.path.join(folder, d))) for label, d in zip(CLASS_DIRS, layout)
            }
    return counts


def choose_data(args, console: Console, logs_dir: str) -> DataChoice:
    """The data root as every script resolves it (``lib.data_root``); when there is none, demo
    data (made once). The images are counted and the counts said, unless not made yet."""
    explicit = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if explicit or os.path.isdir(DEFAULT_DATA_ROOT):
        root = resolve_data_root(args.data_root)
        origin = (
            "--data_root" if args.data_root else f"${DATA_ROOT_ENV}" if explicit else "the default location"
        )
        recorded = recorded_demo(root)
        demo = recorded is not None or os.path.abspath(root) == os.path.abspath(args.demo_dir)
        made_by = " - demo data made by make_demo_datasets.py" if demo else ""
        console.say(f"data: {root} (from {origin}){made_by}")
        data = DataChoice(root, origin, demo, (recorded or UNRECORDED) if demo else None)
    else:
        console.say(
            f"data: no datasets found (--data_root not given, ${DATA_ROOT_ENV} not set, "
            f"{os.path.abspath(DEFAULT_DATA_ROOT)} missing): using DEMO data in {args.demo_dir}"
        )
        data = demo_data(args, console, logs_dir)
    if not data.missing:
        data.counts = data_counts(data.root, args.datasets)
        console.say(f"data: {data.describe_counts()}")
    return data


def demo_data(args, console: Console, logs_dir: str) -> DataChoice:
    """The demo data in --demo_dir: reused when it is there with the asked-for settings, else made
    (only over a folder run_study.py made, or with --remake_demo)."""
    demo_dir = args.demo_dir
    wanted = {"scale": args.demo_scale, "seed": args.demo_seed}
    stamp = read_json_object(os.path.join(demo_dir, DEMO_STAMP)) or None
    recorded = recorded_demo(demo_dir)
    complete = all(
        os.path.isdir(os.path.join(demo_dir, d, s, c))
        for d in DATASET_NAMES
        for s in SPLITS
        for c in CLASS_DIRS
    )
    if complete and not args.remake_demo:
        if recorded is not None and {k: recorded.get(k) for k in wanted} != wanted:
            made = recorded.get("note") or f"scale {recorded.get('scale')}, seed {recorded.get('seed')}"
            raise UserError(
                f"{demo_dir} holds demo data made otherwise ({made}) than the --demo_scale "
                f"{args.demo_scale} / --demo_seed {args.demo_seed} asked for; pass --remake_demo to "
                f"regenerate it, or choose another --demo_dir"
            )
        console.say(f"data: demo data already generated in {demo_dir}; reusing it")
        return DataChoice(demo_dir, "demo", True, recorded or UNRECORDED)
    if args.dry_run:
        console.say(f"data: would generate demo data into {demo_dir} (scale {args.demo_scale})")
        return DataChoice(demo_dir, "demo", True, wanted, missing=True)
    seconds = make_demo_data(args, stamp is not None, console, logs_dir)
    made = {**wanted, "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(seconds, 1)}
    atomic_write_json(os.path.join(demo_dir, DEMO_STAMP), made)
    console.say(f"data: demo data ready in {demo_dir} ({seconds:.0f} s)")
    return DataChoice(demo_dir, "demo", True, made, generated_seconds=round(seconds, 2))


UNRECORDED = {"scale": None, "seed": None, "note": "made before make_demo_datasets.py recorded its settings"}


def recorded_demo(root: str) -> dict | None:
    """How the demo data under ``root`` was made ({"scale", "seed", ...}): from run_study.py's own
    stamp, else from the marker make_demo_datasets.py writes into each dataset folder (a "note"
    instead when the two datasets were made differently); None when neither is there."""
    if stamp := read_json_object(os.path.join(root, DEMO_STAMP)):
        return stamp
    markers = {d: read_json_object(os.path.join(root, d, DEMO_MARKER)) for d in DATASET_NAMES}
    made = {d: {k: m.get(k) for k in ("scale", "seed", "full_size")} for d, m in markers.items() if m}
    if not made:
        return None
    if len(made) == len(DATASET_NAMES) and len({str(m) for m in made.values()}) == 1:
        return next(iter(made.values()))
    said = "; ".join(
        f"{d}: scale {made[d]['scale']}, seed {made[d]['seed']}" if d in made else f"{d}: not recorded"
        for d in DATASET_NAMES
    )
    return {"scale": None, "seed": None, "note": f"its datasets differ ({said})"}


def make_demo_data(args, ours: bool, console: Console, logs_dir: str) -> float:
    """Run make_demo_datasets.py into --demo_dir, never over other data; its seconds."""
    demo_dir = args.demo_dir
    console.say(
        f"data: generating the demo datasets into {demo_dir} (once; scale "
        f"{args.demo_scale}, seed {args.demo_seed}) ..."
    )
    argv = [sys.executable, os.path.join(HERE, "make_demo_datasets.py"), "--out", demo_dir]
    argv += ["--scale", repr(args.demo_scale), "--seed", str(args.demo_seed)]
    targets = [os.path.join(demo_dir, d) for d in DATASET_NAMES]
    foreign = [p for p in targets if os.path.isfile(p) or (os.path.isdir(p) and os.listdir(p))]
    if args.remake_demo or ours:
        argv.append("--force")  # ours (or asked for): only the dataset folders are replaced
    elif foreign:
        raise UserError(
            f"{foreign[0]}: exists but is not complete demo data made by run_study.py (no "
            f"{DEMO_STAMP} in {demo_dir}); pass --remake_demo to replace it with demo data, or "
            "choose another --demo_dir"
        )
    log = os.path.join(logs_dir, "demo-data.log")
    outcome = run_command("demo-data", argv, log, console)
    outcome.check("demo-data", log, "generating the demo data failed")
    return outcome.seconds
