"""Video-level results: grouping frames by video (manifest or file names), video AUC, EER, AP and
accuracy against sklearn on per-video means computed here, bootstrap resamples of whole videos,
and numerical_analysis.py's 'video' sections and per-image scores CSV."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

import numerical_analysis
from conftest import analysis_argv, counted_eer
from lib import uncertainty, video_scores
from lib.cli import UserError, run_cli


def frames_of_videos(seed: int = 0):
    """Keys, labels and P(fake) of 12 videos (5 real, 7 fake) with 1 to 6 frames each, shuffled."""
    rng = np.random.default_rng(seed)
    keys, labels, scores = [], [], []
    for v in range(12):
        label = int(v >= 5)
        for _ in range(int(rng.integers(1, 7))):
            keys.append(f"{'fake' if label else 'real'}_{v:02d}")
            labels.append(label)
            scores.append(float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)))
    order = rng.permutation(len(keys))
    return [keys[i] for i in order], np.array(labels)[order], np.array(scores)[order]


def per_video_by_hand(keys, labels, scores, aggregate=np.mean):
    """{video: (label, aggregate of its scores)} with a plain loop."""
    out = {}
    for key in sorted(set(keys)):
        mine = [s for k, s in zip(keys, scores) if k == key]
        [label] = {int(lab) for k, lab in zip(keys, labels) if k == key}
        out[key] = (label, float(aggregate(mine)))
    return out


@pytest.mark.parametrize("aggregate, reduce", [("mean", np.mean), ("median", np.median)])
def test_video_figures_are_sklearn_on_the_per_video_scores(aggregate, reduce):
    keys, labels, scores = frames_of_videos()
    grouped = video_scores.group_videos(keys, labels, scores, aggregate)
    truth = per_video_by_hand(keys, labels, scores, reduce)
    assert list(grouped["videos"]) == sorted(truth)
    y = np.array([truth[k][0] for k in sorted(truth)])
    s = np.array([truth[k][1] for k in sorted(truth)])
    np.testing.assert_allclose(grouped["scores"], s, rtol=1e-12)
    figures = video_scores.video_figures(grouped, "file names", aggregate)
    assert figures["auc"] == pytest.approx(roc_auc_score(y, s))
    assert figures["ap"] == pytest.approx(average_precision_score(y, s))
    assert figures["accuracy"] == pytest.approx(100 * accuracy_score(y, s > 0.5))
    assert figures["eer"] == pytest.approx(counted_eer(y, s), abs=1e-9)
    assert (figures["n_videos"], figures["n_real"], figures["n_fake"]) == (12, 5, 7)
    frames = [keys.count(k) for k in sorted(truth)]
    assert figures["frames_per_video"] == {
        "min": min(frames),
        "median": float(np.median(frames)),
        "max": max(frames),
    }


def test_a_video_with_real_and_fake_frames_is_refused():
    with pytest.raises(UserError, match="video a has both real and fake"):
        video_scores.group_videos(["a", "a", "b"], [0, 1, 1], [0.1, 0.2, 0.3])


def test_bootstrap_resamples_draw_whole_videos_per_class():
    keys, labels, scores = frames_of_videos(1)
    grouped = video_scores.group_videos(keys, labels, scores)
    resamples = video_scores.video_resamples(grouped, 50, seed=2)
    assert len(resamples) == 50
    frames_of = {k: sorted(i for i, key in enumerate(keys) if key == k) for k in set(keys)}
    for rows in resamples:
        drawn = [keys[i] for i in rows]
        videos = {k: drawn.count(k) // len(frames_of[k]) for k in set(drawn)}
        for key, times in videos.items():  # every frame of a drawn video, as often as it was drawn
            assert sorted(i for i in rows if keys[i] == key) == sorted(frames_of[key] * times)
        assert sum(t for k, t in videos.items() if k.startswith("real")) == 5
        assert sum(t for k, t in videos.items() if k.startswith("fake")) == 7
    again = video_scores.video_resamples(grouped, 50, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(resamples, again))
    boot = uncertainty.bootstrap_intervals(labels, scores, 50, seed=2, resamples=resamples, method="video")
    by_hand = [roc_auc_score(labels[rows], scores[rows]) for rows in resamples]
    assert boot["auc"]["ci"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])))
    assert boot["method"] == "video"


def test_keys_come_from_the_manifest_else_from_file_names(tmp_path):
    folder = tmp_path / "set"
    images = [
        {"file": "test/real/a.png", "video": "clip_one"},
        {"file": "test/fake/b.png", "video": "clip_two"},
    ]
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"images": images}))
    paths = [str(folder / "test" / "real" / "a.png"), str(folder / "test" / "fake" / "xyz_f00012.png")]
    assert video_scores.video_keys(str(folder), paths) == (["clip_one", "xyz"], "manifest and file names")
    assert video_scores.video_keys(str(tmp_path), [str(tmp_path / "v_f3.jpg")]) == (["v"], "file names")
    assert video_scores.video_keys(
        str(tmp_path), [str(tmp_path / "v_f3.jpg"), str(tmp_path / "img001.png")]
    ) == (
        None,
        None,
    )
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a manifest"):
        video_scores.video_keys(str(folder), paths)


def test_numerical_analysis_gives_video_figures_from_the_manifest(
    prepared_videos, simplenet_checkpoint, tmp_path, capsys
):
    argv = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, "-d", "demo_ffpp"]
    argv += ["--bootstrap", "200", "--seed", "3"]
    assert run_cli(numerical_analysis.main, [*argv, *analysis_argv(prepared_videos, tmp_path)]) == 0
    printed = capsys.readouterr().out
    content = json.loads((tmp_path / "out" / "demo_ffpp_SimpleNet_metrics.json").read_text())
    with open(tmp_path / "out" / "demo_ffpp_SimpleNet_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(os.path.join(prepared_videos, "demo_ffpp", "manifest.json")) as handle:
        manifest = json.load(handle)
    test_images = {r["file"]: r for r in manifest["images"] if r["split"] == "test"}
    assert len(rows) == len(test_images) == content["numerical"]["n_samples"]
    for row in rows:
        record = test_images[os.path.relpath(row["path"], os.path.join(prepared_videos, "demo_ffpp"))]
        assert row["video"] == record["video"] and int(row["label"]) == record["label"]
        logits = torch.tensor([float(row["score_a"]), float(row["score_b"])], dtype=torch.float64)
        assert float(row["p_fake"]) == pytest.approx(float(torch.softmax(logits, 0)[1]), abs=1e-9)
    truth = per_video_by_hand(
        [r["video"] for r in rows], [int(r["label"]) for r in rows], [float(r["p_fake"]) for r in rows]
    )
    y = np.array([label for label, _ in truth.values()])
    s = np.array([score for _, score in truth.values()])
    video = content["numerical"]["video"]
    assert video["grouping"] == "manifest" and video["n_videos"] == len(truth)
    assert (video["n_real"], video["n_fake"]) == (int((y == 0).sum()), int((y == 1).sum()))
    assert video["auc"] == pytest.approx(roc_auc_score(y, s)) and video["ap"] == pytest.approx(
        average_precision_score(y, s)
    )
    expected = uncertainty.bootstrap_intervals(y, s, 200, seed=3)
    assert content["uncertainty"]["video"]["bootstrap"]["auc"]["ci"] == pytest.approx(expected["auc"]["ci"])
    frame_boot = content["uncertainty"]["bootstrap"]
    assert frame_boot["method"] == video_scores.VIDEO_BOOTSTRAP_METHOD
    assert f"video level: {len(truth)} videos" in printed and "frames        videos" in printed


def test_numerical_analysis_without_videos_writes_the_csv_and_no_video_part(
    tiny_root, simplenet_checkpoint, tmp_path
):
    argv = ["-m", "SimpleNet", "-cpp", simplenet_checkpoint, "--bootstrap", "20"]
    assert run_cli(numerical_analysis.main, [*argv, *analysis_argv(tiny_root, tmp_path)]) == 0
    content = json.loads((tmp_path / "out" / "fakes_dataset_SimpleNet_metrics.json").read_text())
    assert "video" not in content["numerical"] and "video" not in content["uncertainty"]
    assert content["uncertainty"]["bootstrap"]["method"] == uncertainty.BOOTSTRAP_METHOD
    with open(tmp_path / "out" / "fakes_dataset_SimpleNet_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(video_scores.CSV_COLUMNS)
    assert len(rows) == 6 and {r["video"] for r in rows} == {""}
    assert [int(r["label"]) for r in rows] == [0, 0, 0, 0, 1, 1]  # dataset order: reals first
