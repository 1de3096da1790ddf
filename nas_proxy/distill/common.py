"""What every iterative distillation method shares: initialisation, the outer loop with
checkpoint/resume, divergence checks, the CSV log and image grids.

A method supplies a ``step(iteration, generator) -> metrics`` function that updates its learnable
tensors in place (through its optimizers). :func:`run_iterations` does the rest: it restores a
checkpoint when one exists (tensors, optimizer states, RNG state, iteration), so a run killed
with ``kill -9`` resumes to a result identical to an uninterrupted run.

A checkpoint is one file, ``checkpoint.safetensors``, its iteration, fingerprint and optimizer
layout in the header metadata: replaced in one rename, it can never pair new tensors with an
old iteration. ``log.csv`` is cut back to the checkpoint's iteration on resume.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from nas_proxy.data import Dataset
from nas_proxy.errors import UserError
from nas_proxy.io import (
    CsvLog,
    load_tensors_and_metadata,
    read_json,
    save_figure,
    save_tensors,
    stable_hash,
)
from nas_proxy.runtime import progress

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT_META = "checkpoint.json"  # beside the tensors, before the one-file format
LOG = "log.csv"


class DistillDiverged(RuntimeError):
    """Loss or learned learning rate became non-finite or left its sane range."""


def class_indices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [torch.nonzero(labels == c).flatten() for c in range(num_classes)]


def require_ipc(dataset: Dataset, ipc: int) -> None:
    """Every class must hold at least ``ipc`` training images: never silently fewer."""
    if ipc < 1:
        raise UserError(f"--ipc {ipc}: must be at least 1")
    sizes = torch.bincount(dataset.train_y, minlength=dataset.num_classes)
    smallest = int(sizes.argmin())
    if int(sizes[smallest]) < ipc:
        raise UserError(
            f"--ipc {ipc} is larger than class '{dataset.classes[smallest]}' "
            f"({int(sizes[smallest])} training images)"
        )


def init_synthetic(
    dataset: Dataset, ipc: int, init: str = "real", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class: random real training samples (``real``) or Gaussian noise."""
    if init not in ("real", "noise"):
        raise UserError(f"--init {init}: expected real or noise")
    require_ipc(dataset, ipc)
    g = torch.Generator().manual_seed(seed)
    by_class = class_indices(dataset.train_y, dataset.num_classes)
    labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    if init == "noise":
        return torch.randn((len(labels), *dataset.shape), generator=g), labels
    chosen = torch.cat([idx[torch.randperm(len(idx), generator=g)[:ipc]] for idx in by_class])
    return dataset.train_x[chosen].clone(), labels


def sample_real(
    x_by_class: list[torch.Tensor], c: int, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` random real images of class ``c`` (without replacement when possible)."""
    pool = x_by_class[c]
    idx = torch.randperm(len(pool), generator=generator)[:n]
    return pool[idx]


def save_image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
    classes: list[str] | None = None,
    title: str | None = None,
    max_per_class: int = 10,
) -> Path:
    """A PNG grid: one row per class, images de-normalized for viewing; at most
    ``max_per_class`` per row, and the title says so when a class has more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hard = labels if labels.dtype == torch.long else labels.argmax(1)
    num_classes = int(hard.max()) + 1 if len(hard) else 0
    counts = [int((hard == c).sum()) for c in range(num_classes)]
    rows = [images[hard == c][:max_per_class] for c in range(num_classes)]
    if max(counts, default=0) > max_per_class:
        most = f"{max(counts)}" if min(counts) == max(counts) else f"up to {max(counts)}"
        shown = f"showing the first {max_per_class} of {most} images per class"
        title = f"{title}\n{shown}" if title else shown
    cols = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(
        num_classes, cols, figsize=(cols * 0.8 + 1, num_classes * 0.8 + 0.6), squeeze=False
    )
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    for c, row in enumerate(rows):
        for j in range(cols):
            ax = axes[c][j]
            ax.axis("off")
            if j < len(row):
                img = (row[j].detach().cpu() * s + m).clamp(0, 1).numpy()
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.transpose(1, 2, 0))
        if classes:
            axes[c][0].set_title(classes[c], fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return Path(path)


def _rng_tensor(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state()


def read_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and metadata (iteration, fingerprint, wall_s, optimizers, settings) of the
    checkpoint in ``out``, or None when there is none."""
    if not (out / CHECKPOINT).is_file():
        return None
    tensors, header = load_tensors_and_metadata(out / CHECKPOINT)
    if "checkpoint" in header:
        return tensors, json.loads(header["checkpoint"])
    if (out / LEGACY_CHECKPOINT_META).is_file():
        return tensors, read_json(out / LEGACY_CHECKPOINT_META)
    raise UserError(
        f"{out / CHECKPOINT}: not a checkpoint (no metadata); delete it or use another --out"
    )


def run_iterations(
    *,
    out: Path,
    iterations: int,
    step: Callable[[int, torch.Generator], dict[str, float]],
    tensors: Mapping[str, torch.Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer],
    settings: dict[str, Any],
    seed: int,
    checkpoint_every: int = 50,
    log_fields: tuple[str, ...] = ("loss",),
    on_checkpoint: Callable[[int], None] | None = None,
    check: Callable[[dict[str, float]], str | None] | None = None,
    desc: str = "distill",
) -> dict[str, Any]:
    """Run ``step`` for ``iterations`` iterations with checkpoints, resuming if possible.

    ``tensors`` are the learnable leaves (updated in place by ``step``); ``settings`` must hold
    everything that determines the result: a checkpoint written under different settings is
    refused rather than silently mixed in. ``check`` returns a message when a step's metrics
    are unacceptable (besides the built-in non-finite check); the run then stops with
    :class:`DistillDiverged` and the last good checkpoint stays on disk.
    """
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = stable_hash(settings)
    generator = torch.Generator().manual_seed(seed)
    start_it, wall_before = 0, 0.0
    found = read_checkpoint(out)
    if found is not None:
        state, meta = found
        if meta.get("fingerprint") != fingerprint:
            raise UserError(
                f"{out} holds a checkpoint of a run with other settings; use another "
                "--out or delete the folder"
            )
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(state[f"tensor.{name}"].to(t.device))
        for name, opt in optimizers.items():
            opt.load_state_dict(_optimizer_state_from(state, name, meta["optimizers"][name]))
        generator.set_state(state["rng"])
        start_it = int(meta["iteration"])
        if start_it > iterations:
            raise UserError(
                f"{out} holds a run already at iteration {start_it}, beyond "
                f"--iterations {iterations}; ask for at least {start_it} or use "
                "another --out"
            )
        wall_before = float(meta["wall_s"])

    def checkpoint(it: int, wall: float) -> None:
        flat = {f"tensor.{k}": v.detach() for k, v in tensors.items()}
        opt_meta = {}
        for name, opt in optimizers.items():
            t, m = _optimizer_state_to(opt, name)
            flat.update(t)
            opt_meta[name] = m
        flat["rng"] = _rng_tensor(generator)
        meta = {
            "iteration": it,
            "fingerprint": fingerprint,
            "wall_s": wall,
            "optimizers": opt_meta,
            "settings": settings,
        }
        header = {"checkpoint": json.dumps(meta, sort_keys=True, default=str)}
        save_tensors(out / CHECKPOINT, flat, metadata=header)
        (out / LEGACY_CHECKPOINT_META).unlink(missing_ok=True)
        if on_checkpoint is not None:
            on_checkpoint(it)

    log = CsvLog(
        out / LOG,
        ("iteration", *log_fields, "wall_s"),
        keep=lambda row: _logged_up_to(row, start_it),
    )
    t0 = time.perf_counter()
    bar = progress(
        range(start_it, iterations), desc=desc, unit="it", initial=start_it, total=iterations
    )
    try:
        for it in bar:
            metrics = step(it, generator)
            bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
            problem = f"{', '.join(bad)} not finite" if bad else (check(metrics) if check else None)
            if problem:
                raise DistillDiverged(
                    f"iteration {it + 1}: {problem}; stopped, the last good checkpoint is in "
                    f"{out} (try a smaller --lr-img or --lr-lr)"
                )
            wall = wall_before + time.perf_counter() - t0
            log.log(iteration=it + 1, wall_s=round(wall, 3), **metrics)
            bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in log_fields[:2]})
            if (it + 1) % checkpoint_every == 0 or it + 1 == iterations:
                checkpoint(it + 1, wall)
    finally:
        bar.close()
        log.close()
    if start_it == 0 and iterations == 0:
        checkpoint(0, 0.0)
    return {
        "iterations": iterations,
        "resumed_from": start_it,
        "wall_s": wall_before + time.perf_counter() - t0,
    }


def _logged_up_to(row: dict[str, str], iteration: int) -> bool:
    """Whether a log row is whole and of an iteration up to ``iteration`` (a resume keeps
    those; a line a kill cut short has fewer fields than the header and goes)."""
    if None in row.values():
        return False
    try:
        return int(row["iteration"]) <= iteration
    except (KeyError, ValueError):
        return False


def _optimizer_state_to(
    opt: torch.optim.Optimizer, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON (no pickling)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{name}.{pid}.{k}"] = v.detach().cpu()
                state_meta[str(pid)][k] = "tensor"
            else:
                state_meta[str(pid)][k] = v
    return tensors, {"state": state_meta, "param_groups": sd["param_groups"]}


def _optimizer_state_from(
    flat: Mapping[str, torch.Tensor], name: str, meta: dict[str, Any]
) -> dict[str, Any]:
    state = {}
    for pid, entries in meta["state"].items():
        state[int(pid)] = {
            k: (flat[f"opt.{name}.{pid}.{k}"] if v == "tensor" else v) for k, v in entries.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}
