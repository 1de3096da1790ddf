"""Small layer factories shared by the built-in families."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Not in-place: MTT unrolls training through these modules and differentiates through them.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leakyrelu": nn.LeakyReLU,  # negative slope 0.01, as the dataset-distillation code uses
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2)`` (same result, floor on odd sizes) that pools large CPU maps with two
    small matrix products, ``P_h @ x @ P_wᵀ``.

    Why: trajectory matching differentiates through each step's backward, and on CPU the
    pooling kernels' forward, backward and double backward took a quarter of an MTT iteration
    in bfloat16 (an eighth in float32); as products they run on the GEMM kernels and save no
    activation (the product with a constant matrix only needs the matrix for its gradient).
    Measured through forward, backward and double backward of a 100×128 batch: 1.8× (float32)
    and 3.5× (bfloat16) faster at 32×32, slower below 16×16, where the plain kernel is kept.
    """

    MIN_AREA = 256

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if x.device.type != "cpu" or h * w < self.MIN_AREA or not x.is_contiguous():
            return super().forward(x)
        rows = _pool_matrix(h, x.dtype, x.device)
        cols = _pool_matrix(w, x.dtype, x.device)
        return torch.matmul(torch.matmul(rows, x), cols.t())


def _pool_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n // 2) × n matrix averaging neighbouring pairs (the last odd row is dropped)."""
    m = torch.zeros(n // 2, n, dtype=dtype, device=device)
    i = torch.arange(n // 2, device=device)
    m[i, 2 * i] = 0.5
    m[i, 2 * i + 1] = 0.5
    return m


class Hardsigmoid(nn.Module):
    """``relu6(x + 3) / 6``, torch's ``nn.Hardsigmoid`` in ops whose backward torch can
    differentiate: it has no derivative for ``hardsigmoid_backward``, and trajectory matching
    differentiates through each training step's backward (the squeeze-excite gates of
    MobileNetV3, LCNet and GhostNet use it)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.relu6(x + 3.0) / 6.0


def twice_differentiable(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Hardsigmoid`` replaced by :class:`Hardsigmoid` (the same
    function), in place; the other activations torch ships differentiate twice already."""
    for name, child in model.named_children():
        if isinstance(child, nn.Hardsigmoid):
            setattr(model, name, Hardsigmoid())
        else:
            twice_differentiable(child)
    return model
