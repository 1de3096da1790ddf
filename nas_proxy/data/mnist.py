"""MNIST and Fashion-MNIST from the four standard IDX files in one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nas_proxy.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_header
from nas_proxy.data.prepare import RawData
from nas_proxy.errors import UserError
from nas_proxy.io import file_sha256

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# split -> (images stem, labels stem); each may be gzipped, and some mirrors spell ".idx".
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_file(folder: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``folder``; an uncompressed copy wins (it loads faster)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, dotted, f"{stem}.gz", f"{dotted}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def missing_files(folder: Path) -> list[str]:
    return [
        f"{stem}[.gz]" for pair in STEMS.values() for stem in pair if idx_file(folder, stem) is None
    ]


def _files(folder: Path, split: str) -> tuple[Path, Path]:
    found = [idx_file(folder, stem) for stem in STEMS[split]]
    if None in found:
        raise UserError(f"{folder}: missing {', '.join(missing_files(folder))}")
    return found[0], found[1]  # type: ignore[return-value]


def load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One images/labels pair as (N×1×H×W uint8, N int64), counts checked against each other."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise UserError(f"{images_path}: expected 3 dimensions (N, H, W), got {images.ndim}")
    if labels.ndim != 1:
        raise UserError(f"{labels_path}: expected 1 dimension (N), got {labels.ndim}")
    if len(labels) != len(images):
        raise UserError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    return images[:, None], labels.astype(np.int64)


def load(folder: Path, classes: list[str]) -> RawData:
    train_files, test_files = _files(folder, "train"), _files(folder, "test")
    train_x, train_y = load_split(*train_files)
    test_x, test_y = load_split(*test_files)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(
            f"{test_files[0]}: image size {test_x.shape[2:]} differs from the "
            f"training images {train_x.shape[2:]}"
        )
    source = {"format": "idx", "files": {p.name: file_sha256(p) for p in train_files + test_files}}
    return RawData(
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        source=source,
        train_file=str(train_files[1]),
        test_file=str(test_files[1]),
    )


def counts(folder: Path, classes: list[str]) -> dict[str, Any]:
    """Sample counts and shape from the headers only (no decompression of the data)."""
    train = read_idx_header(_files(folder, "train")[0], IMAGES_MAGIC)
    test = read_idx_header(_files(folder, "test")[0], IMAGES_MAGIC)
    return {
        "train": train.dims[0],
        "test": test.dims[0],
        "classes": len(classes),
        "shape": [1, *train.dims[1:]],
    }
