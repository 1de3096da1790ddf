"""Small layer factories shared by the built-in families."""

from __future__ import annotations

from torch import nn

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
