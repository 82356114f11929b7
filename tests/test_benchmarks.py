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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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


def test_bench_train_full_size_rss_check_runs():
    """The synthetic full-size cache check (a subprocess of the main run): RSS figures in order."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train.py"),
                           "--rss_only", "SimpleNet", "--batch_size", "2", "--rss_batches", "1",
                           "--no_progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["split_sizes"] == {"train": 10800, "val": 2100, "test": 2100}
    # the 'auto' rule (under 3 GB): never more cache than the 2.2 GiB budget
    assert len(r["cached_splits"]) == 3 and r["cache_gb"] <= 2.2
    assert r["rss_at_start_mb"] < r["rss_after_cache_mb"] <= r["main_peak_rss_mb"] <= r["total_peak_rss_mb"]
    assert r["rss_after_cache_mb"] - r["rss_at_start_mb"] >= 0.9 * r["cache_gb"] * 1024  # the cache is resident


def test_bench_train_rejects_a_missing_data_root(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_train.py"), "--smoke",
                           "--data_root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=300)
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
