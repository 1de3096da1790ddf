"""Digits, IPC 10, MTT with the CPU defaults: wall time of experts + distillation from nothing,
and test accuracy of ``convnet:depth=2,width=32`` trained on the MTT proxy vs random real
subsets of the same size (each proxy with its own recipe, as candidates would train on it).

    python benchmarks/distill_digits.py --seeds 3 --write   # fills benchmarks/RESULTS.md

Seed s distils an MTT proxy (seed s) and draws a random subset (seed s), and trains the network
on each with seed s; the table reports the mean over ``--seeds`` seeds. The wall time is that of
seed 0, which trains the experts from scratch (later seeds reuse them). Extra
``--opt key=value`` pairs go to the MTT options (JSON values), e.g. ``--opt iterations=800``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

EVAL_ARCH = "convnet:depth=2,width=32"
IPC = 10
MARK = "mtt-digits"


def evaluate(proxy_dir: Path, dataset, seeds: list[int]) -> list[float]:
    from nas_proxy.distill.proxy import load_proxy, train_on_proxy

    proxy = load_proxy(proxy_dir)
    return [
        train_on_proxy(
            proxy,
            dataset,
            EVAL_ARCH,
            seed=s,
            device="cpu",
            score_split="test",
            eval_every=0,
            desc=f"{proxy.method} seed {s}",
        )[1].test_accuracy
        for s in seeds
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-digits-mtt")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument(
        "--reuse-experts",
        action="store_true",
        help="keep cached experts (the wall time then excludes training them)",
    )
    p.add_argument("--opt", action="append", default=[], help="MTT option key=value (JSON)")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="sentence added under the table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from nas_proxy.data import load_dataset
    from nas_proxy.distill import distill
    from nas_proxy.distill.presets import resolve_options

    out = Path(args.out)
    if not args.reuse_experts:
        shutil.rmtree(out, ignore_errors=True)
    for old in out.glob("mtt*"):
        shutil.rmtree(old)
    opts = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.opt)}
    opts["experts"] = str(out / "experts")
    data = load_dataset("digits")
    seeds = list(range(args.seeds))

    mtt_accs, random_accs = [], []
    for s in seeds:
        start = time.perf_counter()
        summary = distill("mtt", data, IPC, out / f"mtt{s}", opts, seed=s, device="cpu")
        if s == 0:
            mtt, distill_wall = summary, time.perf_counter() - start
        mtt_accs += evaluate(out / f"mtt{s}", data, [s])
        distill("random", data, IPC, out / f"random{s}", {}, seed=s, device="cpu")
        random_accs += evaluate(out / f"random{s}", data, [s])
    rows = [("mtt", mtt_accs), ("random", random_accs)]

    used = resolve_options("digits", IPC, {k: v for k, v in opts.items() if k != "experts"})
    report = render(rows, mtt, distill_wall, used, args)
    print(report)
    if args.write:
        from results_md import replace_block

        replace_block(MARK, "MTT on digits (IPC 10)", report)


def render(rows, mtt: dict, distill_wall: float, used: dict, args) -> str:
    means = {name: statistics.fmean(accs) for name, accs in rows}
    keys = (
        "arch",
        "num_experts",
        "max_start_epoch",
        "expert_epochs",
        "syn_steps",
        "batch_syn",
        "iterations",
        "lr_img",
        "lr_lr",
        "lr_teacher",
        "expert_batch_size",
        "soft_labels",
        "eval_epochs",
    )
    lines = [
        f"### {dt.date.today().isoformat()}: digits, IPC {IPC}, MTT CPU defaults vs random "
        f"subsets, evaluated with `{EVAL_ARCH}` ({len(rows[0][1])} seeds)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} with {torch.get_num_threads()} thread(s); load average at the end "
        f"{os.getloadavg()[0]:.1f}; device cpu. {args.note}".rstrip(),
        "",
        "| proxy | test accuracy % (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    for name, accs in rows:
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {name} | {100 * statistics.fmean(accs):.2f} ± {100 * std:.2f} | "
            f"{', '.join(f'{100 * a:.1f}' for a in accs)} |"
        )
    experts_note = "cached experts reused" if args.reuse_experts else "experts trained from scratch"
    lines += [
        "",
        f"MTT − random: **{100 * (means['mtt'] - means['random']):+.2f} points**. Wall time of "
        f"experts + MTT ({experts_note}): **{distill_wall:.0f} s** (experts "
        f"{mtt['experts_wall_s']:.0f} s, MTT {distill_wall - mtt['experts_wall_s']:.0f} s); "
        f"learned lr {mtt['lr']:.4f}.",
        "MTT settings: " + ", ".join(f"{k}={used[k]}" for k in keys) + ".",
        "Random subsets use the baseline recipe (300 epochs, lr 0.01, momentum 0.9, step "
        "schedule, DSA); the MTT proxy its own (learned lr, `eval_epochs`, DSA).",
        f"Command: `python benchmarks/distill_digits.py --seeds {args.seeds}"
        + (f" --threads {args.threads}" if args.threads else "")
        + "".join(f" --opt {o}" for o in args.opt)
        + "`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
