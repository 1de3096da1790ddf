"""How much of a point cloud (data or first-layer weights) lies in the span of a multi-index W.

All functions are pure: tensors or arrays in, floats or arrays out. ``W`` is ``k×d`` (rows span
the relevant subspace; they need not be orthonormal: an orthonormal basis is taken first).

Two flavours of "fraction in span(W)":

* :func:`variance_fraction` (``center=True``): the share of the *variance* about the mean. This
  is the right question for a sample of a distribution (is the spread in span(W)?).
* ``center=False`` (the energy fraction): the share of the raw squared norm. A network's
  first-layer update is a sum of raw inputs ``x_i`` weighted by back-propagated errors, so the
  energy fraction of a synthetic set says where training on it can move the weights. For
  isotropic zero-mean data both are ≈ k/d, so both compare with the same baseline.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import subspace_angles

ArrayLike = torch.Tensor | np.ndarray


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def orthonormal_basis(W: ArrayLike) -> np.ndarray:
    """Orthonormal rows spanning the row space of ``W`` (k×d → r×d, r = rank)."""
    w = _np(W)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    rank = int((s > s.max(initial=0.0) * 1e-10).sum())
    return vt[:rank]


def project(x: ArrayLike, W: ArrayLike) -> np.ndarray:
    """Rows of ``x`` (n×d) projected onto span(W), still expressed in R^d."""
    basis = orthonormal_basis(W)
    return _np(x) @ basis.T @ basis


def variance_fraction(x: ArrayLike, W: ArrayLike, center: bool = True) -> float:
    """||P_W X||² / ||X||² for the (centred) rows of ``x``; nan when X is all zero."""
    a = _np(x).reshape(len(x), -1)
    if center:
        a = a - a.mean(0, keepdims=True)
    total = float((a**2).sum())
    if total <= 0:
        return math.nan
    inside = a @ orthonormal_basis(W).T
    return float((inside**2).sum()) / total


def isotropic_fraction(k: int, d: int) -> float:
    """The fraction any isotropic cloud puts in a k-dimensional subspace of R^d."""
    return k / d


def isotropic_tolerance(k: int, d: int, n: int, sigmas: float = 4.0) -> float:
    """A ``sigmas``-sigma band for :func:`variance_fraction` of n isotropic Gaussian points.

    The captured energy is χ²(nk) over χ²(nd); by the delta method the ratio has standard
    deviation ≈ (k/d)·sqrt(2/(nk)·(1 − k/d)). Tests use it to justify their tolerance.
    """
    p = k / d
    return sigmas * p * math.sqrt(2.0 * (1.0 - p) / (n * k))


def top_directions(x: ArrayLike, k: int, center: bool = True) -> np.ndarray:
    """The top-k right singular vectors (k×d) of the (centred) rows of ``x``."""
    a = _np(x).reshape(len(x), -1)
    if center:
        a = a - a.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    return vt[:k]


def principal_angles_deg(A: ArrayLike, B: ArrayLike) -> list[float]:
    """Principal angles (degrees, ascending) between the row spaces of A (a×d) and B (b×d)."""
    angles = subspace_angles(_np(A).T, _np(B).T)  # scipy wants column spaces; gives descending
    return sorted(float(np.degrees(t)) for t in angles)


def data_angles_deg(x: ArrayLike, W: ArrayLike, center: bool = True) -> list[float]:
    """Principal angles between span(W) and the top-k principal directions of the data."""
    k = orthonormal_basis(W).shape[0]
    return principal_angles_deg(W, top_directions(x, k, center=center))


def weight_alignment(
    W1: ArrayLike, W: ArrayLike, W1_init: ArrayLike | None = None
) -> dict[str, float | list[float]]:
    """Alignment of first-layer weights (rows = hidden units' input weights) with span(W).

    ``fraction``: energy of W1 in span(W) (uncentred: weights have no meaningful mean);
    ``angles_deg``: angles between span(W) and W1's top-k right singular vectors; with
    ``W1_init`` also ``change_fraction``: the same for the learned change W1 − W1_init, which
    strips the random initialisation (≈ k/d of any isotropic init sits in span(W) by chance).
    """
    k = orthonormal_basis(W).shape[0]
    out: dict[str, float | list[float]] = {
        "fraction": variance_fraction(W1, W, center=False),
        "angles_deg": principal_angles_deg(W, top_directions(W1, k, center=False)),
    }
    if W1_init is not None:
        delta = _np(W1) - _np(W1_init)
        out["change_fraction"] = variance_fraction(delta, W, center=False)
        out["change_angles_deg"] = principal_angles_deg(W, top_directions(delta, k, center=False))
    return out


def subspace_report(
    x: ArrayLike, W: ArrayLike, x_init: ArrayLike | None = None
) -> dict[str, float | list[float]]:
    """Every data-side measurement of one set: fractions, angles and (given the initial
    samples) the fraction of the change that distillation made lying in span(W)."""
    k, d = orthonormal_basis(W).shape[0], _np(x).reshape(len(x), -1).shape[1]
    out: dict[str, float | list[float]] = {
        "subspace_fraction": variance_fraction(x, W, center=True),
        "subspace_energy_fraction": variance_fraction(x, W, center=False),
        "isotropic_fraction": isotropic_fraction(k, d),
        "principal_angles_deg": data_angles_deg(x, W),
    }
    if x_init is not None:
        out["change_fraction"] = variance_fraction(_np(x) - _np(x_init), W, center=False)
    return out
