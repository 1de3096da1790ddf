"""Speed under load: one fixed nas-proxy command, alone and beside busy processes, with torch's
default threads, with only ``OMP_WAIT_POLICY=PASSIVE``, and with the entry point's choice
(passive wait, threads from the free cores: ``nas_proxy.launch.thread_settings``).

    python benchmarks/thread_load.py                       # distill digits, 30 MTT iterations
    python benchmarks/thread_load.py --workload train --beside 0 --settle 0 --repeats 1  # smoke

Run it on an otherwise idle machine: the neighbours are the load. Each neighbour is a
single-threaded CPU-bound process; after starting them the script waits ``--settle`` seconds so
the 1-minute load average (what the chooser reads) sees them. Every run is a fresh process with
the same allocator (``--allocator``), so only the thread settings differ. Times are the
command's own: the last ``wall_s`` of ``log.csv`` for distill (experts are trained once,
untimed, before), the JSON ``wall_s`` for train. The table goes to stdout (markdown, with the
CPU model and flags), everything to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("torch default", "passive only", "entry point")
RUN_CLI = "from nas_proxy.cli import run; run()"
RUN_ENTRY_POINT = "from nas_proxy.launch import main; main()"
BUSY = "while True: pass"


def workload_args(workload: str, out: Path, experts: Path, size: int) -> list[str]:
    """The command measured: ``size`` MTT iterations or training epochs on digits."""
    if workload == "distill":
        return [
            "distill",
            "--dataset",
            "digits",
            "--ipc",
            "10",
            "--iterations",
            str(size),
            "--experts",
            str(experts),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
        ]
    return [
        "train",
        "--dataset",
        "digits",
        "--arch",
        "convnet:depth=2,width=32",
        "--epochs",
        str(size),
        "--device",
        "cpu",
        "--json",
    ]


def mode_env(mode: str, base: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The code that starts the CLI and its environment, for one mode."""
    if mode == "entry point":
        return RUN_ENTRY_POINT, base  # the launcher sets the threads itself, as `nas-proxy`
    if mode == "passive only":
        return RUN_CLI, {**base, "OMP_WAIT_POLICY": "PASSIVE"}
    return RUN_CLI, base


def run_once(mode: str, args: list[str], base: dict[str, str], out: Path | None) -> float:
    code, env = mode_env(mode, base)
    res = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"{mode}: exit {res.returncode}: {res.stderr.strip()[-500:]}")
    if out is None:  # train: its JSON
        return float(json.loads(res.stdout.strip().splitlines()[-1])["wall_s"])
    with open(out / "log.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["wall_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("distill", "train"), default="distill")
    p.add_argument("--size", type=int, default=None, help="iterations / epochs [30 / 3]")
    p.add_argument("--beside", default="0,1,2", help="busy neighbours, comma-separated counts")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode and load")
    p.add_argument("--settle", type=float, default=65.0, help="seconds before measuring")
    p.add_argument("--allocator", default="system", help="system or tcmalloc, for every run")
    p.add_argument("--out", default="runs/bench-thread-load")
    a = p.parse_args()

    from nas_proxy.io import write_json
    from nas_proxy.launch import ENV_THREADS, ENV_THREADS_CHOSEN, allocator_env, busy_cores
    from nas_proxy.runtime import cpu_info

    size = a.size or (30 if a.workload == "distill" else 3)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    experts = out / "experts"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OMP_") and k not in (ENV_THREADS, ENV_THREADS_CHOSEN)
    }
    base = {**allocator_env(a.allocator, clean), "NAS_PROXY_NO_PROGRESS": "1"}

    def proxy_dir(tag: str) -> Path | None:
        return out / tag if a.workload == "distill" else None

    def measure(tag: str, mode: str) -> float:
        target = proxy_dir(tag)
        args = workload_args(a.workload, target or out, experts, size)
        return run_once(mode, args, base, target)

    if a.workload == "distill":
        print("training the experts (untimed) ...", file=sys.stderr)
        measure("warmup", "entry point")

    rows = []
    for beside in [int(n) for n in a.beside.split(",") if n.strip()]:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(beside)]
        try:
            time.sleep(a.settle if beside else 0)
            times: dict[str, list[float]] = {m: [] for m in MODES}
            seen_busy = round(busy_cores(), 2)
            for r in range(a.repeats):
                for mode in MODES:  # interleaved, so a drift in load hits every mode alike
                    wall = measure(f"b{beside}-r{r}-{mode.replace(' ', '-')}", mode)
                    times[mode].append(wall)
                    print(f"beside {beside}, {mode}: {wall:.1f} s", file=sys.stderr)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
        rows.append({"beside": beside, "busy_cores_seen": seen_busy, "wall_s": times})

    info = cpu_info()
    idle = next((r for r in rows if r["beside"] == 0), rows[0])
    ref = statistics.median(idle["wall_s"]["torch default"])
    print(
        f"\n{a.workload} ({size} {'iterations' if a.workload == 'distill' else 'epochs'}), "
        f"{info['model']}, {info['cores']} cores, flags {info['flags'] or 'none'}, "
        f"allocator {a.allocator}, {dt.date.today()}; median of {a.repeats} "
        "(x: the idle torch-default time)\n"
    )
    print("| beside it | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for r in rows:
        cells = []
        for mode in MODES:
            med = statistics.median(r["wall_s"][mode])
            cells.append(f"{med:.1f} s ({med / ref:.1f}x)")
        print(f"| {r['beside']} busy process(es) | " + " | ".join(cells) + " |")
    write_json(
        out / "results.json",
        {
            "workload": a.workload,
            "size": size,
            "allocator": a.allocator,
            "cpu": info,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
