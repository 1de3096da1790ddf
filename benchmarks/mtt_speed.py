"""Seconds and peak memory of one MTT distillation iteration (Fashion-MNIST shape, IPC 10).

Each setting runs in a fresh child process, so its peak memory is its own: on CPU the child's
peak resident set size (``ru_maxrss``) and its growth over the resident size just before the
first iteration (torch, the model, the synthetic set and two expert snapshots already loaded);
on CUDA ``torch.cuda.max_memory_allocated``. The iteration is the real one of
``nas_proxy.distill.mtt`` (``unroll_sgd`` from a start snapshot, normalised parameter distance
to a target snapshot, backward into images and step size); expert snapshots are random
networks, since their values do not change the cost.

    python benchmarks/mtt_speed.py                     # the table of the issue (slow on CPU)
    python benchmarks/mtt_speed.py --steps 10 20 --iterations 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from nas_proxy.launch import allocator_env, find_tcmalloc

ARCH = "convnet:depth=3,width=128"  # the MTT ConvNet (instance norm)
SIZE = 28  # Fashion-MNIST (the reference ConvNet pads it to 32: --image-size 32 matches it)
CLASSES, IPC = 10, 10


def child(
    steps: int,
    bounded: bool,
    iterations: int,
    device: str,
    threads: int,
    size: int = SIZE,
    precision: str = "fp32",
) -> dict:
    """Run ``iterations`` distillation iterations in this process; report time and memory."""
    import torch

    from nas_proxy.augment import dsa
    from nas_proxy.distill.mtt import PRECISIONS
    from nas_proxy.distill.unroll import unroll_sgd
    from nas_proxy.models import build_model
    from nas_proxy.runtime import allocator, resolve_device

    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    shape = (1, size, size)
    model = build_model(ARCH, shape, CLASSES).to(dev).train()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = {k: v + 0.01 * torch.randn_like(v) for k, v in start.items()}
    images = torch.randn(CLASSES * IPC, *shape, device=dev, requires_grad=True)
    labels = torch.arange(CLASSES, device=dev).repeat_interleave(IPC)
    lr = torch.tensor(0.01, device=dev, requires_grad=True)
    opt = torch.optim.SGD([images], lr=100.0, momentum=0.5)
    g = torch.Generator().manual_seed(0)
    strategy = "color_crop_cutout_flip_scale_rotate"
    base_rss = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        base_gpu = torch.cuda.memory_allocated(dev) / 2**20
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        final = unroll_sgd(
            model,
            start,
            images,
            labels,
            lr,
            steps=steps,
            batch_size=None,
            generator=g,
            augment=lambda x, gen: dsa(x, strategy, generator=gen),
            memory_bounded=bounded,
            amp_dtype=PRECISIONS[precision],
        )
        loss = sum(((final[k] - target[k]) ** 2).sum() for k in final) / sum(
            ((start[k] - target[k]) ** 2).sum() for k in final
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {
        "steps": steps,
        "memory_bounded": bounded,
        "precision": precision,
        "allocator": allocator(),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "s_per_iteration": min(times),
        "times": times,
        "peak_rss_mb": _rss_mb(),
        "base_rss_mb": base_rss,
    }
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["base_gpu_mb"] = base_gpu
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def run_setting(steps: int, bounded: bool, precision: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(steps),
        str(int(bounded)),
        "--iterations",
        str(args.iterations),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--image-size",
        str(args.image_size),
        "--precision",
        precision,
    ]
    env = allocator_env(args.allocator, dict(os.environ))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {
            "steps": steps,
            "memory_bounded": bounded,
            "precision": precision,
            "allocator": args.allocator,
            "error": (proc.stderr.strip().splitlines() or ["killed"])[-1],
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument(
        "--bounded-steps",
        type=int,
        nargs="+",
        default=[10, 80],
        help="extra memory-bounded settings (the flat-memory check)",
    )
    p.add_argument("--iterations", type=int, default=2, help="per setting; the fastest counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--memory-share",
        type=float,
        default=0.6,
        help="skip a full-graph setting whose peak, extrapolated linearly from the "
        "two previous ones, exceeds this share of MemAvailable",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=SIZE,
        help="side of the synthetic images (32: the conv work of the reference ConvNet, which "
        "pads 28x28 inputs to 32x32)",
    )
    p.add_argument(
        "--reference-json",
        type=Path,
        action="append",
        default=[],
        help="rows of benchmarks/mtt_reference.py --json-out to put in the same table (repeat)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="inner-step precision(s) to measure (--precision of nas-proxy distill)",
    )
    p.add_argument(
        "--allocator",
        default="tcmalloc" if find_tcmalloc() else "system",
        choices=["system", "tcmalloc"],
        help="malloc of the measured processes (default: what the nas-proxy CLI runs with here)",
    )
    p.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="sentence added under the table")
    args = p.parse_args()
    if args.child:
        print(
            json.dumps(
                child(
                    args.child[0],
                    bool(args.child[1]),
                    args.iterations,
                    args.device,
                    args.threads,
                    args.image_size,
                    args.precision[0],
                )
            )
        )
        return
    settings = [(s, b) for s in args.steps for b in (False, True)]
    settings += [(s, True) for s in args.bounded_steps if (s, True) not in settings]
    rows: list[dict] = []
    for precision in args.precision:
        rows += measure(settings, precision, args)
    report = table(rows, args)
    print(report)
    if args.json:
        print(json.dumps(rows))
    if args.write:
        from results_md import replace_block

        title = "MTT: seconds and peak memory per distillation iteration"
        replace_block("mtt-speed", title, report)


def measure(settings: list[tuple[int, bool]], precision: str, args) -> list[dict]:
    """One row per (syn-steps, memory-bounded) setting, each in a fresh child process."""
    rows: list[dict] = []
    for steps, bounded in settings:
        on_gpu = any("peak_gpu_mb" in r for r in rows)  # the guard is for host memory
        projected = None if bounded or on_gpu else _projected_mb(rows, steps)
        if projected is not None and projected > args.memory_share * _available_mb():
            row = {
                "steps": steps,
                "memory_bounded": False,
                "precision": precision,
                "error": f"not run: projected peak {projected / 1024:.1f} GB is over "
                f"{args.memory_share:.0%} of the memory available on this shared "
                "machine",
            }
        else:
            row = run_setting(steps, bounded, precision, args)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _projected_mb(rows: list[dict], steps: int) -> float | None:
    """Linear extrapolation of full-graph peak memory over syn-steps (None: too few points)."""
    done = [
        (r["steps"], r.get("peak_gpu_mb", r.get("peak_rss_mb")))
        for r in rows
        if not r["memory_bounded"] and "error" not in r
    ]
    if len(done) < 2:
        return None
    (s1, m1), (s2, m2) = done[-2:]
    return m2 + (m2 - m1) / (s2 - s1) * (steps - s2)


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


def table(rows: list[dict], args) -> str:
    import datetime as dt

    import torch

    mem = "peak GPU MB" if any("peak_gpu_mb" in r for r in rows) else "peak RSS MB"
    lines = [
        f"### {dt.date.today().isoformat()}: Fashion-MNIST, IPC {IPC}, `{ARCH}`, "
        f"{args.image_size}×{args.image_size} images",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads or 'default'} torch thread(s); load average at "
        f"the end {os.getloadavg()[0]:.1f}. Batch = all {CLASSES * IPC} synthetic images, DSA; "
        f"{args.iterations} iteration(s) per setting in a fresh process, the fastest kept. "
        f"{args.note}".rstrip(),
        "",
        f"| syn-steps | mode | s / iteration | {mem} | growth over start MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mode = "memory-bounded" if r["memory_bounded"] else "full graph"
        mode += f", {r.get('precision', 'fp32')}, {r.get('allocator', 'system')} malloc"
        if "error" in r:
            lines.append(f"| {r['steps']} | {mode} | {r['error']} | | |")
            continue
        peak = r.get("peak_gpu_mb", r["peak_rss_mb"])
        base = r.get("base_gpu_mb", r["base_rss_mb"])
        lines.append(
            f"| {r['steps']} | {mode} | {r['s_per_iteration']:.2f} | {peak:.0f} | "
            f"{peak - base:.0f} |"
        )
    from mtt_reference import markdown_row  # benchmarks/ is on sys.path when run as a script

    lines += [markdown_row(r) for path in args.reference_json for r in json.loads(path.read_text())]
    lines += [
        "",
        f"Command: `python benchmarks/mtt_speed.py --iterations {args.iterations}"
        + (f" --threads {args.threads}" if args.threads else "")
        + (f" --image-size {args.image_size}" if args.image_size != SIZE else "")
        + f" --precision {' '.join(args.precision)} --allocator {args.allocator}"
        + f" --device {args.device}`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
