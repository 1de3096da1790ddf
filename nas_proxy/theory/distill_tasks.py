"""Distillation of a multi-index task by performance matching, gradient matching and MTT.

Thin adapters over the shared distillation pieces, each writing the standard proxy format
(``save_proxy``; inputs are N×d vectors in the dataset's space, mean 0 std 1):

* ``perf``: performance matching (meta-learning). Each iteration draws a fresh two-layer
  network, trains it ``syn_steps`` full-batch SGD steps on the synthetic set with
  :func:`nas_proxy.distill.unroll.unroll_sgd`, scores it on a real batch and back-propagates
  that loss into the synthetic inputs (and, for regression, the synthetic targets).
* ``gm``: single-step gradient matching: at a fresh random initialisation, the per-class
  gradient of the loss on real data and on the synthetic set are matched with DC's layer-wise
  cosine distance (:func:`nas_proxy.distill.dc.match_loss`); regression matches one batch.
* ``mtt``: :func:`nas_proxy.distill.mtt.run_mtt` on the vector dataset with MLP experts.

The synthetic inputs follow plain SGD with momentum, never Adam: Adam rescales every input
coordinate separately, which in a random basis (W is random) inflates the many directions
outside span(W) that carry only noise, and hides the geometry this experiment measures.

opts (None: default) for perf and gm: ``arch`` (spec), ``iterations``, ``lr_img``,
``momentum``, ``batch_real``, ``init`` (real | noise), ``checkpoint_every``; perf also
``syn_steps``, ``lr_teacher`` (inner step size), ``lr_lr`` (0 keeps it fixed), ``lr_label``
(regression targets). ``recipe`` is written into the proxy as the training recipe.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from nas_proxy.data import Dataset
from nas_proxy.distill.common import class_indices, init_synthetic, run_iterations, sample_real
from nas_proxy.distill.dc import gradient_distance, match_loss
from nas_proxy.distill.proxy import save_proxy
from nas_proxy.distill.subsets import fresh_net
from nas_proxy.distill.unroll import unroll_sgd
from nas_proxy.errors import UserError
from nas_proxy.train import loss_fn

METHODS = ("perf", "gm", "mtt")
DEFAULT_ARCH = "mlp:hidden=128,depth=1"

# CPU-scale defaults, chosen by the runs in docs/theory.md (d = 100, k = 2, 20 samples).
DEFAULTS: dict[str, dict[str, Any]] = {
    "perf": {
        "iterations": 300,
        "syn_steps": 20,
        "lr_img": 100.0,
        "momentum": 0.5,
        "lr_teacher": 0.1,
        "lr_lr": 0.0,
        "lr_label": 10.0,
        "batch_real": 2048,
        "init": "real",
        "checkpoint_every": 100,
    },
    "gm": {
        "iterations": 300,
        "lr_img": 1.0,
        "momentum": 0.5,
        "batch_real": 1024,
        "init": "real",
        "checkpoint_every": 100,
    },
    "mtt": {
        "iterations": 300,
        "syn_steps": 20,
        "expert_epochs": 2,
        "max_start_epoch": 4,
        "num_experts": 4,
        "lr_img": 100.0,
        "lr_lr": 1e-5,
        "lr_teacher": 0.05,
        "expert_lr": 0.05,
        "expert_batch_size": 256,
        "checkpoint_every": 100,
    },
}


def is_regression(dataset: Dataset) -> bool:
    return dataset.train_y.dtype != torch.long


def initial_set(
    dataset: Dataset, n_syn: int, init: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting synthetic set: class-ordered (n_syn / classes per class) for
    classification, random real rows (with their targets) for regression."""
    if not is_regression(dataset):
        if n_syn % dataset.num_classes:
            raise UserError(
                f"--n-syn {n_syn}: must be a multiple of the number of classes "
                f"({dataset.num_classes})"
            )
        return init_synthetic(dataset, n_syn // dataset.num_classes, init, seed=seed)
    if n_syn > len(dataset.train_y):
        raise UserError(f"--n-syn {n_syn}: more than the {len(dataset.train_y)} training rows")
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(dataset.train_y), generator=g)[:n_syn]
    x = (
        dataset.train_x[rows].clone()
        if init == "real"
        else torch.randn((n_syn, *dataset.shape), generator=g)
    )
    return x, dataset.train_y[rows].clone()


def _options(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in opts.items() if v is not None}
    merged = {**DEFAULTS[method], "arch": DEFAULT_ARCH, **given}
    if merged.get("init", "real") not in ("real", "noise"):
        raise UserError(f"--init {merged['init']}: expected real or noise")
    return merged


def _finish(
    out: Path,
    dataset: Dataset,
    x: torch.Tensor,
    y: torch.Tensor,
    x0: torch.Tensor,
    *,
    method: str,
    n_syn: int,
    settings: dict[str, Any],
    recipe: dict[str, Any] | None,
    run: dict[str, Any],
    start: float,
    **summary: Any,
) -> dict[str, Any]:
    """Save the proxy (the initial samples ride along as ``extra.init`` so the change that
    distillation made can be measured from the proxy alone) and return the summary."""
    ipc = n_syn if is_regression(dataset) else n_syn // dataset.num_classes
    wall = time.perf_counter() - start
    save_proxy(
        out,
        x.detach(),
        y.detach(),
        method=method,
        dataset=dataset,
        ipc=ipc,
        recipe=recipe,
        settings=settings,
        extra={"init": x0},
        wall_s=wall,
    )
    return {
        "dir": str(out),
        "method": method,
        "n_syn": n_syn,
        "images": len(x),
        "iterations": run["iterations"],
        "resumed_from": run["resumed_from"],
        "init": settings.get("init", "real"),
        "wall_s": round(wall, 3),
        **summary,
    }


def distill_perf(
    dataset: Dataset,
    n_syn: int,
    out: str | Path,
    opts: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[str, Any]:
    """Performance matching through the shared unrolled SGD; writes the proxy to ``out``."""
    start, out = time.perf_counter(), Path(out)
    o = _options("perf", opts)
    spec, steps = str(o["arch"]), int(o["syn_steps"])
    x0, y0 = initial_set(dataset, n_syn, o["init"], seed)
    images = x0.clone().to(device).requires_grad_(True)
    syn_lr = torch.tensor(float(o["lr_teacher"]), device=device).requires_grad_(True)
    tensors = {"images": images, "lr": syn_lr}
    optimizers: dict[str, torch.optim.Optimizer] = {
        "images": torch.optim.SGD([images], lr=float(o["lr_img"]), momentum=float(o["momentum"])),
        "lr": torch.optim.SGD([syn_lr], lr=float(o["lr_lr"]), momentum=float(o["momentum"])),
    }
    targets = y0.to(device)
    if is_regression(dataset):  # the targets are part of what is distilled
        targets = targets.clone().requires_grad_(True)
        tensors["targets"] = targets
        optimizers["targets"] = torch.optim.SGD(
            [targets], lr=float(o["lr_label"]), momentum=float(o["momentum"])
        )
    real_x, real_y = dataset.train_x.to(device), dataset.train_y.to(device)
    batch = min(int(o["batch_real"]), len(real_y))

    def step(it: int, g: torch.Generator) -> dict[str, float]:
        net = fresh_net(spec, dataset, g, device)
        init = {k: v.detach() for k, v in net.named_parameters()}
        final = unroll_sgd(
            net, init, images, targets, syn_lr, steps=steps, batch_size=None, generator=g
        )
        rows = torch.randint(len(real_y), (batch,), generator=g).to(device)
        loss = loss_fn(functional_call(net, final, (real_x[rows],)), real_y[rows])
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(images.grad.norm())
        for opt in optimizers.values():
            opt.step()
        return {"loss": loss.item(), "lr": syn_lr.item(), "grad_norm": grad_norm}

    settings = _settings(
        "perf",
        dataset,
        n_syn,
        o,
        seed,
        (
            "syn_steps",
            "lr_img",
            "momentum",
            "lr_teacher",
            "lr_lr",
            "lr_label",
            "batch_real",
            "init",
        ),
    )
    run = run_iterations(
        out=out,
        iterations=int(o["iterations"]),
        step=step,
        tensors=tensors,
        optimizers=optimizers,
        settings=settings,
        seed=seed,
        checkpoint_every=int(o["checkpoint_every"]),
        log_fields=("loss", "lr", "grad_norm"),
        check=_lr_check,
        desc="perf",
    )
    return _finish(
        out,
        dataset,
        images,
        targets,
        x0,
        method="perf",
        n_syn=n_syn,
        settings=settings,
        recipe=o.get("recipe"),
        run=run,
        start=start,
        learned_lr=syn_lr.item(),
    )


def distill_gm(
    dataset: Dataset,
    n_syn: int,
    out: str | Path,
    opts: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[str, Any]:
    """Single-step gradient matching at fresh initialisations; writes the proxy to ``out``."""
    start, out = time.perf_counter(), Path(out)
    o = _options("gm", opts)
    spec = str(o["arch"])
    x0, y0 = initial_set(dataset, n_syn, o["init"], seed)
    images = x0.clone().to(device).requires_grad_(True)
    optimizer = torch.optim.SGD([images], lr=float(o["lr_img"]), momentum=float(o["momentum"]))
    regression = is_regression(dataset)
    targets = y0.to(device)
    batch = int(o["batch_real"])
    real_x, real_y = dataset.train_x.to(device), dataset.train_y.to(device)
    by_class = (
        []
        if regression
        else [real_x[idx.to(device)] for idx in class_indices(dataset.train_y, dataset.num_classes)]
    )

    def step(it: int, g: torch.Generator) -> dict[str, float]:
        net = fresh_net(spec, dataset, g, device)
        if regression:  # one group: the whole synthetic set against one real batch
            params = list(net.parameters())
            rows = torch.randint(len(real_y), (batch,), generator=g).to(device)
            g_real = torch.autograd.grad(loss_fn(net(real_x[rows]), real_y[rows]), params)
            g_syn = torch.autograd.grad(loss_fn(net(images), targets), params, create_graph=True)
            loss = gradient_distance([t.detach() for t in g_real], g_syn)
        else:
            real = [sample_real(by_class, c, batch, g) for c in range(dataset.num_classes)]
            loss = match_loss(net, real, images, None, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=[images])
        grad_norm = float(images.grad.norm())
        optimizer.step()
        return {"loss": loss.item(), "grad_norm": grad_norm}

    settings = _settings(
        "gm", dataset, n_syn, o, seed, ("lr_img", "momentum", "batch_real", "init")
    )
    run = run_iterations(
        out=out,
        iterations=int(o["iterations"]),
        step=step,
        tensors={"images": images},
        optimizers={"images": optimizer},
        settings=settings,
        seed=seed,
        checkpoint_every=int(o["checkpoint_every"]),
        log_fields=("loss", "grad_norm"),
        desc="gm",
    )
    return _finish(
        out,
        dataset,
        images,
        targets,
        x0,
        method="gm",
        n_syn=n_syn,
        settings=settings,
        recipe=o.get("recipe"),
        run=run,
        start=start,
    )


def distill_mtt(
    dataset: Dataset,
    n_syn: int,
    out: str | Path,
    opts: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[str, Any]:
    """MTT (the product's main method) on the vector task with two-layer MLP experts."""
    from nas_proxy.distill.mtt import run_mtt

    if is_regression(dataset):
        raise UserError(
            "--method mtt: only the classification task is supported (MTT's "
            "synthetic set is class-balanced)"
        )
    start, out = time.perf_counter(), Path(out)
    o = _options("mtt", opts)
    initial_set(dataset, n_syn, "real", seed)  # the same start as run_mtt; checks n_syn
    recipe = o.pop("recipe", None)
    mtt_opts = {
        **o,
        "arch": [str(o["arch"])],
        "dsa": False,
        "zca": False,
        "init": "real",
        "experts": str(out.parent / "experts"),
    }
    if recipe:  # the recipe written into the proxy (MTT keeps its learned lr as the lr)
        mtt_opts.update(eval_epochs=recipe["epochs"], eval_batch_size=recipe["batch_size"])
    summary = run_mtt(
        dataset, n_syn // dataset.num_classes, out, mtt_opts, seed=seed, device=device
    )
    return {
        **summary,
        "n_syn": n_syn,
        "init": "real",
        "wall_s": round(time.perf_counter() - start, 3),
    }


def distill_task(
    method: str,
    dataset: Dataset,
    n_syn: int,
    out: str | Path,
    opts: dict[str, Any],
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict[str, Any]:
    """Dispatch to perf / gm / mtt."""
    runners = {"perf": distill_perf, "gm": distill_gm, "mtt": distill_mtt}
    if method not in runners:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    return runners[method](dataset, n_syn, out, opts, seed=seed, device=device)


def _settings(
    method: str, dataset: Dataset, n_syn: int, o: dict[str, Any], seed: int, keys: tuple[str, ...]
) -> dict[str, Any]:
    """What decides the result (the checkpoint fingerprint); ``iterations`` is left out so a
    finished run can be extended."""
    return {
        "method": method,
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "n_syn": n_syn,
        "arch": str(o["arch"]),
        "seed": seed,
        **{k: o[k] for k in keys},
    }


def _lr_check(metrics: dict[str, float]) -> str | None:
    if metrics["lr"] <= 0:
        return f"the learned inner step size turned non-positive ({metrics['lr']:.3g})"
    return None
