"""Replay search policies on the Fashion-MNIST ground truth: regret against compute.

    python benchmarks/promote_replay.py [--replays 2000] [--out benchmarks/figures]

Fidelities, from benchmarks/data/fmnist_ground_truth.csv (two seeds per candidate; a replay
observes one seed's run per candidate, regret is judged on the seed-mean *test* accuracy):

* full  = val_accuracy@8, cost train_s@8 (the unit of compute);
* short = val_accuracy@1 (``short1``) and @2 (``short2``) of the same runs, cost train_s@1/@2.
  These are epochs of the 8-epoch cosine schedule, not a schedule that ends after 1-2 epochs;
* proxy = the scores of the ``--proxy-scorer`` proxies per candidate from
  benchmarks/data/fmnist_proxy_scores.csv (default: the MTT proxies of distillation seeds 0 and
  1, the runs a replay draws one from; cost ``wall_s``, training and scoring, without the
  build's share) when that file holds them; otherwise the zero-cost score ``params`` (bigger is
  better), cost 0.

Writes a markdown table on stdout and ``regret_vs_budget.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from nas_proxy.rank.table import read_records_csv  # noqa: E402
from nas_proxy.search.replay import Fidelity, Stage, plot_regret, replay, single, staged  # noqa: E402

TABLE = ROOT / "data" / "fmnist_ground_truth.csv"
PROXY_SCORES = ROOT / "data" / "fmnist_proxy_scores.csv"
BUDGETS = (0.5, 1, 2, 3, 5, 8, 12)
FULL_EPOCHS = 8  # the ground truth's schedule: epoch 8 is "full"
# The MTT proxies of two distillation seeds: a replay observes one of them per candidate.
DEFAULT_PROXY = ("mtt@mtt-s0", "mtt@mtt-s1")


def load_fidelities(
    table: Path, proxy_scores: Path, proxy_scorer: str | Sequence[str] = DEFAULT_PROXY
) -> tuple[dict[str, Fidelity], np.ndarray, str, list[str]]:
    """Fidelities per candidate (runs = seeds), the seed-mean test accuracy, the proxy's name
    and the candidates' specs (the rows of every array)."""
    runs: dict[str, dict[int, dict]] = {}
    for rec in read_records_csv(table):
        if rec["kind"] == "full" and rec.get("history"):
            runs.setdefault(rec["spec"], {})[rec["seed"]] = rec
    specs = sorted(
        s for s, r in runs.items() if all(len(x["history"]) >= FULL_EPOCHS for x in r.values())
    )
    seeds = sorted({seed for s in specs for seed in runs[s]})

    def per_run(epoch: int, field: str) -> np.ndarray:
        return np.array(
            [
                [
                    runs[s][k]["history"][epoch - 1].get(field, np.nan) if k in runs[s] else np.nan
                    for k in seeds
                ]
                for s in specs
            ],
            dtype=float,
        )

    fid = {
        "full": Fidelity(per_run(FULL_EPOCHS, "val_accuracy"), per_run(FULL_EPOCHS, "train_s")),
        "short1": Fidelity(per_run(1, "val_accuracy"), per_run(1, "train_s")),
        "short2": Fidelity(per_run(2, "val_accuracy"), per_run(2, "train_s")),
    }
    scorers = [proxy_scorer] if isinstance(proxy_scorer, str) else list(proxy_scorer)
    frame = pd.read_csv(proxy_scores) if proxy_scores.exists() else pd.DataFrame()
    frame = frame[frame["scorer"].isin(scorers)] if len(frame) else frame
    if len(frame) and set(frame["scorer"]) == set(scorers):
        # One column per proxy (e.g. two distillation seeds), shared by all candidates: a
        # search has one proxy out of that spread. A diverged training has no score: it ranks
        # last.
        score, wall = [], []
        for name in scorers:
            mine = frame[frame["scorer"] == name].groupby("spec").mean(numeric_only=True)
            score.append(mine["score"].reindex(specs).fillna(-1.0).to_numpy(float))
            wall.append(mine["wall_s"].reindex(specs).fillna(0).to_numpy(float))
        fid["proxy"] = Fidelity(np.stack(score, axis=1), np.stack(wall, axis=1), shared=True)
        proxy_name = f"proxy {' / '.join(scorers)} ({proxy_scores.name})"
    else:
        params = np.array([next(iter(runs[s].values()))["params"] for s in specs], dtype=float)
        fid["proxy"] = Fidelity(params[:, None], np.zeros((len(specs), 1)))
        proxy_name = f"zero-cost params ({', '.join(scorers)} not in {proxy_scores.name})"
    truth = np.nanmean(per_run(FULL_EPOCHS, "test_accuracy"), axis=1)
    return fid, truth, proxy_name, specs


POLICIES = [
    single("proxy"),
    single("short1"),
    single("short2"),
    single("full"),
    staged("proxy>short1 top .3>full", [Stage("proxy"), Stage("short1", 0.3), Stage("full")]),
    staged("proxy>short1 top .5>full", [Stage("proxy"), Stage("short1", 0.5), Stage("full")]),
    staged("proxy>short2 top .3>full", [Stage("proxy"), Stage("short2", 0.3), Stage("full")]),
    staged("proxy>full top 3", [Stage("proxy"), Stage("full", 3)]),
    staged("short1>full top 3", [Stage("short1"), Stage("full", 3)]),
    staged("short1>full", [Stage("short1"), Stage("full")]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replays", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "figures")
    ap.add_argument(
        "--proxy-scorer",
        default=",".join(DEFAULT_PROXY),
        help="the proxy's scorer names in fmnist_proxy_scores.csv, comma-separated (several: "
        "the runs a replay draws from, e.g. two distillation seeds; or dm@dm-s0, short-50steps)",
    )
    args = ap.parse_args()
    fid, truth, proxy_name, _ = load_fidelities(TABLE, PROXY_SCORES, args.proxy_scorer.split(","))
    rows = replay(fid, POLICIES, BUDGETS, truth=truth, replays=args.replays, seed=args.seed)
    n = truth.size
    unit = float(np.nanmean(fid["full"].costs))
    print(f"{n} candidates, proxy = {proxy_name}; 1 full training = {unit:.0f} s on average")
    print(
        f"regret = best seed-mean test accuracy - the pick's, in points; {args.replays} replays\n"
    )
    print("| policy | " + " | ".join(f"B={b:g}" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for p in POLICIES:
        cells = [
            f"{100 * r['regret_mean']:.2f} ± {100 * r['regret_std']:.2f}"
            for r in rows
            if r["policy"] == p.name
        ]
        print(f"| {p.name} | " + " | ".join(cells) + " |")
    png = args.out / "regret_vs_budget.png"
    plot_regret(rows, str(png), title=f"Fashion-MNIST, {n} candidates\nproxy: {proxy_name}")
    print(f"\nplot: {png.relative_to(ROOT.parent) if png.is_relative_to(ROOT.parent) else png}")


if __name__ == "__main__":
    main()
