"""Search throughput: trials per minute with 1 and 2 workers, and per-trial overhead.

For each dataset a proxy is made as a seeded random real subset (``--ipc`` images per class, no
augmentation) unless ``--proxy NAME=DIR`` names a distilled one. Each (dataset, workers) pair
runs a fresh study of ``--trials`` trials of a ConvNet space of near-equal cost for ``--epochs``
epochs, with pruning off so that every trial trains fully.

Reported per run:
  trials_per_min   finished trials / wall time of run_search (worker start-up included)
  steady_per_min   finished trials / (last trial end - first trial start)
  overhead_ms      median over trained trials of (trial duration - training wall time): the
                   sampler, spec mapping, params/FLOPs profile, duplicate lookup and storage writes
  train_s          median training wall time of one trial (evaluation on real val included)

Usage: python benchmarks/search_speed.py [--trials 8] [--epochs 3] [--workers 1,2]
       [--datasets digits,fashion-mnist] [--device cpu] [--out runs/bench-search]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

SPACE = """
description: benchmark space, a ConvNet whose trials cost about the same (comparable rates)
families:
  convnet:
    depth: 2
    width: {int: [16, 48]}
    norm: batch
    act: [relu, gelu]
"""


def make_proxy(dataset_name: str, ipc: int, out: Path) -> Path:
    import torch

    from nas_proxy.data import load_dataset
    from nas_proxy.distill.subsets import run_random

    if not (out / "proxy.json").exists():
        run_random(
            load_dataset(dataset_name),
            ipc,
            out,
            {"dsa": "none"},
            seed=0,
            device=torch.device("cpu"),
        )
    return out


def measure(
    proxy: Path, space: Path, out: Path, *, trials: int, epochs: int, workers: int, device: str
) -> dict:
    import pandas as pd

    from nas_proxy.search import open_study, run_search
    from nas_proxy.search import trials_dataframe as frame_of

    shutil.rmtree(out, ignore_errors=True)
    res = run_search(
        proxy,
        space,
        out,
        trials=trials,
        workers=workers,
        epochs=epochs,
        device=device,
        pruner="none",
        seed=0,
    )
    frame = frame_of(open_study(res["storage"], res["study"]))
    trained = frame[(frame.state == "COMPLETE") & (frame.wall_s > 0)]
    overhead = (trained.duration_s - trained.wall_s) * 1000.0
    span = (
        pd.to_datetime(frame.datetime_complete).max() - pd.to_datetime(frame.datetime_start).min()
    ).total_seconds()
    return {
        "workers": workers,
        "trials": res["trials"],
        "wall_s": res["wall_s"],
        "trials_per_min": round(60 * res["trials"] / res["wall_s"], 2),
        "steady_per_min": round(60 * res["trials"] / span, 2) if span > 0 else None,
        "overhead_ms": round(statistics.median(overhead), 1) if len(overhead) else None,
        "overhead_ms_p90": round(float(overhead.quantile(0.9)), 1) if len(overhead) else None,
        "train_s": round(float(trained.wall_s.median()), 3) if len(trained) else None,
        "reused": res["reused"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument(
        "--proxy",
        action="append",
        default=[],
        help="NAME=DIR: use this proxy for dataset NAME instead of a random subset",
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/bench-search")
    args = parser.parse_args()
    os.environ.setdefault("NAS_PROXY_NO_PROGRESS", "1")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = out / "space.yaml"
    space.write_text(SPACE)
    given = dict(p.split("=", 1) for p in args.proxy)
    results = []
    for name in args.datasets.split(","):
        proxy = (
            Path(given[name])
            if name in given
            else make_proxy(name, args.ipc, out / f"proxy-{name}")
        )
        for w in (int(x) for x in args.workers.split(",")):
            row = measure(
                proxy,
                space,
                out / f"{name}-w{w}",
                trials=args.trials,
                epochs=args.epochs,
                workers=w,
                device=args.device,
            )
            row["dataset"] = name
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    import torch

    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                f"{os.getloadavg()[0]:.1f} at the end",
                "torch_threads": torch.get_num_threads(),
                "device": args.device,
                "settings": {"trials": args.trials, "epochs": args.epochs, "ipc": args.ipc},
                "date": time.strftime("%Y-%m-%d"),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
