"""Seconds per Fashion-MNIST training epoch for a few architectures (issue 4).

Times the project's one training loop (`nas_proxy.train.fit`) on a slice of the training split
and scales to the full 54,000-image epoch (the loop's cost is linear in the number of batches);
``--fraction 1`` times whole epochs. Prints a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/train_speed.py --device cpu
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from nas_proxy.data import load_dataset
from nas_proxy.runtime import resolve_device
from nas_proxy.train import TrainConfig, fit

ARCHS = [
    "convnet:depth=3,width=32",
    "convnet:depth=3,width=64",
    "convnet:depth=3,width=128",
    "timm:resnet10t",
    "timm:mobilenetv3_small_050",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="specs to time (default: a fixed list)")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of an epoch to time")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    data = load_dataset("fashion-mnist")
    n = max(args.batch_size, int(len(data.train_x) * args.fraction))
    x, y = data.train_x[:n], data.train_y[:n]
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=args.batch_size, eval_every=0)
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, torch {torch.__version__}, "
        f"batch {args.batch_size}, timed {n} images"
    )
    print("| arch | params | s / epoch (54,000 images) |")
    print("|---|---:|---:|")
    for spec in args.arch or ARCHS:
        # Warm-up on two batches so one-off costs (timm import, kernel selection) are not timed.
        fit(
            spec,
            x[: 2 * args.batch_size],
            y[: 2 * args.batch_size],
            cfg,
            num_classes=data.num_classes,
            device=device,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _, res = fit(spec, x, y, cfg, num_classes=data.num_classes, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_epoch = (time.perf_counter() - t0) * len(data.train_x) / n
        print(f"| `{spec}` | {res.params:,} | {per_epoch:.1f} |", flush=True)


if __name__ == "__main__":
    main()
