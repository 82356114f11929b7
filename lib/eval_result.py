"""What one evaluation pass over a split gives the trainer: the course's loss and accuracy, and the
labels and logits from which the extra metrics of P(fake) are computed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.metrics import binary_metrics
from lib.run_files import EXTRA_SPLIT_KEYS


@dataclass
class EvalResult:
    """Everything one pass over a split gives: course numbers plus scores for the extra metrics."""

    loss: float
    accuracy: float
    labels: np.ndarray
    logits: np.ndarray
    seconds: float

    @property
    def finite(self) -> bool:
        """Whether every logit is finite."""
        return bool(np.isfinite(self.logits).all())

    @property
    def fake_scores(self) -> np.ndarray:
        """Softmax probability of class 1 (fake)."""
        return torch.softmax(torch.from_numpy(self.logits).double(), dim=1)[:, 1].numpy()

    def metrics(self) -> dict:
        """``metrics.binary_metrics`` of P(fake); all None when the pass kept no scores."""
        if len(self.labels) == 0:
            return dict.fromkeys(EXTRA_SPLIT_KEYS)
        return binary_metrics(self.labels, self.fake_scores)
