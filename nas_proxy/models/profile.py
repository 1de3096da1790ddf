"""What a model costs: trainable parameters and FLOPs per image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas_proxy.models.factory import build_model
from nas_proxy.models.spec import ArchSpec, parse_spec


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model``, then give every submodule back its own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one input (eval mode, no grad).

    Counted by ``torch.utils.flop_counter``: matmuls and convolutions only, a multiply-add being
    2 FLOPs; biases, norms, activations and pooling are not counted.
    """
    param = next(model.parameters(), None)
    x = torch.zeros(
        (1, *in_shape),
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def model_profile(
    spec: str | ArchSpec, in_shape: tuple[int, ...], num_classes: int
) -> dict[str, Any]:
    """``{"arch": canonical spec, "params": int, "flops": int}``, cached per spec and shape."""
    arch = str(parse_spec(spec))
    return dict(_profile(arch, tuple(int(s) for s in in_shape), int(num_classes)))


@lru_cache(maxsize=1024)
def _profile(arch: str, in_shape: tuple[int, ...], num_classes: int) -> tuple:
    # Building draws random initial weights: keep the caller's RNG stream as it was.
    with torch.random.fork_rng(devices=[]):
        model = build_model(arch, in_shape, num_classes)
    return (
        ("arch", arch),
        ("params", count_params(model)),
        ("flops", count_flops(model, in_shape)),
    )
