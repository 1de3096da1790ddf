"""One real staged search on Fashion-MNIST, checked against the replay simulator.

    python benchmarks/staged_fmnist.py [--proxy runs/bench-rank-fmnist/proxies/mtt-s0]
        [--out runs/staged-fmnist] [--workers 2]
    python benchmarks/staged_fmnist.py --proxy real:fashion-mnist --proxy-scorer short-200steps \
        --replay-proxy short-200steps --promote full:epochs=8,top=3 --out runs/staged-real \
        --run-csv benchmarks/data/fmnist_staged_real_run.csv

The search space is the 44 candidates of the committed ground truth
(benchmarks/data/fmnist_ground_truth.csv), written as an ``architectures:`` space, so that the
pick of a real ``nas_proxy.search(..., promote=...)`` run can be judged on the same table the
replay (benchmarks/promote_replay.py) uses: regret = best seed-mean test accuracy at epoch 8
minus the pick's. The grid sampler screens each candidate once on the proxy (no pruning: the
replay does not model it), then the ``--promote`` stages train on the real data. Rerunning
resumes the study.

``--proxy real:fashion-mnist`` screens on short real training instead (``--proxy-epochs`` is
then ignored: the budget is the reference's steps). Prints a markdown section for RESULTS.md and
writes ``--run-csv`` (per candidate: the run's score and cost at each stage it reached).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from promote_replay import (  # noqa: E402
    DEFAULT_PROXY,
    FULL_EPOCHS,
    PROXY_SCORES,
    TABLE,
    load_fidelities,
)

from nas_proxy.search.replay import Stage, replay, staged  # noqa: E402

RUN_CSV = ROOT / "data" / "fmnist_staged_run.csv"


def write_space(path: Path, specs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["description: the 44 candidates of benchmarks/data/fmnist_ground_truth.csv"]
    lines += ["architectures:"] + [f"  - {spec}" for spec in specs]
    path.write_text("\n".join(lines) + "\n")


def run_table(study, stages, specs: list[str]) -> pd.DataFrame:
    """Per candidate: the run's proxy score and cost, and each promoted stage's."""
    from nas_proxy.search.promote import proxy_ranked
    from nas_proxy.study_records import promoted_scores

    walls = {t.number: t.user_attrs.get("wall_s") for t in study.get_trials(deepcopy=False)}
    rows = {
        arch: {"spec": arch, "trial": n, "proxy_score": s, "proxy_s": walls[n]}
        for n, arch, s in proxy_ranked(study)
    }
    by_number = {r["trial"]: r for r in rows.values()}
    records = promoted_scores(study)
    for stage in stages:
        for number, rec in records.get(stage.epochs, {}).items():
            by_number[number][f"{stage.name}_score"] = rec["score"]
            by_number[number][f"{stage.name}_s"] = rec["cost_s"]
    return pd.DataFrame([rows[s] for s in specs if s in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default="runs/bench-rank-fmnist/proxies/mtt-s0")
    ap.add_argument(
        "--proxy-scorer", default="mtt@mtt-s0", help="--proxy's rows in the proxy score table"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/staged-fmnist"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--proxy-epochs", type=int, default=100, help="as the proxy table's scores")
    ap.add_argument(
        "--promote",
        action="append",
        default=None,
        help="as nas-proxy search (default: short:epochs=1,top=0.3 and full:epochs=8,top=2)",
    )
    ap.add_argument(
        "--replay-proxy",
        default=",".join(DEFAULT_PROXY),
        help="the proxy rows the replay draws from, comma-separated",
    )
    ap.add_argument("--run-csv", type=Path, default=RUN_CSV)
    ap.add_argument("--replays", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    promote = args.promote or ["short:epochs=1,top=0.3", "full:epochs=8,top=2"]

    import nas_proxy
    from nas_proxy.distill.proxy import is_real_ref
    from nas_proxy.runtime import cpu_info
    from nas_proxy.search.promote import parse_stage
    from nas_proxy.study_records import open_study

    # The replay's table (default: the MTT proxies of two distillation seeds, as promote_replay.py).
    replay_proxy = tuple(args.replay_proxy.split(","))
    fid, truth, _, specs = load_fidelities(TABLE, PROXY_SCORES, replay_proxy)
    epochs = None if is_real_ref(args.proxy) else args.proxy_epochs
    unit = float(np.nanmean(fid["full"].costs))
    stages = [parse_stage(p) for p in promote]
    # Checked before any training: the replay needs each stage's epochs in the table.
    unknown = [f"{s.name}:epochs={s.epochs}" for s in stages if _fidelity(s.epochs) not in fid]
    if unknown:
        sys.exit(f"--promote {', '.join(unknown)}: the table holds epochs 1, 2, {FULL_EPOCHS}")
    space = args.out / "space.yaml"
    write_space(space, specs)
    start = time.time()
    summary = nas_proxy.search(
        proxy=args.proxy,
        space=space,
        out=args.out,
        trials=len(specs),
        workers=args.workers,
        epochs=epochs,
        sampler="grid",
        pruner="none",
        seed=args.seed,
        device=args.device,
        promote=promote,
        data_dir=args.data_dir,
    )
    wall = time.time() - start
    cpu = cpu_info()
    study = open_study(f"sqlite:///{args.out / 'study.db'}")
    table = run_table(study, stages, specs)
    args.run_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.run_csv, index=False, float_format="%.6g")

    pick = summary["promotion"]["pick"]
    index = specs.index(pick["arch"])
    regret = float(truth.max() - truth[index])
    cost = {r["stage"]: float(r["cost_s"]) for r in summary["promotion"]["stages"]}
    spent = sum(cost.values()) / unit

    # The same policy replayed on the table at the budget this run spent.
    policy = staged(
        "run's policy",
        [Stage("proxy")] + [Stage(_fidelity(s.epochs), s.top) for s in stages],
    )
    rows = replay(fid, [policy], [spent], truth=truth, replays=args.replays, seed=args.seed)
    predicted = rows[0]

    # Does each stage of the run reproduce the table it is replayed from?
    committed = pd.read_csv(PROXY_SCORES)
    committed = committed[committed["scorer"] == args.proxy_scorer].groupby("spec")["score"].mean()
    proxy_rho = _rho(table.set_index("spec")["proxy_score"], committed)
    gt_val = {f: np.nanmean(fid[f].scores, axis=1) for f in ("short1", "full")}
    lines = [
        f"### {time.strftime('%Y-%m-%d')}: one real staged search, the 44 ground-truth candidates",
        "",
        f"`python benchmarks/staged_fmnist.py` ({wall / 60:.0f} min wall in this call, a rerun "
        f"resumes; {args.workers} "
        f"workers). Machine: {cpu['model']} ({cpu['flags']}), {cpu['cores']} cores, "
        f"{platform.machine()}, one core per worker, load average {cpu['load_1m']} at the end, "
        f"device {args.device}. Proxy: {args.proxy} "
        f"({'its own budget' if epochs is None else f'{epochs} epochs'} per candidate), "
        f"grid over the {len(specs)} candidates, no pruning; promote "
        + ", ".join(f"`{p}`" for p in promote)
        + f". Per-candidate scores: `{args.run_csv}`.",
        "",
        "| stage | trained | compute (s) | full trainings |",
        "|---|---|---|---|",
    ]
    for r in summary["promotion"]["stages"]:
        lines.append(
            f"| {r['stage']} | {r['trained']} | {r['cost_s']:.0f} | {r['cost_s'] / unit:.2f} |"
        )
    scores = ", ".join(f"{k} {v:.4f}" for k, v in pick["scores"].items())
    best = specs[int(np.argmax(truth))]
    lines += [
        f"| total | | {sum(cost.values()):.0f} | {spent:.2f} |",
        "",
        f"- Pick: `{pick['arch']}` ({scores}); its ground-truth test accuracy "
        f"{100 * truth[index]:.2f} % against the best candidate's {100 * truth.max():.2f} % "
        f"(`{best}`): **regret {100 * regret:.2f} points** at {spent:.2f} full trainings.",
        f"- The replay of the same policy at that budget ({' / '.join(replay_proxy)} as the "
        "proxy, one drawn per replay) predicts "
        f"{100 * predicted['regret_mean']:.2f} ± {100 * predicted['regret_std']:.2f} points "
        f"(90th percentile {100 * predicted['regret_p90']:.2f}; spent "
        f"{predicted['spent_mean']:.2f}).",
        f"- Proxy stage against the committed proxy scores: Spearman {proxy_rho:.3f} over "
        f"{len(table)} candidates (same proxy and recipe; differences are run-to-run noise).",
    ]
    for stage in stages:
        column = f"{stage.name}_score"
        if column not in table or _fidelity(stage.epochs) not in gt_val:
            continue
        ref = pd.Series(gt_val[_fidelity(stage.epochs)], index=specs)
        got = table.set_index("spec")[column].dropna()
        if len(got) < 3:
            pairs = ", ".join(f"{100 * got[a]:.2f} % vs {100 * ref[a]:.2f} %" for a in got.index)
            lines.append(
                f"- Stage {stage.name} ({stage.epochs} epochs), val accuracy against the "
                f"table's {_fidelity(stage.epochs)} seed mean: {pairs}."
            )
            continue
        lines.append(
            f"- Stage {stage.name} ({stage.epochs} epochs) against the table's "
            f"{_fidelity(stage.epochs)} (epoch {stage.epochs} of the {FULL_EPOCHS}-epoch runs, "
            "seed mean): "
            f"Spearman {_rho(got, ref):.3f} over {len(got)}, mean score "
            f"{100 * got.mean():.2f} % vs {100 * ref[got.index].mean():.2f} %."
        )
    print("\n".join(lines))


def _fidelity(epochs: int) -> str:
    return "full" if epochs == FULL_EPOCHS else f"short{epochs}"


def _rho(a: pd.Series, b: pd.Series) -> float:
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return float(spearmanr(both.iloc[:, 0], both.iloc[:, 1])[0]) if len(both) > 2 else float("nan")


if __name__ == "__main__":
    main()
