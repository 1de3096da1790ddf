"""Rank fidelity on Fashion-MNIST: every proxy side by side on the same candidates.

Candidates: ``--n-convnet`` ConvNets spanning the search space (a Latin-hypercube design over
depth, width, norm, activation, pooling and kernel, so every value of every knob appears about
equally often) plus ``--n-timm`` small timm models. Ground truth: full-data training with
``--seeds`` seeds (the noise ceiling). Proxies: MTT, DM, DC, random and herding subsets of the
same size (``--methods``), short full-data training (``--short-epochs``) and the zero-cost
scores. Every budget is a flag.

Stages (``--stage``) run in order and each resumes: ``candidates`` writes candidates.yaml,
``distill`` builds the proxies (each distillation checkpoints; finished ones are skipped),
``rank`` trains what the cache lacks (every finished run is stored at once) and writes the
report. ``all`` runs the three. Re-running after a kill continues where it stopped.

Full run (many CPU hours; minutes per candidate on a GPU):

    python benchmarks/rank_fmnist.py --out runs/bench-rank-fmnist --workers 2

The CPU-scale run recorded in benchmarks/RESULTS.md (widths 16/32, a 2-epoch ground truth,
proxies built by benchmarks/proxies_fmnist.py and reused with ``--proxy-dir``; ≈ 1.5 h on 2
cores):

    python benchmarks/rank_fmnist.py --widths 16,32 --epochs 2 --proxy-epochs 100 \\
        --methods mtt,mtt-multi,dm,dc,herding,random \\
        --proxy-dir mtt=runs/bench-baselines-fmnist/mtt \\
        --proxy-dir mtt-multi=runs/bench-baselines-fmnist/mtt-multi ... --workers 2

Smoke run (proves the plumbing, numbers mean little):

    python benchmarks/rank_fmnist.py --out runs/bench-rank-smoke --n-convnet 4 --n-timm 2 \\
        --epochs 1 --methods random,mtt --mtt-iterations 5 --num-experts 1 --expert-epochs 1 \\
        --max-start-epoch 0 --proxy-epochs 20 --short-epochs 1 --train-limit 6000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

from nas_proxy.io import read_json, write_json
from nas_proxy.rank.baselines import ZERO_COST

CONVNET_SPACE = {
    "depth": [1, 2, 3, 4],
    "width": [16, 32, 64, 128],
    "norm": ["instance", "batch", "group", "none"],
    "act": ["relu", "gelu", "leakyrelu", "silu"],
    "pool": ["avg", "max"],
    "kernel": [3, 5],
}
# Small timm families at 28×28 (stride-1 stem): 4-60 MFLOPs per image, CPU-trainable.
TIMM = [
    "timm:mobilenetv3_small_050",
    "timm:lcnet_050",
    "timm:mnasnet_small",
    "timm:tinynet_e",
    "timm:mobilenetv3_small_100",
    "timm:lcnet_075",
    "timm:regnetx_002",
    "timm:efficientnet_b0",
]
METHODS = ("mtt", "dm", "dc", "random", "herding")


def convnet_candidates(n: int, seed: int, widths: list[int] | None = None) -> list[str]:
    """``n`` ConvNets whose knobs each take every allowed value about equally often
    (``widths``: a slice of the width range, for machines where width 128 is out of reach)."""
    rng = random.Random(seed)
    space = {**CONVNET_SPACE, **({"width": widths} if widths else {})}
    columns = {}
    for key, values in space.items():
        col = (values * (n // len(values) + 1))[:n]
        rng.shuffle(col)
        columns[key] = col
    specs = []
    for i in range(n):
        specs.append("convnet:" + ",".join(f"{k}={columns[k][i]}" for k in space))
    return specs


def stage_candidates(args: argparse.Namespace) -> Path:
    path = args.out / "candidates.yaml"
    if path.exists():
        print(f"candidates: reusing {path}", file=sys.stderr)
        return path
    if args.n_timm > len(TIMM):
        sys.exit(f"--n-timm {args.n_timm}: at most {len(TIMM)}")
    specs = convnet_candidates(args.n_convnet, args.seed, args.widths) + TIMM[: args.n_timm]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"- {s}\n" for s in specs))
    print(f"candidates: {len(specs)} written to {path}", file=sys.stderr)
    return path


def _dataset(args: argparse.Namespace):
    from nas_proxy.rank.ground_truth import DataRef

    return DataRef("fashion-mnist", args.data_dir, train_limit=args.train_limit).load()


def method_opts(method: str, args: argparse.Namespace) -> dict:
    """Distillation options for one method (None: the method's Fashion-MNIST default)."""
    if method == "mtt":
        return {
            "iterations": args.mtt_iterations,
            "num_experts": args.num_experts,
            "expert_epochs": args.expert_epochs,
            "max_start_epoch": args.max_start_epoch,
            "syn_steps": args.syn_steps,
            "experts": str(args.out / "experts"),
            "workers": args.workers,
            "arch": args.distill_arch,
        }
    if method in ("dm", "dc"):
        return {
            "iterations": args.dm_iterations if method == "dm" else args.dc_iterations,
            "arch": args.distill_arch,
        }
    if method == "herding":
        return {"arch": args.distill_arch}
    return {}


def stage_distill(args: argparse.Namespace) -> dict[str, float]:
    """Build each proxy (skipping finished ones); returns {proxy dir: build seconds}."""
    from nas_proxy.distill import distill

    data = _dataset(args)
    costs = {}
    for method in args.methods:
        out = args.out / "proxies" / method
        record = out / "distill.json"
        if method in args.proxy_dir:
            out = Path(args.proxy_dir[method])
            meta = read_json(out / "proxy.json")
            if method in METHODS and meta.get("method") != method:
                sys.exit(f"--proxy-dir {method}={out}: built with {meta.get('method')}")
            wall = meta.get("wall_s")
            wall = args.build_s.get(method) if wall is None else wall
            print(f"distill {method}: using {out} (built in {wall} s)", file=sys.stderr)
            if wall is not None:
                costs[str(out)] = float(wall)
            continue
        if record.exists():
            result = read_json(record)
            print(f"distill {method}: reusing {out}", file=sys.stderr)
        else:
            print(f"distill {method}: ipc {args.ipc} → {out}", file=sys.stderr)
            result = distill(
                method,
                data,
                args.ipc,
                out,
                method_opts(method, args),
                seed=args.seed,
                device=args.device,
            )
            write_json(record, result)
        costs[str(out)] = float(result["wall_s"])
    return costs


def stage_rank(args: argparse.Namespace, costs: dict[str, float]) -> dict:
    from nas_proxy.rank.compare import rank

    proxies = [args.proxy_dir.get(m, str(args.out / "proxies" / m)) for m in args.methods]
    return rank(
        out=args.out / "rank",
        candidates_file=args.out / "candidates.yaml",
        recipe={"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        train_limit=args.train_limit,
        proxies=proxies,
        top_k=args.top_k,
        top_n=args.top_n,
        seed=args.seed,
        ceiling_seeds=args.seeds,
        avoid_seeds=(),
        short_epochs=args.short_epochs,
        zero_cost=args.zero_cost,
        workers=args.workers,
        device=args.device,
        cache_dir=args.out / "gt-cache",
        n_boot=args.bootstrap,
        proxy_overrides={"epochs": args.proxy_epochs},
        proxy_build_s=costs,
    )


def results_markdown(summary: dict, args: argparse.Namespace, wall_s: float) -> str:
    """The table for benchmarks/RESULTS.md, with machine, settings and date."""
    from nas_proxy.rank.report import HEADERS, headline_rows

    rows = headline_rows(summary)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    c = summary["ceiling"]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return "\n".join(
        [
            f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
            f"{_cores()} cores; date {time.strftime('%Y-%m-%d')}; wall {wall_s / 60:.1f} min "
            f"(trained {summary['trained']}, reused {summary['reused']}).",
            f"Candidates: {summary['n']}; ρ over all of them, ρ top-N over the best "
            f"{summary['top_n']} by full score; ceiling {c['value']} (CI {c['ci']}).",
            f"Settings: `{json.dumps(settings, sort_keys=True)}`",
            "",
            *lines,
        ]
    )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-rank-fmnist"))
    p.add_argument("--stage", choices=["all", "candidates", "distill", "rank"], default="all")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="SMOKE RUNS ONLY: keep this many training images (the ground truth is "
        "then not full-data training)",
    )
    # candidates
    p.add_argument("--n-convnet", type=int, default=24)
    p.add_argument("--n-timm", type=int, default=6)
    p.add_argument(
        "--widths",
        default=None,
        type=lambda s: [int(w) for w in s.split(",")],
        help="ConvNet widths to draw from, comma-separated [the whole space: 16,32,64,128]",
    )
    # ground truth
    p.add_argument("--epochs", type=int, default=10, help="full-data training epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, default=2, help="ground-truth seeds (noise ceiling)")
    # proxies
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
    )
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument(
        "--distill-arch",
        default=None,
        help="architecture(s) to distill with, comma-separated [method default]",
        type=lambda s: [a.strip() for a in s.split(",")] if s else None,
    )
    p.add_argument(
        "--proxy-dir",
        action="append",
        default=[],
        metavar="METHOD=DIR",
        help="use a proxy built elsewhere for METHOD instead of distilling one (repeat; a "
        "name that is not a method, e.g. mtt-multi, adds a proxy of that name)",
    )
    p.add_argument(
        "--build-s",
        action="append",
        default=[],
        metavar="METHOD=SECONDS",
        help="build cost of a --proxy-dir proxy whose proxy.json does not record it",
    )
    p.add_argument("--mtt-iterations", type=int, default=None)
    p.add_argument("--num-experts", type=int, default=None)
    p.add_argument("--expert-epochs", type=int, default=None)
    p.add_argument("--max-start-epoch", type=int, default=None)
    p.add_argument("--syn-steps", type=int, default=None)
    p.add_argument("--dm-iterations", type=int, default=None)
    p.add_argument("--dc-iterations", type=int, default=None)
    p.add_argument(
        "--proxy-epochs",
        type=int,
        default=None,
        help="epochs candidates train on each proxy [the proxy's recipe]",
    )
    p.add_argument("--short-epochs", type=int, default=1)
    p.add_argument(
        "--zero-cost",
        default=",".join(ZERO_COST),
        type=lambda s: [z for z in s.split(",") if z and z != "none"],
    )
    # metrics
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--bootstrap", type=int, default=2000)
    args = p.parse_args(argv)
    args.proxy_dir = dict(kv.split("=", 1) for kv in args.proxy_dir)
    args.build_s = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.build_s)}
    unknown = set(args.methods) - set(METHODS) - set(args.proxy_dir)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)} (known: {', '.join(METHODS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "candidates"):
        stage_candidates(args)
    costs = stage_distill(args) if args.stage in ("all", "distill", "rank") else {}
    if args.stage in ("all", "rank"):
        summary = stage_rank(args, costs)
        text = results_markdown(summary, args, time.perf_counter() - start)
        (args.out / "RESULTS-snippet.md").write_text(text + "\n")
        print(text)
        print(f"report: {summary['report']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
