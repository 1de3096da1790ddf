"""Real-subset baselines (``random``, ``herding``) and what every baseline method shares.

Both write the same proxy format as MTT, so search and rank can put them side by side.

Options are the frozen dataclasses of :mod:`nas_proxy.distill.options` (their defaults are
the only ones). ``run_random`` reads only the recipe options (``RecipeOptions``: ``dsa``,
``eval_epochs``, ``eval_batch_size``; see :func:`eval_recipe`): it keeps ``ipc`` seeded random
training images per class (the same draw as ``init_synthetic(..., "real", seed)``, so a DM/DC
run with the same seed starts from exactly this subset).

``run_herding`` reads ``HerdingOptions``:

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Dataset
from nas_proxy.distill.common import (
    class_indices,
    init_synthetic,
    require_ipc,
    save_image_grid,
)
from nas_proxy.distill.options import HerdingOptions, RecipeOptions, method_options
from nas_proxy.distill.proxy import save_proxy
from nas_proxy.errors import UserError

# ---------------------------------------------------------------------------------------------
# Shared by every baseline (random, herding, DM, DC)


def parse_specs(arch: Sequence[str]) -> list[str]:
    """Canonical architecture specs, parsed strictly."""
    from nas_proxy.models import parse_spec

    return [str(parse_spec(s)) for s in arch]


def resolve_dsa(dataset: Dataset, value: bool | str | None) -> str | None:
    """The DSA strategy a distillation runs with: on (the dataset's) unless ``value`` turns it
    off or names another (:func:`nas_proxy.augment.resolve_strategy`); vector datasets never
    augment."""
    from nas_proxy.augment import parse_strategy, resolve_strategy

    if not dataset.is_image:
        return None
    strategy = resolve_strategy(True if value is None else value, dataset.name)
    return strategy if parse_strategy(strategy) else None


def real_space(dataset: Dataset, zca: bool, eps: float | None = None):
    """Training images in the space distillation works in, and the ZCA (or None) that maps
    real images there (``zca`` true: whitened as the experts and MTT whiten)."""
    from nas_proxy.augment import ZCA_EPS, whiten

    if not zca or not dataset.is_image:
        return dataset.train_x, None
    white, transform = whiten(dataset, ZCA_EPS if eps is None else eps)
    return white.train_x, transform


def eval_recipe(dataset: Dataset, options: RecipeOptions) -> dict[str, Any]:
    """The recipe candidates use on a baseline proxy: ``proxy.DEFAULT_RECIPE`` (save_proxy
    fills it in) plus the DSA strategy of :func:`resolve_dsa` (the dataset's by default),
    identical for every method so that their accuracies compare the data, not the training.
    Like MTT, ``dsa`` decides both how a proxy is built and how candidates train on it (so
    ``dsa: none`` gives an unaugmented recipe, which fast tests rely on); ``eval_epochs`` /
    ``eval_batch_size`` override the rest as they do for MTT."""
    recipe: dict[str, Any] = {"augment": resolve_dsa(dataset, options.dsa)}
    if options.eval_epochs is not None:
        recipe["epochs"] = options.eval_epochs
    if options.eval_batch_size is not None:
        recipe["batch_size"] = options.eval_batch_size
    return recipe


def write_proxy(
    out: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: str,
    dataset: Dataset,
    ipc: int,
    options: RecipeOptions,
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
        recipe=eval_recipe(dataset, options),
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


# ---------------------------------------------------------------------------------------------
# random


def run_random(
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: RecipeOptions | Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """A seeded random real subset with ``ipc`` images per class."""
    del device  # nothing to compute
    start, options = time.perf_counter(), method_options("random", options)
    require_ipc(dataset, ipc)
    images, labels = init_synthetic(dataset, ipc, "real", seed=seed)
    return write_proxy(
        out,
        images,
        labels,
        method="random",
        dataset=dataset,
        ipc=ipc,
        options=options,
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
    dataset: Dataset,
    options: HerdingOptions | Mapping[str, Any] | None,
    *,
    seed: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Training-split features for herding and the settings that determined them."""
    from nas_proxy.train import TrainConfig, fit

    options = method_options("herding", options)
    spec = parse_specs(options.arch)[0]
    kind = options.herding_features
    settings: dict[str, Any] = {"arch": spec, "features": kind}
    if kind == "trained":
        epochs, lr = options.herding_epochs, options.herding_lr
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
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: HerdingOptions | Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Per class, the ``ipc`` training images herding picks in a network's feature space."""
    start, options = time.perf_counter(), method_options("herding", options)
    require_ipc(dataset, ipc)
    features, settings = herding_features(dataset, options, seed=seed, device=device)
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
        options=options,
        settings={**settings, "seed": seed},
        iterations=0,
        wall_s=time.perf_counter() - start,
    )
