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
from nas_proxy.launch import (  # stdlib only, so the CLI and the launcher run without torch
    allocator,
    available_cores,
    free_cores,
    requested_threads,
)


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


NO_PROGRESS_ENV = "NAS_PROXY_NO_PROGRESS"


def progress(iterable=None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr: shown on a terminal and in a Jupyter kernel (tqdm.auto draws a
    widget there), hidden elsewhere (logs, pipes) and whenever $NAS_PROXY_NO_PROGRESS is set."""
    if os.environ.get(NO_PROGRESS_ENV):
        kwargs.setdefault("disable", True)
    else:
        # None: tqdm hides the bar when the stream is not a terminal. A kernel's stderr is not
        # one, yet the notebook shows the bar, so there it is always on.
        kwargs.setdefault("disable", False if in_notebook() else None)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def hide_progress() -> None:
    """Hide every progress bar of this process and of the processes it starts (the
    ``--no-progress`` flag): the environment variable is what worker processes inherit."""
    os.environ[NO_PROGRESS_ENV] = "1"


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (the test tqdm.auto makes to pick its widget)."""
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


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


# The CPU features that decide training speed here: wide vectors, and native bf16 (without it
# bf16 is emulated and slower than fp32).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """CPU model, speed-relevant flags and cores available to this process (every timing is
    recorded with it: machines of the same kind differ in AVX512-BF16)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {
        "model": model,
        "flags": " ".join(f for f in CPU_FLAGS if f in flags),
        "cores": available_cores(),
        "threads": torch.get_num_threads(),
        # Other jobs on the same cores slow a timing down: say how busy the machine was.
        "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def die_with_parent() -> None:
    """Have the kernel kill this (worker) process when its parent dies, kill -9 included
    (Linux; elsewhere a no-op). Workers otherwise outlive a killed run and keep training."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def worker_threads(workers: int) -> int:
    """Threads for each of ``workers`` pool processes: their share of the cores other processes
    leave free (or of ``NAS_PROXY_THREADS``), at least 1."""
    try:
        total = requested_threads(os.environ) or free_cores()
    except ValueError as e:
        raise UserError(str(e)) from None
    return max(1, total // workers)


def init_worker_process(threads: int) -> None:
    """What every pool worker does first: die with its parent, take its share of the cores,
    and leave the progress bar to the parent (one bar, not W interleaved ones)."""
    die_with_parent()
    torch.set_num_threads(threads)
    hide_progress()
