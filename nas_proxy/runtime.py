"""Device selection, seeding, progress bars and version metadata."""

from __future__ import annotations

import os
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nas_proxy.errors import UserError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {device}: no such GPU (found {torch.cuda.device_count()})")
        return torch.device(name)
    raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(iterable=None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that hides itself when stderr is not a terminal."""
    kwargs.setdefault("disable", None if not os.environ.get("NAS_PROXY_NO_PROGRESS") else True)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def versions() -> dict[str, str]:
    """Versions of the packages that decide results, recorded in every metadata file."""
    import nas_proxy

    out = {
        "python": platform.python_version(),
        "nas_proxy": nas_proxy.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for name in ("timm", "optuna", "scipy", "pandas"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    out["cuda"] = torch.version.cuda or "none"
    out["allocator"] = allocator()
    return out


def allocator() -> str:
    """The malloc this process runs with: a preloaded tcmalloc/jemalloc/mimalloc (see
    :mod:`nas_proxy.launch`) or the system's; it changes speed and peak memory, not results."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"
