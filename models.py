"""The study's two detectors (docs/design.md#models): SimpleNet and the Xception-based model."""

from __future__ import annotations

import torch
from torch import nn

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


def mlp_head() -> nn.Sequential:
    """The study's MLP head (2,321,834 parameters); state-dict keys fc.0, fc.2, fc.4, fc.6."""
    return nn.Sequential(
        nn.Linear(2048, 1000),
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
