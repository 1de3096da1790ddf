"""The one training and evaluation loop used by every stage.

Full-data training, expert trajectories, candidates trained on a proxy and ground-truth runs all
go through :func:`fit` (or :func:`train_model` for a model that already exists). Tensors stay in
memory on the target device; batches are index slices, so nothing is reloaded per epoch.

Targets can be int64 class indices (hard labels), float32 ``N×classes`` distributions (soft
labels) or float32 ``N`` values (regression, scored by MSE).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy.augment import make_augment
from nas_proxy.models import build_model, model_profile
from nas_proxy.recipe import TrainConfig
from nas_proxy.runtime import progress, seed_everything

if TYPE_CHECKING:
    from nas_proxy.data import Dataset

# Called after every epoch (and once with epoch 0 before training): (epoch, model, metrics).
# Experts save trajectories from it; search reports intermediate values and may raise to prune.
EpochCallback = Callable[[int, nn.Module, dict[str, float]], None]
# Called after ``on_epoch`` at every epoch boundary with what, besides the weights, decides the
# rest of the run (optimizer state, shuffle/augmentation/global RNG states, step counter), as
# plain tensors. Passing it back as ``resume_state`` (with the weights of that epoch) continues
# the run bit-identically; experts use it to extend or resume trajectories.
StateCallback = Callable[[int, dict[str, torch.Tensor]], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a training run produced; ``to_dict`` is JSON-safe."""

    train_loss: float
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    epochs: int
    steps: int
    wall_s: float
    params: int
    flops: int
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0):
    """Cross-entropy for hard or soft labels, MSE for regression targets."""
    if target.dtype == torch.long:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if target.dim() == 2:
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.mse_loss(logits.squeeze(-1), target)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float | None, float]:
    """Accuracy (None for regression) and mean loss of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct, n = 0.0, 0, len(x)
    for i in range(0, n, batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        yb = y[i : i + batch_size].to(device, non_blocking=True)
        out = model(xb)
        total_loss += float(loss_fn(out, yb)) * len(xb)
        if yb.dtype == torch.long:
            correct += int((out.argmax(1) == yb).sum())
        elif yb.dim() == 2:
            correct += int((out.argmax(1) == yb.argmax(1)).sum())
    model.train(was_training)
    is_regression = y.dtype != torch.long and y.dim() == 1
    return (None if is_regression else correct / max(n, 1)), total_loss / max(n, 1)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_norm(
    model: nn.Module, x: torch.Tensor, batches: int = 8, batch_size: int = 256, seed: int = 0
) -> bool:
    """Re-estimate BatchNorm running statistics on real inputs (no labels needed).

    A network trained on a few hundred synthetic images keeps the statistics of those images,
    which wrecks its accuracy on real data; recomputing them on real batches fixes that.
    Returns whether anything was recalibrated.
    """
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns or len(x) == 0:
        return False
    device = next(model.parameters()).device
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    model.train()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    for b in range(min(batches, math.ceil(len(x) / batch_size))):
        idx = order[b * batch_size : (b + 1) * batch_size]
        model(x[idx].to(device, non_blocking=True))
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return True


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at a given optimisation step."""
    if cfg.schedule == "cosine" and total_steps > 0:
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if cfg.schedule == "step":
        return 0.1 if step >= total_steps // 2 else 1.0
    return 1.0


def train_model(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TrainConfig,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    recalibrate_x: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    lr: torch.Tensor | float | None = None,
    desc: str | None = None,
    resume_state: Mapping[str, torch.Tensor] | None = None,
    on_state: StateCallback | None = None,
) -> TrainResult:
    """Train ``model`` (already on its device) in place and score it.

    ``recalibrate_x``: real inputs used to re-estimate BatchNorm statistics before every
    evaluation when ``cfg.recalibrate_norm`` (pass the real training images when training on a
    proxy). ``lr`` overrides ``cfg.lr`` (e.g. a proxy's learned learning rate).
    ``resume_state``: a state that ``on_state`` produced at some epoch, with ``model`` already
    holding that epoch's weights; training continues from the next epoch exactly as the
    original run would have (``on_epoch(0)`` is then not called).
    """
    device = next(model.parameters()).device
    start = time.perf_counter()
    x = train_x.to(device)
    y = train_y.to(device)
    n = len(x)
    base_lr = float(lr) if lr is not None else cfg.lr
    cfg_run = cfg.replace(lr=base_lr)
    optimizer = make_optimizer(model.parameters(), cfg_run)
    augment = make_augment(cfg.augment, seed=cfg.seed + 1, device=device) if x.dim() == 4 else None
    shuffle = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = cfg.steps_per_epoch(n)
    epochs = cfg.epochs_for(n)
    total_steps = cfg.total_steps(n)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_state is not None:
        start_epoch = _load_train_state(resume_state, optimizer, shuffle, augment, device)

    def score(split: tuple[torch.Tensor, torch.Tensor] | None):
        if split is None:
            return None, None
        if cfg.recalibrate_norm and recalibrate_x is not None:
            recalibrate_norm(model, recalibrate_x, cfg.recalibrate_batches, seed=cfg.seed)
        return evaluate(model, split[0], split[1], cfg.eval_batch_size)

    if on_epoch is not None and start_epoch == 0:
        on_epoch(0, model, {})
    step, train_loss = start_epoch * steps_per_epoch, float("nan")
    model.train()
    bar = progress(
        range(start_epoch + 1, epochs + 1),
        desc=desc or "train",
        unit="ep",
        initial=start_epoch,
        total=epochs,
    )
    train_s = 0.0  # training time alone, without evaluations: what a shorter run would cost
    for epoch in bar:
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for b in range(min(steps_per_epoch, total_steps - step)):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb)
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_factor(cfg, step, total_steps)
            loss = loss_fn(model(xb), yb, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
            step += 1
        train_loss = float(loss_sum) / max(seen, 1)
        train_s += time.perf_counter() - epoch_start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss is {train_loss} at epoch {epoch}")
        metrics = {"epoch": epoch, "train_loss": train_loss, "steps": step, "train_s": train_s}
        last = epoch == epochs
        if val is not None and ((cfg.eval_every and epoch % cfg.eval_every == 0) or last):
            metrics["val_accuracy"], metrics["val_loss"] = score(val)
            if cfg.track_test and test is not None:
                metrics["test_accuracy"], metrics["test_loss"] = score(test)
            model.train()
            if metrics["val_accuracy"] is not None:
                bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{metrics['val_accuracy']:.3f}")
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, model, metrics)
        if on_state is not None:
            on_state(epoch, _train_state(epoch, step, optimizer, shuffle, augment, device))
    bar.close()

    final = history[-1] if history else {}
    if "val_accuracy" in final:
        val_acc, val_loss = final["val_accuracy"], final["val_loss"]
    else:
        val_acc, val_loss = score(val)
    if "test_accuracy" in final:
        test_acc, test_loss = final["test_accuracy"], final["test_loss"]
    else:
        test_acc, test_loss = score(test)
    return TrainResult(
        train_loss=train_loss,
        val_accuracy=val_acc,
        val_loss=val_loss,
        test_accuracy=test_acc,
        test_loss=test_loss,
        epochs=epochs,
        steps=step,
        wall_s=time.perf_counter() - start,
        params=0,
        flops=0,
        config=cfg_run.to_dict(),
        history=history,
    )


def _train_state(
    epoch: int,
    step: int,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    augment,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Everything but the weights that decides the rest of a run, as plain tensors."""
    state = {
        "epoch": torch.tensor(epoch),
        "step": torch.tensor(step),
        "rng.shuffle": shuffle.get_state(),
        "rng.torch": torch.get_rng_state(),
    }
    if augment is not None:
        state["rng.augment"] = augment.get_state()
    if device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(device)
    for pid, entries in optimizer.state_dict()["state"].items():
        for k, v in entries.items():
            if v is not None:  # SGD without momentum keeps momentum_buffer=None in places
                state[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
    return state


def _load_train_state(
    state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    augment,
    device: torch.device,
) -> int:
    """Restore what :func:`_train_state` captured; returns the epoch it was taken at."""
    shuffle.set_state(state["rng.shuffle"])
    torch.set_rng_state(state["rng.torch"])
    if augment is not None and "rng.augment" in state:
        augment.set_state(state["rng.augment"])
    if device.type == "cuda" and "rng.cuda" in state:
        torch.cuda.set_rng_state(state["rng.cuda"], device)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    if opt_state:
        optimizer.load_state_dict(
            {"state": opt_state, "param_groups": optimizer.state_dict()["param_groups"]}
        )
    return int(state["epoch"])


def fit(
    spec: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TrainConfig,
    *,
    num_classes: int,
    device: torch.device,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    recalibrate_x: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    lr: torch.Tensor | float | None = None,
    desc: str | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    resume_state: Mapping[str, torch.Tensor] | None = None,
    on_state: StateCallback | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Seed, build ``spec`` for the data's shape, train it, and return (model, result).

    The seed fixes the initial weights, batch order and augmentation, so two calls with the same
    arguments give the same result on the same device. To resume, pass the weights of the epoch
    to continue from as ``initial_state`` (a ``state_dict``) and that epoch's ``on_state``
    output as ``resume_state``.
    """
    seed_everything(cfg.seed)
    in_shape = tuple(train_x.shape[1:])
    model = build_model(spec, in_shape, num_classes).to(device)
    if initial_state is not None:
        model.load_state_dict(dict(initial_state))
    result = train_model(
        model,
        train_x,
        train_y,
        cfg,
        val=val,
        test=test,
        recalibrate_x=recalibrate_x,
        on_epoch=on_epoch,
        lr=lr,
        desc=desc,
        resume_state=resume_state,
        on_state=on_state,
    )
    profile = model_profile(spec, in_shape, num_classes)
    result.params, result.flops, result.arch = profile["params"], profile["flops"], profile["arch"]
    return model, result


def train_architecture(
    spec: str,
    data: Dataset,
    cfg: TrainConfig,
    *,
    device: torch.device,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``spec`` on ``data``'s training split, score it on val and test, and with ``out``
    save the weights (``model.safetensors``) and the result with its config, history and
    versions (``result.json``). Returns the result (what ``nas-proxy train --json`` prints)."""
    from nas_proxy.io import save_tensors, write_json
    from nas_proxy.runtime import versions

    model, res = fit(
        spec,
        data.train_x,
        data.train_y,
        cfg,
        num_classes=data.num_classes,
        device=device,
        val=(data.val_x, data.val_y),
        test=(data.test_x, data.test_y),
        desc=spec,
    )
    result: dict[str, Any] = {
        "arch": spec,
        "dataset": data.name,
        "epochs": cfg.epochs,
        "val_accuracy": res.val_accuracy,
        "test_accuracy": res.test_accuracy,
        "params": res.params,
        "flops": res.flops,
        "wall_s": round(res.wall_s, 3),
        "device": str(device),
        "seed": cfg.seed,
    }
    if out is not None:
        save_tensors(
            Path(out) / "model.safetensors",
            model.state_dict(),
            metadata={"arch": spec, "dataset": data.name},
        )
        write_json(
            Path(out) / "result.json",
            {**result, "config": cfg.to_dict(), "history": res.history, "versions": versions()},
        )
        result["out"] = str(out)
    return result
