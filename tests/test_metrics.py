"""lib/metrics.py's EER against hand computations and an independent reference (conftest's
counted_eer: error rates counted at every threshold, the crossing found by scipy's brentq)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import counted_eer
from lib.metrics import binary_metrics, equal_error_rate


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
