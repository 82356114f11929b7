"""uncertainty.py (bootstrap intervals, ECE) against closed forms, brute-force enumeration and a
hand computation; the 'uncertainty' section of numerical_analysis.py."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import binom
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, roc_auc_score

import numerical_analysis
from conftest import analysis_argv
from lib import scores, uncertainty
from lib.cli import run_cli
from lib.metrics import equal_error_rate
from models import SimpleNet
from utils import load_dataset


# ----------------------------------------------------------------------------- calibration
def test_ece_matches_a_hand_computation():
    scores = np.array([0.05, 0.15, 0.25, 0.72, 0.78, 0.95])
    labels = np.array([0, 0, 1, 1, 0, 1])
    calib = uncertainty.calibration(labels, scores, n_bins=10)
    # Bins 0, 1, 2, 7 (two images), 9: |fraction fake - mean P(fake)| = .05, .15, .75, |.5 - .75|, .05
    assert calib["ece"] == pytest.approx((0.05 + 0.15 + 0.75 + 2 * 0.25 + 0.05) / 6)
    assert calib["counts"] == [1, 1, 1, 0, 0, 0, 0, 2, 0, 1]
    assert calib["mean_p_fake"][7] == pytest.approx(0.75) and calib["fraction_fake"][7] == 0.5
    assert calib["fraction_fake"][3] is None  # an empty bin
    # Five bins: [0, .2) holds two reals at mean .1 -> (2 * .1 + .75 + 2 * .25 + .05) / 6
    assert uncertainty.calibration(labels, scores, 5)["ece"] == pytest.approx(1.5 / 6)
    # The per-bin numbers agree with sklearn's calibration_curve (uniform bins, the filled ones).
    true, predicted = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    filled = [f for f in calib["fraction_fake"] if f is not None]
    np.testing.assert_allclose(filled, true)
    np.testing.assert_allclose([m for m in calib["mean_p_fake"] if m is not None], predicted)


def test_ece_edges_and_perfect_calibration():
    calib = uncertainty.calibration([0, 1], [0.0, 1.0], n_bins=4)
    assert calib["counts"] == [1, 0, 0, 1] and calib["ece"] == 0.0  # 1.0 falls in the last bin
    # Half the images at P(fake) 0.5 are fake: calibrated, ECE 0.
    assert uncertainty.calibration([0, 1, 0, 1], [0.5] * 4)["ece"] == 0.0


# ----------------------------------------------------------------------------- bootstrap
def test_stratified_resamples_keep_class_counts_and_are_uniform():
    labels = np.array([0, 0, 0, 1, 1])
    resamples = uncertainty.stratified_resamples(labels, 21600, seed=3)
    assert resamples.shape == (21600, 5)
    assert (labels[resamples] == labels).all()  # reals first, then fakes, in every row
    np.testing.assert_array_equal(resamples, uncertainty.stratified_resamples(labels, 21600, 3))
    # Each of the 3^3 * 2^2 = 108 ordered resamples is equally likely: chi-square goodness of fit.
    codes = resamples[:, :3] @ [9, 3, 1] * 4 + (resamples[:, 3:] - 3) @ [2, 1]
    counts = np.bincount(codes, minlength=108)
    assert len(counts) == 108
    from scipy.stats import chisquare

    assert chisquare(counts).pvalue > 1e-3


def test_bootstrap_accuracy_matches_the_binomial_closed_form():
    # 10 reals all right, 10 fakes of which 5 right: a stratified resample's accuracy is
    # (10 + Bin(10, 1/2)) / 20, whatever the reals drawn.
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.array([0.2] * 10 + [0.9] * 5 + [0.1] * 5)
    resamples = uncertainty.stratified_resamples(labels, 20000, seed=0)
    samples = uncertainty.bootstrap_accuracy(labels, scores, resamples)
    exact_values = 100 * (10 + np.arange(11)) / 20
    exact_p = binom.pmf(np.arange(11), 10, 0.5)
    found = np.array([np.isclose(samples, v).mean() for v in exact_values])
    assert found.sum() == pytest.approx(1.0)
    assert 0.5 * np.abs(found - exact_p).sum() < 0.02  # total variation distance
    assert samples.mean() == pytest.approx(75.0, abs=0.15)
    # Stratified: 100^2 * 10 * 1/4 / 20^2 = 62.5; a plain bootstrap would give 93.75.
    assert samples.var() == pytest.approx(62.5, rel=0.05)
    interval = uncertainty.percentile_interval(samples)
    np.testing.assert_allclose(interval, np.percentile(samples, [2.5, 97.5]))
    # The exact 2.5 % and 97.5 % quantiles of the closed form (no cdf value near either level).
    cdf = np.cumsum(exact_p)
    low, high = exact_values[np.searchsorted(cdf, 0.025)], exact_values[np.searchsorted(cdf, 0.975)]
    assert (low, high) == (60.0, 90.0)
    np.testing.assert_allclose(interval, [low, high])


def test_bootstrap_auc_eer_ap_match_brute_force_enumeration():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.3, 0.8])
    exact = {"auc": [], "eer": [], "ap": []}
    for reals in itertools.product(range(3), repeat=3):  # all 108 stratified resamples
        for fakes in itertools.product(range(3, 5), repeat=2):
            rows = list(reals) + list(fakes)
            y, s = labels[rows], scores[rows]
            exact["auc"].append(roc_auc_score(y, s))
            exact["eer"].append(equal_error_rate(y, s)[0])
            exact["ap"].append(average_precision_score(y, s))
    samples = uncertainty.bootstrap_metrics(labels, scores, 1000, seed=1)
    for name, values in exact.items():
        support = np.unique(values)
        exact_cdf = np.array([np.mean(np.asarray(values) <= v) for v in support])
        found_cdf = np.array([np.mean(samples[name] <= v + 1e-12) for v in support])
        assert np.abs(found_cdf - exact_cdf).max() < 0.06, name  # Kolmogorov-Smirnov distance
        assert set(np.round(samples[name], 12)) <= set(np.round(support, 12)), name


def test_bootstrap_metrics_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 20)
    scores = np.round(rng.random(50), 1)  # ties
    samples = uncertainty.bootstrap_metrics(labels, scores, 40, seed=7)
    for b, rows in enumerate(uncertainty.stratified_resamples(labels, 40, 7)):
        y, s = labels[rows], scores[rows]
        assert samples["auc"][b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert samples["eer"][b] == pytest.approx(equal_error_rate(y, s)[0], abs=1e-12)
        assert samples["ap"][b] == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert samples["accuracy"][b] == pytest.approx(100 * np.mean((s > 0.5) == y))


def test_one_class_gives_no_interval():
    summary = uncertainty.bootstrap_intervals([0, 0, 0], [0.1, 0.6, 0.3], 50)
    assert summary["auc"] == {"value": None, "ci": None}
    assert summary["accuracy"]["ci"] is not None


# ----------------------------------------------------------------------------- the script
def test_numerical_analysis_writes_uncertainty(simplenet_checkpoint, tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "-m",
        "SimpleNet",
        "-cpp",
        simplenet_checkpoint,
        "-d",
        "fakes_dataset",
        *analysis_argv(tiny_root, tmp_path, "--bootstrap", "300", "--seed", "5", "--ece_bins", "4"),
    ]
    assert run_cli(numerical_analysis.main, args) == 0
    content = json.loads((out / "fakes_dataset_SimpleNet_metrics.json").read_text())
    model = SimpleNet()
    model.load_state_dict(torch.load(simplenet_checkpoint, weights_only=True)["model"])
    logits, labels = scores.predict_scores(model.eval(), load_dataset("fakes_dataset", "test", tiny_root))
    p_fake = torch.softmax(torch.from_numpy(logits).double(), 1)[:, 1].numpy()
    expected = uncertainty.bootstrap_intervals(labels, p_fake, 300, seed=5)
    section = content["uncertainty"]
    for name in uncertainty.BOOTSTRAP_METRICS:
        assert section["bootstrap"][name]["value"] == pytest.approx(content["numerical"][name])
        np.testing.assert_allclose(section["bootstrap"][name]["ci"], expected[name]["ci"], atol=1e-9)
    assert section["bootstrap"]["n_resamples"] == 300 and section["calibration"]["n_bins"] == 4
    assert section["calibration"]["ece"] == pytest.approx(uncertainty.calibration(labels, p_fake, 4)["ece"])
    assert (tmp_path / "fig" / "fakes_dataset_SimpleNet_reliability_diagram.png").is_file()
    low, high = section["bootstrap"]["accuracy"]["ci"]
    assert f"[{low:.1f}, {high:.1f}]" in capsys.readouterr().out
