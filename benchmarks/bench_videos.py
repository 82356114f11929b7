"""How fast does prepare_videos.py run, against decoding the same frames alone and detecting alone?

On a set of videos (demo videos made by ``make_demo_videos.py`` into ``--videos``, kept for the
next run, or an FF++ root of your own), one thread, ``--frames`` frames a video:

- decode, sequential: ``lib.video.sampled_frames`` (``grab`` every frame, ``retrieve`` the wanted),
  as the preparation reads;
- decode, seeking: ``CAP_PROP_POS_FRAMES`` then ``read`` for each wanted frame;
- decode, every frame: ``retrieve`` all of them (what a tool that reads all frames pays);
- detect: the detector alone on the decoded frames, already in memory, in the preparation's batches;
- prepare: ``lib.video_prep.run_videos`` in this process (decode, detect, crop, PNG, record), and
  with ``--workers`` worker processes (their start included);
- the command: ``prepare_videos.py`` as a user runs it, Python's start and the manifest included.

It prints the time a video, by wall clock and by CPU time (user + system, of this process and of
its worker processes: other jobs on a shared machine slow the first, hardly the second), and the
ratios: (decode + detect) / prepare (how close the preparation comes to its two costs; 1.0 is no
overhead) and seeking / sequential. Each figure is the best of ``--repeats`` rounds. Results
merge into ``--out`` (default ``out/bench_videos.json``).

Usage::

    python benchmarks/bench_videos.py              # the README figures (demo videos made once)
    python benchmarks/bench_videos.py --smoke      # tiny, seconds (the test suite)
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import make_demo_videos
from lib import face_detectors, video, video_prep, video_sets
from lib.cli import ArgumentParser, non_negative_int, positive_float, positive_int, run_cli
from lib.fileio import atomic_write_json, read_json_object

DEMO_FOLDER = os.path.join("out", "bench_videos_demo")
REQUIRED_KEYS = (
    "decode_sequential_cpu_s",
    "detect_cpu_s",
    "prepare_cpu_s",
    "efficiency_cpu",
    "videos_per_minute_cpu",
    "decode_sequential_s",
    "decode_seek_s",
    "decode_all_s",
    "detect_s",
    "prepare_s",
    "prepare_workers_s",
    "command_s",
    "efficiency",
    "seek_over_sequential",
    "videos_per_minute",
    "videos_per_minute_workers",
    "videos_per_minute_command",
)


def demo_set(args) -> str:
    """``--videos``, made with make_demo_videos.py when it does not exist yet; with
    ``--frame_scale``, a copy of it with every frame resized (made once, beside it)."""
    if not os.path.isdir(args.videos):
        make_demo_videos.generate(
            args.videos, pairs=args.pairs, frames=args.demo_frames, seed=0, progress=not args.no_progress
        )
    if args.frame_scale == 1:
        return args.videos
    scaled = f"{args.videos.rstrip(os.sep)}_x{args.frame_scale:g}"
    if not os.path.isdir(scaled):
        resized_copy(args.videos, scaled, args.frame_scale)
    return scaled


def resized_copy(source: str, target: str, scale: float) -> None:
    """Every video under ``source`` with its frames resized by ``scale`` (bicubic) under the same
    path in ``target``, written into a temporary folder first; the split files are copied."""
    import cv2

    staging = tempfile.mkdtemp(
        prefix=f".{os.path.basename(target)}.partial-", dir=os.path.dirname(target) or "."
    )
    for folder, _, names in os.walk(source):
        for name in names:
            path = os.path.join(folder, name)
            out = os.path.join(staging, os.path.relpath(path, source))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if not video.is_video_file(path):
                shutil.copyfile(path, out)
                continue
            frames = video.sampled_frames(path, 0)
            first = next(frames)[1]
            size = (round(first.shape[1] * scale), round(first.shape[0] * scale))
            with video.video_writer(out, video.read_header(path).fps, size) as write:
                for frame in [first, *(f for _, f in frames)]:
                    write(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    os.rename(staging, target)


def plan(root: str) -> list[video_sets.VideoItem]:
    """Every video of the FF++ root (all its methods, c23), split 70/15/15 by pair."""
    methods = video_sets.ffpp_methods_found(root, "c23")
    return sorted(
        video_sets.split_by_group(video_sets.ffpp_videos(root, "c23", methods), 0), key=lambda i: i.key
    )


def decode_seeking(path: str, n_frames: int) -> int:
    """Read the wanted frames by seeking to each: the reader the preparation avoids."""
    import cv2

    capture = video.open_capture(path)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    read = 0
    for index in video.sample_indices(total, n_frames):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, _ = capture.read()
        read += ok
    capture.release()
    return read


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest (by wall time) of ``repeats`` runs of ``fn()``. The CPU
    time counts worker processes too; other jobs on the machine slow the wall time, hardly the
    CPU time."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        fn()
        runs.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return min(runs)


def measure(args, root: str, items, detector) -> dict:
    """Every timing of the module docstring, in seconds for all of ``items`` (the videos of ``root``)."""
    paths = [i.path for i in items]
    frames = {p: [f for _, f in video.sampled_frames(p, args.frames)] for p in paths}

    def detect_all():
        for p in paths:
            for start in range(0, len(frames[p]), face_detectors.MTCNN_BATCH):
                detector.detect_batch(frames[p][start : start + face_detectors.MTCNN_BATCH])

    settings = video_prep.PrepSettings(args.frames, args.detector, "cpu")

    def prepare(workers: int):
        with tempfile.TemporaryDirectory(prefix="bench_videos_") as out:
            video_prep.run_videos(items, out, settings, workers, False, lambda r: None, detector)

    def command():
        with tempfile.TemporaryDirectory(prefix="bench_videos_cmd_") as out:
            argv = [
                sys.executable,
                os.path.join(ROOT, "prepare_videos.py"),
                "--input",
                root,
                "--out",
                out,
            ]
            argv += ["--dataset", "bench", "--frames", str(args.frames), "--detector", args.detector]
            argv += ["--workers", str(args.workers), "--no_progress"]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    tasks = {
        "decode_sequential": lambda: [list(video.sampled_frames(p, args.frames)) for p in paths],
        "decode_seek": lambda: [decode_seeking(p, args.frames) for p in paths],
        "decode_all": lambda: [list(video.sampled_frames(p, 0)) for p in paths],
        "detect": detect_all,
        "prepare": lambda: prepare(1),
        "prepare_workers": lambda: prepare(args.workers),
        "command": command,
    }
    times = {}
    for name, task in tasks.items():
        times[f"{name}_s"], times[f"{name}_cpu_s"] = best_time(task, args.repeats)
    return times


def figures(times: dict, n_videos: int) -> dict:
    """The ratios and rates of ``measure``'s times: by wall time and by CPU time."""
    out = dict(times)
    for suffix in ("_s", "_cpu_s"):
        kind = "" if suffix == "_s" else "_cpu"
        prepare = times[f"prepare{suffix}"]
        out[f"efficiency{kind}"] = (times[f"decode_sequential{suffix}"] + times[f"detect{suffix}"]) / prepare
        out[f"seek_over_sequential{kind}"] = (
            times[f"decode_seek{suffix}"] / times[f"decode_sequential{suffix}"]
        )
        out[f"videos_per_minute{kind}"] = 60 * n_videos / prepare
        out[f"videos_per_minute_workers{kind}"] = 60 * n_videos / times[f"prepare_workers{suffix}"]
        out[f"videos_per_minute_command{kind}"] = 60 * n_videos / times[f"command{suffix}"]
    return out


def print_table(result: dict) -> None:
    n = result["config"]["videos"]
    rows = [
        ("decode, sequential (grab/retrieve)", "decode_sequential_s"),
        ("decode, seeking each frame", "decode_seek_s"),
        ("decode, every frame", "decode_all_s"),
        (f"detect alone ({result['config']['detector']})", "detect_s"),
        ("prepare, 1 process", "prepare_s"),
        (f"prepare, {result['config']['workers']} workers", "prepare_workers_s"),
        (f"prepare_videos.py, {result['config']['workers']} workers", "command_s"),
    ]
    print(f"{n} videos, {result['config']['frames']} frames each ({result['config']['frame_size']})")
    print(f"  {'':<38} {'wall, a video':>14} {'CPU, a video':>13}")
    for name, key in rows:
        cpu = key[: -len("_s")] + "_cpu_s"
        print(f"  {name:<38} {1000 * result[key] / n:11.1f} ms {1000 * result[cpu] / n:10.1f} ms")
    for kind, label in (("", "wall"), ("_cpu", "CPU")):
        print(
            f"  by {label} time: (decode + detect) / prepare {result['efficiency' + kind]:.2f}, seeking / "
            f"sequential {result['seek_over_sequential' + kind]:.1f}, prepare "
            f"{result['videos_per_minute' + kind]:.1f} "
            "videos a minute a process"
        )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Preparation throughput against decoding alone and detecting alone.")
    parser.add_argument(
        "--videos",
        default=None,
        help=f"an FF++ root; made with make_demo_videos.py when missing (default {DEMO_FOLDER}; "
        "with --smoke a temporary folder)",
    )
    parser.add_argument(
        "--pairs", type=positive_int, default=3, help="pairs of the demo set made when --videos is missing"
    )
    parser.add_argument(
        "--demo_frames", type=positive_int, default=96, help="frames a video of the demo set made"
    )
    parser.add_argument("--frames", type=non_negative_int, default=32, help="frames sampled a video")
    parser.add_argument(
        "--frame_scale",
        type=positive_float,
        default=1.0,
        help="measure on a copy of the videos with frames this many times larger (2.5: the demo's "
        "256x192 become 640x480, FaceForensics++'s most common size)",
    )
    parser.add_argument(
        "--detector", choices=face_detectors.DETECTORS, default=face_detectors.DEFAULT_DETECTOR
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="worker processes of the multi-process figures",
    )
    parser.add_argument("--repeats", type=positive_int, default=2, help="rounds; each figure is the best")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny: 3 pairs of 6 frames, 2 frames a video, Haar, one round"
    )
    parser.add_argument(
        "--out", default=os.path.join("out", "bench_videos.json"), help="results JSON (merged)"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.demo_frames, args.frames, args.detector, args.repeats, args.pairs = 6, 2, "haar", 1, 3
    with tempfile.TemporaryDirectory(prefix="bench_videos_smoke_") as scratch:
        if args.videos is None:
            args.videos = os.path.join(scratch, "videos") if args.smoke else DEMO_FOLDER
        result = run(args)
    print_table(result)
    existing = read_json_object(args.out, "results JSON, a new one is written")
    name = (
        "smoke"
        if args.smoke
        else "prepare_videos" + ("" if args.frame_scale == 1 else f"_x{args.frame_scale:g}")
    )
    existing[name] = result
    atomic_write_json(args.out, existing)
    print(f"wrote {args.out}")
    return 0


def run(args) -> dict:
    """Measure on ``args.videos`` (made when missing); the figures with their configuration."""
    import cv2
    import torch

    torch.set_num_threads(1)  # one thread, as each worker of prepare_videos.py
    cv2.setNumThreads(1)
    root = demo_set(args)
    items = plan(root)
    detector = face_detectors.make_detector(args.detector)
    sample = next(video.sampled_frames(items[0].path, 1))[1]
    result = figures(measure(args, root, items, detector), len(items))
    result["config"] = {
        "videos": len(items),
        "frames": args.frames,
        "frame_size": f"{sample.shape[1]}x{sample.shape[0]}",
        "detector": args.detector,
        "detector_params": detector.params(),
        "workers": args.workers,
        "repeats": args.repeats,
        "source": os.path.abspath(root),
        "frame_scale": args.frame_scale,
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
