"""Turn raw arrays into a ``Dataset``: label checks, seeded stratified splits, normalization.

Every loader hands its raw arrays to ``build_dataset`` so that validation, the val hold-out and
normalization are done one way for all datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_proxy.data.base import Dataset
from nas_proxy.errors import UserError
from nas_proxy.io import stable_hash


@dataclass
class RawData:
    """What a file loader returns: unnormalized images (uint8 or float in [0, 1]) and labels."""

    train_x: np.ndarray  # N×C×H×W
    train_y: np.ndarray  # N int
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # what the checksum hashes
    train_file: str = ""  # named in label errors
    test_file: str = ""


def check_labels(y: np.ndarray, num_classes: int, where: str, require_all: bool) -> None:
    """Labels must be integers in range; with ``require_all`` every class must occur."""
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise UserError(f"{where}: label {bad} out of range (expected 0..{num_classes - 1})")
    if require_all:
        counts = np.bincount(y, minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise UserError(f"{where}: class {int(empty[0])} has no samples (empty class)")


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: returns (kept, held) index arrays, both sorted.

    The held-out total is ``round(fraction * N)``, shared between classes by largest remainder
    so that every class keeps its proportion as closely as possible.
    """
    y = np.asarray(y)
    classes, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    short = int(round(fraction * len(y))) - int(take.sum())
    if short > 0:  # hand out the remaining samples to the largest remainders (stable order)
        order = np.argsort(-(quota - take), kind="stable")[:short]
        take[order] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(inverse == c))[: take[c]] for c in range(len(classes))]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out for regression targets, where strata do not exist."""
    perm = np.random.default_rng(seed).permutation(n)
    held = np.sort(perm[: int(round(fraction * n))])
    return np.sort(perm[len(held) :]), held


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction {val_fraction}: expected a value in [0, 1)")


def to_unit_float(x: np.ndarray) -> torch.Tensor:
    """uint8 images become float32 in [0, 1]; float images are taken as already in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.to(torch.float32, copy=True)  # a copy: normalization works in place


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of N×C×H×W (population std; a flat channel gets std 1)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    var, mean = torch.var_mean(flat, dim=1, correction=0)  # torch sums pairwise: float32 is fine
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=x.dtype).view(shape)
    s = torch.tensor(std, dtype=x.dtype).view(shape)
    return x.sub_(m).div_(s)


def dataset_checksum(source: dict[str, Any], val_fraction: float, val_seed: int) -> str:
    return stable_hash({"source": source, "val_fraction": val_fraction, "val_seed": val_seed})


def build_dataset(
    name: str, raw: RawData, *, val_fraction: float, val_seed: int, path: str | Path | None = None
) -> Dataset:
    """Validate labels, hold out val, normalize with train statistics, and wrap it all up."""
    num_classes = len(raw.classes)
    for x, y, where in (
        (raw.train_x, raw.train_y, raw.train_file or f"{name} train"),
        (raw.test_x, raw.test_y, raw.test_file or f"{name} test"),
    ):
        if len(x) != len(y):
            raise UserError(f"{where}: {len(y)} labels for {len(x)} images")
    check_labels(raw.train_y, num_classes, raw.train_file or f"{name} train", require_all=True)
    check_labels(raw.test_y, num_classes, raw.test_file or f"{name} test", require_all=False)

    keep, held = stratified_split(raw.train_y, val_fraction, val_seed)
    # index the raw (often uint8) arrays first: 4x less memory traffic than float copies
    train_x, val_x = to_unit_float(raw.train_x[keep]), to_unit_float(raw.train_x[held])
    y_all = torch.from_numpy(raw.train_y.astype(np.int64))
    mean, std = channel_stats(train_x)
    test_x = to_unit_float(raw.test_x)
    for x in (train_x, val_x, test_x):
        normalize(x, mean, std)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=y_all[keep],
        val_x=val_x,
        val_y=y_all[held],
        test_x=test_x,
        test_y=torch.from_numpy(raw.test_y.astype(np.int64)),
        classes=list(raw.classes),
        mean=mean,
        std=std,
        checksum=dataset_checksum(raw.source, val_fraction, val_seed),
        path=str(path) if path is not None else None,
    )
