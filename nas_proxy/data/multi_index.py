"""``multi-index``: a synthetic teacher task whose labels depend only on a k-dim projection.

x ~ N(0, I_d); W is k×d with orthonormal rows (seeded QR); z = W x; the label is a fixed
nonlinear link of z. Because only span(W) matters, later stages can measure how much of what
a proxy learned lies in that subspace. W and the link are exposed in ``Dataset.extras``.

Links (regression value; the class is which side of the median it falls, so classes are
balanced in expectation — exactly so for the odd and symmetric links):
  prod       z1·z2·…·zk                 (parity-like: needs every direction)
  sumtanh    Σ_i tanh(2 z_i) / (i+1)    (saturating, unequal weights: curved boundary)
  quadratic  ‖z‖² − k                  (radial; threshold at the χ²_k median)
  argmax     class = argmax_i z_i        (k balanced classes; classification only)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nas_proxy.data.base import Dataset
from nas_proxy.data.prepare import dataset_checksum, random_split, stratified_split
from nas_proxy.errors import UserError

LINKS = ("prod", "sumtanh", "quadratic", "argmax")
TASKS = ("classification", "regression")
DEFAULTS: dict[str, Any] = {
    "d": 32,
    "k": 2,
    "n": 10000,
    "n_test": 10000,
    "link": "prod",
    "task": "classification",
    "seed": 0,
}
_W_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2  # independent RNG streams of one seed


def orthonormal_rows(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """A k×d float32 matrix with orthonormal rows, uniformly random (QR with sign fix)."""
    _check_dims(d, k)
    g = np.random.default_rng([seed, _W_STREAM]).standard_normal((d, k))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.diag(r))  # makes the QR unique, so W is Haar-distributed
    return torch.from_numpy(np.ascontiguousarray(q.T)).float()


def sample_inputs(d: int, n: int, seed: int = 0, stream: int = _TRAIN_STREAM) -> torch.Tensor:
    """n×d standard normal inputs from the seed's ``stream``."""
    x = np.random.default_rng([seed, stream]).standard_normal((n, d), dtype=np.float32)
    return torch.from_numpy(x)


def num_classes(link: str, k: int, task: str) -> int:
    """Classes of the task; regression has one output (the target)."""
    if task == "regression":
        return 1
    return k if link == "argmax" else 2


def multi_index_labels(
    x: torch.Tensor, W: torch.Tensor, link: str = "prod", task: str = "classification"
) -> torch.Tensor:
    """Labels of ``x`` (n×d) under teacher ``W`` (k×d): int64 classes or float32 targets.

    Computed in float64 from z = x Wᵀ alone, so they depend on x only through W x.
    """
    _check_link(link, task, W.shape[0])
    z = x.double() @ W.double().T
    if link == "argmax":
        return z.argmax(dim=1)
    if link == "prod":
        value, threshold = z.prod(dim=1), 0.0
    elif link == "sumtanh":
        weights = 1.0 / torch.arange(1, z.shape[1] + 1, dtype=z.dtype)
        value, threshold = (torch.tanh(2 * z) * weights).sum(dim=1), 0.0
    else:  # quadratic
        k = z.shape[1]
        value, threshold = (z * z).sum(dim=1) - k, _chi2_median(k) - k
    if task == "regression":
        return value.float()
    return (value > threshold).long()


def make_multi_index(
    d: int,
    k: int,
    n: int,
    link: str = "prod",
    task: str = "classification",
    seed: int = 0,
    W: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, W): n samples of the task; pass ``W`` to reuse a teacher (e.g. another link)."""
    if W is None:
        W = orthonormal_rows(d, k, seed)
    elif tuple(W.shape) != (k, d):
        raise UserError(f"multi-index: W has shape {list(W.shape)}, expected [{k}, {d}]")
    x = sample_inputs(d, n, seed, _TRAIN_STREAM)
    return x, multi_index_labels(x, W, link, task), W


def parse_params(spec: str) -> dict[str, Any]:
    """``d=..,k=..,n=..[,n_test=..,link=..,task=..,seed=..]`` checked against DEFAULTS."""
    params = dict(DEFAULTS)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in DEFAULTS:
            allowed = ", ".join(DEFAULTS)
            raise UserError(
                f"multi-index: bad parameter '{item}' (expected key=value with "
                f"key one of {allowed})"
            )
        if isinstance(DEFAULTS[key], int):
            try:
                params[key] = int(value)
            except ValueError:
                raise UserError(f"multi-index: {key}={value} is not an integer") from None
        else:
            params[key] = value.strip()
    for key in ("d", "k", "n", "n_test"):
        if params[key] < 1:
            raise UserError(f"multi-index: {key}={params[key]} must be at least 1")
    _check_dims(params["d"], params["k"])
    _check_link(params["link"], params["task"], params["k"])
    return params


def canonical_name(params: dict[str, Any]) -> str:
    return "multi-index:" + ",".join(f"{key}={params[key]}" for key in DEFAULTS)


def load(params: dict[str, Any], val_fraction: float, val_seed: int) -> Dataset:
    d, k, link, task, seed = (params[key] for key in ("d", "k", "link", "task", "seed"))
    W = orthonormal_rows(d, k, seed)
    x = sample_inputs(d, params["n"], seed, _TRAIN_STREAM)
    y = multi_index_labels(x, W, link, task)
    test_x = sample_inputs(d, params["n_test"], seed, _TEST_STREAM)
    test_y = multi_index_labels(test_x, W, link, task)
    if task == "classification":
        keep, held = stratified_split(y.numpy(), val_fraction, val_seed)
        classes = [str(c) for c in range(num_classes(link, k, task))]
    else:
        keep, held = random_split(len(y), val_fraction, val_seed)
        classes = ["target"]
    keep, held = torch.from_numpy(keep), torch.from_numpy(held)
    return Dataset(
        name=canonical_name(params),
        train_x=x[keep],
        train_y=y[keep],
        val_x=x[held],
        val_y=y[held],
        test_x=test_x,
        test_y=test_y,
        classes=classes,
        mean=(0.0,),
        std=(1.0,),
        checksum=dataset_checksum({"format": "multi-index", **params}, val_fraction, val_seed),
        extras={"W": W, "link": link, "task": task, "d": d, "k": k, "seed": seed},
    )


def _check_dims(d: int, k: int) -> None:
    if not 1 <= k <= d:
        raise UserError(f"multi-index: need 1 <= k <= d, got k={k}, d={d}")


def _check_link(link: str, task: str, k: int) -> None:
    if link not in LINKS:
        raise UserError(f"multi-index: unknown link '{link}' (allowed: {', '.join(LINKS)})")
    if task not in TASKS:
        raise UserError(f"multi-index: unknown task '{task}' (allowed: {', '.join(TASKS)})")
    if link == "argmax" and (task != "classification" or k < 2):
        raise UserError("multi-index: link=argmax needs task=classification and k >= 2")


def _chi2_median(k: int) -> float:
    from scipy.special import gammaincinv

    return float(2.0 * gammaincinv(k / 2.0, 0.5))
