"""The dataset registry: names -> loaders, cached in-process, and ``list_datasets``.

Names: ``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``,
``imagefolder:PATH`` and ``multi-index[:d=..,k=..,n=..,...]``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nas_proxy.data import cifar, digits, imagefolder, locate, mnist, multi_index
from nas_proxy.data.base import Dataset
from nas_proxy.data.prepare import RawData, build_dataset, check_val_fraction
from nas_proxy.errors import UserError


@dataclass(frozen=True)
class FileSource:
    """A dataset read from files found by ``locate``."""

    subdirs: tuple[str, ...]  # usual folder names inside a data root
    missing: Callable[[Path], list[str]]  # files a folder lacks ([] = complete)
    load: Callable[[Path], RawData]
    counts: Callable[[Path], dict[str, Any]]  # cheap: train/test/classes/shape
    download: Callable[[Path], None]
    hint: str = ""


def _idx_source(
    subdirs: tuple[str, ...], classes: list[str], tv_class: str, hint: str = ""
) -> FileSource:
    return FileSource(
        subdirs,
        mnist.missing_files,
        partial(mnist.load, classes=classes),
        partial(mnist.counts, classes=classes),
        partial(locate.download_idx, torchvision_class=tv_class),
        hint,
    )


def _cifar_source(name: str, folder: str, tv_class: str) -> FileSource:
    return FileSource(
        (f"{name}/{folder}", folder, name),
        partial(cifar.missing_files, name=name),
        partial(cifar.load, name=name),
        partial(cifar.counts, name=name),
        partial(locate.download_archive, torchvision_class=tv_class),
    )


FILE_SOURCES: dict[str, FileSource] = {
    "fashion-mnist": _idx_source(
        ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
        mnist.FASHION_CLASSES,
        "FashionMNIST",
        "(Debian: apt-get install dataset-fashion-mnist)",
    ),
    "mnist": _idx_source(("mnist", "MNIST/raw"), mnist.MNIST_CLASSES, "MNIST"),
    "cifar10": _cifar_source("cifar10", "cifar-10-batches-py", "CIFAR10"),
    "cifar100": _cifar_source("cifar100", "cifar-100-python", "CIFAR100"),
}
NAMES = ("digits", *FILE_SOURCES, "imagefolder:PATH", "multi-index")
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "multi_index": "multi-index",
    "multiindex": "multi-index",
}


def _split_name(name: str) -> tuple[str, str]:
    """('kind', 'argument'): the kind is case- and underscore-insensitive."""
    kind, _, arg = str(name).strip().partition(":")
    kind = kind.strip().lower().replace("_", "-")
    return _ALIASES.get(kind, kind), arg.strip()


def _unknown(name: str) -> UserError:
    return UserError(f"unknown dataset '{name}' (known: {', '.join(NAMES)})")


def find_dataset_dir(name: str, data_dir: str | None = None) -> Path | None:
    """The folder a dataset's files come from, or None when not found (or file-less)."""
    kind, arg = _split_name(name)
    if kind in FILE_SOURCES:
        source = FILE_SOURCES[kind]
        return locate.find(source.subdirs, source.missing, data_dir)[0]
    if kind == "imagefolder":
        path = Path(arg).expanduser()
        return path if arg and path.is_dir() else None
    if kind == "digits":
        return digits.data_file().parent
    if kind == "multi-index":
        return None
    raise _unknown(name)


def load_dataset(
    name: str,
    data_dir: str | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    val_seed: int = 0,
) -> Dataset:
    """Load a dataset once per process: the same arguments return the same object.

    Callers must not modify the returned tensors in place (every stage shares them). ``val``
    is a stratified hold-out of ``val_fraction`` of the training split drawn with ``val_seed``
    (not the run seed, so every stage agrees on it). ``download`` fetches a file dataset that
    is not found locally.
    """
    check_val_fraction(val_fraction)
    if data_dir is not None:
        data_dir = str(locate.check_dir(data_dir, f"--data-dir {data_dir}").resolve())
    key = _canonical(name)
    if download and key in FILE_SOURCES:
        source = FILE_SOURCES[key]
        if locate.find(source.subdirs, source.missing, data_dir)[0] is None:
            source.download(locate.download_root(data_dir))
    env = os.environ.get("NAS_PROXY_DATA")
    return _load_cached(key, data_dir, env, float(val_fraction), int(val_seed))


def clear_cache() -> None:
    """Forget loaded datasets (tests, or a long-lived process whose files changed)."""
    _load_cached.cache_clear()


def _canonical(name: str) -> str:
    """One spelling per dataset, so aliases and parameter order share a cache entry."""
    kind, arg = _split_name(name)
    if kind == "multi-index":
        return multi_index.canonical_name(multi_index.parse_params(arg))
    if kind == "imagefolder":
        if not arg:
            raise UserError("imagefolder: give the folder as imagefolder:PATH")
        return f"imagefolder:{Path(arg).expanduser().resolve()}"
    if kind in FILE_SOURCES or kind == "digits":
        return kind
    raise _unknown(name)


# env_data is part of the key so that a changed $NAS_PROXY_DATA is honoured.
@functools.lru_cache(maxsize=8)
def _load_cached(
    name: str, data_dir: str | None, env_data: str | None, val_fraction: float, val_seed: int
) -> Dataset:
    kind, arg = _split_name(name)
    split = {"val_fraction": val_fraction, "val_seed": val_seed}
    if kind == "digits":
        return build_dataset("digits", digits.load(), path=digits.data_file(), **split)
    if kind == "multi-index":
        return multi_index.load(multi_index.parse_params(arg), **split)
    if kind == "imagefolder":
        return build_dataset(name, imagefolder.load(Path(arg)), path=arg, **split)
    source = FILE_SOURCES[kind]
    folder, notes = locate.find(source.subdirs, source.missing, data_dir)
    if folder is None:
        raise locate.not_found(kind, notes, source.hint)
    return build_dataset(kind, source.load(folder), path=folder, **split)


def list_datasets(data_dir: str | None = None) -> list[dict[str, Any]]:
    """Every known dataset: whether it is found, where, and its sizes (read cheaply).

    ``train`` counts the whole training split (val is held out of it at load time). A found
    dataset whose files cannot be read gets an ``error`` entry instead of failing the list.
    """
    if data_dir is not None:
        locate.check_dir(data_dir, f"--data-dir {data_dir}")
    out = [{"name": "digits", "found": True, "path": str(digits.data_file()), **digits.counts()}]
    for kind, source in FILE_SOURCES.items():
        folder = locate.find(source.subdirs, source.missing, data_dir)[0]
        entry: dict[str, Any] = {
            "name": kind,
            "found": folder is not None,
            "path": str(folder) if folder else None,
            "train": None,
            "test": None,
            "classes": None,
            "shape": None,
        }
        if folder is not None:
            try:
                entry.update(source.counts(folder))
            except UserError as e:
                entry["error"] = str(e)
        out.append(entry)
    p = multi_index.DEFAULTS
    out.append(
        {
            "name": "multi-index",
            "found": True,
            "path": None,
            "train": p["n"],
            "test": p["n_test"],
            "classes": multi_index.num_classes(p["link"], p["k"], p["task"]),
            "shape": [p["d"]],
        }
    )
    return out
