"""nas-proxy: neural architecture search on distilled dataset proxies.

The Python API is one call per stage, keyword-only (:mod:`nas_proxy.api`)::

    import nas_proxy
    nas_proxy.distill(dataset="digits", ipc=10, out="runs/p")
    nas_proxy.search(proxy="runs/p", space="convnet", out="runs/s", trials=20)
    nas_proxy.rank(study="nas-proxy", storage="sqlite:///runs/s/study.db", out="runs/r")
    nas_proxy.pipeline(out="runs/quick")

``import nas_proxy`` imports no torch: each call imports what it needs.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib import metadata

from nas_proxy.errors import UserError

try:
    __version__ = metadata.version("nas-proxy")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

API = ("distill", "search", "rank", "pipeline")
__all__ = ["UserError", "__version__", *API]


class _StageModule(types.ModuleType):
    """``nas_proxy.distill`` etc. are both a subpackage and an API call: calling the module
    runs :mod:`nas_proxy.api`'s function of the same name."""

    def __call__(self, **kwargs):
        api = importlib.import_module("nas_proxy.api")
        return getattr(api, self.__name__.rpartition(".")[2])(**kwargs)


class _Package(types.ModuleType):
    # Importing a submodule sets it as an attribute of its package: the four stage modules
    # become callable at that moment, whoever imports them first.
    def __setattr__(self, name: str, value) -> None:
        if name in API and isinstance(value, types.ModuleType):
            value.__class__ = _StageModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in API:  # not imported yet: import the stage module (cheap), which is callable
        return importlib.import_module(f"nas_proxy.{name}")
    raise AttributeError(f"module 'nas_proxy' has no attribute {name!r}")
