"""lib/metrics.py's EER against hand computations and an independent reference: error rates counted
at every threshold, and the crossing found by scipy's brentq on the interpolated ROC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from lib.metrics import binary_metrics, equal_error_rate


def counted_eer(labels, scores) -> float:
    """The EER as the field's usual recipe computes it: FPR and TPR counted at each threshold
    (every score, and one above them all), then the root of 1 - FPR - TPR(FPR) on the ROC."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    fpr = np.array([np.mean(scores[labels == 0] >= t) for t in thresholds])
    tpr = np.array([np.mean(scores[labels == 1] >= t) for t in thresholds])
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-14)


@pytest.mark.parametrize(
    "labels, scores, eer, threshold",
    [
        # a real above six fakes: at 0.5, FPR = 1/3 and FNR = 2/6; a thinned ROC said 1/6 at 0.3
        ([0, 0, 0, 1, 1, 1, 1, 1, 1], [0.1, 0.2, 0.9, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 1 / 3, 0.5),
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.0, 0.8),  # separated: no error at the lowest fake
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 1.0, 0.8),  # inverted: at 0.8 every decision is wrong
        ([0, 0, 1, 1], [0.5] * 4, 0.5, None),  # all equal: the crossing lies between the two ends
    ],
)
def test_eer_by_hand(labels, scores, eer, threshold):
    found, at = equal_error_rate(labels, scores)
    assert found == pytest.approx(eer, abs=1e-12)
    assert at == threshold


@pytest.mark.parametrize("seed", range(40))
def test_eer_matches_the_counted_crossing(seed):
    rng = np.random.default_rng(seed)
    n_real, n_fake = rng.integers(1, 40, size=2)
    labels = np.array([0] * n_real + [1] * n_fake)
    scores = rng.normal(labels * rng.uniform(0, 2), 1.0)
    scores = np.round(scores, 1) if seed % 2 else scores  # ties in half of the cases
    eer, threshold = equal_error_rate(labels, scores)
    assert eer == pytest.approx(counted_eer(labels, scores), abs=1e-9)
    assert threshold in set(scores)
    metrics = binary_metrics(labels, scores)
    assert (metrics["eer"], metrics["eer_threshold"]) == (eer, threshold)
