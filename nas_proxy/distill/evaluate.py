"""Evaluate several proxies: train architectures from scratch on each, test on real data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nas_proxy.data import Dataset, load_dataset
from nas_proxy.distill.proxy import evaluate_proxy, load_proxy
from nas_proxy.models import parse_spec

log = logging.getLogger(__name__)


def evaluate_proxies(
    proxies: Sequence[str | Path],
    specs: Sequence[str],
    *,
    seeds: Sequence[int],
    device: torch.device,
    dataset: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    say: Callable[[str], None] = log.info,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Rows of :func:`evaluate_proxy` for every proxy × spec (test accuracy over ``seeds``).

    Each real dataset (``dataset``, else the one in each proxy.json) is loaded once. A proxy
    distilled from another version or split of its dataset is evaluated with a note through
    ``say``. ``overrides`` replace recipe entries (``epochs``, ``lr``, ``recalibrate_norm``).
    Every spec and proxy is checked before any training.
    """
    canonical = [str(parse_spec(s)) for s in specs]
    loaded = [load_proxy(p) for p in proxies]
    datasets: dict[str, Dataset] = {}
    rows: list[dict[str, Any]] = []
    for proxy in loaded:
        name = dataset or proxy.meta.get("dataset")
        if name not in datasets:
            datasets[name] = load_dataset(name, data_dir=data_dir, download=download)
        data = datasets[name]
        if proxy.meta.get("dataset_checksum") not in (None, data.checksum):
            say(f"note: {proxy.path} was distilled from another version or split of {name}")
        say(f"evaluating {proxy.path} ({proxy.method}, {len(proxy.images)} images) on {device}")
        rows += evaluate_proxy(
            proxy, data, canonical, seeds=list(seeds), device=device, **overrides
        )
    return rows
