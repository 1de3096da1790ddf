"""Distillation methods behind one entry point, all writing the proxy format of ``proxy.py``.

Each method registers its run function with its options class (:mod:`.options`):
``run(dataset, ipc, out, options, *, seed, device) -> dict``, a summary holding at least
``dir, method, ipc, images, iterations, wall_s``. ``options`` is the method's frozen dataclass,
or a mapping of option names that :func:`.options.method_options` turns into one (an option
the method does not read is an error). Methods are imported when called, so importing this
package stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_proxy.distill.options import RecipeOptions, method_options

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Method:
    """A distillation method: where its run function lives; ``options.OPTIONS[name]`` is the
    frozen dataclass of what it reads."""

    name: str
    module: str
    function: str

    def __call__(
        self, dataset, ipc: int, out: Path, options: Any, *, seed: int, device: torch.device
    ) -> dict[str, Any]:
        run = getattr(importlib.import_module(f"nas_proxy.distill.{self.module}"), self.function)
        return run(dataset, ipc, out, method_options(self.name, options), seed=seed, device=device)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mtt", "mtt", "run_mtt"),
        Method("dm", "dm", "run_dm"),
        Method("dc", "dc", "run_dc"),
        Method("random", "subsets", "run_random"),
        Method("herding", "subsets", "run_herding"),
    )
}


def distill(
    method: str,
    dataset,
    ipc: int,
    out: str | Path,
    options: RecipeOptions | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Build a proxy of ``dataset`` with ``ipc`` images per class into ``out``; ``device`` is
    resolved here, once, and the method gets the ``torch.device``.

    ``options``: the method's options object or a mapping of its option names
    (:mod:`nas_proxy.distill.options`); an option the method does not read is a UserError.
    """
    from nas_proxy.distill.common import require_ipc
    from nas_proxy.runtime import resolve_device

    checked = method_options(method, options)  # an unknown method or option: before any work
    require_ipc(dataset, ipc)
    return METHODS[method](
        dataset, ipc, Path(out), checked, seed=seed, device=resolve_device(device)
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
