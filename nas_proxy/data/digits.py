"""scikit-learn's bundled 8×8 digits: the offline default and the fast tests' dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from nas_proxy.data.prepare import RawData, stratified_split

CLASSES = [str(i) for i in range(10)]
TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed on purpose: the test split must not move with any user seed
TOTAL = 1797


def data_file() -> Path:
    """Where scikit-learn keeps the digits (for ``data list``)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def load() -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    keep, held = stratified_split(y, TEST_FRACTION, TEST_SEED)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    source = {
        "format": "sklearn-digits",
        "sha256": digest,
        "test_fraction": TEST_FRACTION,
        "test_seed": TEST_SEED,
    }
    return RawData(
        x[keep],
        y[keep],
        x[held],
        y[held],
        CLASSES,
        source=source,
        train_file="digits train",
        test_file="digits test",
    )


def counts() -> dict[str, Any]:
    test = int(round(TEST_FRACTION * TOTAL))
    return {"train": TOTAL - test, "test": test, "classes": len(CLASSES), "shape": [1, 8, 8]}
