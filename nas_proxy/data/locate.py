"""Where dataset files are looked for, and the opt-in download.

Order: ``--data-dir``, ``$NAS_PROXY_DATA``, system dataset packages (Debian installs
Fashion-MNIST under /usr/share/datasets/fashion-mnist), the download cache, and only then a
download when asked. Inside each root a dataset may sit in one of its usual subfolders
(``fashion-mnist/``, torchvision's ``FashionMNIST/raw/``, ``cifar-10-batches-py/``...) or, for
folders the user named, directly in the root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nas_proxy.errors import UserError

# Debian's dataset-* packages; a list so tests can point it elsewhere.
SYSTEM_ROOTS: list[Path] = [Path("/usr/share/datasets")]


@dataclass(frozen=True)
class Root:
    path: Path
    label: str  # how the not-found message names it
    itself: bool  # may hold a dataset's files directly (only folders the user named)


def check_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path; a missing folder is a user error naming ``what`` gave it."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"{what}: no such directory")
    return p


def download_root(data_dir: str | Path | None = None) -> Path:
    """Where ``--download`` writes: the data dir, else $NAS_PROXY_DATA, else the user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("NAS_PROXY_DATA"):
        return Path(os.environ["NAS_PROXY_DATA"]).expanduser()
    cache = os.environ.get("NAS_PROXY_CACHE") or "~/.cache/nas-proxy"
    return Path(cache).expanduser() / "data"


def search_roots(data_dir: str | Path | None = None) -> list[Root]:
    """The roots to search, in order. A named folder that does not exist is a user error."""
    roots = []
    if data_dir is not None:
        roots.append(Root(check_dir(data_dir, f"--data-dir {data_dir}"), "--data-dir", True))
    env = os.environ.get("NAS_PROXY_DATA")
    if env:
        roots.append(Root(check_dir(env, f"NAS_PROXY_DATA={env}"), "$NAS_PROXY_DATA", True))
    roots += [Root(p, "system", False) for p in SYSTEM_ROOTS]
    cache = download_root(None) if not env else None
    if cache is not None:
        roots.append(Root(cache, "download cache", False))
    return roots


def find(
    subdirs: Sequence[str], missing: Callable[[Path], list[str]], data_dir: str | Path | None = None
) -> tuple[Path | None, list[str]]:
    """First folder holding every file (``missing`` returns none); else None and notes.

    The notes name each root searched and any folder that holds only some of the files, so
    the not-found message can say what is wrong.
    """
    notes = []
    for root in search_roots(data_dir):
        notes.append(f"{root.path} ({root.label})")
        named = [root.path / s for s in subdirs]
        for folder in named + ([root.path] if root.itself else []):
            if not folder.is_dir():
                continue
            lacking = missing(folder)
            if not lacking:
                return folder, notes
            if folder in named:  # a dataset folder that is incomplete: say what it lacks
                notes.append(f"{folder} lacks {', '.join(lacking)}")
    return None, notes


def not_found(name: str, notes: list[str], hint: str = "") -> UserError:
    where = "; ".join(notes) if notes else "nowhere"
    extra = f" {hint}" if hint else ""
    return UserError(
        f"dataset '{name}' not found (looked in: {where}); pass --data-dir DIR "
        f"(a folder holding it) or --download.{extra}"
    )


def download_idx(root: Path, torchvision_class: str) -> None:
    """MNIST-style IDX files (kept gzipped) into torchvision's ``<Class>/raw`` layout."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_url

    cls = getattr(datasets, torchvision_class)
    folder = root / cls.__name__ / "raw"
    for filename, md5 in cls.resources:
        errors = []
        for mirror in cls.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(folder), filename=filename, md5=md5)
                break
            except Exception as e:  # network failures come in many types; report them all
                errors.append(f"{mirror}: {type(e).__name__}: {e}")
        else:
            raise UserError(f"download of {filename} failed ({'; '.join(errors)})")


def download_archive(root: Path, torchvision_class: str) -> None:
    """A CIFAR tarball, checked against torchvision's MD5 and unpacked into ``root``.

    Only torchvision's download helper is used: its dataset classes would unpickle the files
    with the unrestricted unpickler.
    """
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(datasets, torchvision_class)
    try:
        download_and_extract_archive(
            cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5, remove_finished=True
        )
    except Exception as e:  # network failures come in many types
        raise UserError(f"download of {cls.url} failed ({type(e).__name__}: {e})") from None
