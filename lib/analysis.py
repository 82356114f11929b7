"""Analysis computations shared by the analysis scripts, predict.py, the study runner and benchmarks.

Every function works on batches (one forward, or one forward and one backward, per batch) on the
model's device, so the same code runs on the CPU and on CUDA:

- scores: ``predict_scores`` (logits and labels of a dataset, under ``torch.inference_mode``),
  ``predict_logits`` (logits of a uint8 batch), ``soft_scores`` (softmax of the two columns),
  ``roc_det_metrics`` and the ROC/DET figures (sklearn);
- saliency (Simonyan et al. 2014): ``saliency_maps`` (abs input gradient of the true class's raw
  logit, maximum over the colour channels) and ``mean_maps_per_class``;
- Grad-CAM (pytorch-grad-cam): ``resolve_layer``, ``grad_cam_maps``, ``grad_cam_overlay`` and the
  ``deletion_faithfulness`` figure of merit;
- files: ``metrics_json_path`` and ``update_metrics_json`` (read-modify-write of
  ``out/<D>_<M>_metrics.json``, one section per script, other sections kept).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from lib.batching import iter_batches
from lib.cli import UserError
from lib.fileio import atomic_write_json, file_lock, read_json_object
from lib.metrics import binary_metrics, fmt
from lib.names import DATASET_TITLES, metrics_json_path  # noqa: F401  (re-exported)
from lib.transforms import normalize_batch

CLASS_NAMES = ("Real", "Fake")  # label 0, label 1
DEFAULT_TARGET_LAYER = "conv3"  # the study's Grad-CAM layer, for both models
DEFAULT_FRACTIONS = (0.05, 0.1, 0.2, 0.4)
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


# ----------------------------------------------------------------------------- names and files
def describe(dataset_name: str, model_name: str) -> str:
    return f"{model_name} on {DATASET_TITLES.get(dataset_name, dataset_name)}"


def section_header(args) -> dict:
    """The first entries of an analysis script's JSON section, from its ``add_analysis_flags``
    flags: the model, the dataset, the split (test) and the checkpoint it is about."""
    return {"model": args.model, "dataset": args.dataset, "split": "test", "checkpoint": args.checkpoint_path}


def update_metrics_json(path: str, sections: dict) -> dict:
    """Set each section of ``sections`` (name: data) in the JSON object at ``path``, in one write,
    keeping every other section.

    Read-modify-write, written atomically. A corrupt file (bad JSON, or not a JSON object) is moved
    aside with a warning (``<path>.corrupt-<time>``), never overwritten. Returns the new content.
    """
    with file_lock(path):
        content = read_json_object(path, "metrics JSON")
        content.update(sections)
        atomic_write_json(path, content)
        return content


# ----------------------------------------------------------------------------- batches
def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# ----------------------------------------------------------------------------- scores
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


def plot_roc(labels, logits, model_name: str, dataset_name: str):
    """ROC curves of score A and score B (raw output columns 0 and 1, positive label 1) with both
    AUCs in the title."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay, roc_auc_score

    _require_both_classes(labels, "a ROC curve")
    scores = np.asarray(logits, dtype=np.float64)
    auc_a = roc_auc_score(labels, scores[:, 0])
    auc_b = roc_auc_score(labels, scores[:, 1])
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    RocCurveDisplay.from_predictions(
        labels, scores[:, 0], pos_label=1, ax=ax, name="score A (column 0, real)"
    )
    RocCurveDisplay.from_predictions(
        labels, scores[:, 1], pos_label=1, ax=ax, name="score B (column 1, fake)"
    )
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", label="chance")
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake called fake)")
    ax.set_title(
        f"ROC of {describe(dataset_name, model_name)}\nAUC score A = {auc_a:.4f}, AUC score B = {auc_b:.4f}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_det(labels, logits, model_name: str, dataset_name: str):
    """DET curves of score A and score B (raw output columns 0 and 1) on normal-deviate axes
    (ticks 0.1 % .. 99.9 %)."""
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import DetCurveDisplay

    _require_both_classes(labels, "a DET curve")
    scores = np.asarray(logits, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for column, name in ((0, "score A (column 0, real)"), (1, "score B (column 1, fake)")):
        DetCurveDisplay.from_predictions(labels, scores[:, column], pos_label=1, ax=ax, name=name)
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


# ----------------------------------------------------------------------------- selection
def pick_mixed_indices(labels, n: int, seed: int) -> np.ndarray:
    """``n`` dataset indices (fewer if the set is smaller), half real and half fake where possible,
    drawn with ``seed``; sorted, so reals come first. The same seed gives the same images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n = min(n, len(labels))
    n_fake = min(len(fake), max(n // 2, n - len(real)))
    n_real = n - n_fake
    chosen = np.concatenate(
        [rng.choice(real, n_real, replace=False), rng.choice(fake, n_fake, replace=False)]
    )
    return np.sort(chosen).astype(np.int64)


def subset_indices(labels, max_images: int, seed: int) -> np.ndarray | None:
    """``pick_mixed_indices`` of ``max_images`` images, or ``None`` (every image) when
    ``max_images`` is 0 or covers the whole set (a ``--max_images`` flag)."""
    if max_images == 0 or max_images >= len(labels):
        return None
    return pick_mixed_indices(labels, max_images, seed)


def pick_one_per_class(labels, seed: int) -> dict[int, int | None]:
    """One dataset index per label (0 real, 1 fake) drawn with ``seed``; ``None`` if a class is absent."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[int, int | None] = {}
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        out[label] = int(rng.choice(members)) if len(members) else None
    return out


# ----------------------------------------------------------------------------- saliency
def saliency_maps(model: nn.Module, images: torch.Tensor, labels) -> torch.Tensor:
    """Saliency maps (Simonyan et al. 2014) of a batch: N x H x W, on the images' device.

    ``images`` are normalised model inputs. One forward and one backward for the whole batch: the
    gradient of the sum of each image's raw logit for its true class ``labels[i]`` with respect
    to the input, absolute value, maximum over the colour channels. In eval mode the images do not
    interact, so this equals one backward per image. Parameter gradients are not touched.
    """
    labels = torch.as_tensor(labels, device=images.device, dtype=torch.long).view(-1, 1)
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        selected = logits.gather(1, labels).sum()
        (grad,) = torch.autograd.grad(selected, inputs)
    return grad.abs().amax(dim=1)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of an N x H x W batch to [0, 1] (min-max); a constant map becomes zeros."""
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    out = torch.where(
        span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat)
    )
    return out.reshape(maps.shape)


def saliency_of_dataset(
    model: nn.Module, dataset, indices, batch_size: int = 16, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Saliency maps of the images ``indices`` of a dataset: (maps N x H x W float32, uint8 images
    N x 3 x H x W, labels), batched."""
    device = model_device(model)
    maps, images, labels = [], [], []
    for batch, batch_labels, _ in iter_batches(
        dataset, batch_size, indices, progress=progress, desc="saliency"
    ):
        inputs = normalize_batch(batch.to(device, non_blocking=True))
        maps.append(saliency_maps(model, inputs, batch_labels.to(device)).float().cpu())
        images.append(batch)
        labels.append(batch_labels)
    return torch.cat(maps).numpy(), torch.cat(images).numpy(), torch.cat(labels).numpy()


class ClassSums:
    """Per-class (0 real, 1 fake) sums of per-image tensors and the class counts, kept on the
    device: adding a batch needs no host sync and sums in a fixed order (deterministic on CUDA)."""

    def __init__(self):
        self.sums: torch.Tensor | None = None  # 2 x (one image's shape)
        self.totals: torch.Tensor | None = None  # images per class

    def add(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``values`` N x ..., ``labels`` N (0 or 1)."""
        labels = labels.to(values.device, torch.long)
        if self.sums is None:
            self.sums = values.new_zeros((2, *values.shape[1:]))
            self.totals = torch.zeros(2, dtype=torch.long, device=values.device)
        shape = (-1,) + (1,) * (values.dim() - 1)
        for label in (0, 1):  # where, not a product: a non-finite value stays in its own class
            self.sums[label] += torch.where((labels == label).view(shape), values, 0).sum(0)
        self.totals += torch.bincount(labels, minlength=2)

    def counts(self) -> dict[int, int]:
        """Images added per class."""
        totals = [0, 0] if self.totals is None else self.totals.tolist()
        return {0: int(totals[0]), 1: int(totals[1])}

    def mean(self, label: int) -> torch.Tensor | None:
        """The class's mean; ``None`` when it has no images."""
        n = self.counts()[label]
        return self.sums[label] / n if n else None


def mean_maps_per_class(
    dataset,
    map_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    device,
    indices=None,
    progress: bool = False,
    desc: str = "maps",
    on_batch: Callable | None = None,
) -> tuple[dict[int, np.ndarray | None], dict[int, int]]:
    """Mean map per class over a dataset: each map normalised to [0, 1], averaged per class,
    normalised again. ``map_fn(normalised images on device, labels on device)`` gives N x H x W
    maps (tensor or array). ``on_batch(images, labels, maps, indices)`` is called on every batch
    (for extra statistics on the same maps; ``indices``: the batch's dataset indices). Returns
    ({0: real mean, 1: fake mean}, {0: n, 1: n}); a class without images has ``None``."""
    device = torch.device(device)
    per_class = ClassSums()
    for batch, labels, batch_indices in iter_batches(
        dataset, batch_size, indices, progress=progress, desc=desc
    ):
        images = normalize_batch(batch.to(device, non_blocking=True))
        labels = labels.to(device)
        maps = torch.as_tensor(map_fn(images, labels), device=device)
        if on_batch is not None:
            on_batch(images, labels, maps, batch_indices)
        per_class.add(normalize_maps(maps.double()), labels)
    means: dict[int, np.ndarray | None] = {}
    for label in (0, 1):
        mean = per_class.mean(label)
        means[label] = None if mean is None else normalize_maps(mean[None])[0].float().cpu().numpy()
    return means, per_class.counts()


# ----------------------------------------------------------------------------- Grad-CAM
def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the convolution-like modules (nn.Conv2d or a class named *Conv*), outermost only:
    a SeparableConv2d is listed, not its inner depthwise and pointwise convolutions."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not name:
            continue
        conv_like = isinstance(module, nn.modules.conv._ConvNd) or "conv" in type(module).__name__.lower()
        if conv_like and not any(name.startswith(parent + ".") for parent in names):
            names.append(name)
    return names


def resolve_layer(model: nn.Module, name: str = DEFAULT_TARGET_LAYER) -> nn.Module:
    """The sub-module at the dotted path ``name`` (``conv3``, ``block12.rep.4``...).

    An unknown name is a ``UserError`` listing the model's convolution-like layers.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    raise UserError(
        f"--target_layer {name!r}: no such layer in {type(model).__name__}; "
        f"convolution layers: {', '.join(conv_layer_names(model))}"
    )


@contextlib.contextmanager
def gradients_only_for(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Within the block, only ``layer``'s parameters require gradients (when it has any).

    Grad-CAM needs the gradient of the target logit with respect to the target layer's output.
    That is the same whichever parameters require gradients. With only the layer's own
    parameters requiring them, the backward pass stops at the layer and skips every weight
    gradient of the layers after it (SimpleNet's fc1 alone is 16.6 M weights). A layer without
    parameters leaves everything as it is. The previous ``requires_grad`` flags come back on exit.
    """
    own = [p for p in layer.parameters()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if own:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in own:
            p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def grad_cam_maps(
    model: nn.Module, target_layer: nn.Module | str, images: torch.Tensor, labels
) -> np.ndarray:
    """Grad-CAM maps (pytorch-grad-cam's GradCAM) of a batch: N x H x W float32 in [0, 1].

    ``images`` are normalised model inputs; the target of image i is ``ClassifierOutputTarget(
    labels[i])`` (its raw logit). ``target_layer`` is a module or a dotted name. The CAM object
    is used as a context manager, so its hooks are removed even on errors. The backward pass
    computes no weight gradients but the target layer's (``gradients_only_for``).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = resolve_layer(model, target_layer) if isinstance(target_layer, str) else target_layer
    targets = [ClassifierOutputTarget(int(label)) for label in torch.as_tensor(labels).tolist()]
    was_training = model.training
    cams = None
    try:
        with (
            torch.enable_grad(),
            gradients_only_for(model, layer),
            GradCAM(model=model, target_layers=[layer]) as cam,
        ):
            try:
                cams = cam(input_tensor=images, targets=targets)
            except IndexError as exc:  # GradCAM.__exit__ would swallow it
                raise RuntimeError(f"Grad-CAM failed: {exc}") from exc
            except (ValueError, TypeError, AttributeError) as exc:
                raise UserError(
                    f"Grad-CAM target layer {type(layer).__name__} does not give a "
                    f"N x C x H x W feature map on the gradient path ({exc}); pick a "
                    "convolution layer with --target_layer"
                ) from None
    finally:
        model.zero_grad(set_to_none=True)  # GradCAM back-propagates into the parameters
        model.train(was_training)
    return np.asarray(cams, dtype=np.float32)


def grad_cam_overlay(image_rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """``show_cam_on_image`` of a float RGB H x W x 3 image in [0, 1]: uint8 RGB overlay."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image_rgb = np.clip(np.asarray(image_rgb, dtype=np.float32), 0.0, 1.0)
    return show_cam_on_image(image_rgb, cam, use_rgb=True, image_weight=image_weight)


def uint8_to_rgb_float(images_uint8) -> np.ndarray:
    """uint8 (N x) 3 x H x W -> float32 (N x) H x W x 3 in [0, 1] (for display)."""
    array = torch.as_tensor(images_uint8).float().div(255.0)
    return array.movedim(-3, -1).numpy()


@torch.inference_mode()
def _target_confidence(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images).double(), dim=1).gather(1, labels.view(-1, 1))[:, 0]


def deletion_faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    labels,
    maps,
    fractions=DEFAULT_FRACTIONS,
    generator: torch.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Deletion test of relevance maps on a batch (normalised images on the model's device).

    For each fraction f, the f most relevant pixels of each image (by ``maps``, N x H x W) are
    replaced by the image's per-channel mean, and so are f random pixels; the drop in the
    softmax confidence of the target class ``labels`` is measured for both. Faithful maps give a
    larger drop than random pixels. Returns per-image arrays ``map_drop`` and ``random_drop``
    (F x N) and ``base`` (N). Random pixels come from ``generator`` (CPU) for repeatability.
    """
    labels = torch.as_tensor(labels, device=images.device, dtype=torch.long)
    maps = torch.as_tensor(
        np.asarray(maps) if not torch.is_tensor(maps) else maps, device=images.device, dtype=torch.float32
    )
    n, _, height, width = images.shape
    pixels = height * width
    base = _target_confidence(model, images, labels)
    fill = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    noise = torch.rand((n, pixels), generator=generator).to(images.device)
    map_drop, random_drop = [], []
    for fraction in fractions:
        k = max(1, round(float(fraction) * pixels))
        drops = []
        for scores in (maps.reshape(n, -1), noise):
            mask = torch.zeros((n, pixels), dtype=torch.bool, device=images.device)
            mask.scatter_(1, scores.topk(k, dim=1).indices, True)
            perturbed = torch.where(mask.view(n, 1, height, width), fill, images)
            drops.append((base - _target_confidence(model, perturbed, labels)).cpu().numpy())
        map_drop.append(drops[0])
        random_drop.append(drops[1])
    return {"map_drop": np.stack(map_drop), "random_drop": np.stack(random_drop), "base": base.cpu().numpy()}


class FaithfulnessAccumulator:
    """Sums ``deletion_faithfulness`` over batches; ``summary()`` gives the JSON-ready means.

    ``only``: dataset indices to test (``None``: every image it is given); the others of a batch
    are skipped, so the test can ride on a pass that computes maps for more images.
    """

    def __init__(self, model: nn.Module, fractions=DEFAULT_FRACTIONS, seed: int = 0, only=None):
        self.model = model
        self.only = None if only is None else torch.as_tensor(np.asarray(only, dtype=np.int64))
        self.fractions = [float(f) for f in fractions]
        self.generator = torch.Generator().manual_seed(seed)
        self.map_drop = np.zeros(len(self.fractions))
        self.random_drop = np.zeros(len(self.fractions))
        self.base = 0.0
        self.n = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, maps, indices=None) -> None:
        if self.only is not None:
            if indices is None:
                raise ValueError("FaithfulnessAccumulator(only=...) needs each batch's dataset indices")
            keep = torch.isin(torch.as_tensor(indices), self.only)
            if not bool(keep.any()):
                return
            keep = keep.to(images.device)
            maps = torch.as_tensor(maps, device=images.device)
            images, labels, maps = images[keep], labels[keep], maps[keep]
        result = deletion_faithfulness(self.model, images, labels, maps, self.fractions, self.generator)
        self.map_drop += result["map_drop"].sum(axis=1)
        self.random_drop += result["random_drop"].sum(axis=1)
        self.base += float(result["base"].sum())
        self.n += len(result["base"])

    def summary(self) -> dict:
        n = max(self.n, 1)
        map_drop, random_drop = self.map_drop / n, self.random_drop / n
        return {
            "method": "deletion: the top fraction of pixels by Grad-CAM (or random pixels) replaced "
            "by the image's per-channel mean; drop in the softmax confidence of the true "
            "class, averaged over images",
            "n_images": self.n,
            "fractions": self.fractions,
            "mean_confidence": self.base / n,
            "map_drop": [float(v) for v in map_drop],
            "random_drop": [float(v) for v in random_drop],
            "mean_map_drop": float(map_drop.mean()),
            "mean_random_drop": float(random_drop.mean()),
            "faithfulness_gap": float((map_drop - random_drop).mean()),
        }


def faithfulness_table(summary: dict) -> str:
    lines = [
        "pixels removed   drop (Grad-CAM top)   drop (random)",
        "--------------   -------------------   -------------",
    ]
    for f, m, r in zip(summary["fractions"], summary["map_drop"], summary["random_drop"]):
        lines.append(f"{100 * f:>13.1f}%   {m:>19.4f}   {r:>13.4f}")
    lines.append(
        f"faithfulness gap (mean drop Grad-CAM - random) over {summary['n_images']} images: "
        f"{summary['faithfulness_gap']:+.4f}"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures
def plot_saliency_pairs(
    images_uint8: np.ndarray, maps: np.ndarray, labels, title: str, rows: int = 6, pairs_per_row: int = 6
):
    """Each image beside its saliency map: ``rows`` x (2 * ``pairs_per_row``) axes, titled with
    the true label; unused cells (fewer images than cells) stay blank."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 2 * pairs_per_row, figsize=(2 * pairs_per_row * 1.9, rows * 2.1))
    axes = np.asarray(axes).reshape(rows, 2 * pairs_per_row)
    rgb = uint8_to_rgb_float(images_uint8)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(min(len(rgb), rows * pairs_per_row)):
        r, c = divmod(i, pairs_per_row)
        axes[r, 2 * c].imshow(rgb[i])
        axes[r, 2 * c].set_title(CLASS_NAMES[int(labels[i])], fontsize=9)
        axes[r, 2 * c + 1].imshow(maps[i], cmap="hot")
        axes[r, 2 * c + 1].set_title("saliency", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mean_maps(means: dict, counts: dict, title: str, cmap: str, what: str):
    """Two panels: the mean map of the real and of the fake images (with the image counts)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, label in zip(axes, (0, 1)):
        ax.axis("off")
        if means.get(label) is None:
            ax.set_title(f"{CLASS_NAMES[label]} images: none in the test split")
            continue
        shown = ax.imshow(means[label], cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(f"mean {what} of {CLASS_NAMES[label].lower()} images (n={counts[label]})")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_overlay(overlay: np.ndarray, title: str):
    """One Grad-CAM overlay titled ``title`` (the study's ``Real Image`` / ``Fake Image``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(overlay)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig
