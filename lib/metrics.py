"""Detection metrics of P(fake) scores, computed with scikit-learn: AUC, EER, AP, accuracy,
balanced accuracy, per-class accuracy and the confusion matrix (docs/design.md#roc-and-det-scores)."""

from __future__ import annotations

import numpy as np


def fmt(value, digits: int = 4, suffix: str = "") -> str:
    """A number for text output with ``digits`` decimals and ``suffix``; "n/a" for None."""
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def full_roc(labels, fake_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's ROC of P(fake), positive label 1, with every point kept: (fpr, tpr, thresholds).
    Its default thins out points along straight runs, and the EER crossing can be one of them."""
    from sklearn.metrics import roc_curve

    return roc_curve(labels, fake_scores, pos_label=1, drop_intermediate=False)


def equal_error_rate(labels, fake_scores) -> tuple[float, float | None]:
    """(EER, threshold at the EER; ``None`` where no finite threshold exists) from the full ROC:
    the point where FPR and FNR cross."""
    return eer_of_roc(*full_roc(labels, fake_scores))


def eer_of_roc(fpr, tpr, thresholds) -> tuple[float, float | None]:
    """(EER, threshold at the EER) of a ``full_roc`` (a thinned one can lack the crossing). The EER
    is where the ROC, linear between its points, crosses FPR = FNR; the threshold is that of the
    ROC point nearest the crossing, ``None`` where no finite one exists: sklearn's first threshold
    is inf (nothing is called fake), where the EER of a model whose scores are all equal lies."""
    fpr, fnr = np.asarray(fpr, dtype=np.float64), 1.0 - np.asarray(tpr, dtype=np.float64)
    gap = fnr - fpr  # falls from 1 (nothing called fake) to -1 (everything called fake)
    j = max(int(np.argmax(gap <= 0)), 1)  # the first point at or past it (1: a one-class ROC, NaN)
    share = gap[j - 1] / (gap[j - 1] - gap[j])  # where the segment j-1 -> j reaches gap 0
    eer = fpr[j - 1] + share * (fpr[j] - fpr[j - 1])
    threshold = float(thresholds[j if -gap[j] < gap[j - 1] else j - 1])
    return float(eer), threshold if np.isfinite(threshold) else None


HEADLINE_METRICS = ("auc", "accuracy", "eer", "ap")
"""The four numbers of P(fake) every analysis reports (keys of ``binary_metrics``)."""


def binary_metrics(labels, fake_scores, threshold: float = 0.5) -> dict:
    """Detection metrics of P(fake) scores against labels (1 = fake), computed with sklearn.

    AUC, EER and AP are ``None`` when the labels hold a single class (they are undefined).
    """
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        roc_auc_score,
    )

    labels = np.asarray(labels, dtype=np.int64)
    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    predictions = (fake_scores > threshold).astype(np.int64)  # ties go to real, like argmax
    matrix = confusion_matrix(labels, predictions, labels=[0, 1])
    per_class = [float(100.0 * matrix[c, c] / matrix[c].sum()) if matrix[c].sum() else None for c in (0, 1)]
    both = len(np.unique(labels)) == 2
    eer, eer_threshold = equal_error_rate(labels, fake_scores) if both else (None, None)
    return {
        "auc": float(roc_auc_score(labels, fake_scores)) if both else None,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "ap": float(average_precision_score(labels, fake_scores)) if both else None,
        "accuracy": float(100.0 * (predictions == labels).mean()) if len(labels) else None,
        "balanced_acc": float(100.0 * balanced_accuracy_score(labels, predictions)) if both else None,
        "per_class_acc": per_class,
        "confusion_matrix": matrix.tolist(),
        "n_real": int((labels == 0).sum()),
        "n_fake": int((labels == 1).sum()),
    }
