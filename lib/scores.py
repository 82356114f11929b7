"""The scores of a trained model on a test split, and the numbers and curves made of them: logits
in batches, P(fake), ROC/DET metrics (sklearn) and their figures
(docs/design.md#roc-and-det-scores)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lib.batching import iter_batches
from lib.cli import UserError
from lib.metrics import binary_metrics, fmt
from lib.names import CLASS_NAMES, describe
from lib.transforms import normalize_batch

DET_TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999)


SCORE_DESCRIPTION = (
    "ROC/DET soft scores, as in the course: score A = raw output column 0 (how real), "
    "score B = raw output column 1 (how fake), positive label 1; auc_a and auc_b use "
    "them. P(fake) = softmax of the two columns, column 1, is the score of auc, eer, "
    "eer_threshold, ap and the accuracies (fake when P(fake) > 0.5)"
)


SCORE_KEYS = {
    "auc_a": "raw output column 0",
    "auc_b": "raw output column 1",
    **dict.fromkeys(
        ("auc", "eer", "eer_threshold", "ap", "accuracy", "balanced_acc"), "P(fake), softmax column 1"
    ),
}


class NonFiniteOutputError(UserError):
    """A model whose outputs are inf or NaN (docs/edge-cases.md#non-finite-outputs)."""


def require_finite_outputs(model: nn.Module, checkpoint_path: str) -> nn.Module:
    """Make every forward of ``model`` check that its outputs are finite, so that each scoring path
    (predict, the analyses, saliency, Grad-CAM) stops with one line naming ``checkpoint_path``
    instead of scoring NaN. Returns the model."""

    def check(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and not bool(torch.isfinite(output.detach()).all()):
            raise NonFiniteOutputError(
                f"{checkpoint_path}: the model's outputs are not finite (inf or NaN logits), so its "
                "scores mean nothing; its weights overflow float32: retrain it (a lower --lr) "
                "or use another checkpoint"
            )

    model.register_forward_hook(check)
    return model


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.inference_mode()
def predict_logits(model: nn.Module, images_uint8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits (float32, on the CPU) of uint8 N x 3 x H x W images, in batches of ``batch_size``."""
    device = model_device(model)
    out = []
    for start in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[start : start + batch_size].to(device, non_blocking=True)
        out.append(model(normalize_batch(chunk)).float().cpu())
    return torch.cat(out) if out else torch.empty((0, 2))


@torch.inference_mode()
def predict_scores(
    model: nn.Module,
    dataset,
    batch_size: int = 64,
    device=None,
    progress: bool = False,
    num_workers: int = 0,
    indices=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward a ``FacesDataset`` (the test transform, batched): ``(logits N x 2 float32, labels)``.

    ``device`` moves the model there first (default: where the model is).
    """
    if device is not None:
        model.to(device)
    device = model_device(model)
    logits, labels = [], []
    for images, batch_labels, _ in iter_batches(
        dataset, batch_size, indices, num_workers, progress, desc="scoring"
    ):
        images = normalize_batch(images.to(device, non_blocking=True))
        logits.append(model(images).float().cpu())
        labels.append(batch_labels)
    if not logits:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64)


def soft_scores(logits) -> np.ndarray:
    """Softmax probabilities (float64) of the two columns: [:, 0] = P(real), [:, 1] = P(fake)."""
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1).numpy()


def roc_det_metrics(labels, logits) -> dict:
    """AUC of score A and score B (the raw output columns 0 and 1, as in the course) with positive
    label 1, plus ``metrics.binary_metrics`` of P(fake): AUC, EER and its threshold, AP, accuracy at
    0.5, balanced accuracy, confusion matrix (rows true real/fake, columns predicted), samples per
    class. ``score_of`` says which score each number uses."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    both = len(np.unique(labels)) == 2
    metrics = {
        "score_of": SCORE_KEYS,
        "auc_a": float(roc_auc_score(labels, logits[:, 0])) if both else None,
        "auc_b": float(roc_auc_score(labels, logits[:, 1])) if both else None,
    }
    metrics.update(binary_metrics(labels, soft_scores(logits)[:, 1]))
    metrics["n_samples"] = len(labels)
    return metrics


def metrics_table(metrics: dict) -> str:
    """The numbers of ``roc_det_metrics`` as a small two-column text table."""
    cm = metrics.get("confusion_matrix") or [[0, 0], [0, 0]]
    rows = [
        ("AUC score A (column 0, real)", fmt(metrics.get("auc_a"))),
        ("AUC score B (column 1, fake)", fmt(metrics.get("auc_b"))),
        ("AUC of P(fake)", fmt(metrics.get("auc"))),
        ("EER", fmt(metrics.get("eer"))),
        ("threshold at EER (P(fake))", fmt(metrics.get("eer_threshold"))),
        ("average precision (fake)", fmt(metrics.get("ap"))),
        ("accuracy at 0.5", fmt(metrics.get("accuracy"), 2, " %")),
        ("balanced accuracy", fmt(metrics.get("balanced_acc"), 2, " %")),
        ("confusion: true real -> real/fake", f"{cm[0][0]} / {cm[0][1]}"),
        ("confusion: true fake -> real/fake", f"{cm[1][0]} / {cm[1][1]}"),
        ("samples real / fake", f"{metrics.get('n_real')} / {metrics.get('n_fake')}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _require_both_classes(labels, what: str) -> None:
    if len(np.unique(np.asarray(labels))) != 2:
        raise UserError(
            f"{what} needs both real and fake test images; the test split holds only "
            f"{CLASS_NAMES[int(np.asarray(labels)[0])] if len(labels) else 'no'} images"
        )


def _curve_scores(logits) -> tuple[tuple[np.ndarray, str], ...]:
    """The three scores the ROC and DET figures draw, each with its legend name: score A, score B
    (raw output columns 0 and 1) and P(fake), the score the report's AUC is of."""
    scores = np.asarray(logits, dtype=np.float64)
    return (
        (scores[:, 0], "score A (column 0, real)"),
        (scores[:, 1], "score B (column 1, fake)"),
        (soft_scores(scores)[:, 1], "P(fake) (softmax)"),
    )


def plot_roc(labels, logits, model_name: str, dataset_name: str):
    """ROC curves of score A, score B (raw output columns 0 and 1) and P(fake), positive label 1;
    each legend entry and the title give that score's AUC (sklearn)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay, roc_auc_score

    _require_both_classes(labels, "a ROC curve")
    curves = _curve_scores(logits)
    auc_a, auc_b, auc_p = (roc_auc_score(labels, score) for score, _ in curves)
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for (score, name), style in zip(curves, ("-", "-", "--")):
        RocCurveDisplay.from_predictions(
            labels, score, pos_label=1, ax=ax, name=name, curve_kwargs={"linestyle": style}
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", label="chance")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title(
        f"ROC of {describe(dataset_name, model_name)}\n"
        f"AUC score A = {auc_a:.4f}, score B = {auc_b:.4f}, P(fake) = {auc_p:.4f}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_det(labels, logits, model_name: str, dataset_name: str):
    """DET curves of score A, score B (raw output columns 0 and 1) and P(fake) on normal-deviate
    axes (ticks 0.1 % .. 99.9 %); each legend entry gives that score's AUC (sklearn)."""
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import DetCurveDisplay, roc_auc_score

    _require_both_classes(labels, "a DET curve")
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for (score, name), style in zip(_curve_scores(logits), ("-", "-", "--")):
        label = f"{name} (AUC = {roc_auc_score(labels, score):.4f})"
        DetCurveDisplay.from_predictions(labels, score, pos_label=1, ax=ax, name=label, linestyle=style)
    # Normal-deviate axes with ticks from 0.1 % to 99.9 %, all visible.
    locations = norm.ppf(DET_TICKS)
    names = [f"{100 * t:g}%" for t in DET_TICKS]
    limit = float(norm.ppf(0.9995))
    ax.set_xticks(locations, names)
    ax.set_yticks(locations, names)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("false negative rate (fake called real)")
    ax.grid(True, linestyle=":", alpha=0.5)
    ax.set_title(f"DET of {describe(dataset_name, model_name)}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
