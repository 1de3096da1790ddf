"""Multi-step trajectory matching (MTT; Cazenavette et al., CVPR 2022).

Every iteration picks an architecture (round-robin or at random over ``arch``), one of its
experts and a start epoch ``t`` in ``[0, max_start_epoch]``; from the expert's weights θ*_t it runs
``syn_steps`` SGD steps on (DSA-augmented) mini-batches of the synthetic set with the learnable
step size, and scores the end point against the expert ``expert_epochs`` epochs later:

    loss = ‖θ̂ − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²      (sums over all parameter tensors)

Images, the step size (and optionally soft labels) follow SGD with momentum 0.5 on that loss.
Missing experts are trained first (:func:`nas_proxy.experts.ensure_experts`).

Options: ``options.MTTOptions`` (defaults: :mod:`nas_proxy.distill.presets`; CPU defaults for
digits/fashion-mnist, a ``preset`` for the published CIFAR settings):

- ``arch`` (list of specs), ``arch_order`` (round-robin | random)
- ``experts`` (cache root; default ``<out>/../experts``), ``num_experts``, ``expert_lr``,
  ``expert_batch_size``, ``expert_seed`` (0), ``workers``
- ``iterations``, ``syn_steps``, ``expert_epochs``, ``max_start_epoch``, ``batch_syn``
- ``lr_img``, ``lr_lr``, ``lr_teacher`` (initial step size), ``momentum``
- ``soft_labels``, ``lr_label``, ``label_scale``; ``init`` (real | noise); ``zca``; ``dsa``
- ``memory_bounded``, ``precision`` (auto | fp32 | bf16: the inner steps' forwards under
  autocast; auto is bf16 where the device has it natively),
  ``checkpoint_every``; ``eval_epochs``, ``eval_batch_size`` (the recipe)

Neither ``iterations`` nor ``memory_bounded`` is part of the checkpoint's fingerprint: a
finished run can be extended with more iterations, and a run can be resumed in the other mode.
"""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_proxy.augment import dsa, whiten
from nas_proxy.data import Dataset
from nas_proxy.distill.common import (
    init_synthetic,
    require_ipc,
    run_iterations,
    save_image_grid,
)
from nas_proxy.distill.options import MTTOptions, method_options
from nas_proxy.distill.presets import resolve_options
from nas_proxy.distill.proxy import save_proxy
from nas_proxy.distill.subsets import resolve_dsa
from nas_proxy.distill.unroll import second_order_error, unroll_sgd
from nas_proxy.errors import UserError
from nas_proxy.experts import ExpertCache, ensure_experts
from nas_proxy.recipe import PROXY_RECIPE, ExpertSettings

LR_EXPLODES = 100.0  # stop when the learned step size exceeds this multiple of its start
# Autocast dtype of the inner steps' forwards; parameters, updates and the loss stay float32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 where ``device`` computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX) and fp32 elsewhere, where emulated bf16 would be slower."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
        return "bf16" if native else "fp32"
    return "fp32"


@dataclass
class Student:
    """One architecture's functional template and its experts."""

    spec: str
    model: nn.Module
    param_names: list[str]
    buffer_names: list[str]
    experts: ExpertCache


class TrajectoryReader:
    """Expert snapshots on the compute device, least-recently-used ones evicted."""

    def __init__(self, device: torch.device, capacity: int = 128):
        self.device, self.capacity = device, capacity
        self._cache: OrderedDict[tuple[str, int, int], dict[str, torch.Tensor]] = OrderedDict()

    def get(self, experts: ExpertCache, expert: int, epoch: int) -> dict[str, torch.Tensor]:
        key = (experts.key, expert, epoch)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = experts.load(expert, epoch, device=self.device)
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return self._cache[key]


def _int_option(o: dict[str, Any], key: str, low: int) -> int:
    value = int(o[key])
    if value < low:
        raise UserError(f"--{key.replace('_', '-')} {value}: must be at least {low}")
    return value


def _positive(o: dict[str, Any], key: str) -> float:
    value = float(o[key])
    if not value > 0:
        raise UserError(f"--{key.replace('_', '-')} {value}: must be positive")
    return value


@dataclass(frozen=True)
class MTTConfig:
    """Validated options. Every field except those in ``NOT_FINGERPRINTED`` decides the result
    of a run from a checkpoint (together with the seed and the expert keys)."""

    arch: list[str]
    arch_order: str
    num_experts: int
    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    batch_syn: int | None
    lr_img: float
    lr_lr: float
    lr_teacher: float
    momentum: float
    soft_labels: bool
    lr_label: float | None
    label_scale: float | None
    init: str
    dsa: str | None
    zca: bool
    iterations: int
    memory_bounded: bool
    precision: str
    checkpoint_every: int
    eval_epochs: int
    eval_batch_size: int
    experts: ExpertSettings = field(default_factory=ExpertSettings)

    NOT_FINGERPRINTED = (
        "iterations",
        "memory_bounded",
        "checkpoint_every",
        "eval_epochs",
        "eval_batch_size",
    )

    def fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_FINGERPRINTED}

    def recipe(self, lr: float) -> dict[str, Any]:
        """How candidates train on the proxy: the reference's evaluation recipe."""
        return {
            **PROXY_RECIPE,
            "epochs": self.eval_epochs,
            "lr": lr,
            "batch_size": self.eval_batch_size,
            "augment": self.dsa,
        }


def mtt_config(
    dataset: Dataset,
    ipc: int,
    options: MTTOptions | Mapping[str, Any] | None,
    device: torch.device = torch.device("cpu"),
) -> MTTConfig:
    """Merge defaults, dataset defaults, preset and ``options``; check every value; resolve
    ``precision=auto`` for ``device`` (default CPU)."""
    from nas_proxy.models import parse_spec

    o = resolve_options(dataset.name, ipc, method_options("mtt", options).given())
    if o["arch_order"] not in ("round-robin", "random"):
        raise UserError(f"--arch-order {o['arch_order']}: expected round-robin or random")
    if o["init"] not in ("real", "noise"):
        raise UserError(f"--init {o['init']}: expected real or noise")
    if o["precision"] not in ("auto", *PRECISIONS):
        raise UserError(f"--precision {o['precision']}: expected auto, fp32 or bf16")
    zca = bool(o["zca"])
    if zca and not dataset.is_image:
        raise UserError(f"--zca needs an image dataset, '{dataset.name}' is not one")
    strategy = resolve_dsa(dataset, o["dsa"])
    soft = bool(o["soft_labels"])
    return MTTConfig(
        arch=[str(parse_spec(s)) for s in o["arch"]],
        arch_order=o["arch_order"],
        num_experts=_int_option(o, "num_experts", 1),
        syn_steps=_int_option(o, "syn_steps", 1),
        expert_epochs=_int_option(o, "expert_epochs", 1),
        max_start_epoch=_int_option(o, "max_start_epoch", 0),
        batch_syn=None if o["batch_syn"] in (None, 0) else _int_option(o, "batch_syn", 1),
        lr_img=_positive(o, "lr_img"),
        lr_lr=_positive(o, "lr_lr"),
        lr_teacher=_positive(o, "lr_teacher"),
        momentum=float(o["momentum"]),
        soft_labels=soft,
        lr_label=_positive(o, "lr_label") if soft else None,
        label_scale=float(o["label_scale"]) if soft else None,
        init=o["init"],
        dsa=strategy,
        zca=zca,
        iterations=_int_option(o, "iterations", 0),
        memory_bounded=bool(o["memory_bounded"]),
        precision=resolve_precision(o["precision"], device),
        checkpoint_every=_int_option(o, "checkpoint_every", 1),
        eval_epochs=_int_option(o, "eval_epochs", 1),
        eval_batch_size=_int_option(o, "eval_batch_size", 1),
        experts=ExpertSettings(
            lr=_positive(o, "expert_lr"),
            batch_size=_int_option(o, "expert_batch_size", 1),
            augment=strategy,
            zca=zca,
            seed=int(o.get("expert_seed") or 0),
        ),
    )


def _students(
    dataset: Dataset, cfg: MTTConfig, root: Path, workers: int, device: torch.device
) -> list[Student]:
    """Experts for every architecture (trained first when missing) and functional templates.

    Each template is checked first (before hours of experts): trajectory matching needs the
    second derivative of its training step."""
    from nas_proxy.models import build_model
    from nas_proxy.models.layers import twice_differentiable

    templates = []
    for spec in cfg.arch:
        model = build_model(spec, dataset.shape, dataset.num_classes).to(device).train()
        model = twice_differentiable(model)
        reason = second_order_error(model, dataset.shape)
        if reason:
            raise UserError(
                f"--arch {spec}: trajectory matching differentiates through training steps, "
                f"and torch cannot take the second derivative of this model's ({reason}); "
                "distil with another architecture"
            )
        templates.append(model)
    students = []
    for spec, model in zip(cfg.arch, templates, strict=True):
        cache = ensure_experts(
            dataset,
            spec,
            cfg.num_experts,
            cfg.max_start_epoch + cfg.expert_epochs,
            root,
            cfg.experts,
            device=device,
            workers=workers,
        )
        students.append(
            Student(
                cache.spec,
                model,
                [n for n, _ in model.named_parameters()],
                [n for n, _ in model.named_buffers()],
                cache,
            )
        )
    return students


@dataclass
class Synthetic:
    """The learnable state: images, step size and (optionally) label logits, with optimizers."""

    images: torch.Tensor
    lr: torch.Tensor
    hard_labels: torch.Tensor
    label_logits: torch.Tensor | None
    optimizers: dict[str, torch.optim.Optimizer]

    @classmethod
    def create(
        cls, dataset: Dataset, ipc: int, cfg: MTTConfig, zca, seed: int, device: torch.device
    ) -> Synthetic:
        images, hard = init_synthetic(dataset, ipc, cfg.init, seed=seed)
        if zca is not None and cfg.init == "real":
            images = zca.transform(images)
        images = images.to(device).requires_grad_(True)
        lr = torch.tensor(cfg.lr_teacher, device=device).requires_grad_(True)
        optimizers: dict[str, torch.optim.Optimizer] = {
            "images": torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum),
            "lr": torch.optim.SGD([lr], lr=cfg.lr_lr, momentum=cfg.momentum),
        }
        logits = None
        if cfg.soft_labels:
            one_hot = nn.functional.one_hot(hard, dataset.num_classes).float()
            logits = (one_hot * cfg.label_scale).to(device).requires_grad_(True)
            optimizers["labels"] = torch.optim.SGD([logits], lr=cfg.lr_label, momentum=cfg.momentum)
        return cls(images, lr, hard.to(device), logits, optimizers)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, "lr": self.lr}
        if self.label_logits is not None:
            out["label_logits"] = self.label_logits
        return out

    def labels(self) -> torch.Tensor:
        """Class indices, or probabilities when labels are learned (differentiable)."""
        return self.hard_labels if self.label_logits is None else self.label_logits.softmax(1)


def matching_step(
    cfg: MTTConfig, students: list[Student], syn: Synthetic, reader: TrajectoryReader
):
    """The per-iteration function for :func:`common.run_iterations`."""
    augment = (lambda x, g: dsa(x, cfg.dsa, generator=g)) if cfg.dsa else None

    def step(it: int, g: torch.Generator) -> dict[str, float]:
        if cfg.arch_order == "random":
            a = int(torch.randint(len(students), (1,), generator=g))
        else:
            a = it % len(students)
        student = students[a]
        e = int(torch.randint(cfg.num_experts, (1,), generator=g))
        t = int(torch.randint(cfg.max_start_epoch + 1, (1,), generator=g))
        begin = reader.get(student.experts, e, t)
        target = reader.get(student.experts, e, t + cfg.expert_epochs)
        final = unroll_sgd(
            student.model,
            {k: begin[k] for k in student.param_names},
            syn.images,
            syn.labels(),
            syn.lr,
            steps=cfg.syn_steps,
            batch_size=cfg.batch_syn,
            generator=g,
            augment=augment,
            memory_bounded=cfg.memory_bounded,
            buffers={k: begin[k] for k in student.buffer_names},
            amp_dtype=PRECISIONS[cfg.precision],
        )
        num = sum(((final[k] - target[k]) ** 2).sum() for k in student.param_names)
        den = sum(((begin[k] - target[k]) ** 2).sum() for k in student.param_names)
        loss = num / den
        for opt in syn.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = syn.images.grad.norm() if syn.images.grad is not None else torch.zeros(())
        for opt in syn.optimizers.values():
            opt.step()
        return {
            "loss": loss.item(),
            "lr": syn.lr.item(),
            "grad_norm": grad_norm.item(),
            "arch": a,
            "expert": e,
            "start_epoch": t,
        }

    return step


def lr_check(cfg: MTTConfig):
    """Stop when the learned step size leaves its sane range (NaN is caught by run_iterations)."""

    def check(metrics: dict[str, float]) -> str | None:
        if metrics["lr"] <= 0:
            return f"the learned learning rate turned non-positive ({metrics['lr']:.3g})"
        if metrics["lr"] > LR_EXPLODES * cfg.lr_teacher:
            return (
                f"the learned learning rate exploded ({metrics['lr']:.3g}, "
                f"{LR_EXPLODES:g}x --lr-teacher)"
            )
        return None

    return check


def run_mtt(
    dataset: Dataset,
    ipc: int,
    out: Path,
    options: MTTOptions | Mapping[str, Any] | None = None,
    *,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Distil ``ipc`` images per class by trajectory matching; write the proxy to ``out``."""
    start, options = time.perf_counter(), method_options("mtt", options)
    out = Path(out)
    require_ipc(dataset, ipc)
    cfg = mtt_config(dataset, ipc, options, device)
    root = Path(options.experts) if options.experts else out.parent / "experts"
    students = _students(dataset, cfg, root, options.workers or 1, device)
    experts_wall = time.perf_counter() - start
    zca = whiten(dataset)[1] if cfg.zca else None
    syn = Synthetic.create(dataset, ipc, cfg, zca, seed, device)
    last: dict[str, float] = {}
    step = matching_step(cfg, students, syn, TrajectoryReader(device))

    def logged_step(it: int, g: torch.Generator) -> dict[str, float]:
        last.update(step(it, g))
        return last

    def picture(it: int) -> None:
        view = syn.images.detach().cpu()
        view = zca.inverse(view) if zca is not None else view
        grid = save_image_grid(
            view,
            syn.labels().detach().cpu(),
            out / "grid.png",
            dataset.mean,
            dataset.std,
            classes=dataset.classes,
            title=f"mtt, {ipc} per class, iteration {it}",
        )
        shutil.copyfile(grid, out / f"grid_iter_{it:04d}.png")

    fingerprint = {
        "method": "mtt",
        "dataset": dataset.name,
        "dataset_checksum": dataset.checksum,
        "ipc": ipc,
        "seed": seed,
        "expert_keys": [s.experts.key for s in students],
        **cfg.fingerprint(),
    }
    run = run_iterations(
        out=out,
        iterations=cfg.iterations,
        step=logged_step,
        tensors=syn.tensors,
        optimizers=syn.optimizers,
        settings=fingerprint,
        seed=seed,
        checkpoint_every=cfg.checkpoint_every,
        log_fields=("loss", "lr", "grad_norm", "arch", "expert", "start_epoch"),
        on_checkpoint=picture if dataset.is_image else None,
        check=lr_check(cfg),
        desc="mtt",
    )

    learned_lr = syn.lr.item()
    labels = syn.labels().detach().float() if cfg.soft_labels else syn.hard_labels
    save_proxy(
        out,
        syn.images.detach(),
        labels.cpu(),
        method="mtt",
        dataset=dataset,
        ipc=ipc,
        recipe=cfg.recipe(learned_lr),
        lr=learned_lr,
        zca=zca,
        settings={**fingerprint, **asdict(cfg)},
        expert_key=",".join(s.experts.key for s in students),
        wall_s=time.perf_counter() - start,  # experts included: rank amortises this cost
    )
    if dataset.is_image and not (out / "grid.png").exists():
        picture(cfg.iterations)
    return {
        "dir": str(out),
        "method": "mtt",
        "ipc": ipc,
        "images": len(syn.images),
        "iterations": cfg.iterations,
        "wall_s": round(time.perf_counter() - start, 3),
        "experts_wall_s": round(experts_wall, 3),
        "lr": learned_lr,
        "loss": last.get("loss"),
        "resumed_from": run["resumed_from"],
        "experts": [s.experts.summary() for s in students],
    }
