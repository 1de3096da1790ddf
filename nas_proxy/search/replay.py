"""Replay search policies on a table of measured candidates: regret against compute spent.

A table holds, per candidate and fidelity (proxy, short real training, full training), the
scores of one or more measured runs (seeds) and their cost in seconds. One replay draws a random
search order and, for every candidate, which of its measured runs the policy observes (a real
search sees one noisy run, not the seed mean); it then runs a policy under a budget and scores
its pick by the candidate's *mean* full score. Regret = best mean full score in the table minus
the pick's. Budgets and costs are in units of one full training (the table's mean full cost).

Policies:

* ``single(fidelity)``: evaluate candidates in search order at one fidelity until the budget
  runs out; pick the best observed score (proxy only, short only, full training of random
  candidates);
* ``staged(stages)``: successive halving across fidelities. The first stage screens candidates
  in search order; each later stage promotes the best ``top`` of the previous stage (a float is a
  fraction, an int a count, ``None``: as many as the budget allows), best first, until the budget
  runs out. The pick is the best candidate at the highest fidelity reached, the same rule as
  ``nas-proxy search --promote``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nas_proxy.errors import UserError


@dataclass(frozen=True)
class Fidelity:
    """Measured runs of every candidate at one fidelity: ``scores`` and ``costs`` are
    candidates × runs (NaN where a candidate has fewer runs); costs in seconds.

    ``shared``: the runs are shared by every candidate, and a replay observes one run for all
    of them: the columns of a proxy are proxies distilled with different seeds, and a search
    has one. Otherwise (trainings) each candidate's run is drawn on its own."""

    scores: np.ndarray
    costs: np.ndarray
    shared: bool = False

    def __post_init__(self) -> None:
        if self.scores.shape != self.costs.shape or self.scores.ndim != 2:
            raise UserError("a fidelity needs scores and costs of one shape: candidates x runs")
        if not np.isfinite(self.scores).any(axis=1).all():
            raise UserError("every candidate needs at least one measured run at every fidelity")


@dataclass(frozen=True)
class Stage:
    fidelity: str
    top: float | int | None = None  # float: fraction of the stage below; int: count; None: all


@dataclass(frozen=True)
class Policy:
    name: str
    stages: tuple[Stage, ...]  # one stage: a single-fidelity policy


def single(fidelity: str) -> Policy:
    return Policy(f"{fidelity} only", (Stage(fidelity),))


def staged(name: str, stages: Sequence[Stage]) -> Policy:
    return Policy(name, tuple(stages))


def promoted_count(top: float | int | None, n: int) -> int:
    """How many of ``n`` candidates a stage promotes: ``top`` an int is a count, a float a
    fraction in (0, 1] (rounded up), None all (``--promote`` uses the same rule)."""
    if top is None:
        return n
    if isinstance(top, int):
        return min(n, top)
    return min(n, max(1, math.ceil(top * n - 1e-9)))  # a fraction rounds up: 0.5 of 5 -> 3


def run_policy(
    policy: Policy,
    order: np.ndarray,
    observed: Mapping[str, tuple[np.ndarray, np.ndarray]],
    budget: float,
) -> tuple[int, float]:
    """(picked candidate, compute spent) of one replay; ``observed[f]`` = (score, cost) per
    candidate as this replay sees them, costs in full-training units."""
    spent = 0.0
    pool = [int(i) for i in order]
    pick = pool[0]
    for k, stage in enumerate(policy.stages):
        score, cost = observed[stage.fidelity]
        chosen = pool[: promoted_count(stage.top, len(pool))] if k else pool
        done = []
        for i in chosen:
            if spent + cost[i] > budget + 1e-9:
                break
            spent += cost[i]
            done.append(i)
        if not done:
            break  # nothing affordable here: the pick stays at the fidelity below
        pool = sorted(done, key=lambda i: -score[i])  # the next stage promotes best first
        pick = pool[0]
    return pick, spent


def replay(
    fidelities: Mapping[str, Fidelity],
    policies: Sequence[Policy],
    budgets: Sequence[float],
    *,
    full: str = "full",
    truth: np.ndarray | None = None,
    replays: int = 1000,
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """Mean and spread of regret and compute spent, per policy and budget (rows of a table).

    ``truth``: what a pick is worth, per candidate (default: the mean of its ``full`` runs; pass
    held-out test accuracy to keep the scores that choose apart from those that judge)."""
    if full not in fidelities:
        raise UserError(f"the table has no {full!r} fidelity (it has: {', '.join(fidelities)})")
    for p in policies:
        for s in p.stages:
            if s.fidelity not in fidelities:
                raise UserError(f"policy {p.name}: no fidelity {s.fidelity!r} in the table")
    truth = np.nanmean(fidelities[full].scores, axis=1) if truth is None else np.asarray(truth)
    unit = float(np.nanmean(fidelities[full].costs))
    n = truth.size
    rng = np.random.default_rng(seed)
    regrets = np.zeros((len(policies), len(budgets), replays))
    spent = np.zeros_like(regrets)
    for r in range(replays):
        order = rng.permutation(n)
        observed = {name: _observe(f, rng, unit) for name, f in fidelities.items()}
        for p, policy in enumerate(policies):
            for b, budget in enumerate(budgets):
                pick, cost = run_policy(policy, order, observed, budget)
                regrets[p, b, r] = truth.max() - truth[pick]
                spent[p, b, r] = cost
    return [
        {
            "policy": policy.name,
            "budget": float(budget),
            "regret_mean": float(regrets[p, b].mean()),
            "regret_std": float(regrets[p, b].std()),
            "regret_p90": float(np.quantile(regrets[p, b], 0.9)),
            "spent_mean": float(spent[p, b].mean()),
        }
        for p, policy in enumerate(policies)
        for b, budget in enumerate(budgets)
    ]


def _observe(f: Fidelity, rng: np.random.Generator, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """One measured run per candidate, drawn among its finite runs (one run for all of them
    when the fidelity is ``shared``; a candidate without that run gets one of its own)."""
    finite = np.isfinite(f.scores)
    pick = np.array([rng.choice(np.flatnonzero(row)) for row in finite])
    if f.shared:
        column = int(rng.integers(f.scores.shape[1]))
        pick = np.where(finite[:, column], column, pick)
    rows = np.arange(f.scores.shape[0])
    return f.scores[rows, pick], np.nan_to_num(f.costs[rows, pick]) / unit


def plot_regret(rows: Sequence[Mapping[str, float | str]], path: str, title: str = "") -> None:
    """Mean regret (points) against budget (full trainings), one line per policy; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas_proxy.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(str(r["policy"]) for r in rows):
        mine = [r for r in rows if r["policy"] == name]
        x = [float(r["budget"]) for r in mine]
        y = np.array([100 * float(r["regret_mean"]) for r in mine])
        s = np.array([100 * float(r["regret_std"]) for r in mine])
        ax.plot(x, y, marker="o", label=name)
        ax.fill_between(x, np.maximum(y - s, 0), y + s, alpha=0.12)
    ax.axhline(0.3, color="grey", linestyle=":", label="goal: 0.3 points")
    ax.set_xlabel("budget (full trainings)")
    ax.set_ylabel("regret (accuracy points, mean ± sd)")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
