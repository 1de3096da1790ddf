"""Distillation methods behind one entry point, all writing the proxy format of ``proxy.py``.

Each method is ``run(dataset, ipc, out, opts, *, seed, device) -> dict`` (a summary holding at
least ``dir, method, ipc, images, iterations, wall_s``). ``opts`` holds the CLI's options by
their long names with ``_`` (``None``: not given); a method reads the ones it documents and
ignores the rest. Methods are imported when called, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nas_proxy.errors import UserError

Method = Callable[..., dict[str, Any]]


def _lazy(module: str, name: str) -> Method:
    def run(
        dataset, ipc: int, out: Path, opts: dict[str, Any], *, seed: int, device: torch.device
    ) -> dict[str, Any]:
        impl = getattr(importlib.import_module(f"nas_proxy.distill.{module}"), name)
        return impl(dataset, ipc, out, opts, seed=seed, device=device)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"nas_proxy.distill.{module}.{name}, imported on first use."
    return run


METHODS: dict[str, Method] = {
    "mtt": _lazy("mtt", "run_mtt"),
    "dm": _lazy("dm", "run_dm"),
    "dc": _lazy("dc", "run_dc"),
    "random": _lazy("subsets", "run_random"),
    "herding": _lazy("subsets", "run_herding"),
}


def distill(
    method: str,
    dataset,
    ipc: int,
    out: str | Path,
    opts: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device | str = "auto",
) -> dict[str, Any]:
    """Build a proxy of ``dataset`` with ``ipc`` images per class into ``out``."""
    from nas_proxy.distill.common import require_ipc
    from nas_proxy.runtime import resolve_device

    if method not in METHODS:
        raise UserError(f"--method {method}: unknown; known methods: {', '.join(METHODS)}")
    require_ipc(dataset, ipc)
    return METHODS[method](
        dataset, ipc, Path(out), dict(opts), seed=seed, device=resolve_device(device)
    )


# The export API (a proxy as an image folder or a torch Dataset) is loaded on first use, like
# the methods, so that importing this package stays cheap.
_LAZY = {
    "ProxyDataset": "nas_proxy.distill.export",
    "export_proxy": "nas_proxy.distill.export",
    "load_proxy": "nas_proxy.distill.proxy",
}
__all__ = ["METHODS", "distill", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nas_proxy.distill' has no attribute {name!r}")
