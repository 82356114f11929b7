"""The benchmark scripts run (smoke mode: tiny data, one round) and write well-formed figures.

No timing is asserted: the numbers only have to exist, be positive and finite, and be consistent
with each other (ratios are the ratios of the images/s written beside them).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from lib import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive_finite(value) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def test_bench_train_smoke_writes_every_figure(tiny_root, tmp_path, capsys):
    bench = _load("bench_train")
    out = tmp_path / "out" / "bench_train.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"OlderModel": {"kept": True}}))  # merged into, never overwritten
    assert bench.main(["--smoke", "--data_root", tiny_root, "--out", str(out), "--no_progress"]) == 0
    results = json.loads(out.read_text())
    assert results["OlderModel"] == {"kept": True}
    assert {"SimpleNet", "XceptionBased"} <= set(results)
    for name in ("SimpleNet", "XceptionBased"):
        r = results[name]
        for key in bench.REQUIRED_KEYS:
            assert _positive_finite(r[key]), f"{name}.{key} = {r[key]!r}"
        assert r["train_efficiency"] == pytest.approx(r["end_to_end_train_ips"] / r["model_only_train_ips"])
        assert r["eval_efficiency"] == pytest.approx(r["end_to_end_eval_ips"] / r["model_only_eval_ips"])
        sizes = r["config"]["split_sizes"]
        n_eval = sizes["val"] + sizes["test"]
        naive = sizes["train"] / r["naive_train_ips"] + n_eval / r["naive_eval_ips"]
        ours = sizes["train"] / r["end_to_end_train_ips"] + n_eval / r["end_to_end_eval_ips"]
        assert r["epoch_speedup"] == pytest.approx(naive / ours)
        assert r["peak_rss_mb"] > 100  # a torch process holds far more than 100 MiB
    assert results["SimpleNet"]["config"]["split_sizes"] == {"train": 12, "val": 6, "test": 6}
    assert results["XceptionBased"]["config"]["measured_images"]["train"] == 1
    printed = capsys.readouterr().out
    assert "b/a train" in printed and "XceptionBased" in printed


def test_bench_train_smoke_levers_without_the_naive_loop(tiny_root, tmp_path):
    """--levers writes each lever's model-only images/s and the data costs; --skip_naive leaves (c)
    and every b/c null instead of failing."""
    bench = _load("bench_train")
    out = tmp_path / "bench_train.json"
    assert (
        bench.main(
            [
                "--smoke",
                "--models",
                "SimpleNet",
                "--levers",
                "--skip_naive",
                "--data_root",
                tiny_root,
                "--out",
                str(out),
                "--no_progress",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())["SimpleNet"]
    for key in (
        "model_only_train_ips",
        "end_to_end_train_ips",
        "model_only_eval_ips",
        "end_to_end_eval_ips",
        "train_efficiency",
        "eval_efficiency",
        "peak_rss_mb",
    ):
        assert _positive_finite(r[key]), f"{key} = {r[key]!r}"
    for key in ("naive_train_ips", "naive_eval_ips", "epoch_speedup", "train_speedup", "eval_speedup"):
        assert r[key] is None, f"{key} = {r[key]!r}"
    assert set(r["paired_median_ratios"]) == {"b/a_train", "b/a_eval"}
    expected = {
        "nchw": {"train_ips", "eval_ips"},
        "channels_last": {"train_ips", "eval_ips", "eval_no_grad_ips"},
        "eval_batch_x2": {"eval_ips"},
        "eval_batch_x4": {"eval_ips"},
        "data_ms_per_image": {
            "pil_decode_and_v1_transforms",
            "decode_to_uint8",
            "cached_gather",
            "cached_augment",
            "cached_normalize_channels_last",
        },
    }
    if r["config"]["device"] == "cpu" and r["config"]["torch_threads"] > 1:
        expected["threads_1"] = {"train_ips", "eval_ips"}
    assert {variant: set(figures) for variant, figures in r["levers"].items()} == expected
    for variant, figures in r["levers"].items():
        for key, value in figures.items():
            assert _positive_finite(value), f"levers.{variant}.{key} = {value!r}"


def test_bench_train_full_size_rss_check_runs(monkeypatch):
    """The synthetic full-size cache check (a subprocess of the main run): the 'auto' cache decision
    on the full split sizes, the cache resident, RSS figures in order."""
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_train.py"),
            "--rss_only",
            "SimpleNet",
            "--batch_size",
            "2",
            "--rss_batches",
            "1",
            "--no_progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = r["split_sizes"]
    assert sizes == {"train": 10800, "val": 2100, "test": 2100}
    for key in (
        "rss_at_start_mb",
        "rss_before_cache_mb",
        "rss_after_cache_mb",
        "rss_with_model_mb",
        "peak_rss_train_mb",
        "main_peak_rss_mb",
        "total_peak_rss_mb",
        "cache_gb",
        "cache_seconds",
    ):
        assert _positive_finite(r[key]), f"{key} = {r[key]!r}"

    class Split:  # the policy's view of a split: its length, and a cache that costs nothing here
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def cache_images(self, progress=True):
            pass

    # the 'auto' rule of memory.apply_image_cache at the RSS the check had just before caching
    monkeypatch.setattr(memory, "current_rss_bytes", lambda: int(r["rss_before_cache_mb"] * 1024**2))
    assert r["cached_splits"] == memory.apply_image_cache(
        [Split(n) for n in sizes.values()], "auto", progress=False
    )
    n_cached = sum(n for n, cached in zip(sizes.values(), r["cached_splits"]) if cached)
    assert n_cached > 0 and r["cache_gb"] * 1024**3 == pytest.approx(n_cached * 196608)
    assert (
        r["rss_at_start_mb"]
        < r["rss_after_cache_mb"]
        <= r["rss_with_model_mb"]
        <= r["peak_rss_train_mb"]
        <= r["main_peak_rss_mb"]
    )
    # the cache is resident
    assert r["rss_after_cache_mb"] - r["rss_before_cache_mb"] >= 0.9 * r["cache_gb"] * 1024
    # uncached splits go through DataLoader workers, whose private memory is sampled after every
    # training batch and each of the two evals and added to the main process's peak
    assert (r["num_workers"] > 0) == (not all(r["cached_splits"]))
    assert r["train_batches"] == 1 and r["worker_samples"] == r["train_batches"] + 2
    assert (r["worker_private_peak_mb"] > 0) == (r["num_workers"] > 0)
    assert r["total_peak_rss_mb"] == pytest.approx(r["main_peak_rss_mb"] + r["worker_private_peak_mb"])


def test_bench_train_rss_subprocess_gets_the_runs_own_arguments(tiny_root, tmp_path, monkeypatch):
    """The full-size RSS subprocess runs with every argument of the main run (then --rss_only), and a
    failure of it is one line: the last line of its stderr, or its exit code."""
    bench = _load("bench_train")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 0, stdout='a log line\n{"total_peak_rss_mb": 123.0}\n', stderr=""
        )

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    argv = [
        "--models",
        "SimpleNet",
        "--num_workers",
        "2",
        "--channels_last",
        "off",
        "--compile",
        "--rss_batches",
        "3",
    ]
    assert bench.run_full_size_rss("SimpleNet", argv) == {"total_peak_rss_mb": 123.0}
    assert calls[-1][1:] == [
        os.path.join(ROOT, "benchmarks", "bench_train.py"),
        *argv,
        "--rss_only",
        "SimpleNet",
        "--no_progress",
    ]
    args = bench.build_parser().parse_args(calls[-1][2:])
    assert (args.num_workers, args.channels_last, args.compile, args.rss_batches, args.rss_only) == (
        2,
        "off",
        True,
        3,
        "SimpleNet",
    )

    # main hands its own arguments over (bench_model stubbed: only the hand-over is tested here)
    monkeypatch.setattr(
        bench,
        "bench_model",
        lambda *a: {key: 1.0 for key in (*bench.REQUIRED_KEYS, "train_speedup", "eval_speedup")},
    )
    argv = [
        "--models",
        "SimpleNet",
        "--data_root",
        tiny_root,
        "--out",
        str(tmp_path / "x.json"),
        "--num_workers",
        "1",
        "--channels_last",
        "on",
        "--no_progress",
    ]
    assert bench.main(argv) == 0
    assert calls[-1][2:] == [*argv, "--rss_only", "SimpleNet", "--no_progress"]
    assert json.loads((tmp_path / "x.json").read_text())["SimpleNet"]["full_size_peak_rss_mb"] == 123.0

    for stderr, message in (
        ("Traceback (most recent call last):\n  ...\nValueError: boom\n", "ValueError: boom"),
        ("", "exit code 3"),
    ):
        monkeypatch.setattr(
            bench.subprocess,
            "run",
            lambda cmd, stderr=stderr, **kwargs: subprocess.CompletedProcess(cmd, 3, "", stderr),
        )
        with pytest.raises(bench.UserError) as error:
            bench.run_full_size_rss("SimpleNet", [])
        assert str(error.value) == f"full-size RSS check of SimpleNet failed: {message}"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_bench_results_json_not_an_object_is_moved_aside(tmp_path, content):
    """write_results (both benchmarks) never drops a results file it cannot merge into: it is kept
    beside as <name>.corrupt-<time> with a warning (fileio.move_aside), and a new file is written."""
    bench = _load("bench_train")
    out = tmp_path / "bench_train.json"
    out.write_text(content)
    with pytest.warns(UserWarning, match="corrupt results JSON") as warned:
        bench.write_results(str(out), {"SimpleNet": {"figure": 1.0}})
    assert json.loads(out.read_text()) == {"SimpleNet": {"figure": 1.0}}
    aside = list(tmp_path.glob("bench_train.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
    assert str(aside[0]) in str(warned[0].message)


def test_bench_train_rejects_a_missing_data_root(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_train.py"),
            "--smoke",
            "--data_root",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "--data_root" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_analysis_smoke_writes_every_figure(tiny_root, tmp_path, capsys):
    bench = _load("bench_analysis")
    out = tmp_path / "bench_analysis.json"
    assert bench.main(["--smoke", "--data_root", tiny_root, "--out", str(out), "--no_progress"]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"SimpleNet", "XceptionBased"}
    for name, r in results.items():
        for key in bench.REQUIRED_KEYS:
            assert _positive_finite(r[key]), f"{name}.{key} = {r[key]!r}"
        assert r["saliency_ratio"] == pytest.approx(r["saliency_ips"] / r["reference_fwd_bwd_ips"])
        assert r["mean_grad_cam_ratio"] == pytest.approx(r["mean_grad_cam_ips"] / r["reference_fwd_bwd_ips"])
        assert r["config"]["measured_images"] == 2 and r["config"]["target_layer"] == "conv3"
    assert "Grad-CAM" in capsys.readouterr().out


def test_check_reproducibility_smoke_compares_a_variant_with_the_reference(tiny_root, tmp_path, capsys):
    """Two trainings (the reference and --cache_images off) in subprocesses: the same numbers,
    bit for bit, and a table row for each."""
    bench = _load("check_reproducibility")
    out = tmp_path / "repro.json"
    argv = ["--smoke", "--data_root", tiny_root, "-d", "fakes_dataset", "-b", "4", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["rows"]) == ["reference", "cache-off"]
    assert result["variants"]["cache-off"] == {"env": {}, "flags": ["--cache_images", "off"]}
    for row in result["rows"].values():
        assert row["identical"] is True and row["max_loss_rel_diff"] == 0.0
        assert 0 <= row["test_auc_at_best"] <= 1 and row["best_epoch"] == 1
    table = capsys.readouterr().out
    assert "reference" in table and "cache-off" in table
