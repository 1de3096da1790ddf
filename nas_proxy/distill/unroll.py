"""Differentiable unrolled SGD on a synthetic set: the inner loop of trajectory matching.

:func:`unroll_sgd` runs ``steps`` plain SGD steps of ``model`` (used only as a functional
template through ``torch.func.functional_call``) from ``params`` on mini-batches of ``(x, y)`` and
returns the final parameters, differentiable w.r.t. ``x``, soft labels ``y``, ``lr`` and the
initial parameters.

Two modes give the same gradient:

* full graph (default): autograd records every step (``create_graph=True``); memory grows
  linearly with ``steps`` (each step keeps its activations and its gradient graph).
* ``memory_bounded=True``: a custom autograd Function. Its forward runs the steps without a graph
  and keeps only the parameters before each step (plus each step's batch indices and
  augmentation-generator state). Its backward walks the steps in reverse, rebuilds one step's
  graph at a time and pulls the adjoint through it, Hessian-vector terms included, so the
  gradient is exact (constant activation memory as in TESLA, Cui et al. 2023): with
  ``θ_{s+1} = θ_s − lr·g_s(θ_s, x)`` and adjoint ``a = ∂L/∂θ_{s+1}``,
  ``∂L/∂θ_s = a − lr·H_s a``, ``∂L/∂x += −lr·∂⟨g_s, a⟩/∂x``, ``∂L/∂lr += −⟨g_s, a⟩``.
  Activation memory is that of one step whatever ``steps`` is; the snapshots cost
  ``steps × |θ|``, small next to activations for the networks distillation uses.

``amp_dtype=torch.bfloat16`` runs each step's forward (and so its backward and the backward
through it) under ``torch.autocast``: convolutions and matrix products in bfloat16, while the
parameters, their SGD updates, the loss and every gradient that leaves a step stay float32. On a
CPU with AVX512-BF16 an iteration of the MTT ConvNet took 0.6× the time and memory of float32,
with the image gradient's direction unchanged (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from nas_proxy.train import loss_fn

Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class _Plan:
    """What the memory-bounded backward needs to replay the forward exactly: per step the
    parameters before it, its batch indices and the generator state right before augmenting."""

    model: nn.Module
    names: list[str]
    buffers: dict[str, Tensor]
    batches: list[Tensor]
    augment: Augment | None = None
    generator_device: torch.device | None = None
    amp_dtype: torch.dtype | None = None
    aug_states: list[Tensor | None] = field(default_factory=list)
    snapshots: list[list[Tensor]] = field(default_factory=list)
    result: list[Tensor] = field(default_factory=list)


def _draw_batches(
    n: int, steps: int, batch_size: int | None, generator: torch.Generator
) -> list[Tensor]:
    """Batch indices per step: walk random permutations of the set in chunks (every image is
    seen once per pass, as in the MTT reference); the whole set when ``batch_size`` is None."""
    if batch_size is None or batch_size >= n:
        return [torch.arange(n)] * steps
    out: list[Tensor] = []
    chunks: list[Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(
                torch.randperm(n, generator=generator, device=generator.device)
                .cpu()
                .split(batch_size)
            )
        out.append(chunks.pop(0))
    return out


def _replay_batch(plan: _Plan, s: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    idx = plan.batches[s].to(x.device)
    xb, yb = x[idx], y[idx]
    if plan.augment is not None:
        g = torch.Generator(device=plan.generator_device)
        g.set_state(plan.aug_states[s])
        xb = plan.augment(xb, g)
    return xb, yb


def _step_grads(
    plan: _Plan, params: list[Tensor], xb: Tensor, yb: Tensor, create_graph: bool
) -> tuple[Tensor, ...]:
    tensors = dict(zip(plan.names, params, strict=True))
    amp = plan.amp_dtype is not None
    with torch.autocast(xb.device.type, dtype=plan.amp_dtype, enabled=amp):
        out = functional_call(plan.model, (tensors, plan.buffers), (xb,))
    if amp:  # the loss in float32, as autocast would compute it
        out = out.float()
    return torch.autograd.grad(loss_fn(out, yb), params, create_graph=create_graph)


def _private(buffers: dict | None) -> dict[str, Tensor]:
    # BatchNorm updates running statistics in place during training-mode forwards; hand it
    # private copies so expert snapshots are never modified (outputs use batch statistics).
    return {k: v.detach().clone() for k, v in (buffers or {}).items()}


def unroll_sgd(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    *,
    steps: int,
    batch_size: int | None,
    generator: torch.Generator,
    augment: Augment | None = None,
    memory_bounded: bool = False,
    buffers: dict | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Parameters after ``steps`` SGD steps (step size ``lr``) on mini-batches of ``(x, y)``.

    ``augment(batch, generator)`` is applied to every synthetic batch and must be a
    deterministic function of the generator state (DSA is). Batches and augmentations are drawn
    from ``generator``, which both modes leave in the same state. ``model`` should be in
    training mode; ``buffers`` are its buffers (e.g. BatchNorm running statistics) if any.
    ``amp_dtype`` (e.g. ``torch.bfloat16``) turns on mixed precision for the steps' forwards.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    plan = _Plan(
        model,
        list(params),
        _private(buffers),
        _draw_batches(len(x), steps, batch_size, generator),
        augment,
        generator.device,
        amp_dtype,
    )
    if memory_bounded or not torch.is_grad_enabled():
        _run_without_graph(plan, params, x, y, lr, generator)
        if not torch.is_grad_enabled():  # nobody will differentiate: no graph, no snapshots
            return dict(zip(plan.names, plan.result, strict=True))
        out = _UnrollFunction.apply(plan, lr, x, y, *params.values())
        return dict(zip(plan.names, out, strict=True))

    current = [p if p.requires_grad else p.detach().requires_grad_() for p in params.values()]
    for s in range(steps):
        idx = plan.batches[s].to(x.device)
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, generator)
        grads = _step_grads(plan, current, xb, yb, create_graph=True)
        current = [p - lr * g for p, g in zip(current, grads, strict=True)]
    return dict(zip(plan.names, current, strict=True))


def _run_without_graph(
    plan: _Plan,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    lr: Tensor,
    generator: torch.Generator,
) -> None:
    """The forward pass of the memory-bounded mode: per-step gradients without a graph through
    the steps; records snapshots and generator states in ``plan``."""
    current = [p.detach() for p in params.values()]
    x, y, step = x.detach(), y.detach(), lr.detach()
    with torch.enable_grad():
        for s in range(len(plan.batches)):
            plan.snapshots.append(current)
            idx = plan.batches[s].to(x.device)
            xb, yb = x[idx], y[idx]
            if plan.augment is not None:
                plan.aug_states.append(generator.get_state())
                xb = plan.augment(xb, generator)
            leaves = [p.detach().requires_grad_() for p in current]
            grads = _step_grads(plan, leaves, xb, yb, create_graph=False)
            current = [p - step * g for p, g in zip(current, grads, strict=True)]
    plan.result = current


class _UnrollFunction(torch.autograd.Function):
    """Memory-bounded unroll: the result comes from :func:`_run_without_graph`; the backward
    rebuilds one step's graph at a time, last step first."""

    @staticmethod
    def forward(ctx, plan: _Plan, lr: Tensor, x: Tensor, y: Tensor, *params: Tensor):
        ctx.plan = plan
        ctx.save_for_backward(lr, x, y)
        return tuple(plan.result)

    @staticmethod
    def backward(ctx, *grad_out: Tensor | None):
        plan: _Plan = ctx.plan
        lr, x, y = ctx.saved_tensors
        _, need_lr, need_x, need_y, *need_params = ctx.needs_input_grad
        adjoint = [
            torch.zeros_like(p) if g is None else g
            for g, p in zip(grad_out, plan.snapshots[0], strict=True)
        ]
        x_leaf = x.detach().requires_grad_(need_x)
        y_leaf = y.detach().requires_grad_(need_y and y.is_floating_point())
        wanted = [t for t in (x_leaf, y_leaf) if t.requires_grad]
        data_grads = [torch.zeros_like(t) for t in wanted]
        grad_lr = torch.zeros_like(lr)
        step = lr.detach()
        with torch.enable_grad():
            for s in reversed(range(len(plan.batches))):
                leaves = [p.detach().requires_grad_() for p in plan.snapshots[s]]
                xb, yb = _replay_batch(plan, s, x_leaf, y_leaf)
                grads = _step_grads(plan, leaves, xb, yb, create_graph=True)
                dot = sum((g * a).sum() for g, a in zip(grads, adjoint, strict=True))
                parts = torch.autograd.grad(dot, [*leaves, *wanted], allow_unused=True)
                grad_lr -= dot.detach()
                adjoint = [
                    a if h is None else a - step * h
                    for a, h in zip(adjoint, parts[: len(leaves)], strict=True)
                ]
                for acc, part in zip(data_grads, parts[len(leaves) :], strict=True):
                    if part is not None:
                        acc -= step * part
        plan.snapshots = []  # free them now, not when the graph is collected
        grads_by_input = dict(zip([id(t) for t in wanted], data_grads, strict=True))
        grad_x = grads_by_input.get(id(x_leaf))
        grad_y = grads_by_input.get(id(y_leaf))
        grad_params = [a if need else None for a, need in zip(adjoint, need_params, strict=True)]
        return (None, grad_lr if need_lr else None, grad_x, grad_y, *grad_params)


def second_order_error(model: nn.Module, in_shape: tuple[int, ...]) -> str | None:
    """Why trajectory matching cannot differentiate through ``model``'s training steps (the
    first line of torch's error: an operation whose backward has no derivative), or None.
    One :func:`unroll_sgd` step on two images, differentiated back to them, on the model's
    device; cheap enough to run before experts are trained for it."""
    param = next(model.parameters())
    g = torch.Generator(device=param.device).manual_seed(0)  # the global RNG stays untouched
    x = torch.randn(2, *in_shape, device=param.device, generator=g).requires_grad_()
    y = torch.zeros(2, dtype=torch.long, device=param.device)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    lr = torch.tensor(0.01, device=param.device, requires_grad=True)
    try:
        out = unroll_sgd(
            model,
            params,
            x,
            y,
            lr,
            steps=1,
            batch_size=None,
            generator=g,
            buffers=dict(model.named_buffers()),
        )
        torch.autograd.grad(sum(v.square().sum() for v in out.values()), x)
    except (RuntimeError, NotImplementedError) as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return None
