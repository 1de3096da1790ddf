"""The ConvNet of the dataset-distillation literature (Zhao et al.; the MTT reference network).

``depth`` blocks of [Conv2d k×k (padding k//2) → norm → activation → 2×2 pool], then flatten and
one Linear classifier. Pooling stops once the feature map is smaller than 2×2 (it would go below
1×1), so e.g. depth 4 on 8×8 digits runs as 8→4→2→1→1. A layer that then works on a 1×1 map
cannot use instance norm (it would normalise single values): that is a user error, and
norm=batch|layer|none work there. Plain modules only, so the network works under
``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from nas_proxy.errors import UserError
from nas_proxy.models.layers import ACTIVATIONS, AvgPool2x2, activation
from nas_proxy.models.registry import register_family
from nas_proxy.models.spec import Option, format_value

NORMS = ("instance", "batch", "group", "layer", "none")
POOLS = ("avg", "max", "none")

SCHEMA = {
    "depth": Option(int, 3, low=1, high=6),
    "width": Option(int, 128, low=1, high=4096),
    "widths": Option(tuple, None, low=1, high=4096),
    "norm": Option(str, "instance", choices=NORMS),
    "act": Option(str, "relu", choices=tuple(ACTIVATIONS)),
    "pool": Option(str, "avg", choices=POOLS),
    "kernel": Option(int, 3, choices=(3, 5, 7)),
    "dropout": Option(float, 0.0, low=0.0, high=0.9),
}


def conv_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation over a C×H×W feature map.

    ``instance`` is GroupNorm(C, C) with affine, as the MTT reference implements it. ``layer`` is
    GroupNorm(1, C): it normalises over C, H, W like LayerNorm([C, H, W]) but with per-channel
    affine, so the parameter count does not depend on the image size. ``group`` uses 4 groups
    (or the largest divisor of C that 4 allows).
    """
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(4, channels), channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    return nn.Identity()


def _check_norm(
    layer: nn.Module, norm: str, index: int, height: int, width: int, image: str
) -> None:
    """Refuse a GroupNorm that would normalise single values (e.g. instance norm on a 1×1 map).

    Its output would be the same for every input, so the network could not learn.
    """
    if not isinstance(layer, nn.GroupNorm):
        return
    if layer.num_channels // layer.num_groups * height * width == 1:
        others = "|".join(n for n in ("batch", "layer", "none") if n != norm)
        raise UserError(
            f"convnet: norm={norm} at layer {index} would normalise a {height}×{width} map one "
            f"value at a time, making its output constant; for {image} input use "
            f"depth <= {index - 1} or norm={others}"
        )


class ConvNet(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        widths: tuple[int, ...],
        norm: str = "instance",
        act: str = "relu",
        pool: str = "avg",
        kernel: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = in_shape
        layers: list[nn.Module] = []
        for index, out in enumerate(widths, start=1):
            norm_layer = conv_norm(norm, out)
            _check_norm(norm_layer, norm, index, height, width, f"{in_shape[1]}×{in_shape[2]}")
            layers += [
                nn.Conv2d(channels, out, kernel, padding=kernel // 2),
                norm_layer,
                activation(act),
            ]
            if pool != "none" and height >= 2 and width >= 2:
                layers.append(AvgPool2x2() if pool == "avg" else nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels * height * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x).flatten(1)))


def canonicalize(options: dict[str, Any]) -> dict[str, Any]:
    """Check ``widths`` against ``depth`` and keep exactly one of ``width``/``widths``."""
    widths = options["widths"]
    if widths is None:
        return options
    if len(widths) != options["depth"]:
        raise UserError(
            f"convnet: widths={format_value(widths)} has {len(widths)} entries but "
            f"depth={options['depth']}; give one width per layer, e.g. widths=32/64/128 for depth=3"
        )
    if len(set(widths)) == 1:  # uniform widths are the same network as width=W
        return {**options, "width": widths[0], "widths": None}
    return {**options, "width": None}


def build_convnet(options: dict[str, Any], in_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    if len(in_shape) != 3:
        raise UserError(
            f"convnet needs image input (C, H, W), got shape {tuple(in_shape)}; "
            "use an mlp spec for vector data"
        )
    widths = options["widths"] or (options["width"],) * options["depth"]
    return ConvNet(
        in_shape,
        num_classes,
        widths=tuple(widths),
        norm=options["norm"],
        act=options["act"],
        pool=options["pool"],
        kernel=options["kernel"],
        dropout=options["dropout"],
    )


register_family("convnet", build_convnet, SCHEMA, canonicalize=canonicalize)
