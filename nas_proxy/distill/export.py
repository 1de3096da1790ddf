"""A proxy outside nas-proxy: as an image folder, and as a ``torch.utils.data.Dataset``.

:func:`export_proxy` writes, into a new folder::

    OUT/CLASS/00042.png   one PNG per image (the proxy's row 42), in the folder of its class
    OUT/labels.json       every image's file, class index and name (and soft label, if any)
    OUT/recipe.json       the recipe candidates train with on the proxy (a learned lr included)
    OUT/export.json       where it came from, and how PNG pixels map back to the proxy's inputs

Pixels are the images de-normalized with the proxy's recorded mean and std (de-whitened first
when the proxy lives in ZCA space), clipped to [0, 1] and rounded to 0..255. A real-data proxy
(random, herding) survives this up to the rounding; learned images (MTT, DM, DC) may leave
[0, 1], and ``export.json`` counts the values that were clipped.

:class:`ProxyDataset` reads the proxy folder itself (safetensors, nothing unpickled) and yields
its images in the proxy's normalized space: exactly what candidates train on.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset

from nas_proxy.distill.proxy import META_FILE, Proxy, load_proxy
from nas_proxy.errors import UserError
from nas_proxy.io import read_json, write_json

EXPORT_FORMAT = "nas-proxy image folder"
EXPORT_VERSION = 1
LABELS_FILE, RECIPE_FILE, EXPORT_FILE = "labels.json", "recipe.json", "export.json"


class ProxyDataset(TorchDataset):
    """A proxy folder as a Dataset of ``(image, label)``: the image a C×H×W float tensor in the
    proxy's normalized (and, for a ZCA proxy, whitened) space, the label a class index (int),
    or the soft-label distribution (float tensor) when the proxy has soft labels.

    ``transform`` is applied to each image (augmentations of your own). ``recipe`` is how
    nas-proxy trains candidates on it; ``normalization`` maps the images back to pixels.
    """

    def __init__(
        self,
        proxy: str | Path | Proxy,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.proxy = proxy if isinstance(proxy, Proxy) else load_proxy(proxy)
        self.transform = transform

    @property
    def classes(self) -> list[str]:
        return class_names(self.proxy)

    @property
    def soft_labels(self) -> bool:
        return self.proxy.labels.is_floating_point()

    @property
    def recipe(self) -> dict[str, Any]:
        return self.proxy.recipe

    @property
    def normalization(self) -> dict[str, list[float]]:
        return _normalization(self.proxy)

    def __len__(self) -> int:
        return len(self.proxy.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = self.proxy.images[index]
        if self.transform is not None:
            image = self.transform(image)
        label = self.proxy.labels[index]
        return image, (label if self.soft_labels else int(label))


def class_names(proxy: Proxy) -> list[str]:
    """The proxy's class names (its indices as text when proxy.json records none)."""
    names = proxy.meta.get("classes")
    if isinstance(names, list) and len(names) == proxy.num_classes:
        return [str(n) for n in names]
    return [str(c) for c in range(proxy.num_classes)]


def class_folders(names: list[str]) -> list[str]:
    """One folder name per class: the class name made safe for a path (``T-shirt/top`` ->
    ``T-shirt_top``), made unique, and never one of the export's own file names."""
    taken = {LABELS_FILE, RECIPE_FILE, EXPORT_FILE}
    folders = []
    for index, name in enumerate(names):
        folder = re.sub(r"[^\w.-]+", "_", name).strip("._") or f"class_{index}"
        if folder in taken:
            folder = f"{folder}_{index}"
        taken.add(folder)
        folders.append(folder)
    return folders


def to_pixels(proxy: Proxy) -> tuple[torch.Tensor, int]:
    """The images as uint8 N×C×H×W pixels, and how many values were clipped to 0..255."""
    images = proxy.images if proxy.zca is None else proxy.zca.inverse(proxy.images)
    norm = _normalization(proxy)
    shape = (1, -1, 1, 1)
    unit = images * torch.tensor(norm["std"]).view(shape) + torch.tensor(norm["mean"]).view(shape)
    clipped = int(((unit < 0) | (unit > 1)).sum())
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8), clipped


def from_pixels(pixels: torch.Tensor, normalization: dict[str, list[float]]) -> torch.Tensor:
    """uint8 N×C×H×W pixels back to the normalized space (the inverse of :func:`to_pixels` up
    to rounding, for a proxy without ZCA)."""
    shape = (1, -1, 1, 1)
    mean = torch.tensor(normalization["mean"]).view(shape)
    std = torch.tensor(normalization["std"]).view(shape)
    return (pixels.float() / 255 - mean) / std


def export_proxy(proxy: str | Path | Proxy, out: str | Path) -> dict[str, Any]:
    """Write ``proxy`` as an image folder at ``out`` (layout: the module docstring).

    The folder appears whole or not at all (it is built beside ``out`` and renamed into place).
    ``out`` may be missing, empty or an earlier export (which is replaced); any other folder is
    a UserError, so that an export never deletes files it did not write.
    """
    proxy = proxy if isinstance(proxy, Proxy) else load_proxy(proxy)
    out = Path(out)
    _check_exportable(proxy)
    _check_out(out)
    pixels, clipped = to_pixels(proxy)
    names = class_names(proxy)
    folders = class_folders(names)
    hard = proxy.labels.argmax(1) if proxy.labels.is_floating_point() else proxy.labels
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        entries = _write_images(tmp, pixels, hard, proxy.labels, names, folders)
        write_json(tmp / LABELS_FILE, {"classes": names, "folders": folders, "images": entries})
        write_json(tmp / RECIPE_FILE, proxy.recipe)
        info = _export_info(proxy, clipped, pixels.numel())
        write_json(tmp / EXPORT_FILE, info)
        _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    per_class = {name: int((hard == c).sum()) for c, name in enumerate(names)}
    return {**info, "dir": str(out), "per_class": per_class}


def _normalization(proxy: Proxy) -> dict[str, list[float]]:
    norm = proxy.meta.get("normalization") or {}
    channels = int(proxy.images.shape[1])
    try:
        mean = [float(v) for v in norm.get("mean", [0.0] * channels)]
        std = [float(v) for v in norm.get("std", [1.0] * channels)]
    except (TypeError, ValueError):
        mean, std = [], []
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or min(std or [0]) <= 0:
        raise UserError(f"{proxy.path}: {META_FILE} normalization {norm} does not fit the images")
    return {"mean": mean, "std": std}


def _check_exportable(proxy: Proxy) -> None:
    shape = list(proxy.images.shape[1:])
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise UserError(
            f"{proxy.path}: samples of shape {shape} are not images (PNG export needs "
            "1 or 3 channels × height × width)"
        )
    if proxy.labels.is_floating_point() and proxy.labels.dim() != 2:
        raise UserError(f"{proxy.path}: regression targets have no classes to make folders of")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise UserError(f"--out {out}: folder is not empty and not an earlier export")


def _is_export(folder: Path) -> bool:
    path = folder / EXPORT_FILE
    try:
        return path.is_file() and read_json(path).get("format") == EXPORT_FORMAT
    except (UserError, AttributeError):
        return False


def _write_images(
    root: Path,
    pixels: torch.Tensor,
    hard: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    folders: list[str],
) -> list[dict[str, Any]]:
    from PIL import Image

    for folder in folders:
        (root / folder).mkdir()
    digits = max(5, len(str(len(pixels) - 1)))
    entries = []
    for index, (image, c) in enumerate(zip(pixels, hard.tolist(), strict=True)):
        file = f"{folders[c]}/{index:0{digits}d}.png"
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(root / file)
        entry: dict[str, Any] = {"file": file, "index": index, "label": c, "class": names[c]}
        if labels.is_floating_point():
            entry["soft_label"] = labels[index].tolist()
        entries.append(entry)
    return entries


def _export_info(proxy: Proxy, clipped: int, values: int) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "proxy": str(Path(proxy.path or ".").resolve()),
        "proxy_tensors_sha256": proxy.meta.get("tensors_sha256"),
        "method": proxy.method,
        "dataset": proxy.meta.get("dataset"),
        "images": len(proxy.images),
        "classes": proxy.num_classes,
        "soft_labels": proxy.labels.is_floating_point(),
        # pixel / 255 = image * std + mean, per channel: how to get back to the proxy's inputs.
        "normalization": _normalization(proxy),
        "zca": proxy.zca is not None,  # PNGs are de-whitened; the proxy trains on whitened images
        "clipped_values": clipped,
        "clipped_fraction": clipped / values if values else 0.0,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an earlier export is moved aside first and
    deleted only once the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)
