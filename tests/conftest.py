"""Shared fixtures: small fake dataset folders, and isolation from the user's data settings."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") if magic is not None else bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


@pytest.fixture
def write_idx():
    """``write_idx(path, uint8_array, magic=None)``: an IDX file, gzipped if the name ends .gz."""

    def write(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
        data = _idx_bytes(array, magic)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
        return path

    return write


@pytest.fixture
def fake_mnist(write_idx):
    """``fake_mnist(folder, n_train=50, n_test=20, gz=False, size=28)``: the four IDX files of
    an MNIST-style dataset with 10 classes (labels cycle so every class is present)."""

    def make(
        folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = False, size: int = 28
    ) -> Path:
        rng = np.random.default_rng(0)
        suffix = ".gz" if gz else ""
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
            write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
        return folder

    return make


@pytest.fixture
def isolated_data(monkeypatch, tmp_path):
    """No $NAS_PROXY_DATA, no system dataset folders, a private download cache."""
    from nas_proxy.data import locate

    monkeypatch.delenv("NAS_PROXY_DATA", raising=False)
    monkeypatch.setenv("NAS_PROXY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", [])
    return tmp_path


@pytest.fixture(scope="session")
def random_digits_proxy():
    """``random_digits_proxy(out, ipc)``: a seeded random real subset of digits, ``ipc`` images
    per class, no augmentation: the cheapest real proxy, for tests of what consumes proxies."""

    def make(out: Path, ipc: int) -> Path:
        import torch

        from nas_proxy.data import load_dataset
        from nas_proxy.distill.subsets import run_random

        data = load_dataset("digits")
        run_random(data, ipc, out, {"dsa": "none"}, seed=0, device=torch.device("cpu"))
        return out

    return make
