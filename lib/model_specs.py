"""The models every script trains and analyses, one entry each (docs/design.md#model-registry).

``MODEL_SPECS`` is the one list of models: argparse choices, output-name parsing, the default
Grad-CAM layer, where ImageNet weights come from and how a state dict is recognised all follow it.
A torchvision backbone is one entry here (``models.py`` builds it from the entry's data); the
course's two models have their own builders in ``models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lib.cli import UserError

HEAD_NAMES = ("linear", "mlp")  # a Linear(F, 2), or the study's MLP head (models.mlp_head)


@dataclass(frozen=True)
class ModelSpec:
    """One model: how it is named, built, initialised, analysed and recognised."""

    name: str  # -m NAME, and the <model> of <dataset>_<model>_<optimizer>
    grad_cam_layer: str  # the default --target_layer (dotted module path)
    signature: tuple[tuple[str, tuple[int, ...] | None], ...]  # state-dict keys it holds (shape or any)
    absent: tuple[str, ...] = ()  # keys it never holds (tells it from deeper variants)
    heads: tuple[str, ...] = ()  # the heads --head may choose, the default first; () : a fixed model
    torchvision: str | None = None  # the builder in torchvision.models
    weights: str | None = None  # the torchvision weights enum member of its ImageNet weights
    classifier: str | None = None  # dotted path of the torchvision classifier the head replaces
    imagenet: bool = False  # starts from ImageNet weights unless --no_pretrained
    activation_checkpointing: bool = False  # supports --activation_checkpointing

    def matches(self, state_dict) -> bool:
        """Whether ``state_dict`` holds this model's signature keys (with their shapes) and none of
        its absent keys."""
        for key, shape in self.signature:
            value = state_dict.get(key)
            if value is None or (shape is not None and tuple(getattr(value, "shape", ())) != shape):
                return False
        return not any(key in state_dict for key in self.absent)

    def head_of(self, state_dict) -> str | None:
        """The head a state dict of this model has (``linear`` or ``mlp``); None for a fixed model
        or when neither fits."""
        if not self.classifier:
            return self.heads[0] if self.heads else None
        if f"{self.classifier}.weight" in state_dict:
            return "linear"
        if f"{self.classifier}.0.weight" in state_dict:
            return "mlp"
        return None


MODEL_SPECS = {
    spec.name: spec
    for spec in (
        ModelSpec("SimpleNet", "conv3", (("conv1.weight", None), ("fc1.weight", None))),
        ModelSpec(
            "XceptionBased",
            "conv3",
            (("block1.skip.weight", None),),
            heads=("mlp",),
            imagenet=True,
            activation_checkpointing=True,
        ),
        ModelSpec(
            "resnet50",
            "layer4",
            (("layer4.2.conv3.weight", (2048, 512, 1, 1)),),
            absent=("layer3.6.conv1.weight",),  # resnet101 and resnet152 go on to layer3.6 and beyond
            heads=HEAD_NAMES,
            torchvision="resnet50",
            weights="ResNet50_Weights.IMAGENET1K_V2",
            classifier="fc",
            imagenet=True,
        ),
        ModelSpec(
            "efficientnet_b4",
            "features.8",  # the last convolution block (1x1 conv to 1792 channels, BN, SiLU)
            (("features.8.0.weight", (1792, 448, 1, 1)),),
            heads=HEAD_NAMES,
            torchvision="efficientnet_b4",
            weights="EfficientNet_B4_Weights.IMAGENET1K_V1",
            classifier="classifier.1",  # after torchvision's Dropout(0.4), which stays
            imagenet=True,
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    """The entry of ``name``; an unknown name is a one-line ``UserError`` listing the models."""
    if name not in MODEL_SPECS:
        raise UserError(f"unknown model {name!r}; models: {', '.join(MODEL_SPECS)}")
    return MODEL_SPECS[name]


def spec_of_state_dict(state_dict) -> ModelSpec | None:
    """The one model whose signature ``state_dict`` matches; None when none (or several) do."""
    if not isinstance(state_dict, dict):
        return None
    found = [spec for spec in MODEL_SPECS.values() if spec.matches(state_dict)]
    return found[0] if len(found) == 1 else None


def resolve_head(name: str, head: str | None) -> str | None:
    """The head ``-m name --head head`` builds: the model's default when ``head`` is None; None for
    a model without a head choice. A head the model cannot have is a one-line ``UserError``."""
    spec = model_spec(name)
    if head is None:
        return spec.heads[0] if spec.heads else None
    if head not in spec.heads:
        choosers = ", ".join(s.name for s in MODEL_SPECS.values() if len(s.heads) > 1)
        has = f"its head is fixed ({spec.heads[0]})" if spec.heads else "it has no separate head"
        raise UserError(f"--head {head}: {name} cannot take it ({has}); --head is for {choosers}")
    return head


def imagenet_models() -> tuple[str, ...]:
    """The models that start from ImageNet weights unless --no_pretrained."""
    return tuple(name for name, spec in MODEL_SPECS.items() if spec.imagenet)
