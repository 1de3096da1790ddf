"""What DM and DC share: a learnable synthetic set beside real images per class, siamese
augmentation, and the outer loop (:func:`common.run_iterations`) that ends in a proxy.

Random and herding (real subsets) need none of this; what every baseline shares (the recipe,
writing the proxy, features of a fresh network) is in :mod:`nas_proxy.distill.subsets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas_proxy.data import Dataset
from nas_proxy.distill.common import (
    class_indices,
    init_synthetic,
    require_ipc,
    run_iterations,
    save_image_grid,
)
from nas_proxy.distill.options import SyntheticOptions
from nas_proxy.distill.subsets import parse_specs, real_space, resolve_dsa, write_proxy
from nas_proxy.errors import UserError


def siamese_dsa(
    real: torch.Tensor, syn: torch.Tensor, strategy: str | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a real and a synthetic batch from the same generator state (DSA's siamese
    augmentation: both see the same op, with the same parameter stream)."""
    from nas_proxy.augment import dsa

    if strategy is None:
        return real, syn
    state = generator.get_state()
    real = dsa(real, strategy, generator=generator)
    generator.set_state(state)
    return real, dsa(syn, strategy, generator=generator)


@dataclass
class SyntheticSetup:
    """What DM and DC start from: learnable images (class-ordered, ``ipc`` per class), their
    labels, real training images per class in the same space, and the shared settings."""

    images: torch.Tensor  # leaf on the device, requires grad
    labels: torch.Tensor
    real_by_class: list[torch.Tensor]
    specs: list[str]
    strategy: str | None
    zca: Any
    settings: dict[str, Any]


def prepare_synthetic(
    dataset: Dataset,
    ipc: int,
    options: SyntheticOptions,
    *,
    method: str,
    seed: int,
    device: torch.device,
) -> SyntheticSetup:
    """Validate, initialise the synthetic set (``options.init``: real | noise) and move the
    real data to ``device`` once."""
    require_ipc(dataset, ipc)
    if not dataset.is_image:
        raise UserError(f"--method {method} needs an image dataset, '{dataset.name}' is not")
    specs, strategy = parse_specs(options.arch), resolve_dsa(dataset, options.dsa)
    train_x, zca = real_space(dataset, options.zca, options.zca_eps)
    init = options.init
    images, labels = init_synthetic(dataset, ipc, init, seed=seed)
    if zca is not None and init == "real":
        images = zca.transform(images)
    by_class = class_indices(dataset.train_y, dataset.num_classes)
    settings = {
        "method": method,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "ipc": ipc,
        "arch": specs,
        "dsa": strategy,
        "zca": zca is not None,
        "zca_eps": zca.eps if zca is not None else None,
        "init": init,
        "seed": seed,
    }
    return SyntheticSetup(
        images=images.to(device).requires_grad_(True),
        labels=labels,
        real_by_class=[train_x[idx].to(device) for idx in by_class],
        specs=specs,
        strategy=strategy,
        zca=zca,
        settings=settings,
    )


def pick_spec(specs: list[str], generator: torch.Generator) -> str:
    """One architecture per iteration, uniformly (multi-architecture distillation)."""
    return specs[int(torch.randint(len(specs), (1,), generator=generator))]


def save_grid(setup: SyntheticSetup, dataset: Dataset, path: Path, title: str) -> None:
    """Picture of the current synthetic images (de-whitened when ZCA is on)."""
    images = setup.images.detach().cpu()
    if setup.zca is not None:
        images = setup.zca.inverse(images)
    save_image_grid(
        images, setup.labels, path, dataset.mean, dataset.std, classes=dataset.classes, title=title
    )


def optimize_synthetic(
    setup: SyntheticSetup,
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: SyntheticOptions,
    *,
    method: str,
    step: Callable[[int, torch.Generator], dict[str, float]],
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The shared tail of DM and DC: :func:`common.run_iterations` (checkpoints, resume,
    divergence stop, log.csv, grid at checkpoints), then the proxy and its summary."""
    out, iterations = Path(out), options.iterations
    losses: list[float] = []

    def logged_step(it: int, g: torch.Generator) -> dict[str, float]:
        metrics = step(it, g)
        losses.append(metrics["loss"])
        return metrics

    run = run_iterations(
        out=out,
        iterations=iterations,
        step=logged_step,
        tensors={"images": setup.images},
        optimizers={"images": optimizer},
        settings=settings,
        seed=seed,
        checkpoint_every=options.checkpoint_every,
        on_checkpoint=lambda it: (
            it < iterations
            and save_grid(  # write_proxy draws the last
                setup, dataset, out / "grid.png", f"{method}, iteration {it}"
            )
        ),
        desc=method,
    )
    return write_proxy(
        out,
        setup.images.detach(),
        setup.labels,
        method=method,
        dataset=dataset,
        ipc=ipc,
        options=options,
        settings={**settings, "iterations": iterations},
        iterations=iterations,
        wall_s=run["wall_s"],
        zca=setup.zca,
        loss=losses[-1] if losses else None,
        resumed_from=run["resumed_from"],
    )
