"""Several proxies ranked against the same full-data ground truth, on the same candidates.

:func:`rank_candidates` does the work of ``nas-proxy rank`` (whose entry point, reading the
candidates from a study or a file, is :func:`nas_proxy.rank.api.rank`): it scores every
candidate with the ground truth (R seeds, the noise ceiling) and with each proxy (distilled or
subset proxies, short full-data training, zero-cost scores), computes the rank metrics over all
candidates *and* over the best ones by full score, and writes the report.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nas_proxy.errors import UserError
from nas_proxy.rank.baselines import ZERO_COST
from nas_proxy.rank.candidates import Candidate
from nas_proxy.rank.ground_truth import (
    PROXY_SEED_OFFSET,
    DataRef,
    Scorer,
    full_scorer,
    make_jobs,
    run_jobs,
)
from nas_proxy.rank.metrics import rank_summary, ranks
from nas_proxy.train import TrainConfig

if TYPE_CHECKING:
    import torch

SUMMARY_KEYS = ("spearman", "spearman_ci", "kendall", "top_k_overlap", "regret")
# Candidates a real search trains: costs are also reported with the build amortised over these.
PROJECT_TO = 300


@dataclass
class ProxyColumn:
    """One proxy's scores on the candidates (aligned with them) and what it cost."""

    name: str
    kind: str  # proxy | short | zero-cost | search
    scores: list[float | None]
    wall_s: list[float | None]
    amortized_s: float | None = None  # one-off cost shared by the candidates (distillation)
    info: dict[str, Any] = field(default_factory=dict)

    def cost_per_candidate(self, n: int | None = None) -> float | None:
        """Mean training-and-scoring seconds plus the build shared by ``n`` candidates (the
        ranked ones by default; a real search has more, and pays less per candidate)."""
        known = [w for w in self.wall_s if w is not None]
        if not known:
            return None
        n = n or len(self.scores)
        return float(np.mean(known)) + (self.amortized_s or 0.0) / max(n, 1)


def ensemble_column(name: str, members: Sequence[ProxyColumn]) -> ProxyColumn:
    """Average the members' per-candidate ranks (as fractions, higher = better) into one score.

    Proxies distilled with different seeds err in different places; averaging their ranks,
    not their raw accuracies, keeps one proxy with a wider accuracy spread from outweighing the
    others. A candidate missing from a member is scored by the others. It costs every member:
    their training seconds add up, and so do their builds.
    """
    if not members:
        raise UserError(f"ensemble '{name}': no members")
    n = len(members[0].scores)
    fractions = []
    for m in members:
        r = ranks(np.array([np.nan if v is None else v for v in m.scores], dtype=float))
        fractions.append(1.0 - (r - 1.0) / max(np.sum(np.isfinite(r)) - 1, 1))
    stacked = np.vstack(fractions)
    known = np.isfinite(stacked).sum(axis=0)
    mean = np.where(known > 0, np.nansum(stacked, axis=0) / np.maximum(known, 1), np.nan)
    walls = [[m.wall_s[i] for m in members] for i in range(n)]
    builds = [m.amortized_s for m in members]
    return ProxyColumn(
        name,
        members[0].kind,
        [None if not np.isfinite(v) else float(v) for v in mean],
        [None if any(w is None for w in ws) else float(sum(ws)) for ws in walls],
        None if any(b is None for b in builds) else float(sum(builds)),
        {"ensemble_of": [m.name for m in members]},
    )


def build_cost(
    meta: dict[str, Any], path: str | Path, known: dict[str, float] | None = None
) -> float | None:
    """Seconds it took to build a proxy: its proxy.json's ``wall_s``, else ``known[path]``."""
    if meta.get("wall_s") is not None:
        return float(meta["wall_s"])
    known = {str(Path(k).resolve()): v for k, v in (known or {}).items()}
    return known.get(str(Path(path).resolve()))


def proxy_names(dirs: Sequence[str], methods: Sequence[str] | None = None) -> list[str]:
    """The report's name of each proxy folder: its method, or ``method@folder`` when several
    folders share one method (two MTT proxies). ``methods`` saves reading the proxies."""
    if methods is None:
        from nas_proxy.distill.proxy import load_proxy

        methods = [load_proxy(d).method for d in dirs]
    return [
        m if list(methods).count(m) == 1 else f"{m}@{Path(d).name}"
        for d, m in zip(dirs, methods, strict=True)
    ]


def proxy_scorers(
    dirs: Sequence[str],
    dataset_name: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    build_s: dict[str, float] | None = None,
    tunings: Mapping[str, dict[str, Any]] | None = None,
) -> list[Scorer]:
    """A scorer per proxy folder: train on the proxy with its recipe, score on real val.

    ``tunings`` ({suffix: overrides}) adds, for every proxy, one more scorer named
    ``NAME+suffix`` that trains with those overrides on top (e.g. ``{"lr-range": {"lr_scales":
    [0.3, 1, 3]}}``: an lr range test per candidate).
    """
    from nas_proxy.distill.proxy import load_proxy

    # Only the final score matters here (search needs per-epoch values to prune, rank does not).
    base = {"eval_every": 0, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    variants = {"": base, **{f"+{k}": {**base, **v} for k, v in (tunings or {}).items()}}
    loaded = [load_proxy(d) for d in dirs]
    names = proxy_names(dirs, [p.method for p in loaded])
    out = []
    for (d, p, name), (suffix, overrides) in itertools.product(
        zip(dirs, loaded, names, strict=True), variants.items()
    ):
        if p.meta.get("dataset") != dataset_name:
            raise UserError(
                f"--proxy {d}: distilled from '{p.meta.get('dataset')}', but the "
                f"ranking uses '{dataset_name}' (pass --dataset)"
            )
        out.append(
            Scorer(
                "proxy",
                name + suffix,
                {"proxy": p.meta.get("tensors_sha256"), "overrides": overrides},
                seeds=(seed + PROXY_SEED_OFFSET,),
                proxy_dir=str(Path(d).resolve()),
                amortized_s=build_cost(p.meta, d, build_s),
                extra={
                    "method": p.method,
                    "ipc": p.meta.get("ipc"),
                    "dir": str(d),
                    "images": p.meta.get("images"),
                    # One training per lr scale when the lr is range-tested per candidate.
                    "samples_seen": p.train_config(**overrides).samples_seen(len(p.images))
                    * len(overrides.get("lr_scales") or [1]),
                },
            )
        )
    return out


def short_scorers(
    recipe: TrainConfig,
    n_train: int,
    seed: int,
    *,
    epochs: int | None = None,
    steps: Sequence[int] = (),
    match: Sequence[Scorer] = (),
) -> list[Scorer]:
    """Short full-data training as proxies: ``epochs`` epochs, each of ``steps`` optimizer steps,
    and one run per scorer in ``match`` with that proxy's training compute.

    Each is the ground-truth recipe with a budget whose schedule ends inside it (cosine over the
    short run, not the first steps of a long one). Matched runs take as many sample-gradients as
    training on the proxy does (``samples_seen``), so per candidate they cost no more than the
    proxy (which also pays BatchNorm recalibration and its share of the build).
    """
    quick = recipe.replace(eval_every=0, track_test=False)
    budgets: list[tuple[str, TrainConfig, dict[str, Any]]] = []
    if epochs:
        budgets.append((f"short-{epochs}ep", quick.replace(epochs=epochs), {}))
    for n in steps:
        budgets.append((f"short-{n}steps", quick.replace(max_steps=int(n)), {}))
    for proxy in match:
        n = max(1, round(proxy.extra["samples_seen"] / recipe.batch_size))
        cfg = quick.replace(max_steps=n)
        budgets.append((f"short={proxy.name}", cfg, {"matched": proxy.name}))
    out = []
    for name, cfg, info in budgets:
        cfg = cfg.replace(epochs=cfg.epochs_for(n_train))
        scorer = full_scorer(cfg, name=name, seeds=(seed + PROXY_SEED_OFFSET,))
        scorer.extra.update(info, steps=cfg.total_steps(n_train))
        out.append(scorer)
    return out


def zero_cost_scorers(names: Sequence[str], seed: int, batch: int = 64) -> list[Scorer]:
    return [
        Scorer("zero-cost", n, {"metric": n, "batch": batch}, seeds=(seed + PROXY_SEED_OFFSET,))
        for n in names
        if n in ZERO_COST
    ]


def _by_spec(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        grouped[(r["scorer"], r["spec"])].append(r)
    return grouped


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(known)) if len(known) == len(values) and known else None


def _metrics(
    proxy: Sequence[float | None],
    full: Sequence[float | None],
    by_seed: np.ndarray | None,
    top_k: int,
    top_n: int,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """Metrics over all candidates and over the top_n by full score (both, always)."""
    x = np.array([np.nan if v is None else v for v in proxy], dtype=float)
    y = np.array([np.nan if v is None else v for v in full], dtype=float)
    whole = rank_summary(x, y, top_k=top_k, full_by_seed=by_seed, seed=seed, n_boot=n_boot)
    order = np.argsort(-np.where(np.isfinite(y), y, -np.inf), kind="stable")[:top_n]
    top = rank_summary(
        x[order],
        y[order],
        top_k=min(top_k, top_n),
        seed=seed,
        n_boot=n_boot,
        full_by_seed=None if by_seed is None else by_seed[order],
    )
    return {"all": whole, "top": top}


def rank_candidates(
    candidates: list[Candidate],
    *,
    data: DataRef,
    recipe: TrainConfig,
    out: str | Path,
    proxies: Sequence[str] = (),
    proxy_overrides: dict[str, Any] | None = None,
    proxy_build_s: dict[str, float] | None = None,
    proxy_tunings: Mapping[str, dict[str, Any]] | None = None,
    search_proxy: dict[str, Any] | None = None,
    short_epochs: int | None = None,
    short_steps: Sequence[int] = (),
    short_match: bool = False,
    zero_cost: Sequence[str] = ZERO_COST,
    ensembles: Mapping[str, Sequence[str]] | None = None,
    ceiling_seeds: int = 2,
    avoid_seeds: Sequence[int] = (),
    top_k: int = 5,
    top_n: int | None = None,
    subsets: Mapping[str, Sequence[bool]] | None = None,
    project_to: int = PROJECT_TO,
    workers: int = 1,
    device: torch.device,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    n_boot: int = 2000,
    source: dict[str, Any] | None = None,
    write_back: Callable[[list[Candidate], list[float | None]], str] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Score ``candidates`` with the ground truth and every proxy; write the report to ``out``.

    ``search_proxy``: when the candidates come from a study, the proxy that scored them there
    (``{"name", "amortized_s"}``); its scores are the candidates' ``proxy_score`` and it becomes
    the main proxy. Otherwise the main proxy is the first of ``proxies``, else short training,
    else the first zero-cost score. ``proxy_build_s`` ({proxy dir: seconds}) gives the cost of
    building a proxy whose proxy.json does not record it; ``proxy_tunings`` adds variants of
    every proxy's training (:func:`proxy_scorers`). ``write_back(candidates,
    full_scores)`` stores the ground truth where the candidates came from and says where.
    Ground-truth seeds are ``seed, seed+1, ...`` skipping ``avoid_seeds`` (the seed the search
    trained with: a ground-truth run from the same initial weights would share its luck).

    Short full-data training (:func:`short_scorers`): ``short_epochs``, each of ``short_steps``,
    and with ``short_match`` one run per ``proxies`` entry at that proxy's training compute.
    ``subsets`` ({name: mask over candidates}, e.g. a benchmark's held-out half) get their own
    metrics and headline table. ``ensembles`` ({name: proxy names}) adds a column averaging
    those proxies' ranks (:func:`ensemble_column`), e.g. one proxy distilled with several seeds.
    Costs are reported amortised over the ranked candidates and
    over ``project_to`` (the size of a real search). ``device``: already resolved (by
    :func:`nas_proxy.rank.api.rank`). Returns the summary (the ``--json`` object).
    """
    from nas_proxy.rank.report import write_report

    start = time.perf_counter()
    if len(candidates) < 1:
        raise UserError("nothing to rank: no candidates")
    if ceiling_seeds < 1:
        raise UserError(f"--ceiling-seeds {ceiling_seeds}: need at least 1")
    if short_match and not proxies:
        raise UserError("--short-match needs a --proxy to match")
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else out.resolve().parent / "gt-cache"
    dataset = data.load()
    specs = [c.arch for c in candidates]
    n = len(specs)
    top_n = min(n, top_n if top_n else max(top_k, math.ceil(n / 2)))
    for name, mask in (subsets or {}).items():
        if len(mask) != n:
            raise UserError(f"subset '{name}': {len(mask)} flags for {n} candidates")

    gt_seeds = [
        s for s in range(seed, seed + ceiling_seeds + len(avoid_seeds)) if s not in avoid_seeds
    ][:ceiling_seeds]
    gt = full_scorer(recipe, seeds=gt_seeds)
    distilled = proxy_scorers(
        proxies, dataset.name, seed, proxy_overrides, proxy_build_s, proxy_tunings
    )
    short = short_scorers(
        recipe,
        len(dataset.train_y),
        seed,
        epochs=short_epochs,
        steps=short_steps,
        match=distilled if short_match else (),
    )
    scorers = [gt, *distilled, *short, *zero_cost_scorers(zero_cost, seed)]
    # A job crosses into worker processes and its record: the device travels as its name.
    jobs = make_jobs(scorers, specs, data, dataset.checksum, cache, str(device))
    records, counts = run_jobs(
        jobs, workers=workers, desc=f"rank {n} candidates", on_record=on_record
    )
    grouped = _by_spec(records)

    by_seed = np.array(
        [
            [
                next((r["score"] for r in grouped[(gt.name, s)] if r["seed"] == sd), None)
                for sd in gt.seeds
            ]
            for s in specs
        ],
        dtype=float,
    )
    full = [None if not np.all(np.isfinite(row)) else float(row.mean()) for row in by_seed]
    costs = [c for s in specs for r in grouped[(gt.name, s)] if (c := _training_s(r)) is not None]
    full_cost = float(np.mean(costs)) if costs else None

    columns: list[ProxyColumn] = []
    if search_proxy is not None:
        columns.append(
            ProxyColumn(
                search_proxy["name"],
                "search",
                [c.proxy_score for c in candidates],
                [c.proxy_wall_s for c in candidates],
                search_proxy.get("amortized_s"),
                {k: v for k, v in search_proxy.items() if k not in ("name", "amortized_s")},
            )
        )
    for s in scorers[1:]:
        kind = "short" if s.kind == "full" else s.kind
        columns.append(
            ProxyColumn(
                s.name,
                kind,
                [_mean([r["score"] for r in grouped[(s.name, spec)]]) for spec in specs],
                [_mean([r["wall_s"] for r in grouped[(s.name, spec)]]) for spec in specs],
                s.amortized_s,
                dict(s.extra),
            )
        )

    by_name = {c.name: c for c in columns}
    for name, members in (ensembles or {}).items():
        unknown = [m for m in members if m not in by_name]
        if unknown:
            raise UserError(
                f"ensemble '{name}': no proxy named {', '.join(unknown)} "
                f"(have: {', '.join(by_name)})"
            )
        columns.append(ensemble_column(name, [by_name[m] for m in members]))

    seeds_arr = by_seed if ceiling_seeds >= 2 else None
    common = {
        "top_k": top_k,
        "seed": seed,
        "n_boot": n_boot,
        "project_to": project_to,
        "ceiling_seeds": ceiling_seeds,
    }
    every = np.ones(n, dtype=bool)
    headline = _evaluate(columns, full, seeds_arr, every, full_cost, top_n=top_n, **common)
    summary: dict[str, Any] = {
        "n": n,
        **{k: (headline["proxies"][0][k] if columns else None) for k in SUMMARY_KEYS},
        "report": str(out / "report.html"),
        "main_proxy": columns[0].name if columns else None,
        **headline,
        "subsets": {
            name: _evaluate(
                columns,
                full,
                seeds_arr,
                np.asarray(mask, dtype=bool),
                full_cost,
                top_n=min(top_n, int(np.sum(mask))),
                **common,
            )
            for name, mask in (subsets or {}).items()
        },
        "full": {
            "cost_s_per_candidate": full_cost,
            "cost_measure": "training time of one seed (evaluations excluded)",
            "seeds": list(gt.seeds),
            "recipe": gt.settings["recipe"],
            "scored_on": "val",
            "failed": int(sum(v is None for v in full)),
        },
        "top_k": top_k,
        "top_n": top_n,
        "project_to": project_to,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "source": dict(source or {}),
        "trained": counts["trained"],
        "reused": counts["reused"],
        "cache": str(cache),
        "out": str(out),
        "wall_s": None,
    }
    if write_back is not None:
        summary["source"]["full_score_written_to"] = write_back(candidates, full)
    summary["wall_s"] = round(time.perf_counter() - start, 3)
    table = _table(candidates, full, by_seed, gt.seeds, grouped, gt.name, columns)
    for name, mask in (subsets or {}).items():
        table[f"in:{name}"] = list(mask)
    summary["files"] = write_report(out, table, summary)
    return summary


def _training_s(record: dict) -> float | None:
    """A ground-truth run's cost: its training time alone when its history records it (the
    per-epoch evaluations of a benchmark's ground truth are not part of what a user pays)."""
    history = record.get("history") or []
    if history and history[-1].get("train_s") is not None:
        return float(history[-1]["train_s"])
    return record.get("wall_s")


def _evaluate(
    columns: list[ProxyColumn],
    full: list[float | None],
    by_seed: np.ndarray | None,
    mask: np.ndarray,
    full_cost: float | None,
    *,
    top_k: int,
    top_n: int,
    seed: int,
    n_boot: int,
    project_to: int,
    ceiling_seeds: int,
) -> dict[str, Any]:
    """Every proxy's metrics and costs over the candidates in ``mask``, the noise ceiling over
    the same ones, the cost-ρ Pareto frontier and the proxy to trust at each budget."""
    idx = np.flatnonzero(mask)
    sub_full = [full[i] for i in idx]
    sub_seeds = None if by_seed is None else by_seed[idx]
    entries = []
    for col in columns:
        m = _metrics([col.scores[i] for i in idx], sub_full, sub_seeds, top_k, top_n, seed, n_boot)
        cost = col.cost_per_candidate()
        projected = col.cost_per_candidate(max(project_to, len(col.scores)))
        if col.kind in ("proxy", "search") and col.amortized_s is None:
            m["all"]["notes"].append(
                "the cost of building this proxy is unknown (not in its "
                "proxy.json): cost and speed-up leave it out"
            )
        entries.append(
            {
                "name": col.name,
                "kind": col.kind,
                **{k: m["all"][k] for k in (*SUMMARY_KEYS, "kendall_ci", "fraction_of_ceiling")},
                "spearman_top": m["top"]["spearman"],
                "spearman_top_ci": m["top"]["spearman_ci"],
                "kendall_top": m["top"]["kendall"],
                "top_k_overlap_top": m["top"]["top_k_overlap"],
                "cost_s_per_candidate": cost,
                "cost_s_projected": projected,
                "amortized_s": col.amortized_s,
                "speedup": (full_cost / cost) if cost and full_cost else None,
                "cost_ratio_projected": (projected / full_cost)
                if projected and full_cost
                else None,
                "notes": m["all"]["notes"],
                "notes_top": m["top"]["notes"],
                **col.info,
            }
        )
    ceiling = _metrics(sub_full, sub_full, sub_seeds, top_k, top_n, seed, n_boot)
    has_ceiling = by_seed is not None
    return {
        "n": int(idx.size),
        "top_n": top_n,
        "proxies": entries,
        "ceiling": {
            "value": ceiling["all"]["ceiling"],
            "ci": ceiling["all"]["ceiling_ci"],
            "agreement": ceiling["all"]["ceiling_agreement"],
            "seeds": ceiling_seeds,
            "value_top": ceiling["top"]["ceiling"],
            "ci_top": ceiling["top"]["ceiling_ci"],
            # Only the ceiling's own caveats (the rest compare the ground truth with itself).
            "notes": [s for s in ceiling["all"]["notes"] if s.startswith("ceiling") or "seed" in s]
            if has_ceiling
            else ["one ground-truth seed (--ceiling-seeds 1): no noise ceiling"],
        },
        "frontier": pareto_front(entries, cost="cost_s_projected"),
        "trust": trust_by_budget(entries, cost="cost_s_projected"),
    }


def pareto_front(entries: Sequence[dict[str, Any]], cost: str = "cost_s_projected") -> list[str]:
    """Names of the proxies no other beats on both cost and ρ, cheapest first.

    A proxy is dominated when another costs at most as much and ranks at least as well, one of
    the two strictly. Proxies without a cost or a ρ are left out.
    """
    known = [e for e in entries if e.get(cost) is not None and e.get("spearman") is not None]
    front = [
        e
        for e in known
        if not any(
            o[cost] <= e[cost]
            and o["spearman"] >= e["spearman"]
            and (o[cost] < e[cost] or o["spearman"] > e["spearman"])
            for o in known
        )
    ]
    return [e["name"] for e in sorted(front, key=lambda e: (e[cost], -e["spearman"]))]


def trust_by_budget(
    entries: Sequence[dict[str, Any]], cost: str = "cost_s_projected"
) -> list[dict[str, Any]]:
    """The proxy to trust at each budget: one row per frontier proxy, from its cost up to the
    next one's, with whether its lead over the cheaper choice is beyond the noise.

    "Beyond the noise" means the two 95% intervals do not overlap; where they do, the cheaper
    proxy is as defensible a choice and the row says so.
    """
    by_name = {e["name"]: e for e in entries}
    front = [by_name[n] for n in pareto_front(entries, cost)]
    rows = []
    for i, e in enumerate(front):
        prev = front[i - 1] if i else None
        clear = None
        if prev is not None and e.get("spearman_ci") and prev.get("spearman_ci"):
            clear = e["spearman_ci"][0] > prev["spearman_ci"][1]
        rows.append(
            {
                "from_s": e[cost],
                "to_s": front[i + 1][cost] if i + 1 < len(front) else None,
                "proxy": e["name"],
                "kind": e["kind"],
                "spearman": e["spearman"],
                "spearman_ci": e.get("spearman_ci"),
                "better_than_cheaper": clear,
                "cheaper": prev["name"] if prev else None,
            }
        )
    return rows


def _table(
    candidates: list[Candidate],
    full: list[float | None],
    by_seed: np.ndarray,
    seeds: Sequence[int],
    grouped: dict,
    gt_name: str,
    columns: list[ProxyColumn],
) -> pd.DataFrame:
    """One row per candidate: ground truth, per-seed scores and every proxy's score and rank."""
    df = pd.DataFrame(
        {"arch": [c.arch for c in candidates], "family": [c.family for c in candidates]}
    )
    if any(c.trial is not None for c in candidates):
        df["trial"] = [c.trial for c in candidates]
    first = [grouped[(gt_name, c.arch)][0] for c in candidates]
    df["params"] = [r.get("params") for r in first]
    df["flops"] = [r.get("flops") for r in first]
    df["full_score"] = full
    for j, sd in enumerate(seeds):
        df[f"full_score_seed{sd}"] = by_seed[:, j]
    df["full_test_accuracy"] = [
        _mean([r.get("test_accuracy") for r in grouped[(gt_name, c.arch)]]) for c in candidates
    ]
    df["full_rank"] = ranks(df["full_score"].astype(float))
    if columns:
        df["proxy_score"] = columns[0].scores
        df["proxy_rank"] = ranks(df["proxy_score"].astype(float))
    for col in columns:
        df[f"proxy_score:{col.name}"] = col.scores
        df[f"proxy_rank:{col.name}"] = ranks(df[f"proxy_score:{col.name}"].astype(float))
        df[f"cost_s:{col.name}"] = col.wall_s
    return df
