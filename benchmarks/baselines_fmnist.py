"""Baselines on Fashion-MNIST, IPC 10: random vs herding vs DM vs DC proxies.

Each proxy is built with the library's ``distill`` entry point (the same code as
``nas-proxy distill --method ...``) and evaluated as ``nas-proxy evaluate`` does: the evaluation
ConvNet trained from scratch on the proxy with the shared recipe (``proxy.DEFAULT_RECIPE`` + the
dataset's DSA) for several seeds, tested on the real test split. The figures, the settings, the
machine and the date go into ``benchmarks/RESULTS.md`` under "Baselines (Fashion-MNIST, IPC 10)"
(only that section is touched). Published anchors (ConvNet width 128, GPU budgets): random ≈ 74%,
DC ≈ 82%, DSA ≈ 85%, DM ≈ 83%.

    .venv/bin/python benchmarks/baselines_fmnist.py --dm-iterations 500 --dc-iterations 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from nas_proxy.cli.evaluate_cmd import format_table
from nas_proxy.data import load_dataset
from nas_proxy.distill import distill
from nas_proxy.distill.proxy import evaluate_proxy, load_proxy
from nas_proxy.runtime import resolve_device

HEADING = "## Baselines (Fashion-MNIST, IPC 10)"
ANCHORS = {"random": "≈ 74", "herding": "—", "dm": "≈ 83", "dc": "≈ 82 (DC), ≈ 85 (DSA)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--methods", default="random,herding,dm,dc")
    p.add_argument(
        "--arch",
        default="convnet:depth=3,width=32",
        help="network that distils (DM/DC embeddings, herding features) and evaluates",
    )
    p.add_argument("--seeds", type=int, default=3, help="evaluation seeds per proxy")
    p.add_argument(
        "--eval-epochs",
        type=int,
        default=None,
        help="override the recipe's epochs (default: the proxy's recipe)",
    )
    p.add_argument("--dm-iterations", type=int, default=500)
    p.add_argument("--dm-batch-real", type=int, default=64)
    p.add_argument("--dc-iterations", type=int, default=20)
    p.add_argument("--dc-outer-loop", type=int, default=None, help="default: paper table")
    p.add_argument("--dc-inner-loop", type=int, default=None, help="default: paper table")
    p.add_argument("--dc-batch-real", type=int, default=64)
    p.add_argument("--herding-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="runs/bench-baselines-fmnist")
    p.add_argument("--reuse", action="store_true", help="reuse proxies already in --out")
    p.add_argument(
        "--note", default="", help="free text recorded with the machine (e.g. that it was shared)"
    )
    p.add_argument("--results", default="benchmarks/RESULTS.md")
    p.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    return p.parse_args()


def method_opts(method: str, a: argparse.Namespace) -> dict:
    opts = {"arch": [a.arch]}
    if method == "herding":
        opts.update(herding_features="trained", herding_epochs=a.herding_epochs)
    elif method == "dm":
        opts.update(iterations=a.dm_iterations, batch_real=a.dm_batch_real)
    elif method == "dc":
        opts.update(
            iterations=a.dc_iterations,
            outer_loop=a.dc_outer_loop,
            inner_loop=a.dc_inner_loop,
            batch_real=a.dc_batch_real,
        )
    return opts


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s); load average at the end {load:.1f}"
    )


def record(path: Path, text: str) -> None:
    """Add ``text`` at the end of our section (created if missing); other sections stay."""
    doc = path.read_text() if path.exists() else "# Benchmark results\n"
    start = doc.find(HEADING)
    if start < 0:
        doc = doc.rstrip("\n") + f"\n\n{HEADING}\n\n{text}"
    else:
        nxt = re.search(r"^## ", doc[start + len(HEADING) :], flags=re.M)
        end = start + len(HEADING) + nxt.start() if nxt else len(doc)
        doc = doc[:end].rstrip("\n") + f"\n\n{text}\n" + ("\n" + doc[end:] if nxt else "")
    path.write_text(doc.rstrip("\n") + "\n")


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    out = Path(a.out)
    rows, distilled = [], {}
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        target = out / method
        if a.reuse and (target / "proxy.json").exists():
            meta = json.loads((target / "proxy.json").read_text())
            distilled[method] = {
                "wall_s": None,
                "iterations": meta["settings"].get("iterations"),
                "reused": True,
            }
        else:
            summary = distill(
                method, data, a.ipc, target, method_opts(method, a), seed=a.seed, device=device
            )
            distilled[method] = summary
        print(f"{method}: distilled {distilled[method]}", file=sys.stderr)
        t0 = time.perf_counter()
        rows += evaluate_proxy(
            load_proxy(target),
            data,
            [a.arch],
            seeds=list(range(a.seed, a.seed + a.seeds)),
            device=device,
            epochs=a.eval_epochs,
        )
        print(f"{method}: evaluated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(format_table(rows))

    proxy_meta = {r["method"]: load_proxy(r["proxy"]).meta for r in rows}
    lines = [
        f"### {dt.date.today().isoformat()}: {a.dataset}, IPC {a.ipc}, evaluated with "
        f"`{a.arch}` ({a.seeds} seeds)",
        "",
        f"Machine: {machine()}; device {device}. {a.note}".rstrip(),
        "",
        "| method | distil budget | distil wall s | test accuracy % (mean ± std) | "
        "per seed | eval wall s | published (GPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["method"]
        s = proxy_meta[m]["settings"]
        budget = {
            "random": "—",
            "herding": f"{s.get('features')} features, {s.get('epochs', 0)} epochs",
            "dm": f"{s.get('iterations')} it, batch_real {s.get('batch_real')}",
            "dc": f"{s.get('iterations')} it × outer {s.get('outer_loop')} / inner "
            f"{s.get('inner_loop')}, batch_real {s.get('batch_real')}",
        }.get(m, "")
        wall = distilled[m].get("wall_s")
        per_seed = ", ".join(f"{100 * x:.1f}" for x in r["accuracies"])
        lines.append(
            f"| {m} | {budget} | {'reused' if wall is None else f'{wall:.0f}'} | "
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} | "
            f"{per_seed} | {r['wall_s']:.0f} | {ANCHORS.get(m, '—')} |"
        )
    recipe = load_proxy(rows[0]["proxy"]).train_config(epochs=a.eval_epochs).to_dict()
    lines += [
        "",
        "Evaluation recipe (the same for every proxy): "
        + ", ".join(
            f"{k} {recipe[k]}"
            for k in (
                "epochs",
                "lr",
                "optimizer",
                "momentum",
                "weight_decay",
                "batch_size",
                "schedule",
                "augment",
            )
        )
        + ".",
        "DM/DC start from the random subset of the same seed; DSA on in distillation.",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    if not a.no_record:
        record(Path(a.results), "\n".join(lines))
        print(f"recorded in {a.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
