"""Real-subset baselines (``random``, ``herding``) and what every baseline method shares.

Both write the same proxy format as MTT, so search and rank can put them side by side.

``run_random`` reads only the recipe opts (``dsa``, ``eval_epochs``, ``eval_batch_size``; see
:func:`eval_recipe`): it keeps ``ipc`` seeded random training images
per class (the same draw as ``init_synthetic(..., "real", seed)``, so a DM/DC run with the same
seed starts from exactly this subset).

``run_herding`` reads:

- ``arch`` (list of specs, first used; default ``convnet:depth=3,width=32``): feature network.
- ``herding_features`` (``trained`` | ``random``, default ``trained``): ``trained`` trains the
  network on the training split through :func:`nas_proxy.train.fit` for ``herding_epochs``
  (default 2) epochs (cosine schedule, lr ``herding_lr`` default 0.05, no augmentation);
  ``random`` uses a freshly initialised network (free, and a fair "feature-agnostic" control).
- ``dsa``, ``eval_epochs``, ``eval_batch_size``: the recipe written into the proxy (see
  :func:`eval_recipe`).

Herding (Welling 2009, as used by iCaRL and the DC/DM papers' coreset baselines) greedily adds
the sample that keeps the running mean of the chosen features closest to the class mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Dataset
from nas_proxy.distill.common import (
    class_indices,
    init_synthetic,
    require_ipc,
    run_iterations,
    save_image_grid,
)
from nas_proxy.distill.proxy import save_proxy
from nas_proxy.errors import UserError

# The ConvNet of the distillation literature, scaled to CPU (the default candidate).
DEFAULT_ARCH = "convnet:depth=3,width=32"


# ---------------------------------------------------------------------------------------------
# Shared by every baseline (random, herding, DM, DC)


def option(opts: dict[str, Any], key: str, default: Any) -> Any:
    """``opts[key]`` cast to the default's type; the default when absent or None (the CLI
    passes None for flags the user did not give, so each method keeps its own defaults)."""
    value = opts.get(key)
    return default if value is None else type(default)(value)


def arch_list(opts: dict[str, Any]) -> list[str]:
    """Architecture specs from ``opts['arch']`` (a string or a list), parsed strictly."""
    from nas_proxy.models import parse_spec

    arch = opts.get("arch") or [DEFAULT_ARCH]
    specs = [arch] if isinstance(arch, str) else list(arch)
    return [str(parse_spec(s)) for s in specs]


def resolve_dsa(dataset: Dataset, opts: dict[str, Any]) -> str | None:
    """DSA strategy from ``opts['dsa']``: absent/None/True/'dsa' → the dataset's default,
    False/'none' → no augmentation, any other string → that strategy (checked). Vector
    datasets never augment."""
    from nas_proxy.augment import dsa_strategy_for, parse_strategy

    value = opts.get("dsa")
    value = True if value is None else value
    text = str(value).strip().lower()
    if not dataset.is_image or value is False or text in ("", "none", "false"):
        return None
    strategy = dsa_strategy_for(dataset.name) if text in ("true", "dsa", "default") else text
    return strategy if parse_strategy(strategy) else None


def real_space(dataset: Dataset, opts: dict[str, Any]):
    """Training images in the space distillation works in, and the ZCA (or None) that maps
    real images there (``opts['zca']`` true: whitened as the experts and MTT whiten, with
    ``opts['zca_eps']`` when given)."""
    from nas_proxy.experts import ZCA_EPS, whiten

    if not opts.get("zca") or not dataset.is_image:
        return dataset.train_x, None
    white, zca = whiten(dataset, option(opts, "zca_eps", ZCA_EPS))
    return white.train_x, zca


def eval_recipe(dataset: Dataset, opts: dict[str, Any]) -> dict[str, Any]:
    """The recipe candidates use on a baseline proxy: ``proxy.DEFAULT_RECIPE`` (save_proxy
    fills it in) plus the DSA strategy of :func:`resolve_dsa` (the dataset's by default),
    identical for every method so that their accuracies compare the data, not the training.
    Like MTT, ``dsa`` decides both how a proxy is built and how candidates train on it (so
    ``dsa: none`` gives an unaugmented recipe, which fast tests rely on); ``eval_epochs`` /
    ``eval_batch_size`` override the rest as they do for MTT."""
    recipe: dict[str, Any] = {"augment": resolve_dsa(dataset, opts)}
    for key, field in (("eval_epochs", "epochs"), ("eval_batch_size", "batch_size")):
        if opts.get(key) is not None:
            recipe[field] = int(opts[key])
    return recipe


def write_proxy(
    out: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    dataset: Dataset,
    ipc: int,
    opts: dict[str, Any],
    settings: dict[str, Any],
    iterations: int,
    wall_s: float,
    zca=None,
    **extra_summary: Any,
) -> dict[str, Any]:
    """Save the proxy and its picture; return the summary dict the CLI prints."""
    out = Path(out)
    save_proxy(
        out,
        images,
        labels,
        method=method,
        dataset=dataset,
        ipc=ipc,
        recipe=eval_recipe(dataset, opts),
        settings=settings,
        zca=zca,
        wall_s=wall_s,
    )
    if dataset.is_image:
        view = zca.inverse(images) if zca is not None else images
        save_image_grid(
            view,
            labels,
            out / "grid.png",
            dataset.mean,
            dataset.std,
            classes=dataset.classes,
            title=f"{method}, {ipc} per class",
        )
    return {
        "dir": str(out),
        "method": method,
        "ipc": ipc,
        "images": len(images),
        "iterations": iterations,
        "wall_s": round(wall_s, 3),
        **extra_summary,
    }


def classifier_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features a model feeds its final Linear layer (its embedding), differentiable in ``x``.

    A forward pre-hook on the last ``nn.Linear`` works for every family we build (convnet, mlp,
    timm heads) without knowing its attribute names.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no Linear classifier to take features from")
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def fresh_net(
    spec: str, dataset: Dataset, generator: torch.Generator, device: torch.device
) -> nn.Module:
    """A freshly initialised network whose weights come from ``generator`` (built on the CPU,
    then moved), so a resumed run replays the same networks on any device. The global RNG is
    left untouched."""
    from nas_proxy.models import build_model

    net_seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(net_seed)
        net = build_model(spec, dataset.shape, dataset.num_classes)
    return net.to(device).train()


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
    opts: dict[str, Any],
    *,
    method: str,
    seed: int,
    device: torch.device,
) -> SyntheticSetup:
    """Validate, initialise the synthetic set (``opts['init']``: real | noise) and move the
    real data to ``device`` once."""
    require_ipc(dataset, ipc)
    if not dataset.is_image:
        raise UserError(f"--method {method} needs an image dataset, '{dataset.name}' is not")
    specs, strategy = arch_list(opts), resolve_dsa(dataset, opts)
    train_x, zca = real_space(dataset, opts)
    init = option(opts, "init", "real")
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
    opts: dict[str, Any],
    *,
    method: str,
    step: Callable[[int, torch.Generator], dict[str, float]],
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
    iterations: int,
    seed: int,
    checkpoint_every: int,
) -> dict[str, Any]:
    """The shared tail of DM and DC: :func:`common.run_iterations` (checkpoints, resume,
    divergence stop, log.csv, grid at checkpoints), then the proxy and its summary."""
    out = Path(out)
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
        checkpoint_every=option(opts, "checkpoint_every", checkpoint_every),
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
        opts=opts,
        settings={**settings, "iterations": iterations},
        iterations=iterations,
        wall_s=run["wall_s"],
        zca=setup.zca,
        loss=losses[-1] if losses else None,
        resumed_from=run["resumed_from"],
    )


# ---------------------------------------------------------------------------------------------
# random


def run_random(
    dataset: Dataset, ipc: int, out: Path, opts: dict[str, Any], *, seed: int, device: torch.device
) -> dict[str, Any]:
    """A seeded random real subset with ``ipc`` images per class."""
    del device  # nothing to compute
    start = time.perf_counter()
    require_ipc(dataset, ipc)
    images, labels = init_synthetic(dataset, ipc, "real", seed=seed)
    return write_proxy(
        out,
        images,
        labels,
        method="random",
        dataset=dataset,
        ipc=ipc,
        opts=opts,
        settings={"seed": seed},
        iterations=0,
        wall_s=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# herding


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Eval-mode embeddings (classifier inputs) of ``x``, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        classifier_input(model, x[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts)


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows of ``features`` chosen greedily so that the running mean of the
    chosen rows stays closest to the mean of all rows."""
    mu = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for step in range(1, k + 1):
        # distance of every candidate's would-be running mean to the target, in one pass
        dist = ((total + features) / step - mu).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen, dtype=torch.long)


def herding_features(
    dataset: Dataset, opts: dict[str, Any], *, seed: int, device: torch.device
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Training-split features for herding and the settings that determined them."""
    from nas_proxy.train import TrainConfig, fit

    spec = arch_list(opts)[0]
    kind = option(opts, "herding_features", "trained")
    settings: dict[str, Any] = {"arch": spec, "features": kind}
    if kind == "trained":
        epochs = option(opts, "herding_epochs", 2)
        lr = option(opts, "herding_lr", 0.05)
        cfg = TrainConfig(
            epochs=epochs, lr=lr, batch_size=128, schedule="cosine", eval_every=0, seed=seed
        )
        model, _ = fit(
            spec,
            dataset.train_x,
            dataset.train_y,
            cfg,
            num_classes=dataset.num_classes,
            device=device,
            desc="herding features",
        )
        settings.update(epochs=epochs, lr=lr)
    elif kind == "random":
        model = fresh_net(spec, dataset, torch.Generator().manual_seed(seed), device)
    else:
        raise UserError(f"herding_features '{kind}': expected trained or random")
    return extract_features(model, dataset.train_x), settings


def run_herding(
    dataset: Dataset, ipc: int, out: Path, opts: dict[str, Any], *, seed: int, device: torch.device
) -> dict[str, Any]:
    """Per class, the ``ipc`` training images herding picks in a network's feature space."""
    start = time.perf_counter()
    require_ipc(dataset, ipc)
    features, settings = herding_features(dataset, opts, seed=seed, device=device)
    by_class = class_indices(dataset.train_y, dataset.num_classes)
    chosen = torch.cat([idx[herding_select(features[idx], ipc)] for idx in by_class])
    labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    return write_proxy(
        out,
        dataset.train_x[chosen].clone(),
        labels,
        method="herding",
        dataset=dataset,
        ipc=ipc,
        opts=opts,
        settings={**settings, "seed": seed},
        iterations=0,
        wall_s=time.perf_counter() - start,
    )
