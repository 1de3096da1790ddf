"""The public Python API: one call per stage, keyword-only, taking what the commands take.

``nas_proxy.distill``, ``search``, ``rank`` and ``pipeline`` (see nas_proxy/__init__.py) are
these functions; each is what its ``nas-proxy`` command runs, returns the command's ``--json``
object, and imports the library it needs only when called. ``device`` ("auto", "cpu", "cuda",
"cuda:N" or a ``torch.device``) is resolved once, by the stage's entry function
(docs/architecture.md, "Devices").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def distill(
    *,
    ipc: int,
    out: str | Path,
    dataset: str = "digits",
    method: str = "mtt",
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    data_dir: str | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Distil ``dataset`` into ``ipc`` images per class with ``method`` (mtt, dm, dc, random,
    herding) and write the proxy folder ``out``. ``options``: the method's options by name
    (``nas_proxy.distill.options``; e.g. ``{"iterations": 100}``); one the method does not read
    is a UserError, raised before any work."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill as run
    from nas_proxy.distill.options import method_options
    from nas_proxy.runtime import resolve_device

    checked = method_options(method, options)
    dev = resolve_device(device)  # before loading the data: a bad device fails at once
    data = load_dataset(dataset, data_dir=data_dir, download=download)
    return run(method, data, ipc, out, checked, seed=seed, device=dev)


def search(
    *,
    proxy: str | Path,
    space: str | Path,
    out: str | Path,
    trials: int = 20,
    workers: int = 1,
    epochs: int | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    promote: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """Search the ``space`` (a YAML file or a shipped space's name) on ``proxy`` (a proxy
    folder, or ``"real:DATASET[:steps=N]"`` for short real training) for ``trials``
    finished trials; the study and trials.csv go to ``out`` (a rerun resumes). ``promote``: the
    real-data stages that follow, lowest first, as ``--promote`` spells them (e.g.
    ``["short:epochs=1,top=0.2", "full:epochs=15,top=3"]``). ``options``: the rest of
    :func:`nas_proxy.search.run_search` (objectives, study_name, lr, max_params...)."""
    from nas_proxy.search import run_search
    from nas_proxy.search.space import resolve_space

    return run_search(
        proxy,
        resolve_space(space),
        out,
        trials=trials,
        workers=workers,
        epochs=epochs,
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        seed=seed,
        device=device,
        promote=promote,
        **options,
    )


def rank(
    *,
    out: str | Path,
    study: str | None = None,
    storage: str | None = None,
    candidates: str | Path | None = None,
    proxies: Sequence[str | Path] = (),
    dataset: str | None = None,
    recipe: Mapping[str, Any] | None = None,
    sample: int = 20,
    top_k: int = 5,
    workers: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Retrain candidates (a study's, with ``study`` and ``storage``, or a YAML list,
    ``candidates``) on the full data and report how faithfully each proxy ranks them; the
    report goes to ``out``. ``recipe``: the full-data training recipe (default
    ``recipe.FULL_DATA``, as ``nas-proxy rank``). ``options``: the rest of
    :func:`nas_proxy.rank.compare.rank_candidates` (ceiling_seeds, short_epochs, zero_cost...)."""
    from nas_proxy.rank.api import rank as run
    from nas_proxy.recipe import FULL_DATA, recipe_of

    return run(
        out=out,
        recipe={**recipe_of(FULL_DATA), **(recipe or {})},
        candidates_file=candidates,
        study=study,
        storage=storage,
        dataset=dataset,
        proxies=[str(p) for p in proxies],
        sample=sample,
        top_k=top_k,
        workers=workers,
        seed=seed,
        device=device,
        **options,
    )


def pipeline(
    *,
    out: str | Path,
    dataset: str = "digits",
    seed: int = 0,
    device: str | torch.device = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Experts → MTT proxy → search → rank report into ``out``, with the quick budgets of
    ``nas-proxy pipeline``; ``options``: any budget of :func:`nas_proxy.pipeline.run_pipeline`."""
    from nas_proxy.pipeline import run_pipeline

    return run_pipeline(out, dataset=dataset, seed=seed, device=device, **options)
