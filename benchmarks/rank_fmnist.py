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
import random
import sys
import time
from pathlib import Path

from nas_proxy.io import read_json, write_json
from nas_proxy.rank.baselines import ZERO_COST

CONVNET_SPACE = {
    "depth": [1, 2, 3, 4],
    "width": [16, 32, 48, 64],
    "norm": ["instance", "batch", "group", "none"],
    "act": ["relu", "gelu", "leakyrelu", "silu"],
    "pool": ["avg", "max"],
    "kernel": [3, 5],
}
# Small timm models from six families at 28×28 (stride-1 stem), 55-145 s per Fashion-MNIST epoch
# on one core of the benchmark machine (efficientnet_b0: 370 s, resnet10t: 700 s; left out).
TIMM = [
    "timm:mobilenetv3_small_050",
    "timm:lcnet_050",
    "timm:mnasnet_small",
    "timm:tinynet_e",
    "timm:mobilenetv3_small_100",
    "timm:lcnet_075",
    "timm:regnetx_002",
    "timm:ghostnet_050",
]
MLPS = [
    "mlp:hidden=128,depth=1",
    "mlp:hidden=512,depth=1,act=gelu",
    "mlp:hidden=256,depth=2,norm=batch",
    "mlp:hidden=1024,depth=2,act=silu",
    "mlp:hidden=256,depth=3,act=leakyrelu,norm=layer",
    "mlp:hidden=64,depth=2",
]
METHODS = ("mtt", "dm", "dc", "random", "herding")


def convnet_candidates(n: int, seed: int, widths: list[int] | None = None) -> list[str]:
    """``n`` distinct ConvNets whose knobs each take every allowed value about equally often
    (``widths``: a slice of the width range, for machines where wide nets are out of reach)."""
    rng = random.Random(seed)
    space = {**CONVNET_SPACE, **({"width": widths} if widths else {})}
    columns = {k: (v * (n // len(v) + 1))[:n] for k, v in space.items()}
    for _ in range(1000):  # reshuffle until no two rows coincide (a repeat ranks nothing)
        for col in columns.values():
            rng.shuffle(col)
        specs = ["convnet:" + ",".join(f"{k}={columns[k][i]}" for k in space) for i in range(n)]
        if len(set(specs)) == n:
            return specs
    raise SystemExit(f"--n-convnet {n}: cannot draw that many distinct ConvNets")


def stage_candidates(args: argparse.Namespace) -> Path:
    """candidates.yaml (in a seeded random order, so a partial ground truth covers every family)
    and split.json (dev/test half of each candidate, stratified by family)."""
    from nas_proxy.models import parse_spec
    from nas_proxy.rank.metrics import dev_test_split

    path = args.out / "candidates.yaml"
    if path.exists():
        print(f"candidates: reusing {path}", file=sys.stderr)
        return path
    if args.n_timm > len(TIMM) or args.n_mlp > len(MLPS):
        sys.exit(
            f"--n-timm {args.n_timm} / --n-mlp {args.n_mlp}: at most {len(TIMM)} / {len(MLPS)}"
        )
    specs = convnet_candidates(args.n_convnet, args.seed, args.widths)
    specs = [str(parse_spec(s)) for s in specs + TIMM[: args.n_timm] + MLPS[: args.n_mlp]]
    random.Random(args.seed).shuffle(specs)
    split = dev_test_split([parse_spec(s).family for s in specs], args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"- {s}\n" for s in specs))
    write_json(args.out / "split.json", dict(zip(specs, split, strict=True)))
    print(f"candidates: {len(specs)} written to {path}", file=sys.stderr)
    return path


def gt_recipe(args: argparse.Namespace) -> dict:
    """The ground-truth recipe: cosine to zero, scored on val (and test) after every epoch, so
    any shorter ground truth can be read from the same runs."""
    return {
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "schedule": "cosine",
        "eval_every": 1,
        "track_test": True,
    }


def stage_ground_truth(args: argparse.Namespace) -> Path:
    """Train every candidate with every ground-truth seed; the committed tables are read first
    (nothing in them is retrained) and rewritten after each finished run."""
    from nas_proxy.rank.api import recipe_config
    from nas_proxy.rank.candidates import load_candidates_file
    from nas_proxy.rank.ground_truth import full_scorer, make_jobs, run_jobs
    from nas_proxy.runtime import resolve_device

    import_tables(args)
    data = _dataset(args)
    specs = [c.arch for c in load_candidates_file(args.out / "candidates.yaml")]
    seeds = range(args.seed, args.seed + args.seeds)
    scorer = full_scorer(recipe_config(gt_recipe(args), "fashion-mnist"), seeds=seeds)
    device = str(resolve_device(args.device))
    jobs = make_jobs([scorer], specs, data_ref(args), data.checksum, args.out / "gt-cache", device)
    _, counts = run_jobs(
        jobs, workers=args.workers, desc="ground truth", on_record=lambda _r: export_tables(args)
    )
    export_tables(args)
    print(f"ground truth: {counts} → {args.gt_table}", file=sys.stderr)
    return args.gt_table


def data_ref(args: argparse.Namespace):
    from nas_proxy.rank.ground_truth import DataRef

    return DataRef("fashion-mnist", args.data_dir, train_limit=args.train_limit)


def _dataset(args: argparse.Namespace):
    return data_ref(args).load()


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


def proxy_folders(args: argparse.Namespace) -> list[tuple[str, int, Path]]:
    """(method, distillation seed, folder) of every proxy to build: one per method and seed of
    ``--distill-seeds``, named ``METHOD[-TAG][-sSEED]`` so that settings told apart by
    ``--tag`` never reuse each other's proxies."""
    tag = f"-{args.tag}" if args.tag else ""
    out = []
    for method in args.methods:
        for seed in args.distill_seeds:
            name = f"{method}{tag}" + (f"-s{seed}" if len(args.distill_seeds) > 1 else "")
            out.append((method, seed, args.out / "proxies" / name))
    return out


def method_proxy_names(args: argparse.Namespace) -> dict[str, list[str]]:
    """{method: the rank report's names of its proxies} (one per distillation seed)."""
    from nas_proxy.rank.compare import proxy_names

    folders = proxy_folders(args)
    dirs = [args.proxy_dir.get(m, str(f)) for m, _, f in folders]
    names: dict[str, list[str]] = {}
    for (method, _, _), name in zip(folders, proxy_names(dirs), strict=True):
        names.setdefault(method, []).append(name)
    return names


def stage_distill(args: argparse.Namespace) -> dict[str, float]:
    """Build each proxy (skipping finished ones); returns {proxy dir: build seconds}."""
    from nas_proxy.distill import distill

    data = _dataset(args)
    costs = {}
    for method, seed, out in proxy_folders(args):
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
            print(f"distill {method}: ipc {args.ipc}, seed {seed} → {out}", file=sys.stderr)
            result = distill(
                method,
                data,
                args.ipc,
                out,
                method_opts(method, args),
                seed=seed,
                device=args.device,
            )
            write_json(record, result)
        costs[str(out)] = float(result["wall_s"])
    return costs


def import_tables(args: argparse.Namespace) -> None:
    """Seed the run's cache from the committed tables: nothing in them is trained again."""
    from nas_proxy.rank.table import import_records

    for table in (args.gt_table, args.proxy_table):
        if table.exists():
            added = import_records(table, args.out / "gt-cache")
            print(f"{table.name}: {added} runs imported", file=sys.stderr)


def export_tables(args: argparse.Namespace) -> None:
    """Rewrite the committed tables from the cache: the ground truth (full-data runs with the
    ground-truth recipe) and every other score (proxies, short training, zero-cost)."""
    from nas_proxy.rank.table import cached_records, write_records_csv

    records = cached_records(args.out / "gt-cache")
    is_gt = [r["kind"] == "full" and r["scorer"] == "full" for r in records]
    for path, keep in ((args.gt_table, True), (args.proxy_table, False)):
        rows = [r for r, gt in zip(records, is_gt, strict=True) if gt == keep]
        if rows:  # no empty table that would look like a finished stage
            write_records_csv(path, rows)


def subsets(args: argparse.Namespace) -> dict[str, list[bool]]:
    """The held-out test half (the headline), the dev half (where settings are chosen) and the
    ConvNets alone (ρ inside one family, which family gaps cannot inflate)."""
    from nas_proxy.rank.candidates import load_candidates_file

    split = read_json(args.out / "split.json")
    cands = load_candidates_file(args.out / "candidates.yaml")
    return {
        "test half": [split[c.arch] == "test" for c in cands],
        "dev half": [split[c.arch] == "dev" for c in cands],
        "ConvNets only": [c.family == "convnet" for c in cands],
    }


def stage_rank(args: argparse.Namespace, costs: dict[str, float]) -> dict:
    from nas_proxy.rank.api import rank

    import_tables(args)
    proxies = [args.proxy_dir.get(m, str(f)) for m, _, f in proxy_folders(args)]
    # Several distillation seeds of one method: also score them as one ensemble.
    ensembles = {f"{m} ensemble": ns for m, ns in method_proxy_names(args).items() if len(ns) > 1}
    tunings = {"lr": {"lr_scales": args.lr_range}} if args.lr_range else None
    summary = rank(
        out=args.report_dir,
        candidates_file=args.out / "candidates.yaml",
        recipe=gt_recipe(args),
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
        short_steps=args.short_steps,
        short_match=bool(proxies),
        subsets=subsets(args),
        zero_cost=args.zero_cost,
        workers=args.workers,
        device=args.device,
        cache_dir=args.out / "gt-cache",
        n_boot=args.bootstrap,
        proxy_overrides={"epochs": args.proxy_epochs},
        proxy_tunings=tunings,
        ensembles=ensembles,
        proxy_build_s=costs,
        on_record=lambda _r: export_tables(args),
    )
    export_tables(args)
    return summary


def results_markdown(summary: dict, args: argparse.Namespace, wall_s: float) -> str:
    """The tables for benchmarks/RESULTS.md (test half first), with machine, settings, date."""
    from nas_proxy.rank.report import (
        TRUST_HEADERS,
        headline_headers,
        headline_rows,
        md_table,
        trust_rows,
    )
    from nas_proxy.runtime import cpu_info

    blocks = [*summary["subsets"].items(), ("all candidates", summary)]
    cpu = cpu_info()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    lines = [
        f"Machine: {cpu['model']} ({cpu['flags'] or 'no AVX2'}), {cpu['cores']} cores; "
        f"date {time.strftime('%Y-%m-%d')}; wall {wall_s / 60:.1f} min "
        f"(trained {summary['trained']}, reused {summary['reused']}).",
        f"Settings: `{json.dumps(settings, sort_keys=True)}`",
        "",
    ]
    lines += lever_lines(summary, args)
    for name, block in blocks:
        c = block["ceiling"]
        lines += [
            f"**{name}** ({block['n']} candidates; ρ top-N over the best {block['top_n']}; "
            f"ceiling {c['value']} (CI {c['ci']})):",
            "",
            md_table(headline_headers(summary), headline_rows(summary, block)),
            "",
            md_table(TRUST_HEADERS, trust_rows(block)),
            "",
        ]
    return "\n".join(lines)


def lever_lines(summary: dict, args: argparse.Namespace, subset: str = "dev half") -> list[str]:
    """Each method's ρ on the dev half per distillation seed (mean and spread), beside its seed
    ensemble, its lr range test and the short training matched to it: a setting wins only by
    more than its seed spread."""
    from nas_proxy.rank.report import md_table

    block = summary["subsets"].get(subset)
    if block is None:
        return []
    by_name = {p["name"]: p for p in block["proxies"]}

    def rho(name: str) -> float | None:
        return (by_name.get(name) or {}).get("spearman")

    def fmt(values: list[float | None], digits: int = 3) -> str:
        known = [v for v in values if v is not None]
        if not known:
            return "–"
        if len(known) == 1:
            return f"{known[0]:.{digits}f}"
        mean = sum(known) / len(known)
        return f"{mean:.{digits}f} ± {(max(known) - min(known)) / 2:.{digits}f}"

    rows = []
    for method, names in method_proxy_names(args).items():
        cost = [(by_name.get(n) or {}).get("cost_s_projected") for n in names]
        rows.append(
            [
                f"{method}{f' ({args.tag})' if args.tag else ''}",
                str(len(names)),
                " / ".join("–" if rho(n) is None else f"{rho(n):.3f}" for n in names),
                fmt([rho(n) for n in names]),
                fmt([rho(f"{method} ensemble")]),
                fmt([rho(f"{n}+lr") for n in names]),
                fmt([rho(f"short={n}") for n in names]),
                fmt(cost, 1),
            ]
        )
    headers = [
        "proxy",
        "seeds",
        "ρ per seed",
        "ρ mean ± half-range",
        "ρ seed ensemble",
        "ρ +lr range test",
        "ρ matched short",
        "cost s @300",
    ]
    return [f"**Levers, {subset}** ({block['n']} candidates):", "", md_table(headers, rows), ""]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench-rank-fmnist"))
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="folder for the rank report and RESULTS-snippet.md [OUT/rank]; one per lever run, "
        "so that runs on other proxies keep their own",
    )
    p.add_argument(
        "--stage", choices=["all", "candidates", "ground-truth", "distill", "rank"], default="all"
    )
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
    p.add_argument("--n-convnet", type=int, default=30)
    p.add_argument("--n-timm", type=int, default=len(TIMM))
    p.add_argument("--n-mlp", type=int, default=len(MLPS))
    p.add_argument(
        "--widths",
        default=None,
        type=lambda s: [int(w) for w in s.split(",")],
        help="ConvNet widths to draw from, comma-separated [the whole space: 16,32,64,128]",
    )
    # ground truth
    p.add_argument("--epochs", type=int, default=8, help="full-data training epochs")
    p.add_argument(
        "--gt-table",
        type=Path,
        default=Path(__file__).parent / "data" / "fmnist_ground_truth.csv",
        help="the ground-truth table: runs in it are reused, new runs are added to it",
    )
    p.add_argument(
        "--proxy-table",
        type=Path,
        default=Path(__file__).parent / "data" / "fmnist_proxy_scores.csv",
        help="every other score (proxies, short training, zero-cost), reused the same way",
    )
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
        "--distill-seeds",
        default=None,
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="distill every method once per seed (comma-separated; default: --seed): the "
        "seed spread, and an ensemble of the seeds' proxies, are reported beside each",
    )
    p.add_argument(
        "--tag",
        default="",
        help="label of these distillation settings in proxy folder names (e.g. mixed-timm): "
        "proxies built with other settings are never reused for them",
    )
    p.add_argument(
        "--lr-range",
        default=None,
        type=lambda s: [float(x) for x in s.split(",") if x.strip()] or None,
        help="also score every proxy with an lr range test per candidate: these multiples of "
        "the proxy's lr, comma-separated, the best kept (each try is paid for)",
    )
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
    p.add_argument("--short-epochs", type=int, default=None)
    p.add_argument(
        "--short-steps",
        default="25,50,100,200,422,844",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="short full-data training budgets in optimizer steps (422 = one epoch at batch "
        "128), comma-separated: the cost sweep of the cheapest rival",
    )
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
    args.distill_seeds = args.distill_seeds or [args.seed]
    if args.train_limit:  # a smoke run must never rewrite the committed tables
        for name in ("gt_table", "proxy_table"):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, args.out / getattr(args, name).name)
    args.report_dir = args.report_dir or args.out / "rank"
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
    if args.stage in ("all", "candidates", "ground-truth"):
        stage_candidates(args)
    if args.stage in ("all", "ground-truth"):
        stage_ground_truth(args)
        if args.stage == "ground-truth":
            return 0
    costs = stage_distill(args) if args.stage in ("all", "distill", "rank") else {}
    if args.stage in ("all", "rank"):
        summary = stage_rank(args, costs)
        text = results_markdown(summary, args, time.perf_counter() - start)
        (args.report_dir / "RESULTS-snippet.md").write_text(text + "\n")
        print(text)
        print(f"report: {summary['report']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
