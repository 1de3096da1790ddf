"""Build a model from a spec: parse, check the input shape, call the family's constructor."""

from __future__ import annotations

from torch import nn

from nas_proxy.errors import UserError
from nas_proxy.models.registry import get_family
from nas_proxy.models.spec import ArchSpec, parse_spec


def build_model(spec: str | ArchSpec, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model (uses torch's global RNG) for inputs of ``in_shape``.

    ``in_shape`` is (C, H, W) for images or (d,) for vectors, without the batch dimension.
    """
    arch = parse_spec(spec)
    shape = tuple(int(s) for s in in_shape)
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise UserError(f"{arch}: input shape must be (C, H, W) or (d,), got {tuple(in_shape)}")
    if int(num_classes) < 1:
        raise UserError(f"{arch}: need at least one class, got {num_classes}")
    return get_family(arch.family).constructor(dict(arch.options), shape, int(num_classes))
