"""Distribution matching (DM; Zhao & Bilen, WACV 2023).

Every iteration samples a freshly initialised network and, class by class, pulls the mean
embedding (the features the network feeds its classifier) of the synthetic images towards that
of a real batch, both under the same (siamese) DSA transform. No network is ever trained, which
makes DM cheap: one forward of a real batch and one forward/backward of the synthetic set.

Options: ``options.DMOptions`` (defaults are CPU-scale; the paper's GPU settings in brackets):

- ``iterations`` (200 [20000]): each with a new random network.
- ``lr_img`` (1.0 [1.0]) and ``momentum`` (0.5 [0.5]): SGD on the synthetic images.
- ``batch_real`` (64 [256]): real images per class per iteration.
- ``arch`` (list of specs; default ``convnet:depth=3,width=32``): one is drawn per iteration.
- ``init`` (real | noise, default real), ``dsa`` (see ``subsets.resolve_dsa``; default the
  dataset's strategy), ``zca`` / ``zca_eps``, ``eval_epochs`` /
  ``eval_batch_size`` (the recipe, see ``subsets.eval_recipe``), ``checkpoint_every`` (50).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Dataset
from nas_proxy.distill.common import sample_real
from nas_proxy.distill.options import DMOptions, method_options
from nas_proxy.distill.subsets import classifier_input, fresh_net
from nas_proxy.distill.synthetic import (
    optimize_synthetic,
    pick_spec,
    prepare_synthetic,
    siamese_dsa,
)


def dm_loss(
    net: nn.Module,
    real: list[torch.Tensor],
    syn: torch.Tensor,
    strategy: str | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sum over classes of the squared distance between mean real and mean synthetic
    embeddings. ``real[c]`` is class ``c``'s real batch; ``syn`` is class-ordered with the
    same number of images per class."""
    pairs = [
        siamese_dsa(r, s, strategy, generator)
        for r, s in zip(real, syn.chunk(len(real)), strict=True)
    ]
    # one forward per side instead of one per class: the per-class means are the same for
    # networks without batch statistics, and far cheaper in Python overhead
    with torch.no_grad():
        f_real = classifier_input(net, torch.cat([r for r, _ in pairs]))
    f_syn = classifier_input(net, torch.cat([s for _, s in pairs]))
    mean_real = torch.stack([f.mean(0) for f in f_real.split([len(r) for r, _ in pairs])])
    mean_syn = f_syn.view(len(real), -1, f_syn.shape[1]).mean(1)
    return ((mean_real - mean_syn) ** 2).sum()


def run_dm(
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: DMOptions | Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Distil ``ipc`` images per class by distribution matching; write the proxy to ``out``."""
    o = method_options("dm", options)
    setup = prepare_synthetic(dataset, ipc, o, method="dm", seed=seed, device=device)
    lr_img, momentum, batch_real = o.lr_img, o.momentum, o.batch_real
    optimizer = torch.optim.SGD([setup.images], lr=lr_img, momentum=momentum)
    settings = {**setup.settings, "lr_img": lr_img, "momentum": momentum, "batch_real": batch_real}

    def step(it: int, g: torch.Generator) -> dict[str, float]:
        net = fresh_net(pick_spec(setup.specs, g), dataset, g, setup.images.device)
        net.requires_grad_(False)  # only the images learn
        real = [
            sample_real(setup.real_by_class, c, batch_real, g) for c in range(dataset.num_classes)
        ]
        loss = dm_loss(net, real, setup.images, setup.strategy, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    return optimize_synthetic(
        setup,
        dataset,
        ipc,
        out,
        o,
        method="dm",
        step=step,
        optimizer=optimizer,
        settings=settings,
        seed=seed,
    )
