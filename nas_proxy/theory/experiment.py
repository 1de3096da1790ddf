"""The measurements of ``nas-proxy theory``: does distillation of a multi-index task write the
task's low-dimensional structure span(W) into the synthetic set, and does that make a tiny set
worth many real samples?

1. sample efficiency: test error of a fresh two-layer network trained on the distilled set vs
   on random real sets of n_syn, 10×, 100× and all samples;
2. subspace alignment: the share of the distilled data's variance (and of the change
   distillation made to its initial samples) in span(W) against k/d, principal angles, and the
   same for the first-layer weights of networks trained on distilled vs real data;
3. transfer: same W, another link; pre-train on the distilled set, fine-tune on few real
   samples of the second task, against the same from scratch;
4. scaling: 1 and 2 as d grows with k fixed.

Every "train a network on a set and measure its test error" goes through
:func:`nas_proxy.train.fit` with ONE recipe (:func:`recipe`): the same optimiser, learning rate,
schedule and number of SGD steps whatever the set size, so the sets compare, not the training.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.data import Dataset, load_dataset
from nas_proxy.distill.proxy import load_proxy
from nas_proxy.errors import UserError
from nas_proxy.io import save_figure, write_json
from nas_proxy.models import build_model
from nas_proxy.runtime import resolve_device, seed_everything, versions
from nas_proxy.theory import subspace
from nas_proxy.theory.distill_tasks import METHODS, distill_task, initial_set
from nas_proxy.train import TrainConfig, fit

# The second task of the transfer experiment: same W, another link.
TRANSFER_LINK = {"sumtanh": "prod", "prod": "sumtanh", "quadratic": "sumtanh", "argmax": "prod"}


@dataclass
class TheoryConfig:
    """Settings of one ``theory`` run; ``distill_opts`` go to the distillation method."""

    d: int = 100
    k: int = 2
    method: str = "perf"
    n_syn: int = 20
    n_train: int = 20000
    n_test: int = 10000
    link: str = "sumtanh"
    task: str = "classification"
    hidden: int = 128
    iterations: int | None = None
    scaling: tuple[int, ...] = ()
    transfer_link: str | None = None
    n_transfer: int | None = None  # default 50 × n_syn
    eval_steps: int = 1000
    eval_lr: float = 0.05
    eval_seeds: int = 3
    seed: int = 0
    device: str | torch.device = "auto"  # resolved once, by run_theory
    out: Path | None = None  # default runs/theory/METHOD: methods never share a folder
    distill_opts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: expected one of {', '.join(METHODS)}")
        if not 1 <= self.k <= self.d:
            raise UserError(f"--k {self.k}: need 1 <= k <= d ({self.d})")
        for name in ("n_syn", "hidden", "eval_steps", "eval_seeds"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1"
                )
        if self.n_train < 2 * self.n_syn:
            raise UserError(f"--n-train {self.n_train}: need at least twice --n-syn")
        if any(d < self.k for d in self.scaling):
            raise UserError(
                f"--scaling {','.join(map(str, self.scaling))}: every d must be at "
                f"least k = {self.k}"
            )
        self.out = Path(self.out) if self.out is not None else Path("runs/theory", self.method)

    @property
    def arch(self) -> str:
        return f"mlp:hidden={self.hidden},depth=1"


# ---------------------------------------------------------------------------------------------
# Data and training


def task_dataset(cfg: TheoryConfig, d: int | None = None, link: str | None = None) -> Dataset:
    """The multi-index task; W depends only on (d, k, seed), so another link keeps W."""
    d = cfg.d if d is None else d
    link = cfg.link if link is None else link
    return load_dataset(
        f"multi-index:d={d},k={cfg.k},n={cfg.n_train},n_test={cfg.n_test},"
        f"link={link},task={cfg.task},seed={cfg.seed}"
    )


def recipe(n: int, cfg: TheoryConfig, seed: int = 0) -> TrainConfig:
    """The one evaluation recipe: SGD with momentum and a cosine schedule for ``eval_steps``
    steps whatever the set size (epochs are derived from it)."""
    batch = min(n, 256)
    epochs = math.ceil(cfg.eval_steps / math.ceil(n / batch))
    return TrainConfig(
        epochs=epochs,
        lr=cfg.eval_lr,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=batch,
        schedule="cosine",
        eval_every=0,
        recalibrate_norm=False,
        seed=seed,
    )


def first_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The first Linear layer (its rows are the hidden units' input weights)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            return name, module
    raise UserError(f"{type(model).__name__} has no Linear layer")


@dataclass
class Trained:
    error: float
    W1: torch.Tensor
    W1_init: torch.Tensor
    model: nn.Module


def train_and_test(
    x: torch.Tensor,
    y: torch.Tensor,
    data: Dataset,
    cfg: TheoryConfig,
    seed: int,
    *,
    device: torch.device,
    initial_state: dict[str, torch.Tensor] | None = None,
    freeze_first: bool = False,
) -> Trained:
    """Train a fresh two-layer network on (x, y) with :func:`recipe`; test error on real data
    (classification: 1 − accuracy; regression: test MSE / variance of the test targets).
    ``freeze_first`` keeps the first layer as initialised (only the head learns)."""
    start: dict[str, torch.Tensor] = {}

    def grab_init(epoch: int, model: nn.Module, _metrics: dict[str, float]) -> None:
        if epoch == 0:
            layer = first_linear(model)[1]
            start["W1"] = layer.weight.detach().cpu().clone()
            if freeze_first:  # no gradient, so SGD (and its weight decay) skips the layer
                layer.requires_grad_(False)

    model, res = fit(
        cfg.arch,
        x,
        y,
        recipe(len(x), cfg, seed),
        num_classes=data.num_classes,
        device=device,
        test=(data.test_x, data.test_y),
        on_epoch=grab_init,
        initial_state=initial_state,
        desc=f"n={len(x)}",
    )
    if res.test_accuracy is not None:
        error = 1.0 - res.test_accuracy
    else:
        error = res.test_loss / float(data.test_y.float().var())
    return Trained(error, first_linear(model)[1].weight.detach().cpu(), start["W1"], model)


def random_subset(data: Dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:n]
    return data.train_x[rows], data.train_y[rows]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def sizes_for(n_syn: int, n_train: int) -> list[int]:
    """n_syn, 10×, 100× and all, capped at the training set and without repeats."""
    return sorted({min(n, n_train) for n in (n_syn, 10 * n_syn, 100 * n_syn, n_train)})


# ---------------------------------------------------------------------------------------------
# One distillation and its measurements


def distill(
    cfg: TheoryConfig, data: Dataset, out: Path, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Run the method; return (x_syn, y_syn, x_init, summary) read back from the proxy."""
    opts = {
        **cfg.distill_opts,
        "arch": cfg.arch,
        "iterations": cfg.iterations,
        "recipe": recipe(cfg.n_syn, cfg).to_dict(),
    }
    summary = distill_task(cfg.method, data, cfg.n_syn, out, opts, seed=cfg.seed, device=device)
    proxy = load_proxy(out)
    x_init = proxy.extra.get("init")
    if x_init is None:  # MTT's proxy: recompute the same seeded start
        x_init = initial_set(data, cfg.n_syn, summary.get("init", "real"), cfg.seed)[0]
    return proxy.images, proxy.labels, x_init, summary


def weight_report(trained: Trained, W: torch.Tensor) -> dict[str, Any]:
    return subspace.weight_alignment(trained.W1, W, trained.W1_init)


def measure(
    cfg: TheoryConfig, data: Dataset, out: Path, device: torch.device, with_baselines: bool = True
) -> dict[str, Any]:
    """Distil, then measure sample efficiency and alignment on ``data``."""
    W = data.extras["W"]
    x_syn, y_syn, x_init, summary = distill(cfg, data, out / "proxy", device)
    seeds = [cfg.seed + s for s in range(cfg.eval_seeds)]
    on_syn = [train_and_test(x_syn, y_syn, data, cfg, s, device=device) for s in seeds]
    err, err_std = _mean_std([t.error for t in on_syn])
    result: dict[str, Any] = {
        "d": data.extras["d"],
        "test_error_distilled": err,
        "test_error_distilled_std": err_std,
        **subspace.subspace_report(x_syn, W, x_init),
        "init_subspace_fraction": subspace.variance_fraction(x_init, W),
        "distill": {k: v for k, v in summary.items() if k != "experts"},
    }
    result["change_subspace_fraction"] = result.pop("change_fraction")
    sizes = sizes_for(cfg.n_syn, len(data.train_y)) if with_baselines else [10 * cfg.n_syn]
    random_err, random_std, nets = {}, {}, {}
    for n in sizes:
        runs = [
            train_and_test(*random_subset(data, n, s), data, cfg, s, device=device) for s in seeds
        ]
        random_err[n], random_std[n] = _mean_std([t.error for t in runs])
        nets[n] = runs[0]
    result["test_error_random"] = random_err
    result["test_error_random_std"] = random_std
    real_all = nets[max(sizes)]
    result["weight_alignment"] = {
        "distilled": weight_report(on_syn[0], W),
        f"random_{cfg.n_syn}": weight_report(nets[min(sizes)], W),
        f"real_{max(sizes)}": weight_report(real_all, W),
    }
    result["_syn"] = (x_syn, y_syn)  # for transfer; popped before output
    return result


def transfer(
    cfg: TheoryConfig, x_syn: torch.Tensor, y_syn: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """Features learned from the distilled set of task 1, reused on few real samples of task 2
    (same W, another link).

    ``pretrained``: a network trained on the distilled set; its first layer kept, a new head,
    then everything fitted on the task-2 samples; ``scratch``: the same fit from a random
    init. Two controls freeze the first layer so only the head learns: ``frozen_pretrained``
    (the distilled-set features as they are) and ``frozen_random`` (random features).
    """
    link2 = cfg.transfer_link or TRANSFER_LINK[cfg.link]
    data2 = task_dataset(cfg, link=link2)
    n2 = cfg.n_transfer or 50 * cfg.n_syn
    data1 = task_dataset(cfg)
    errors: dict[str, list[float]] = {
        "pretrained": [],
        "scratch": [],
        "frozen_pretrained": [],
        "frozen_random": [],
    }
    for s in (cfg.seed + i for i in range(cfg.eval_seeds)):
        x2, y2 = random_subset(data2, n2, s + 1000)
        teacher = train_and_test(x_syn, y_syn, data1, cfg, s, device=device).model
        state = _with_head_of(teacher, cfg, data2, s)
        runs = {
            "pretrained": {"initial_state": state},
            "scratch": {},
            "frozen_pretrained": {"initial_state": state, "freeze_first": True},
            "frozen_random": {"freeze_first": True},
        }
        for name, kwargs in runs.items():
            errors[name].append(
                train_and_test(x2, y2, data2, cfg, s, device=device, **kwargs).error
            )
    out: dict[str, Any] = {"link": link2, "n": n2}
    for name, values in errors.items():
        out[name], out[f"{name}_std"] = _mean_std(values)
    return out


def _with_head_of(
    pretrained: nn.Module, cfg: TheoryConfig, data: Dataset, seed: int
) -> dict[str, torch.Tensor]:
    """A state dict: the pre-trained first layer, every other layer freshly initialised (the
    labels of the second task mean something else, so the old head would only mislead)."""
    seed_everything(seed)
    fresh = build_model(cfg.arch, data.shape, data.num_classes)
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    name, _ = first_linear(pretrained)
    for key in (f"{name}.weight", f"{name}.bias"):
        state[key] = pretrained.state_dict()[key].detach().cpu().clone()
    return state


# ---------------------------------------------------------------------------------------------
# The whole run


def run_theory(cfg: TheoryConfig, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Every measurement; writes ``result.json`` and the PNGs under ``cfg.out``. The theory
    entry point: ``cfg.device`` is resolved here, once."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = task_dataset(cfg)
    log(f"theory: {cfg.method} on {data.name}, {cfg.n_syn} synthetic samples")
    main = measure(cfg, data, cfg.out / f"d{cfg.d}", device)
    x_syn, y_syn = main.pop("_syn")
    log("theory: transfer")
    result: dict[str, Any] = {
        "method": cfg.method,
        "d": cfg.d,
        "k": cfg.k,
        "n_syn": cfg.n_syn,
        "link": cfg.link,
        "task": cfg.task,
        "arch": cfg.arch,
        "n_train": len(data.train_y),
        **main,
        "transfer": transfer(cfg, x_syn, y_syn, device),
    }
    if cfg.scaling:
        rows = []
        for d in cfg.scaling:
            if d == cfg.d:  # already measured
                rows.append(_scaling_row(main, cfg.n_syn))
                continue
            log(f"theory: scaling, d = {d}")
            sub = TheoryConfig(**{**asdict(cfg), "d": d, "scaling": ()})
            row = measure(sub, task_dataset(sub), cfg.out / f"d{d}", device, with_baselines=False)
            row.pop("_syn")
            rows.append(_scaling_row(row, cfg.n_syn))
        result["scaling"] = rows
    result["plots"] = {name: str(path) for name, path in make_plots(result, cfg.out).items()}
    result.update(
        seed=cfg.seed,
        device=str(device),
        wall_s=round(time.perf_counter() - start, 3),
        out=str(cfg.out),
        eval_recipe=recipe(cfg.n_syn, cfg).to_dict() | {"steps": cfg.eval_steps},
    )
    write_json(
        cfg.out / "result.json",
        {
            **result,
            "versions": versions(),
            "config": {**asdict(cfg), "out": str(cfg.out), "device": str(cfg.device)},
        },
    )
    return result


def _scaling_row(row: dict[str, Any], n_syn: int) -> dict[str, Any]:
    wa = row["weight_alignment"]["distilled"]
    return {
        "d": row["d"],
        "subspace_fraction": row["subspace_fraction"],
        "change_subspace_fraction": row["change_subspace_fraction"],
        "isotropic_fraction": row["isotropic_fraction"],
        "principal_angles_deg": row["principal_angles_deg"],
        "test_error_distilled": row["test_error_distilled"],
        "test_error_random_10x": row["test_error_random"][10 * n_syn],
        "weight_change_fraction_distilled": wa["change_fraction"],
    }


# ---------------------------------------------------------------------------------------------
# Plots


def make_plots(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """One PNG per measurement; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullLocator below)

    paths: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        paths[name] = out / f"{name}.png"
        save_figure(fig, paths[name], dpi=90)
        plt.close(fig)

    title = f"{result['method']}, d={result['d']}, k={result['k']}, {result['link']}"
    # 1. sample efficiency
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = sorted(result["test_error_random"], key=int)
    ax.errorbar(
        [int(n) for n in ns],
        [result["test_error_random"][n] for n in ns],
        yerr=[result["test_error_random_std"][n] for n in ns],
        marker="o",
        label="random real samples",
    )
    ax.errorbar(
        [result["n_syn"]],
        [result["test_error_distilled"]],
        yerr=[result["test_error_distilled_std"]],
        marker="*",
        markersize=14,
        color="C3",
        linestyle="none",
        label=f"distilled ({result['method']})",
    )
    ax.set(xscale="log", xlabel="training samples", ylabel="test error", title=title)
    ax.legend()
    save(fig, "sample_efficiency")
    # 2. subspace fractions against k/d
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if result.get("scaling"):
        rows = result["scaling"]
        kd = [r["isotropic_fraction"] for r in rows]
        ax.plot(kd, [r["subspace_fraction"] for r in rows], "o-", label="distilled data")
        ax.plot(
            kd,
            [r["change_subspace_fraction"] for r in rows],
            "s-",
            label="change made by distillation",
        )
        ax.plot(
            kd,
            [r["weight_change_fraction_distilled"] for r in rows],
            "^-",
            label="first-layer change (net on distilled)",
        )
        ax.plot(kd, kd, "k--", label="isotropic (k/d)")
        ax.set(xscale="log", yscale="log", xlabel="k/d", ylabel="fraction in span(W)")
        ax.set_xticks(kd, [f"{v:.3g}" for v in kd], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    else:
        wa = result["weight_alignment"]
        bars = {
            "distilled data": result["subspace_fraction"],
            "initial samples": result["init_subspace_fraction"],
            "change by distillation": result["change_subspace_fraction"],
        }
        bars.update({f"W1 change ({name})": v["change_fraction"] for name, v in wa.items()})
        ax.barh(list(bars), list(bars.values()), color="C0")
        ax.axvline(result["isotropic_fraction"], color="k", linestyle="--", label="k/d")
        ax.set(xlim=(0, 1), xlabel="fraction in span(W)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "subspace_fractions")
    # 3. principal angles
    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = {"distilled data": result["principal_angles_deg"]}
    groups.update(
        {
            f"W1 change ({name})": v["change_angles_deg"]
            for name, v in result["weight_alignment"].items()
        }
    )
    width = 0.8 / result["k"]
    for i in range(result["k"]):
        ax.bar(
            [j + i * width for j in range(len(groups))],
            [angles[i] for angles in groups.values()],
            width,
            label=f"angle {i + 1}",
        )
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(groups))], list(groups), rotation=15, fontsize=7
    )
    ax.axhline(90, color="k", linewidth=0.5)
    ax.set(ylabel="principal angle to span(W) (deg)", ylim=(0, 95), title=title)
    ax.legend(fontsize=7)
    save(fig, "principal_angles")
    # 4. transfer
    tr = result["transfer"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = {
        "pretrained": "pre-trained\non distilled",
        "scratch": "from\nscratch",
        "frozen_pretrained": "frozen\ndistilled W1",
        "frozen_random": "frozen\nrandom W1",
    }
    ax.bar(
        list(names.values()),
        [tr[k] for k in names],
        yerr=[tr[f"{k}_std"] for k in names],
        color=["C3", "C0", "C1", "C7"],
    )
    ax.set(
        ylabel="test error, second task", title=f"transfer to {tr['link']} ({tr['n']} real samples)"
    )
    save(fig, "transfer")
    # 5. scaling
    if result.get("scaling"):
        rows = result["scaling"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        ds = [r["d"] for r in rows]
        axes[0].plot(
            ds,
            [r["test_error_distilled"] for r in rows],
            "o-",
            label=f"distilled ({result['n_syn']})",
        )
        axes[0].plot(
            ds,
            [r["test_error_random_10x"] for r in rows],
            "s-",
            label=f"random real ({10 * result['n_syn']})",
        )
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xticks(ds, [str(d) for d in ds])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axes[0].set(xlabel="d", ylabel="test error")
        axes[0].legend(fontsize=7)
        axes[1].plot(ds, [r["subspace_fraction"] for r in rows], "o-", label="distilled data")
        axes[1].plot(
            ds, [r["change_subspace_fraction"] for r in rows], "s-", label="change by distillation"
        )
        axes[1].plot(ds, [r["isotropic_fraction"] for r in rows], "k--", label="k/d")
        axes[1].set(yscale="log", xlabel="d", ylabel="fraction in span(W)")
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{result['method']}, k={result['k']}, {result['link']}", fontsize=9)
        save(fig, "scaling")
    return paths
