"""The detectors (docs/design.md#models): the study's SimpleNet and Xception-based model, and the
torchvision backbones of ``lib.model_specs`` with a linear or the study's MLP head."""

from __future__ import annotations

import torch
from torch import nn

from lib.model_specs import model_spec, resolve_head
from xception import build_xception_backbone

SIMPLENET_INPUT = (3, 256, 256)


class SimpleNet(nn.Module):
    """Three 7x7 conv/ReLU/max-pool stages and three fully connected layers.

    Output: 2 logits per image, index 0 = real score, index 1 = fake score. Only 3x256x256 input.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=7)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=7)
        self.conv3 = nn.Conv2d(16, 24, kernel_size=7)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(24 * 26 * 26, 1024)
        self.fc2 = nn.Linear(1024, 256)
        self.fc3 = nn.Linear(256, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or tuple(image.shape[1:]) != SIMPLENET_INPUT:
            raise ValueError(
                f"SimpleNet needs input of shape N x 3 x 256 x 256 (256x256 RGB images), "
                f"got {tuple(image.shape)}; resize the images to 256x256"
            )
        x = self.pool(self.relu(self.conv1(image)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.pool(self.relu(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def mlp_head(in_features: int = 2048) -> nn.Sequential:
    """The study's MLP head on ``in_features`` features (Xception's 2048: 2,321,834 parameters;
    state-dict keys fc.0, fc.2, fc.4, fc.6)."""
    return nn.Sequential(
        nn.Linear(in_features, 1000),
        nn.ReLU(),
        nn.Linear(1000, 256),
        nn.ReLU(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 2),
    )


def get_xception_based_model(pretrained: bool = True, weights_path: str | None = None) -> nn.Module:
    """Xception backbone (ImageNet weights when ``pretrained``) whose ``fc`` is the MLP head.

    Nothing is frozen: all 23,128,786 parameters train. ``pretrained=False`` never looks for
    weights (the analysis scripts load a checkpoint into it).
    """
    model = build_xception_backbone(
        pretrained=pretrained, weights_path=weights_path, allow_missing_classifier=True
    )
    model.fc = mlp_head()
    return model


def linear_head(in_features: int) -> nn.Linear:
    """A linear layer from ``in_features`` features to the 2 logits (the field's usual head)."""
    return nn.Linear(in_features, 2)


HEADS = {"linear": linear_head, "mlp": mlp_head}  # --head NAME -> its builder of in_features


def get_torchvision_based_model(
    name: str, head: str | None = None, pretrained: bool = True, weights_path: str | None = None
) -> nn.Module:
    """The torchvision backbone of ``lib.model_specs`` entry ``name`` (ImageNet weights when
    ``pretrained``, found by ``lib.torchvision_weights``) whose classifier is replaced by ``head``
    (``linear`` or ``mlp``; None: the entry's default). Nothing is frozen. ``weights_info`` holds
    where the weights came from (None without them)."""
    import torchvision

    from lib.torchvision_weights import load_imagenet_weights

    spec, head = model_spec(name), resolve_head(name, head)
    model = getattr(torchvision.models, spec.torchvision)(weights=None)
    model.weights_info = load_imagenet_weights(model, spec, weights_path) if pretrained else None
    parent_name, _, attribute = spec.classifier.rpartition(".")
    parent = model.get_submodule(parent_name)  # setattr also replaces a Sequential's item "1"
    setattr(parent, attribute, HEADS[head](getattr(parent, attribute).in_features))
    return model


def build_model(
    name: str, head: str | None = None, pretrained: bool = True, weights_path: str | None = None
) -> nn.Module:
    """The model ``name`` of ``lib.model_specs`` with ``head`` (see ``resolve_head``). SimpleNet
    never touches weights; ``pretrained=False`` never looks for any."""
    spec, head = model_spec(name), resolve_head(name, head)
    if name == "SimpleNet":
        return SimpleNet()
    if name == "XceptionBased":
        return get_xception_based_model(pretrained=pretrained, weights_path=weights_path)
    if spec.torchvision is None:
        raise ValueError(f"{name}: a registry entry without a torchvision builder needs one in models.py")
    return get_torchvision_based_model(name, head, pretrained, weights_path)
