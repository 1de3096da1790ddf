"""Gradient matching (DC; Zhao, Mopuri & Bilen, ICLR 2021) with differentiable siamese
augmentation (the DSA variant; Zhao & Bilen, ICML 2021).

Every iteration samples a fresh network and runs ``outer_loop`` rounds. A round computes, per
class, the gradient of the classification loss w.r.t. the network's weights on a real batch and
on the class's synthetic images (same DSA transform), updates the images to shrink the
layer-wise cosine distance between the two, then trains the network ``inner_loop`` epochs on the
synthetic set (through :func:`nas_proxy.train.train_model`) so later rounds match gradients
along a training trajectory rather than only at initialisation.

Options: ``options.DCOptions`` (defaults are CPU-scale; the papers' GPU settings in brackets):

- ``iterations`` (50 [1000]): each with a new network.
- ``outer_loop`` / ``inner_loop`` (the papers' table by IPC: 1→1/1, 10→10/50, 20→20/25,
  30→30/20, 40→40/15, 50→50/10; between entries the lower IPC's row).
- ``lr_img`` (0.1 [0.1]) and ``momentum`` (0.5 [0.5]): SGD on the synthetic images.
- ``lr_net`` (0.01 [0.01]): plain SGD of the inner network training, batch 256.
- ``batch_real`` (64 [256]): real images per class per matching step.
- ``arch`` (list of specs; default ``convnet:depth=3,width=32``): one is drawn per iteration.
- ``init`` (real | noise), ``dsa`` (default the dataset's strategy; ``none`` gives plain DC),
  ``zca`` / ``zca_eps``, ``eval_epochs`` /
  ``eval_batch_size`` (the recipe, see ``subsets.eval_recipe``), ``checkpoint_every`` (10).

Networks with BatchNorm match gradients with the normalisation statistics of a mixed real batch
frozen (as the reference does), since a one-class batch has different statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Dataset
from nas_proxy.distill.common import sample_real
from nas_proxy.distill.options import DCOptions, method_options
from nas_proxy.distill.subsets import fresh_net
from nas_proxy.distill.synthetic import (
    optimize_synthetic,
    pick_spec,
    prepare_synthetic,
    siamese_dsa,
)
from nas_proxy.train import TrainConfig, has_batch_norm, loss_fn, recalibrate_norm, train_model

# IPC -> (outer_loop, inner_loop), the DC/DSA papers' settings.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    return LOOPS[max(k for k in LOOPS if k <= ipc)]


def gradient_distance(real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor]) -> torch.Tensor:
    """The DC paper's layer-wise distance: per output unit, 1 - cosine similarity of the real
    and synthetic gradients, summed over units and layers. 1-d parameters (biases, norm
    scales) are left out, as in the paper."""
    total = syn[0].new_zeros(())
    for gr, gs in zip(real, syn, strict=True):
        if gr.dim() == 1:
            continue
        gr, gs = gr.flatten(1), gs.flatten(1)
        cos = (gr * gs).sum(1) / (gr.norm(dim=1) * gs.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def match_loss(
    net: nn.Module,
    real: list[torch.Tensor],
    syn: torch.Tensor,
    strategy: str | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sum over classes of the gradient distance; differentiable in ``syn`` (class-ordered)."""
    params = [p for p in net.parameters() if p.requires_grad]
    total = syn.new_zeros(())
    for c, (r, s) in enumerate(zip(real, syn.chunk(len(real)), strict=True)):
        r, s = siamese_dsa(r, s, strategy, generator)
        target = torch.full((len(r),), c, dtype=torch.long, device=r.device)
        g_real = torch.autograd.grad(loss_fn(net(r), target), params)
        g_syn = torch.autograd.grad(
            loss_fn(net(s), target[:1].expand(len(s))), params, create_graph=True
        )
        total = total + gradient_distance([g.detach() for g in g_real], g_syn)
    return total


def freeze_batch_norm(net: nn.Module, real: list[torch.Tensor], per_class: int = 16) -> None:
    """Estimate BatchNorm statistics on a mixed real batch and freeze them (eval mode)."""
    if not has_batch_norm(net):
        return
    mixed = torch.cat([r[:per_class] for r in real])
    recalibrate_norm(net, mixed, batches=1, batch_size=len(mixed))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def run_dc(
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: DCOptions | Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Distil ``ipc`` images per class by gradient matching; write the proxy to ``out``."""
    o = method_options("dc", options)
    setup = prepare_synthetic(dataset, ipc, o, method="dc", seed=seed, device=device)
    outer_default, inner_default = default_loops(ipc)
    outer_loop = outer_default if o.outer_loop is None else o.outer_loop
    inner_loop = inner_default if o.inner_loop is None else o.inner_loop
    lr_img, momentum, lr_net, batch_real = o.lr_img, o.momentum, o.lr_net, o.batch_real
    optimizer = torch.optim.SGD([setup.images], lr=lr_img, momentum=momentum)
    settings = {
        **setup.settings,
        "outer_loop": outer_loop,
        "inner_loop": inner_loop,
        "lr_img": lr_img,
        "momentum": momentum,
        "lr_net": lr_net,
        "batch_real": batch_real,
    }
    num_classes = dataset.num_classes

    def step(it: int, g: torch.Generator) -> dict[str, float]:
        net = fresh_net(pick_spec(setup.specs, g), dataset, g, setup.images.device)
        total = 0.0
        for round_ in range(outer_loop):
            real = [sample_real(setup.real_by_class, c, batch_real, g) for c in range(num_classes)]
            freeze_batch_norm(net, real)
            loss = match_loss(net, real, setup.images, setup.strategy, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=[setup.images])  # leave the network's .grad alone
            optimizer.step()
            total += loss.item()
            if round_ == outer_loop - 1:
                break
            # train the network a little on the current synthetic set (the published inner
            # loop: plain SGD, batch 256, DSA), seeded from the run's generator for resumes
            inner = TrainConfig(
                epochs=inner_loop,
                lr=lr_net,
                momentum=0.0,
                weight_decay=0.0,
                batch_size=256,
                schedule="none",
                augment=setup.strategy,
                recalibrate_norm=False,
                eval_every=0,
                seed=int(torch.randint(2**31 - 1, (1,), generator=g)),
            )
            train_model(net, setup.images.detach(), setup.labels, inner, desc="dc inner")
        return {"loss": total / (outer_loop * num_classes)}

    return optimize_synthetic(
        setup,
        dataset,
        ipc,
        out,
        o,
        method="dc",
        step=step,
        optimizer=optimizer,
        settings=settings,
        seed=seed,
    )
