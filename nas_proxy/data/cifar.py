"""CIFAR-10 / CIFAR-100 from the python-version batch files, via a restricted unpickler.

The batch files are pickles of plain dicts holding lists and one uint8 numpy array. A pickle can
name any importable callable, so ``SafeUnpickler`` resolves only the handful of numpy
reconstruction helpers those files need and refuses every other global: a hostile file fails
with a UserError before any of its code runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from nas_proxy.data.prepare import RawData
from nas_proxy.errors import UserError
from nas_proxy.io import file_sha256


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """A numpy internal that moved between numpy 1 (numpy.core) and 2 (numpy._core)."""
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name}")


def _latin1_encode(text: str, encoding: str = "latin1", *args: Any) -> bytes:
    """Python 3 pickles of bytes at protocol < 3 call ``_codecs.encode(str, 'latin1')``."""
    if codecs.lookup(encoding).name != "iso8859-1" or args:
        raise pickle.UnpicklingError(f"codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # pickle protocol 5
        allowed[(module, "_frombuffer")] = frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    pass


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that builds only containers, numbers, strings and numpy arrays."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _allowed_globals()
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to unpickle {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing a persistent id")


def safe_load(path: str | Path) -> Any:
    """Unpickle ``path`` with ``SafeUnpickler``; any failure is a UserError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        # latin1 keeps the Python 2 byte strings of the original files readable (numpy needs it)
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise UserError(f"{path}: unsafe pickle, {e}") from None
    except Exception as e:  # any parse failure of untrusted bytes is bad data
        raise UserError(
            f"{path}: not a readable CIFAR pickle ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _get(d: Any, key: str, path: Path) -> Any:
    """Entries are keyed by bytes in the original files, by str when written by Python 3."""
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a dict, found {type(d).__name__}")
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise UserError(f"{path}: no '{key}' entry")


def _names(values: Any, path: Path, key: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{path}: '{key}' is not a list")
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: (N×3×32×32 uint8, N int64)."""
    d = safe_load(path)
    data = _get(d, "data", path)
    labels = _get(d, label_key, path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        desc = (
            f"{data.dtype} {list(data.shape)}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise UserError(f"{path}: 'data' must be a uint8 N×3072 array, found {desc}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: '{label_key}' is not a list of integers") from None
    if y.ndim != 1 or len(y) != len(data):
        raise UserError(f"{path}: {y.size} labels for {len(data)} images")
    # rows hold the red, green and blue planes one after another, each row-major 32×32
    return data.reshape(-1, 3, 32, 32), y


# name -> (train files, test file, meta file, label key, class-names key)
LAYOUTS = {
    "cifar10": (
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": (["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def missing_files(folder: Path, name: str) -> list[str]:
    train, test, meta, _, _ = LAYOUTS[name]
    return [f for f in (*train, test, meta) if not (folder / f).is_file()]


def load(folder: Path, name: str) -> RawData:
    train_files, test_file, meta_file, label_key, names_key = LAYOUTS[name]
    classes = _names(
        _get(safe_load(folder / meta_file), names_key, folder / meta_file),
        folder / meta_file,
        names_key,
    )
    parts = [read_batch(folder / f, label_key) for f in train_files]
    test_x, test_y = read_batch(folder / test_file, label_key)
    files = [folder / f for f in (*train_files, test_file, meta_file)]
    source = {"format": name, "files": {p.name: file_sha256(p) for p in files}}
    train_where = (
        str(folder / train_files[0])
        if len(train_files) == 1
        else f"{folder}/{train_files[0][:-1]}*"
    )
    return RawData(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        test_x,
        test_y,
        classes,
        source=source,
        train_file=train_where,
        test_file=str(folder / test_file),
    )


def counts(folder: Path, name: str) -> dict[str, Any]:
    """CIFAR files have no header, so this reads the labels (fast: the files are memcpy'd)."""
    train_files, test_file, meta_file, label_key, names_key = LAYOUTS[name]
    train = sum(len(read_batch(folder / f, label_key)[1]) for f in train_files)
    test = len(read_batch(folder / test_file, label_key)[1])
    classes = _get(safe_load(folder / meta_file), names_key, folder / meta_file)
    return {"train": train, "test": test, "classes": len(classes), "shape": [3, 32, 32]}
