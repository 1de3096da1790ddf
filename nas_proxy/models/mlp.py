"""Multi-layer perceptron: flatten → depth × [Linear → norm → act → dropout] → Linear.

Works on any input shape (images are flattened); ``depth=0`` is a linear classifier.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from nas_proxy.models.layers import ACTIVATIONS, activation
from nas_proxy.models.registry import register_family
from nas_proxy.models.spec import Option

SCHEMA = {
    "hidden": Option(int, 256, low=1, high=65536),
    "depth": Option(int, 1, low=0, high=8),
    "act": Option(str, "relu", choices=tuple(ACTIVATIONS)),
    "norm": Option(str, "none", choices=("none", "batch", "layer")),
    "dropout": Option(float, 0.0, low=0.0, high=0.9),
}


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 256,
        depth: int = 1,
        act: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), _norm(norm, hidden), activation(act)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.flatten(1)))


def canonicalize(options: dict[str, Any]) -> dict[str, Any]:
    """A linear classifier (depth 0) has no hidden layer: reset the keys that cannot matter."""
    if options["depth"] == 0:
        return {**options, **{k: SCHEMA[k].default for k in ("hidden", "act", "norm", "dropout")}}
    return options


def build_mlp(options: dict[str, Any], in_shape: tuple[int, ...], num_classes: int) -> MLP:
    return MLP(math.prod(in_shape), num_classes, **options)


register_family("mlp", build_mlp, SCHEMA, canonicalize=canonicalize)
