"""``rank()``, the library call behind ``nas-proxy rank``: candidates from an Optuna study or a
YAML file, the ground-truth recipe from flag values, then :func:`compare.rank_candidates`;
with a study, the full-data scores are written back to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_proxy.errors import UserError
from nas_proxy.rank.candidates import Candidate
from nas_proxy.rank.compare import build_cost, proxy_names, rank_candidates
from nas_proxy.rank.ground_truth import DataRef
from nas_proxy.recipe import TrainConfig, train_config
from nas_proxy.runtime import resolve_device

if TYPE_CHECKING:
    import torch


def recipe_config(recipe: dict[str, Any], dataset_name: str, seed: int = 0) -> TrainConfig:
    """The ground-truth recipe (flag values) as a TrainConfig; ``augment: dsa`` means the
    dataset's default DSA strategy, ``none`` no augmentation."""
    # Ranking needs only the final score: skip per-epoch validation unless asked for.
    return train_config({"eval_every": 0, **recipe}, dataset_name, seed=seed)


def _search_proxy(
    study, proxy_dir: str | None, build_s: dict[str, float] | None
) -> tuple[dict[str, Any], str | None]:
    """Name and distillation cost of the proxy a study was searched on (from its attributes)."""
    from nas_proxy.distill.proxy import is_real_ref, load_proxy

    attrs = study.user_attrs
    path = proxy_dir or attrs.get("proxy") or attrs.get("proxy_dir")
    info: dict[str, Any] = {"name": "search", "amortized_s": None, "study": study.study_name}
    dataset = attrs.get("dataset")
    if path and is_real_ref(path):  # searched on short real training: nothing was built
        info.update(name=f"{path} (search)", amortized_s=0.0, method="real")
    elif path and Path(path).exists():
        meta = load_proxy(path).meta
        info.update(
            name=f"{meta.get('method', 'search')} (search)",
            amortized_s=build_cost(meta, path, build_s),
            method=meta.get("method"),
            dir=str(path),
        )
        dataset = dataset or meta.get("dataset")
    return info, dataset


def rank(
    *,
    out: str | Path,
    recipe: dict[str, Any],
    candidates_file: str | Path | None = None,
    study: str | None = None,
    storage: str | None = None,
    study_proxy: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    train_limit: int | None = None,
    proxies: Sequence[str] = (),
    sample: int = 20,
    top_k: int = 5,
    seed: int = 0,
    ensemble: bool = False,
    device: str | torch.device = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Candidates from a study (top_k + stratified sample of ``sample``) or a YAML file, ranked
    by :func:`rank_candidates`; with a study, the full scores are written back to it.

    The dataset is, in order: ``dataset``, the study's, the first proxy's, ``digits``.
    ``ensemble``: also rank with all ``proxies`` as one (the mean of their ranks).
    ``options`` go to :func:`rank_candidates` (short_epochs, zero_cost, ceiling_seeds, ...).
    ``device`` is resolved here, once (docs/architecture.md, "Devices").
    """
    from nas_proxy.distill.proxy import load_proxy
    from nas_proxy.rank.candidates import (
        load_candidates_file,
        load_study,
        record_full_scores,
        sample_study,
        search_seed,
    )

    if (candidates_file is None) == (study is None):
        raise UserError(
            "give exactly one of --study NAME (with --storage URL) or --candidates FILE"
        )
    if sample < 1 or top_k < 1:
        raise UserError(f"--sample {sample} and --top-k {top_k} must be at least 1")
    device = resolve_device(device)
    search_proxy, write_back = None, None
    if study is not None:
        if not storage:
            raise UserError("--study needs --storage URL (the search's storage)")
        st = load_study(storage, study)
        cands = sample_study(st, sample, top_k, seed)
        search_proxy, study_dataset = _search_proxy(st, study_proxy, options.get("proxy_build_s"))
        dataset = dataset or study_dataset
        source = {
            "study": study,
            "storage": storage,
            "sampled": len(cands),
            "search_seed": search_seed(st),
        }
        if source["search_seed"] is not None:
            options.setdefault("avoid_seeds", [source["search_seed"]])

        def write_back(cs: list[Candidate], full: list[float | None]) -> str:
            return record_full_scores(st, {c.trial: v for c, v in zip(cs, full, strict=True)})
    else:
        cands = load_candidates_file(candidates_file)
        source = {"candidates": str(candidates_file)}
    if not dataset and proxies:
        dataset = load_proxy(proxies[0]).meta.get("dataset")
    data = DataRef(dataset or "digits", data_dir, download, train_limit)
    if ensemble:
        if len(proxies) < 2:
            raise UserError("--ensemble needs two or more --proxy folders")
        options["ensembles"] = {"ensemble": proxy_names(proxies)}
    summary = rank_candidates(
        cands,
        data=data,
        recipe=recipe_config(recipe, data.name),
        out=out,
        proxies=proxies,
        search_proxy=search_proxy,
        top_k=top_k,
        seed=seed,
        source=source,
        write_back=write_back,
        device=device,
        **options,
    )
    return summary
