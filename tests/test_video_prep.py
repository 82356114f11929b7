"""prepare_videos.py, lib/video.py, lib/video_sets.py and lib/face_detectors.py on generated videos:
frame sampling against numpy's linspace, a decoder that stops early, crops against the demo's known
face boxes, the FF++ pair rule, seeded group splits, resume after a killed run, shards, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prepare_videos
from conftest import prep_argv
from lib import face_detectors, video, video_prep, video_sets
from lib.cli import UserError, run_cli
from utils import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_counting_video(path, n_frames: int, size=(64, 48), codec="MJPG") -> None:
    """A video whose frame i is flat grey at level 4 i (so a frame's index reads off its pixels)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 25, size)
    for i in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), 4 * i, np.uint8))
    writer.release()


def level(frame) -> int:
    """The frame index a ``write_counting_video`` frame shows."""
    return round(float(np.mean(frame)) / 4)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def manifest_of(root, dataset="demo_ffpp") -> dict:
    return json.loads((Path(root) / dataset / "manifest.json").read_text())


def tree_bytes(folder) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# ----------------------------------------------------------------------------- frames
@pytest.mark.parametrize("n_frames, wanted", [(300, 32), (10, 4), (7, 7), (5, 9), (12, 0), (1, 3), (0, 4)])
def test_sample_indices_are_numpy_linspace_rounded(n_frames, wanted):
    expected = list(range(n_frames)) if wanted == 0 or wanted >= n_frames else None
    if expected is None:  # no ties at .5 in these cases, so any rounding rule agrees
        expected = sorted({math.floor(x + 0.5) for x in np.linspace(0, n_frames - 1, wanted)})
        assert expected[0] == 0 and expected[-1] == n_frames - 1
    assert video.sample_indices(n_frames, wanted) == expected


def test_sampled_frames_are_the_frames_asked_for(tmp_path):
    path = tmp_path / "count.avi"
    write_counting_video(path, 40)
    report = video.VideoReport()
    got = list(video.sampled_frames(str(path), 8, report))
    assert [i for i, _ in got] == video.sample_indices(40, 8) == report.delivered
    assert [level(frame) for _, frame in got] == report.delivered  # the right pixels, not only the index
    assert report.frames_header == 40 and report.frames_decoded is None and report.size == (64, 48)
    assert got[0][1].shape == (48, 64, 3) and got[0][1].dtype == np.uint8


def test_a_decoder_that_stops_early_is_filled_from_what_decodes(tmp_path):
    whole = tmp_path / "whole.avi"
    write_counting_video(whole, 40)
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])  # the header still says 40 frames
    report = video.VideoReport()
    got = list(video.sampled_frames(str(cut), 8, report))
    decoded = report.frames_decoded
    assert report.frames_header == 40 and decoded is not None and 8 < decoded < 40
    indices = [i for i, _ in got]
    assert len(indices) == len(set(indices)) == 8 and max(indices) < decoded
    before = [i for i in video.sample_indices(40, 8) if i < decoded]
    assert indices[: len(before)] == before  # the frames read before the end are kept
    spread = sorted(indices)  # and the others fill the gaps of what decoded
    assert max(np.diff([*spread, decoded])) <= 2 * decoded / 8
    assert [level(frame) for _, frame in got] == indices


def test_a_file_that_is_no_video_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(video.VideoError) as caught:
        list(video.sampled_frames(str(bad), 4))
    message = str(caught.value)
    assert str(bad) in message and "\n" not in message


# ----------------------------------------------------------------------------- preparation
def reference_crop(frame: np.ndarray, box, size=256) -> np.ndarray:
    """The 1.3x square crop of ``box`` by numpy slicing and padding, resized by PIL."""
    x, y, w, h = box
    side = round(1.3 * max(w, h))
    left, top = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    height, width = frame.shape[:2]
    left = min(max(left, 0), width - side) if side <= width else left
    top = min(max(top, 0), height - side) if side <= height else top
    padded = np.zeros((side, side, 3), np.uint8)
    y0, y1, x0, x1 = max(top, 0), min(top + side, height), max(left, 0), min(left + side, width)
    padded[y0 - top : y1 - top, x0 - left : x1 - left] = frame[y0:y1, x0:x1]
    return np.asarray(Image.fromarray(padded).resize((size, size), Image.BILINEAR), dtype=np.int16)


def test_crops_are_at_the_known_face_boxes(demo_videos, prepared_videos):
    truth = json.loads((Path(demo_videos) / "boxes.json").read_text())
    manifest = manifest_of(prepared_videos)
    assert manifest["complete"] and manifest["settings"]["detector"]["name"] == "haar"
    records = manifest["images"]
    sampled = sum(v["sampled"] for v in manifest["videos"].values())
    assert len(records) + manifest["frames_without_face"] == sampled == 18 * 4
    assert len(records) >= 0.6 * sampled  # the demo's faces are found in most frames
    overlaps = []
    for record in records:
        source = manifest["videos"][record["video"]]["source"]
        overlaps.append(iou(record["box"], truth[source][record["frame"]]))
    assert np.median(overlaps) > 0.6 and np.mean(np.array(overlaps) > 0.4) > 0.9
    for record in records[::7]:  # the saved crop is the 1.3x square of the box, 256x256
        source = os.path.join(demo_videos, manifest["videos"][record["video"]]["source"])
        frame = dict(video.sampled_frames(source, 0))[record["frame"]]
        with Image.open(Path(prepared_videos) / "demo_ffpp" / record["file"]) as saved:
            crop = np.asarray(saved, dtype=np.int16)
        assert crop.shape == (256, 256, 3)
        assert np.abs(crop - reference_crop(frame, record["box"])).max() <= 1
    test = load_dataset("demo_ffpp", "test", prepared_videos)  # the scripts read it as it is
    assert len(test) == sum(r["split"] == "test" for r in records)


def test_splits_follow_the_pair_rule_and_methods_stay_apart(demo_videos, prepared_videos):
    pairs = {
        s: json.loads((Path(demo_videos) / "splits" / f"{s}.json").read_text())
        for s in ("train", "val", "test")
    }
    split_of = {v: s for s, ps in pairs.items() for p in ps for v in p}
    manifest = manifest_of(prepared_videos)
    assert len(manifest["videos"]) == 18
    for key, entry in manifest["videos"].items():
        ids = Path(entry["source"]).stem.split("_")
        assert {split_of[i] for i in ids} == {entry["split"]}  # a_b, b_a, a and b: the pair's split
        assert key.startswith(f"{entry['method']}_") and entry["label"] == (entry["method"] != "original")
    for record in manifest["images"]:
        class_dir = "fake" if record["label"] else "real"
        assert record["file"] == f"{record['split']}/{class_dir}/{record['video']}_f{record['frame']:05d}.png"
        assert manifest["videos"][record["video"]]["split"] == record["split"]
    stems = {}
    for entry in manifest["videos"].values():
        stems.setdefault(Path(entry["source"]).stem, set()).add(entry["method"])
    assert any(methods == {"Deepfakes", "FaceSwap"} for methods in stems.values())  # same pair, two videos


def test_without_split_files_pairs_stay_whole(demo_videos, tmp_path, capsys):
    argv = prep_argv(demo_videos, tmp_path, "--seed", "4")
    argv.remove("--splits")
    argv.remove(os.path.join(demo_videos, "splits"))
    assert prepare_videos.main(argv + ["--frames", "1"]) == 0
    manifest = manifest_of(tmp_path)
    assert manifest["source"]["splits"] is None and "seed 4" in manifest["source"]["split_rule"]
    by_pair: dict[str, set] = {}
    for entry in manifest["videos"].values():
        by_pair.setdefault(entry["group"], set()).add(entry["split"])
    assert len(by_pair) == 3 and all(len(splits) == 1 for splits in by_pair.values())
    assert {next(iter(s)) for s in by_pair.values()} == {"train", "val", "test"}


def items_of(groups: list[tuple[str, int, int]]) -> list[video_sets.VideoItem]:
    """Videos of (group, n_real, n_fake)."""
    items = []
    for group, n_real, n_fake in groups:
        for label, n in ((0, n_real), (1, n_fake)):
            for k in range(n):
                key = f"{group}_{label}_{k}"
                items.append(video_sets.VideoItem(key, key, key, label, "x", group))
    return items


def test_group_split_keeps_groups_whole_and_meets_the_fractions():
    items = items_of([(f"g{g:02d}", 1, 2) for g in range(40)])  # 40 reals, 80 fakes in 40 groups
    split = video_sets.split_by_group(items, seed=3)
    assert split == video_sets.split_by_group(items, seed=3)  # the seed fixes it
    assert split != video_sets.split_by_group(items, seed=4)
    for group in {i.group for i in items}:
        assert len({i.split for i in split if i.group == group}) == 1
    counts = video_sets.split_counts(split)
    assert counts == {
        "train": {"real": 28, "fake": 56},
        "val": {"real": 6, "fake": 12},
        "test": {"real": 6, "fake": 12},
    }


def test_folder_layout_with_and_without_a_group_rule(demo_videos, tmp_path, capsys):
    folder = tmp_path / "mine"
    for class_dir, sub in (
        ("real", "original_sequences/youtube/c23/videos"),
        ("fake", "manipulated_sequences/Deepfakes/c23/videos"),
    ):
        shutil.copytree(Path(demo_videos) / sub, folder / class_dir / "batch1")
    argv = ["--input", str(folder), "--out", str(tmp_path / "out"), "--dataset", "mine", "--frames", "1"]
    argv += ["--detector", "haar", "--workers", "1", "--no_progress"]
    assert prepare_videos.main(argv) == 0
    assert "split is by video only" in capsys.readouterr().err
    manifest = manifest_of(tmp_path / "out", "mine")
    assert set(manifest["videos"]) == {
        f"{c}_batch1_{Path(n).stem}" for c in ("real", "fake") for n in os.listdir(folder / c / "batch1")
    }
    # group by the target person: a fake 003_000 goes with the real 003
    assert prepare_videos.main(argv + ["--group", r"^(\d+)", "--dataset", "mine_grouped"]) == 0
    assert "split is by video only" not in capsys.readouterr().err
    grouped = manifest_of(tmp_path / "out", "mine_grouped")
    for entry in grouped["videos"].values():
        person = Path(entry["source"]).stem.split("_")[0]
        assert grouped["videos"][f"real_batch1_{person}"]["split"] == entry["split"]


def test_resume_after_a_killed_run_gives_the_same_dataset(demo_videos, prepared_videos, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(ROOT, "prepare_videos.py"), *prep_argv(demo_videos, out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "demo_ffpp" / video_prep.RECORDS_DIR
    deadline = time.monotonic() + 300
    while process.poll() is None and len(list(records.glob("*.json")) if records.is_dir() else []) < 3:
        assert time.monotonic() < deadline, "prepare_videos.py wrote no record in 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 3 <= len(kept) < 18, "the run was not stopped part way"
    assert prepare_videos.main(prep_argv(demo_videos, out)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json") if p.name in kept} == kept  # skipped
    assert tree_bytes(out / "demo_ffpp") == tree_bytes(Path(prepared_videos) / "demo_ffpp")
    manifest, clean = manifest_of(out), manifest_of(prepared_videos)
    assert manifest["images"] == clean["images"] and manifest["complete"]


def test_changed_settings_redo_the_videos_and_leave_no_stale_crop(demo_videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_videos.main(prep_argv(demo_videos, out)) == 0
    assert prepare_videos.main(prep_argv(demo_videos, out)) == 0
    assert "18 done before, 0 to prepare" in capsys.readouterr().out
    assert prepare_videos.main(prep_argv(demo_videos, out, "--frames", "2")) == 0
    assert "0 done before, 18 to prepare" in capsys.readouterr().out
    manifest = manifest_of(out)
    files = {str(p.relative_to(out / "demo_ffpp")) for p in (out / "demo_ffpp").rglob("*.png")}
    assert files == {r["file"] for r in manifest["images"]}
    assert all(r["frame"] in (0, 7) for r in manifest["images"])


def test_shards_share_one_dataset(demo_videos, prepared_videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_videos.main(prep_argv(demo_videos, out, "--shard", "1/2")) == 0
    first = manifest_of(out)
    assert not first["complete"] and first["videos_prepared"] == 9
    assert prepare_videos.main(prep_argv(demo_videos, out, "--shard", "0/2")) == 0
    assert manifest_of(out)["complete"]
    assert tree_bytes(out / "demo_ffpp") == tree_bytes(Path(prepared_videos) / "demo_ffpp")


def test_a_sharded_re_preparation_is_complete_only_when_every_shard_has_run(
    demo_videos, prepared_videos, tmp_path, monkeypatch
):
    """Other settings (--frames 2) over a complete --frames 4 dataset, shard by shard: the manifest
    counts only crops of the new settings, so it is not complete while the other shard's videos
    still hold the old ones, and it says not complete from the moment the first crop is removed
    (a run killed while it re-prepares must not leave 'complete' over deleted files)."""
    out = tmp_path / "out"
    shutil.copytree(prepared_videos, out)
    seen = []
    real_run = video_prep.run_videos
    monkeypatch.setattr(
        video_prep,
        "run_videos",
        lambda *a, **k: seen.append(manifest_of(out)["complete"]) or real_run(*a, **k),
    )
    assert prepare_videos.main(prep_argv(demo_videos, out, "--frames", "2", "--shard", "0/2")) == 0
    manifest = manifest_of(out)
    assert seen == [False]  # the old crops of this shard were gone, the manifest already said so
    assert not manifest["complete"] and manifest["videos_prepared"] == 9
    assert {r["frame"] for r in manifest["images"]} <= {0, 7}  # only crops of the new settings listed
    assert prepare_videos.main(prep_argv(demo_videos, out, "--frames", "2", "--shard", "1/2")) == 0
    manifest = manifest_of(out)
    assert manifest["complete"] and manifest["videos_prepared"] == 18
    files = {str(p.relative_to(out / "demo_ffpp")) for p in (out / "demo_ffpp").rglob("*.png")}
    assert files == {r["file"] for r in manifest["images"]}


def test_a_video_that_does_not_decode_is_named_and_the_others_go_on(demo_videos, tmp_path, capsys):
    source = tmp_path / "ffpp"
    shutil.copytree(demo_videos, source)
    bad = sorted((source / "manipulated_sequences" / "Deepfakes" / "c23" / "videos").iterdir())[0]
    bad.write_bytes(b"\0" * 1000)
    argv = prep_argv(str(source), tmp_path / "out", "--frames", "1")
    assert run_cli(prepare_videos.main, argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in errors[0]
    manifest = manifest_of(tmp_path / "out")
    assert [f["source"] for f in manifest["failed"]] == [os.path.relpath(bad, source)]
    assert manifest["videos_prepared"] == 17 and not manifest["complete"]


def test_other_videos_in_the_dataset_stop_the_run_unless_pruned(demo_videos, tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_videos.main(prep_argv(demo_videos, out, "--frames", "1")) == 0
    fewer = prep_argv(demo_videos, out, "--frames", "1", "--methods", "Deepfakes")
    assert run_cli(prepare_videos.main, fewer) == 2
    assert "--prune" in capsys.readouterr().err
    assert prepare_videos.main(fewer + ["--prune"]) == 0
    assert not any("FaceSwap" in p.name for p in (out / "demo_ffpp").rglob("*"))
    assert manifest_of(out)["complete"] and len(manifest_of(out)["videos"]) == 12


def test_bad_flags_are_one_line(demo_videos, tmp_path, capsys):
    base = ["--out", str(tmp_path), "--dataset", "x", "--no_progress"]
    cases = [
        (["--input", str(tmp_path / "missing")], "no such folder"),
        (["--input", str(tmp_path)], "neither the FaceForensics++ layout"),
        (["--input", demo_videos, "--methods", "NeuralTextures"], "NeuralTextures not found"),
        (["--input", demo_videos, "--splits", str(tmp_path)], "no train.json"),
        (["--input", demo_videos, "--group", "x"], "--group applies to real/ and fake/"),
        (["--input", demo_videos, "--detector", "haar", "--pick", "confident"], "--detector mtcnn"),
    ]
    for extra, needle in cases:
        assert run_cli(prepare_videos.main, base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (extra, err)
    with pytest.raises(SystemExit) as caught:
        prepare_videos.main(base + ["--input", demo_videos, "--shard", "2/2"])
    assert caught.value.code == 2 and "0 <= i < N" in capsys.readouterr().err


# ----------------------------------------------------------------------------- detectors
def test_mtcnn_finds_the_demo_faces(demo_videos):
    truth = json.loads((Path(demo_videos) / "boxes.json").read_text())
    detector = face_detectors.make_detector("mtcnn")
    overlaps, missed = [], 0
    for source in sorted(truth)[::3]:
        frames = dict(video.sampled_frames(os.path.join(demo_videos, source), 2))
        for index, faces in zip(frames, detector.detect_batch(list(frames.values()))):
            face = face_detectors.pick_face(faces)
            if face is None:
                missed += 1
                continue
            assert 0.5 < face.score <= 1.0
            overlaps.append(iou(face.box, truth[source][index]))
    assert len(overlaps) >= 2 * missed and np.median(overlaps) > 0.5
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []


def test_pick_face_rules():
    faces = [face_detectors.Face((0, 0, 10, 10), 0.99), face_detectors.Face((50, 0, 30, 30), 0.8)]
    assert face_detectors.pick_face(faces, "largest") == faces[1]
    assert face_detectors.pick_face(faces, "confident") == faces[0]
    assert face_detectors.pick_face([], "largest") is None
    with pytest.raises(UserError, match="--detector mtcnn"):
        face_detectors.pick_face([face_detectors.Face((0, 0, 5, 5), None)], "confident")


def test_without_facenet_mtcnn_is_one_line_naming_the_install_and_haar_works(
    demo_videos, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # None in sys.modules makes the import fail
    argv = prep_argv(demo_videos, tmp_path, "--frames", "1")
    mtcnn = [a if a != "haar" else "mtcnn" for a in argv]
    assert run_cli(prepare_videos.main, mtcnn) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert face_detectors.FACENET_INSTALL in line and "--detector haar" in line
    assert run_cli(prepare_videos.main, argv) == 0


# ----------------------------------------------------------------------------- benchmark
def test_bench_videos_smoke_writes_consistent_figures(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_videos", os.path.join(ROOT, "benchmarks", "bench_videos.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench_videos.json"
    out.write_text(json.dumps({"older": {"kept": True}}))  # merged into, never overwritten
    assert bench.main(["--smoke", "--out", str(out), "--workers", "2", "--no_progress"]) == 0
    results = json.loads(out.read_text())
    assert results["older"] == {"kept": True}
    r = results["smoke"]
    for key in bench.REQUIRED_KEYS:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
    assert r["efficiency"] == pytest.approx((r["decode_sequential_s"] + r["detect_s"]) / r["prepare_s"])
    assert r["videos_per_minute"] == pytest.approx(60 * r["config"]["videos"] / r["prepare_s"])
    assert r["config"]["videos"] == 18 and r["config"]["frames"] == 2
