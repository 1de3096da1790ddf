"""Proxies on Fashion-MNIST, IPC 10: MTT (one or several expert architectures) vs DM, DC,
herding and random real subsets, on the evaluation network and across architectures.

Each proxy is built with the library's ``distill`` entry point (the same code as
``nas-proxy distill --method ...``) and evaluated as ``nas-proxy evaluate`` does: the evaluation
ConvNet trained from scratch on the proxy with the shared recipe (``proxy.DEFAULT_RECIPE`` + the
dataset's DSA) for several seeds, tested on the real test split. The figures, the settings, the
machine and the date go into ``benchmarks/RESULTS.md`` under "Proxies (Fashion-MNIST, IPC 10)"
(only that section is touched). Published anchors (ConvNet width 128, GPU budgets): random ≈ 74%,
DC ≈ 82%, DSA ≈ 85%, DM ≈ 83%.

``mtt`` distils with ``--mtt-arch`` experts, ``mtt-multi`` with experts of every architecture in
``--multi-arch`` (each iteration matches one of them), both with ``--mtt-opt`` options. Each
proxy is built once (seed ``--seed``) and trained with ``--seeds`` seeds; ``--cross-arch``
networks are trained on every proxy too (``--cross-seeds`` seeds), the cross-architecture
table of issue 5.

    .venv/bin/python benchmarks/proxies_fmnist.py --dm-iterations 500 --dc-iterations 20
    .venv/bin/python benchmarks/proxies_fmnist.py --methods random,dm,mtt,mtt-multi --reuse \\
        --cross-arch convnet:depth=2,width=64,norm=batch --cross-arch mlp \\
        --cross-arch timm:mobilenetv3_small_050
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
from nas_proxy.recipe import RECIPE_FIELDS
from nas_proxy.runtime import resolve_device

HEADING = "## Proxies (Fashion-MNIST, IPC 10)"
ANCHORS = {"random": "≈ 74", "herding": "—", "dm": "≈ 83", "dc": "≈ 82 (DC), ≈ 85 (DSA)"}
# Proxy name -> the distillation method that builds it.
VARIANTS = {"mtt-multi": "mtt"}


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
    p.add_argument("--mtt-arch", default=None, help="expert architecture of the mtt proxy [--arch]")
    p.add_argument(
        "--multi-arch",
        action="append",
        default=[],
        help="expert architecture of the mtt-multi proxy (repeat) [--arch and mlp]",
    )
    p.add_argument(
        "--mtt-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="MTT option for both MTT proxies (JSON value), e.g. iterations=400 (repeat)",
    )
    p.add_argument(
        "--cross-arch",
        action="append",
        default=[],
        help="another network trained on every proxy (repeat)",
    )
    p.add_argument("--cross-seeds", type=int, default=2)
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


def method_opts(name: str, a: argparse.Namespace) -> dict:
    method = VARIANTS.get(name, name)
    opts = {"arch": [a.arch]}
    if method == "mtt":
        opts.update({k: _json_value(v) for k, v in (o.split("=", 1) for o in a.mtt_opt)})
        multi = a.multi_arch or [a.arch, "mlp"]
        opts["arch"] = multi if name == "mtt-multi" else [a.mtt_arch or a.arch]
        opts["experts"] = str(Path(a.out) / "experts")
    elif method == "herding":
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


def build(name: str, a: argparse.Namespace, data, device) -> tuple[Path, float | None]:
    """The proxy ``name`` in ``--out`` (built unless ``--reuse`` finds it) and its build seconds."""
    target = Path(a.out) / name
    if a.reuse and (target / "proxy.json").exists():
        return target, json.loads((target / "proxy.json").read_text()).get("wall_s")
    t0 = time.perf_counter()  # includes training missing experts: they are part of the cost
    distill(
        VARIANTS.get(name, name),
        data,
        a.ipc,
        target,
        method_opts(name, a),
        seed=a.seed,
        device=device,
    )
    return target, time.perf_counter() - t0


def budget(meta: dict) -> str:
    s, m = meta["settings"], meta["method"]
    if m == "mtt":
        return (
            f"{s.get('iterations')} it, {s.get('num_experts')} experts of "
            f"{' + '.join(f'`{x}`' for x in s.get('arch', []))}, syn_steps {s.get('syn_steps')}, "
            f"start ≤ {s.get('max_start_epoch')}, lr {meta.get('learned_lr') or 0:.4f} learned"
            + (", soft labels" if meta.get("soft_labels") else "")
        )
    return {
        "random": "—",
        "herding": f"{s.get('features')} features, {s.get('epochs', 0)} epochs",
        "dm": f"{s.get('iterations')} it, batch_real {s.get('batch_real')}",
        "dc": f"{s.get('iterations')} it × outer {s.get('outer_loop')} / inner "
        f"{s.get('inner_loop')}, batch_real {s.get('batch_real')}",
    }.get(m, "")


def _acc(r: dict) -> str:
    return f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    data = load_dataset(a.dataset, data_dir=a.data_dir)
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    rows, cross, built = {}, {}, {}
    for name in names:
        target, wall = build(name, a, data, device)
        proxy = load_proxy(target)
        built[name] = (proxy.meta, wall)
        print(f"{name}: built in {wall} s", file=sys.stderr)
        [rows[name]] = evaluate_proxy(
            proxy,
            data,
            [a.arch],
            seeds=list(range(a.seed, a.seed + a.seeds)),
            device=device,
            epochs=a.eval_epochs,
        )
        cross[name] = evaluate_proxy(
            proxy,
            data,
            a.cross_arch,
            seeds=list(range(a.seed, a.seed + a.cross_seeds)),
            device=device,
            epochs=a.eval_epochs,
        )
        print(format_table([rows[name], *cross[name]]), file=sys.stderr)

    lines = [
        f"### {dt.date.today().isoformat()}: {a.dataset}, IPC {a.ipc}, evaluated with "
        f"`{a.arch}` ({a.seeds} seeds)",
        "",
        f"Machine: {machine()}; device {device}. {a.note}".rstrip(),
        "",
        "| proxy | distil budget | distil wall s | test accuracy % (mean ± std) | "
        "per seed | eval wall s | published (GPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        meta, wall = built[name]
        per_seed = ", ".join(f"{100 * x:.1f}" for x in r["accuracies"])
        lines.append(
            f"| {name} | {budget(meta)} | {'—' if wall is None else f'{wall:.0f}'} | {_acc(r)} | "
            f"{per_seed} | {r['wall_s']:.0f} | {ANCHORS.get(name, '—')} |"
        )
    if a.cross_arch:
        lines += [
            "",
            f"Across architectures (test accuracy %, mean ± std of {a.cross_seeds} seeds; the "
            f"first column repeats `{a.arch}`):",
            "",
            "| proxy | " + " | ".join(f"`{x}`" for x in [a.arch, *a.cross_arch]) + " |",
            "|---|" + "---|" * (1 + len(a.cross_arch)),
        ]
        lines += [
            f"| {name} | {_acc(rows[name])} | " + " | ".join(_acc(r) for r in cross[name]) + " |"
            for name in rows
        ]
    recipe = load_proxy(rows[names[0]]["proxy"]).train_config(epochs=a.eval_epochs).to_dict()

    lines += [
        "",
        "Evaluation recipe of the real subsets, DM, DC and herding: "
        + ", ".join(f"{k} {recipe[k]}" for k in RECIPE_FIELDS)
        + "; MTT proxies replace lr and epochs by their own (the learned lr, their "
        "`eval_epochs`). Batch-norm statistics are recalibrated on real training batches.",
        "Each proxy is built once (seed 0; DM/DC start from the random subset of that seed, DSA "
        "on) and trained with each seed; build time includes training missing experts.",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
    ]
    text = "\n".join(lines)
    print(text)
    if not a.no_record:
        record(Path(a.results), text)
        print(f"recorded in {a.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
