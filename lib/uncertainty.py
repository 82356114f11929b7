"""How sure the test figures are: bootstrap confidence intervals and calibration of P(fake).

- ``stratified_resamples``: bootstrap resamples of a test split as one (B, n) index array; each
  resample draws the reals from the reals and the fakes from the fakes, with replacement, so every
  resample keeps the split's class counts (as pROC's stratified bootstrap of the AUC does) and
  AUC, EER and AP are defined in every one;
- ``bootstrap_metrics`` (``bootstrap_accuracy``, vectorised, and ``bootstrap_ranked``, sklearn
  per resample) and ``bootstrap_intervals``: accuracy at 0.5, AUC, EER and AP of every resample
  and their percentile intervals;
- ``calibration``: the expected calibration error (ECE) of P(fake) with equal-width bins, and the
  per-bin numbers of its reliability diagram (``plot_reliability``).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from lib.metrics import HEADLINE_METRICS, binary_metrics, eer_of_roc, full_roc

BOOTSTRAP_METRICS = HEADLINE_METRICS
DEFAULT_RESAMPLES = 1000
DEFAULT_BINS = 10
BOOTSTRAP_METHOD = (
    "stratified bootstrap: each resample draws the real images from the real ones "
    "and the fake images from the fake ones, with replacement (class counts kept); "
    "percentile intervals"
)
ECE_METHOD = (
    "expected calibration error of P(fake): equal-width bins of P(fake) over [0, 1] "
    "(the last bin includes 1); sum over bins of (images in bin / all images) x "
    "|fraction of fakes in bin - mean P(fake) in bin|"
)


def stratified_resamples(labels, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) dataset indices: row b is bootstrap resample b, reals first, then fakes,
    each class drawn with replacement from its own members (``numpy.random.default_rng(seed)``)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        if len(members):
            parts.append(members[rng.integers(0, len(members), (n_resamples, len(members)))])
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_resamples, 0), np.int64)


def bootstrap_accuracy(labels, fake_scores, resamples, threshold: float = 0.5) -> np.ndarray:
    """Accuracy (%) at ``threshold`` of each row of ``resamples`` (B x n indices, or a list of B
    index arrays of any lengths, as a cluster bootstrap draws them): (B,)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = (np.asarray(fake_scores, dtype=np.float64) > threshold).astype(np.int64)
    correct = (predictions == labels).astype(np.float64)
    if isinstance(resamples, np.ndarray):
        return 100.0 * correct[resamples].mean(axis=1)
    return np.array([100.0 * correct[rows].mean() for rows in resamples])


def bootstrap_ranked(labels, fake_scores, resamples, progress: bool = False) -> dict[str, np.ndarray]:
    """AUC, EER (``metrics.eer_of_roc``) and AP of P(fake) on each row of ``resamples`` (B x n
    indices, or a list of B index arrays), with sklearn: ``{metric: (B,)}``; NaN where a row holds
    a single class."""
    from sklearn.metrics import auc, average_precision_score

    labels = np.asarray(labels, dtype=np.int64)
    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    out = {name: np.full(len(resamples), np.nan) for name in ("auc", "eer", "ap")}
    for b, rows in enumerate(
        tqdm(resamples, desc="bootstrap", unit="resample", disable=not progress, leave=False)
    ):
        y, s = labels[rows], fake_scores[rows]
        if y.min() == y.max():
            continue
        fpr, tpr, thresholds = full_roc(y, s)  # one ROC gives AUC and EER
        out["auc"][b] = auc(fpr, tpr)
        out["eer"][b] = eer_of_roc(fpr, tpr, thresholds)[0]
        out["ap"][b] = average_precision_score(y, s)
    return out


def bootstrap_metrics(
    labels,
    fake_scores,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    progress: bool = False,
    resamples=None,
) -> dict[str, np.ndarray]:
    """Accuracy at 0.5 (%), AUC, EER and AP of P(fake) on each of ``n_resamples`` stratified
    resamples drawn with ``seed`` (or on the given ``resamples``): ``{metric: (n_resamples,)}``."""
    if resamples is None:
        resamples = stratified_resamples(labels, n_resamples, seed)
    return {
        "accuracy": bootstrap_accuracy(labels, fake_scores, resamples),
        **bootstrap_ranked(labels, fake_scores, resamples, progress),
    }


def percentile_interval(values, level: float = 0.95) -> list[float] | None:
    """[low, high]: the (1 - level) / 2 and (1 + level) / 2 percentiles of ``values`` (NumPy's
    default linear interpolation); ``None`` when they are NaN (an undefined metric)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values) or np.isnan(values).any():
        return None
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def bootstrap_intervals(
    labels,
    fake_scores,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = False,
    resamples=None,
    method: str = BOOTSTRAP_METHOD,
) -> dict:
    """The JSON-ready summary: for accuracy (%), AUC, EER and AP, the value on the whole split and
    its bootstrap interval ``[low, high]`` (``None`` when undefined), plus the method. Given
    ``resamples`` (drawn by the caller, for example whole videos at a time), they replace the
    stratified ones and ``method`` says how they were drawn."""
    values = binary_metrics(labels, fake_scores)
    samples = bootstrap_metrics(labels, fake_scores, n_resamples, seed, progress, resamples)
    summary = {
        "method": method,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "level": float(level),
    }
    for name in BOOTSTRAP_METRICS:
        summary[name] = {"value": values[name], "ci": percentile_interval(samples[name], level)}
    return summary


def calibration(labels, fake_scores, n_bins: int = DEFAULT_BINS) -> dict:
    """ECE of P(fake) with ``n_bins`` equal-width bins, and per bin: its edges, image count, mean
    P(fake) and fraction of fakes (``None`` for an empty bin). JSON-ready."""
    labels = np.asarray(labels, dtype=np.float64)
    fake_scores = np.asarray(fake_scores, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.floor(fake_scores * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    score_sums = np.bincount(bins, weights=fake_scores, minlength=n_bins)
    fake_sums = np.bincount(bins, weights=labels, minlength=n_bins)
    filled = counts > 0
    mean_score = np.divide(score_sums, counts, out=np.zeros(n_bins), where=filled)
    fraction_fake = np.divide(fake_sums, counts, out=np.zeros(n_bins), where=filled)
    n = max(int(counts.sum()), 1)
    ece = float(np.sum(counts / n * np.abs(fraction_fake - mean_score)))

    def per_bin(values):
        return [float(v) if f else None for v, f in zip(values, filled)]

    return {
        "method": ECE_METHOD,
        "n_bins": int(n_bins),
        "ece": ece,
        "bin_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "mean_p_fake": per_bin(mean_score),
        "fraction_fake": per_bin(fraction_fake),
    }


def summary_table(boot: dict, calib: dict, kind: str = "stratified") -> str:
    """Text lines: each metric of ``bootstrap_intervals`` as ``value [low, high]`` (``kind``
    names the resamples), then the ECE of ``calibration``."""
    ece = f"expected calibration error of P(fake) ({calib['n_bins']} bins): {calib['ece']:.4f}"
    return interval_table(boot, kind) + "\n" + ece


def interval_table(boot: dict, kind: str) -> str:
    """Text lines: the header (``kind`` of resamples), then each metric of ``bootstrap_intervals``
    as ``value [low, high]``."""
    lines = [
        f"{100 * boot['level']:g} % bootstrap intervals ({boot['n_resamples']} {kind} "
        f"resamples, seed {boot['seed']}):"
    ]
    for name, digits in (("accuracy", 1), ("auc", 4), ("eer", 4), ("ap", 4)):
        entry = boot[name]
        if entry["value"] is None or entry["ci"] is None:
            lines.append(f"  {name:<8} n/a")
            continue
        low, high = entry["ci"]
        unit = " %" if name == "accuracy" else ""
        lines.append(f"  {name:<8} {entry['value']:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]")
    return "\n".join(lines)


def plot_reliability(calib: dict, title: str):
    """Reliability diagram: fraction of fakes against mean P(fake) per bin (bars at the bins, the
    diagonal is perfect calibration), with the image count per bin below; the ECE in the title."""
    import matplotlib.pyplot as plt

    edges = np.asarray(calib["bin_edges"])
    width = np.diff(edges)
    filled = [f is not None for f in calib["fraction_fake"]]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.0, 6.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    fraction = [f if f is not None else 0.0 for f in calib["fraction_fake"]]
    top.bar(
        edges[:-1],
        fraction,
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="fraction of fakes in the bin",
    )
    means = [m for m, f in zip(calib["mean_p_fake"], filled) if f]
    top.plot(
        means,
        [f for f, ok in zip(fraction, filled) if ok],
        "o",
        color="C3",
        label="at the bin's mean P(fake)",
    )
    top.plot([0, 1], [0, 1], linestyle=":", color="gray", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("fraction of fakes")
    top.legend(loc="upper left")
    top.set_title(f"{title}\nECE = {calib['ece']:.4f} ({calib['n_bins']} equal-width bins)")
    bottom.bar(edges[:-1], calib["counts"], width=width, align="edge", edgecolor="black", color="C7")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("P(fake) (softmax of the model's two outputs)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return fig
