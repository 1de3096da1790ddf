"""Training-free ("zero-cost") scores of an architecture at initialisation.

Each score looks at a freshly initialised network and one real batch, with no training, and is
meant to correlate with the accuracy the network reaches after training. They are the cheapest
proxies a user could pick instead of a distilled dataset, so a rank report shows them beside it.
Higher is better for every score here.

* ``synflow``: log of sum |θ ⊙ ∂R/∂θ| where R is the output sum of the network with |θ| weights
  on an all-ones input (Tanaka et al. 2020; Abdelfattah et al. 2021 as a NAS proxy). Data-free;
  computed in float64 and returned as a log so deep networks do not overflow.
* ``gradnorm``: L2 norm of the loss gradient on a real labelled batch.
* ``naswot``: log-determinant of the kernel of binary activation codes over a real batch (Mellor
  et al. 2021): networks whose units split the inputs into many distinct linear regions score
  high. The code of a unit is the sign of its pre-activation, so it is defined for every
  activation function (ReLU's on/off, and the same split for GELU, SiLU, tanh, ...).
* ``params``, ``flops``: model size, the baseline any proxy must beat.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas_proxy.models import build_model, model_profile
from nas_proxy.runtime import seed_everything

ZERO_COST = ("synflow", "gradnorm", "naswot", "params", "flops")

# Activation modules whose input sign gives the NASWOT code. Softmax and attention also live in
# torch.nn.modules.activation but are not elementwise gates.
_NOT_GATES = ("softmax", "softmin", "logsoftmax", "softmax2d", "multiheadattention", "glu")


def parse_zero_cost(text: str | None) -> list[str]:
    """``"synflow,naswot"`` → names; ``"none"``/empty → []; unknown names are a UserError."""
    from nas_proxy.errors import UserError

    if text is None or text.strip().lower() in ("", "none"):
        return []
    names = [t.strip().lower().replace("-", "").replace("_", "") for t in text.split(",")]
    aliases = {"gradnorm": "gradnorm", "jacobian": "naswot", "jacov": "naswot"}
    out = []
    for name in names:
        name = aliases.get(name, name)
        if name not in ZERO_COST:
            raise UserError(
                f"--zero-cost {text}: unknown score '{name}' "
                f"(allowed: {', '.join(ZERO_COST)}, or none)"
            )
        if name not in out:
            out.append(name)
    return out


def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Data-free synaptic-flow score (log). ``x`` only gives the input shape."""
    net = copy.deepcopy(model).double().eval()  # eval: BatchNorm uses its fresh (0, 1) stats
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    net.zero_grad(set_to_none=True)
    net(ones).sum().backward()
    total = sum(
        float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None
    )
    return math.log(total) if total > 0 and math.isfinite(total) else None


def gradnorm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    sq = sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return math.sqrt(sq) if math.isfinite(sq) else None


def _is_gate(module: nn.Module) -> bool:
    where = type(module).__module__
    if not (
        where.startswith("torch.nn.modules.activation")
        or where.startswith("timm.layers.activations")
    ):
        return False
    return type(module).__name__.lower() not in _NOT_GATES


def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """log|K| with K[i, j] = number of units on which inputs i and j have the same code."""
    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
        codes.append((inputs[0].detach().flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_gate(m)]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return None  # no elementwise activation to read codes from
    c = torch.cat(codes, dim=1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    # A tiny ridge keeps K invertible when two inputs share a code (a legitimately low score
    # rather than -inf, which would drop the candidate from the ranking).
    k = k + 1e-6 * c.shape[1] * torch.eye(len(k), dtype=k.dtype, device=k.device)
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if sign > 0 and math.isfinite(float(logdet)) else None


_AT_INIT: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float | None]] = {
    "synflow": synflow,
    "gradnorm": gradnorm,
    "naswot": naswot,
}


def zero_cost_score(
    name: str,
    spec: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    seed: int = 0,
    device: torch.device,
) -> dict[str, float | None]:
    """``{"score", "wall_s"}`` of one training-free score for ``spec``.

    ``x``, ``y``: a real labelled batch (normalised like training data). The network is built
    with ``seed`` so the score is reproducible.
    """
    start = time.perf_counter()
    in_shape = tuple(x.shape[1:])
    if name in ("params", "flops"):
        score = float(model_profile(spec, in_shape, num_classes)[name])
    else:
        seed_everything(seed)
        model = build_model(spec, in_shape, num_classes).to(device)
        score = _AT_INIT[name](model, x.to(device), y.to(device))
    return {"score": score, "wall_s": time.perf_counter() - start}
