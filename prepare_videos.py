"""Turn videos into the project's dataset layout: face crops of sampled frames, split by video.

    python prepare_videos.py --input FFPP_ROOT --splits FFPP_REPO/dataset/splits \\
        --out DATA_ROOT --dataset ffpp_c23 --frames 32
    python prepare_videos.py --input my_videos/ --out DATA_ROOT --dataset my_set

The input is the FaceForensics++ layout (``original_sequences/``, ``manipulated_sequences/``) with
its official split files, or a folder holding ``real/`` and ``fake/`` videos. Each video gives
``--frames`` evenly spaced frames, read in one sequential pass; in each, the detector's largest
(or most confident) face is cropped as ``predict.py --crop_faces`` crops it: a square 1.3 times
the box, resized to 256x256. Writes ``<out>/<dataset>/<split>/<real|fake>/<video>_f<frame>.png``
and ``<out>/<dataset>/manifest.json``; every training and analysis script reads the result with
``--data_root <out> --dataset <dataset>``. A re-run skips the videos already done with the same
settings; ``--shard i/N`` lets N machines share one dataset (docs/design.md#videos).
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from lib import face_detectors, video_prep, video_sets
from lib.cli import (
    ArgumentParser,
    UserError,
    add_debug_flag,
    non_negative_int,
    positive_int,
    run_cli,
    seed_int,
)
from lib.device import get_device
from lib.fileio import ensure_dir
from lib.flags import add_detector_flags
from lib.names import SPLITS
from lib.video import DEFAULT_FRAMES

PROG = "prepare_videos.py"


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type of ``--shard i/N``: 0 <= i < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not i/N (for example 0/4)") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text}: need N >= 1 and 0 <= i < N (i counts from 0)")
    return index, count


def _add_source_flags(parser) -> None:
    """The videos to read and how they are split."""
    source = parser.add_argument_group("input")
    source.add_argument(
        "--input",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the FaceForensics++ root, or a folder with real/ and fake/ (sub-folders are searched)",
    )
    source.add_argument(
        "--splits",
        metavar="DIR",
        default=None,
        help=(
            "FaceForensics++: the folder of train.json, val.json and test.json (its repository's "
            "dataset/splits); without it the pairs are split 70/15/15 with --seed"
        ),
    )
    source.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        default=None,
        help=(
            "FaceForensics++: the manipulation methods to take (default: those of "
            f"{' '.join(video_sets.DEFAULT_FFPP_METHODS)} that are present)"
        ),
    )
    source.add_argument(
        "--compression", default="c23", choices=video_sets.COMPRESSIONS, help="FaceForensics++: which quality"
    )
    source.add_argument(
        "--group",
        metavar="REGEX",
        default=None,
        help=(
            "real/fake folders: a regular expression searched in each file name (its first group, else the "
            "match, names the group); videos of one group go to one split. Without it the split is by video "
            "only"
        ),
    )
    source.add_argument(
        "--seed", type=seed_int, default=0, help="seed of the 70/15/15 split (when there are no split files)"
    )


def _add_out_flags(parser) -> None:
    """Where the dataset goes."""
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DATA_ROOT",
        help="the data root to write into (give it to the other scripts as --data_root)",
    )
    out.add_argument(
        "--dataset",
        required=True,
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="the dataset folder to write under --out (for example ffpp_c23)",
    )
    out.add_argument(
        "--prune",
        action="store_true",
        help=(
            "delete prepared videos of this dataset that this run would not prepare (another --input, "
            "--methods, ...); without it they stop the run"
        ),
    )


def _add_frames_flags(parser) -> None:
    """Which frames, which face detector and which face."""
    frames = parser.add_argument_group("frames and faces")
    frames.add_argument(
        "--frames",
        type=non_negative_int,
        default=DEFAULT_FRAMES,
        help="evenly spaced frames a video (0: every frame)",
    )
    add_detector_flags(frames, "of each frame")
    frames.add_argument(
        "--pick",
        choices=face_detectors.PICK_RULES,
        default="largest",
        help="the face kept when a frame has several: the largest, or the most confident (MTCNN)",
    )


def _add_run_flags(parser) -> None:
    """Workers, shards, device and progress."""
    run = parser.add_argument_group("running")
    run.add_argument(
        "--workers",
        "-j",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="worker processes, one video and one thread each",
    )
    run.add_argument(
        "--shard",
        type=shard_spec,
        default=None,
        metavar="i/N",
        help=(
            "prepare only every N-th video, starting at the i-th (i from 0 to N-1), so that N machines "
            "share the work; the manifest counts every shard's videos"
        ),
    )
    run.add_argument("--device", default="cpu", help="where the detector runs: cpu, cuda or auto")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Prepare face-crop datasets from videos: FaceForensics++ (with its official "
        "split files) or a folder with real/ and fake/ videos. Writes OUT/DATASET/{train,val,test}/"
        "{real,fake}/<video>_f<frame>.png and OUT/DATASET/manifest.json."
    )
    _add_source_flags(parser)
    _add_out_flags(parser)
    _add_frames_flags(parser)
    _add_run_flags(parser)
    return parser


def plan_ffpp(args) -> tuple[list[video_sets.VideoItem], dict]:
    """The videos of a FaceForensics++ root with their splits, and how they were chosen."""
    found = video_sets.ffpp_methods_found(args.input, args.compression)
    methods = args.methods or [m for m in video_sets.DEFAULT_FFPP_METHODS if m in found]
    missing = [m for m in methods if m not in found]
    if missing:
        raise UserError(
            f"--methods: {', '.join(missing)} not found under {args.input}/manipulated_sequences/*/"
            f"{args.compression}/videos; found: {', '.join(found) or 'none'}"
        )
    items = video_sets.ffpp_videos(args.input, args.compression, methods)
    if args.splits:
        items, unplaced = video_sets.apply_ffpp_splits(items, video_sets.read_ffpp_splits(args.splits))
        if unplaced:
            tqdm.write(
                f"{PROG}: note: {len(unplaced)} video(s) are in no split file and are left out (for example "
                f"{unplaced[0].source})",
                file=sys.stderr,
            )
        rule = (
            f"FaceForensics++ split files in {os.path.abspath(args.splits)}: each pair's originals and "
            "fakes in its split"
        )
    else:
        items = video_sets.split_by_group(items, args.seed)
        rule = f"pairs split 70/15/15 with seed {args.seed}: each pair's originals and fakes in one split"
    source = {"layout": "FaceForensics++", "compression": args.compression, "methods": methods}
    return items, {
        **source,
        "splits": os.path.abspath(args.splits) if args.splits else None,
        "split_rule": rule,
    }


def plan_folders(args) -> tuple[list[video_sets.VideoItem], dict]:
    """The videos of a real/ and fake/ folder with their seeded 70/15/15 split."""
    items, unmatched = video_sets.folder_videos(args.input, args.group)
    if args.group is None:
        tqdm.write(
            f"{PROG}: note: the split is by video only (no --group rule): a fake and the video it was made "
            "from may land in different splits",
            file=sys.stderr,
        )
        rule = f"by video, 70/15/15 with seed {args.seed}"
    else:
        rule = f"by group (--group {args.group!r}), 70/15/15 with seed {args.seed}"
        if unmatched:
            tqdm.write(
                f"{PROG}: note: {unmatched} video(s) do not match --group; each is its own group",
                file=sys.stderr,
            )
    return video_sets.split_by_group(items, args.seed), {
        "layout": "real/fake folders",
        "group": args.group,
        "split_rule": rule,
    }


def plan(args) -> tuple[list[video_sets.VideoItem], dict]:
    """All the videos of ``--input`` with their splits, and the manifest's ``source``."""
    if not os.path.isdir(args.input):
        raise UserError(f"--input {args.input}: no such folder")
    if video_sets.is_ffpp_root(args.input):
        if args.group:
            raise UserError(
                "--group applies to real/ and fake/ folders; FaceForensics++ keeps its pairs together by "
                "itself"
            )
        items, source = plan_ffpp(args)
    elif all(os.path.isdir(os.path.join(args.input, d)) for d in ("real", "fake")):
        if args.splits or args.methods:
            raise UserError(
                f"--splits and --methods apply to the FaceForensics++ layout; {args.input} holds real/ and "
                "fake/"
            )
        items, source = plan_folders(args)
    else:
        raise UserError(
            f"--input {args.input}: neither the FaceForensics++ layout (original_sequences/, "
            "manipulated_sequences/) nor real/ and fake/ folders"
        )
    if not items:
        raise UserError(
            f"--input {args.input}: no videos found (extensions: {', '.join(video_sets.VIDEO_EXTENSIONS)})"
        )
    video_sets.check_unique_keys(items)
    source["input"] = os.path.abspath(args.input)
    return sorted(items, key=lambda i: i.key), source


def describe_plan(items) -> str:
    counts = video_sets.split_counts(items)
    return ", ".join(f"{s} {counts[s]['real']} real / {counts[s]['fake']} fake" for s in SPLITS)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.detector == "haar" and args.pick == "confident":
        raise UserError("--pick confident needs --detector mtcnn (the Haar cascade gives no confidence)")
    items, source = plan(args)
    for split, counts in video_sets.split_counts(items).items():
        if 0 in counts.values():
            tqdm.write(
                f"{PROG}: warning: the {split} split gets no {'real' if counts['real'] == 0 else 'fake'} "
                "video; training needs both",
                file=sys.stderr,
            )
    device = get_device(args.device)
    detector = face_detectors.make_detector(args.detector, device, args.min_face)  # fails fast when missing
    settings = video_prep.PrepSettings(args.frames, args.detector, str(device), args.min_face, args.pick)
    dataset_dir = ensure_dir(os.path.join(ensure_dir(args.out), args.dataset))
    mine = items if args.shard is None else items[args.shard[0] :: args.shard[1]]
    planned = {item.key for item in items}
    todo, done = video_prep.plan_work(mine, planned, dataset_dir, settings, detector.params(), args.prune)
    shard = f"this shard {len(mine)}, " if args.shard else ""
    print(
        f"{args.dataset}: {len(items)} videos ({describe_plan(items)}); {shard}{done} done before, "
        f"{len(todo)} to prepare"
    )
    failures, tally = [], {"images": 0, "no_face": 0}

    def on_result(result: dict) -> None:
        if "error" in result:
            failures.append(result)
            tqdm.write(f"{PROG}: error: {result['error']}; skipped", file=sys.stderr)
        else:
            tally["images"] += len(result["images"])
            tally["no_face"] += len(result["no_face"])

    meta = {"source": source, "settings": video_prep.settings_dict(settings, detector.params())}
    try:
        video_prep.run_videos(
            todo, dataset_dir, settings, args.workers, not args.no_progress, on_result, detector
        )
    finally:
        meta["failed"] = failures
        manifest = video_prep.write_manifest(
            dataset_dir, args.dataset, items, meta, settings, detector.params()
        )
    print(summary(args, manifest, tally, failures, len(todo)))
    return 1 if failures else 0


def summary(args, manifest: dict, tally: dict, failures: list, n_todo: int) -> str:
    """The closing lines: what this run did, what the dataset holds, what to run next."""
    lines = [
        f"prepared {n_todo - len(failures)} video(s) now: {tally['images']} face crops, {tally['no_face']} "
        f"sampled frame(s) without a face; {len(failures)} failed",
        f"{manifest['videos_prepared']} of {manifest['videos_planned']} videos prepared: "
        f"{manifest['n_images']} crops, {manifest['frames_without_face']} frames without a face, "
        f"{len(manifest['videos_without_face'])} video(s) without any face",
        f"wrote {os.path.join(args.out, args.dataset, video_prep.MANIFEST)}"
        + ("" if manifest["complete"] else " (not complete: run again, or let the other shards finish)"),
    ]
    if manifest["complete"]:
        lines.append(
            f"next: python train_main.py --data_root {args.out} -d {args.dataset} -m SimpleNet -o Adam -b "
            "32 -e 5"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
