"""``imagefolder:PATH``: one subfolder per class, images of one common size.

``PATH/train/<class>/...`` and ``PATH/test/<class>/...`` give explicit splits; otherwise
``PATH/<class>/...`` is split with a fixed stratified 20% test hold-out (a constant seed, so
every run and stage sees the same test set). Images are never resized: a mixed-size folder is a
user error. The folder is grayscale (1 channel) when every image is, else RGB.

Symlinks (class folders, subfolders, files) are followed while they stay inside ``PATH``; one
that leads out of it is refused, so a dataset is always the tree it names (and its checksum
covers every file it reads). Each real folder is read once: a link to an ancestor cannot loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nas_proxy.data.prepare import RawData, stratified_split
from nas_proxy.errors import UserError
from nas_proxy.io import file_sha256

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed on purpose: the test split must not move with any user seed


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
    if not folders:
        raise UserError(f"{root}: no class folders (expected one subfolder per class)")
    return folders


def _inside(path: Path, root: Path) -> Path:
    """``path`` with its symlinks resolved; one that leads out of ``root`` is a user error."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise UserError(
            f"{path}: a symlink to {real}, outside {root} (copy it in, or point "
            "imagefolder: at a folder that holds all of the dataset)"
        )
    return real


def _image_files(folder: Path, root: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), following symlinks only inside
    ``root`` (resolved) and reading each real folder once."""
    files: list[Path] = []
    seen: set[Path] = set()
    todo = [folder]
    while todo:
        current = todo.pop()
        real = _inside(current, root)
        if real in seen:
            continue
        seen.add(real)
        for p in current.iterdir():
            if not _visible(p):
                continue
            if p.is_dir():
                todo.append(p)
            elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                _inside(p, root)
                files.append(p)
    return sorted(files)


def _scan(root: Path, classes: list[str], top: Path) -> tuple[list[Path], np.ndarray]:
    """Image files under ``root/<class>/`` (recursively, sorted) and their class indices;
    ``top`` is the dataset's resolved folder, which no symlink may leave."""
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = root / name
        found = _image_files(folder, top) if folder.is_dir() else []
        if not found:
            raise UserError(f"{folder}: class folder has no images (empty class)")
        files += found
        labels += [index] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _read_images(files: list[Path]) -> np.ndarray:
    """N×C×H×W uint8. A first pass reads only headers to check sizes and choose the channels."""
    from PIL import Image, UnidentifiedImageError

    def opened(path: Path) -> Image.Image:
        try:
            return Image.open(path)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{path}: not a readable image ({e})") from None

    size, gray = None, True
    for path in files:
        with opened(path) as img:
            if size is None:
                size = img.size
            elif img.size != size:
                raise UserError(
                    f"{path}: image size {img.size[0]}x{img.size[1]} differs from "
                    f"{size[0]}x{size[1]} (all images must have one size)"
                )
            gray &= img.mode in GRAY_MODES
    mode = "L" if gray else "RGB"
    out = np.empty((len(files), 1 if gray else 3, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(files):
        with opened(path) as img:
            try:
                pixels = np.asarray(img.convert(mode))
            except OSError as e:  # a truncated file fails only when decoded
                raise UserError(f"{path}: not a readable image ({e})") from None
        out[i] = pixels[None] if gray else pixels.transpose(2, 0, 1)
    return out


def load(root: Path) -> RawData:
    if not root.is_dir():
        raise UserError(f"{root}: no such directory")
    split_dirs = (root / "train", root / "test")
    explicit = all(d.is_dir() for d in split_dirs)
    classes = [p.name for p in class_folders(split_dirs[0] if explicit else root)]
    if explicit:
        extra = sorted({p.name for p in class_folders(split_dirs[1])} - set(classes))
        if extra:
            raise UserError(
                f"{split_dirs[1]}: class folder '{extra[0]}' has no counterpart in {split_dirs[0]}"
            )
        train_files, train_y = _scan(split_dirs[0], classes, root.resolve())
        test_files, test_y = _scan(split_dirs[1], classes, root.resolve())
        x = _read_images(train_files + test_files)
        train_x, test_x = x[: len(train_files)], x[len(train_files) :]
        files = train_files + test_files
    else:
        files, y = _scan(root, classes, root.resolve())
        x = _read_images(files)
        keep, held = stratified_split(y, TEST_FRACTION, TEST_SEED)
        train_x, train_y, test_x, test_y = x[keep], y[keep], x[held], y[held]
    source = {
        "format": "imagefolder",
        "test_fraction": None if explicit else TEST_FRACTION,
        "files": {str(p.relative_to(root)): file_sha256(p) for p in files},
    }
    return RawData(
        train_x,
        train_y,
        test_x,
        test_y,
        classes,
        source=source,
        train_file=str(split_dirs[0] if explicit else root),
        test_file=str(split_dirs[1] if explicit else root),
    )
