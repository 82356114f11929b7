"""Grad-CAM through pytorch-grad-cam (docs/design.md#grad-cam): the target layer, the maps of a
batch, the overlay, and a backward pass that stops at the target layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from lib.cli import UserError
from lib.model_specs import MODEL_SPECS, model_spec

DEFAULT_TARGET_LAYER = "conv3"  # the study's Grad-CAM layer, for both its models


def default_layers_text() -> str:
    """How --help names each model's default Grad-CAM layer: ``conv3 for SimpleNet, ...``."""
    return ", ".join(f"{spec.grad_cam_layer} for {name}" for name, spec in MODEL_SPECS.items())


def target_layer_name(model_name: str, given: str | None) -> str:
    """``--target_layer`` as given, else the model's default Grad-CAM layer (``lib.model_specs``:
    the study's conv3 for its two models, the last convolution stage of a torchvision backbone)."""
    return given or model_spec(model_name).grad_cam_layer


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


def plot_overlay(overlay: np.ndarray, title: str):
    """One Grad-CAM overlay titled ``title`` (the image's model, dataset, class and P(fake))."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(overlay)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig
