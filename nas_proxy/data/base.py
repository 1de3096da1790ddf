"""The in-memory dataset record every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Dataset:
    """A real dataset held in memory as tensors, already normalized.

    Image sets hold float32 ``N×C×H×W`` tensors standardised per channel with ``mean``/``std``
    (computed on the training split); vector tasks (``multi-index``) hold ``N×d``. Labels are
    int64 class indices. ``val`` is a fixed seeded hold-out of the original training split and
    ``train`` is the rest; ``test`` is never used to make decisions.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checksum: str  # hash of the source files (or generator settings) + split settings
    path: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. {"W": k×d tensor} for multi-index

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W) for images, (d,) for vectors."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "train": len(self.train_y),
            "val": len(self.val_y),
            "test": len(self.test_y),
            "classes": self.num_classes,
            "shape": list(self.shape),
            "checksum": self.checksum,
        }
