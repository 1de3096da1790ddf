"""Rank-fidelity metrics: how well does a proxy's ranking of candidates match the ground truth?

Every function takes array-likes where a higher score is better. Nothing here ever returns NaN:
an undefined quantity is ``None`` (``null`` in JSON) and a note says why in words, so a report
can print the reason instead of a meaningless number.

Conventions shared by all functions:

* Pairs where either score is NaN or infinite are dropped (a failed or pruned candidate has no
  score); the correlation functions say so in their note.
* Ties use scipy's tie-corrected statistics (Spearman on average ranks, Kendall tau-b).
* Bootstrap confidence intervals are percentile intervals over resampled *pairs*. A resample in
  which either side is constant has no correlation; it is dropped and counted. If fewer than
  half of the resamples (or fewer than ``MIN_VALID_RESAMPLES``) survive, the interval is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "MIN_VALID_RESAMPLES",
    "Correlation",
    "kendall",
    "noise_ceiling",
    "rank_summary",
    "ranks",
    "regret",
    "spearman",
    "stratified_sample",
    "top_k_overlap",
]

# Below this many usable resamples a percentile interval is mostly noise.
MIN_VALID_RESAMPLES = 10
# Elements per vectorised bootstrap chunk: bounds peak memory (a few tens of MB).
_CHUNK_ELEMENTS = 2_000_000
# Above this n the O(n^2) vectorised Kendall costs more than scipy's O(n log n) loop.
_KENDALL_VECTOR_MAX_N = 200


@dataclass
class Correlation:
    """A correlation with its bootstrap interval.

    ``value``/``ci_low``/``ci_high`` are ``None`` when undefined; ``note`` says why in words
    ("" when nothing needs saying). ``n`` counts the pairs actually used (after dropping
    non-finite ones). ``extra`` holds function-specific JSON-safe fields (see ``noise_ceiling``).
    """

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "note": self.note,
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------- input handling


def _as_1d(values: Any, name: str) -> np.ndarray:
    # dtype=float turns None into NaN, so missing scores from pandas/lists drop out uniformly.
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _paired(proxy: Any, full: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both vectors with non-finite pairs dropped, plus notes describing what was dropped."""
    x = _as_1d(proxy, "proxy")
    y = _as_1d(full, "full")
    if x.shape != y.shape:
        raise ValueError(f"proxy and full differ in length: {x.size} != {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    notes = []
    dropped = int(x.size - keep.sum())
    if dropped:
        notes.append(f"dropped {dropped} of {x.size} pairs with a NaN or infinite score")
    return x[keep], y[keep], notes


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")


def _constant(a: np.ndarray) -> bool:
    return bool(a.size) and bool(np.all(a == a[0]))


def _degenerate_notes(x: np.ndarray, y: np.ndarray) -> list[str]:
    """Reasons a correlation between x and y is undefined (empty when it is defined)."""
    n = x.size
    if n < 3:
        return [f"n={n} < 3: correlation undefined"]
    cx, cy = _constant(x), _constant(y)
    if cx and cy:
        return ["proxy and full scores are both constant: correlation undefined"]
    if cx:
        return ["proxy scores are constant: correlation undefined"]
    if cy:
        return ["full scores are constant: correlation undefined"]
    return []


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- bootstrap kernels


def _spearman_rows(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rho of each row pair of two (b, n) arrays; returns (rho, valid).

    Spearman is Pearson on average ranks, which is exactly what scipy computes, so this matches
    ``scipy.stats.spearmanr`` row by row. Rows with a constant side are marked invalid.
    """
    rx = stats.rankdata(xs, axis=1)
    ry = stats.rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    sx = np.sqrt((rx * rx).sum(axis=1))
    sy = np.sqrt((ry * ry).sum(axis=1))
    valid = (sx > 0) & (sy > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / (sx * sy)
    return np.clip(np.where(valid, rho, 0.0), -1.0, 1.0), valid


def _kendall_rows(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b of each row pair of two (b, n) arrays; returns (tau, valid).

    tau-b = sum(sx*sy) / sqrt(sum(sx^2) * sum(sy^2)) over all pairs, where sx, sy are the signs of
    the pairwise differences: the numerator is concordant minus discordant pairs, each sum of
    squares counts the pairs not tied on that side. O(n^2) per row, so only used for small n.
    """
    dx = np.sign(xs[:, :, None] - xs[:, None, :]).astype(np.int8)
    dy = np.sign(ys[:, :, None] - ys[:, None, :]).astype(np.int8)
    num = (dx * dy).sum(axis=(1, 2), dtype=np.int64)
    tx = np.abs(dx).sum(axis=(1, 2), dtype=np.int64)
    ty = np.abs(dy).sum(axis=(1, 2), dtype=np.int64)
    valid = (tx > 0) & (ty > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(tx.astype(float) * ty.astype(float))
    return np.clip(np.where(valid, tau, 0.0), -1.0, 1.0), valid


def _kendall_rows_scipy(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # For large n: scipy's O(n log n) per row beats the O(n^2) vectorised kernel.
    tau = np.zeros(xs.shape[0])
    valid = np.zeros(xs.shape[0], dtype=bool)
    for i in range(xs.shape[0]):
        if _constant(xs[i]) or _constant(ys[i]):
            continue
        tau[i] = stats.kendalltau(xs[i], ys[i]).statistic
        valid[i] = True
    return tau, valid


def _percentile_ci(
    samples: np.ndarray,
    n_boot: int,
    ci: float,
    label: str,
    why_dropped: str = "a side was constant",
) -> tuple[float | None, float | None, list[str]]:
    """Percentile interval of the valid resample statistics, or (None, None, why)."""
    if n_boot == 0:
        return None, None, [f"{label}: bootstrap disabled (n_boot=0), no confidence interval"]
    notes = []
    used = samples.size
    needed = max(MIN_VALID_RESAMPLES, math.ceil(n_boot / 2))
    if used < n_boot:
        notes.append(
            f"{label} bootstrap: {n_boot - used} of {n_boot} resamples dropped ({why_dropped})"
        )
    if used < needed:
        notes.append(
            f"{label} bootstrap: only {used} usable resamples (< {needed}): "
            "confidence interval undefined"
        )
        return None, None, notes
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi), notes


def _bootstrap_pairs(
    x: np.ndarray,
    y: np.ndarray,
    kernel: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    n_boot: int,
    seed: int,
    per_row_cost: int,
) -> np.ndarray:
    """Statistic on n_boot resamples of the (x, y) pairs; only the valid ones are returned."""
    n = x.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, per_row_cost))
    out = []
    for start in range(0, n_boot, chunk):
        block = idx[start : start + chunk]
        stat, valid = kernel(x[block], y[block])
        out.append(stat[valid])
    return np.concatenate(out) if out else np.empty(0)


def _correlation(
    proxy: Any,
    full: Any,
    *,
    label: str,
    point: Callable[[np.ndarray, np.ndarray], Any],
    kernel: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    per_row_cost: Callable[[int], int],
    ci: float,
    n_boot: int,
    seed: int,
) -> Correlation:
    _check_ci(ci, n_boot)
    x, y, notes = _paired(proxy, full)
    n = int(x.size)
    why = _degenerate_notes(x, y)
    if why:
        return Correlation(None, None, None, n, "; ".join(notes + why))
    value = _finite_or_none(point(x, y))
    if value is None:  # defensive: the checks above should make this unreachable
        notes.append(f"{label}: scipy returned NaN")
        return Correlation(None, None, None, n, "; ".join(notes))
    samples = (
        _bootstrap_pairs(x, y, kernel, n_boot, seed, per_row_cost(n)) if n_boot else np.empty(0)
    )
    lo, hi, ci_notes = _percentile_ci(samples, n_boot, ci, label)
    extra = {"n_boot_used": int(samples.size)}
    return Correlation(value, lo, hi, n, "; ".join(notes + ci_notes), extra)


# --------------------------------------------------------------------------- public metrics


def spearman(
    proxy: Any, full: Any, *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Correlation:
    """Spearman rho (``scipy.stats.spearmanr``) with a percentile bootstrap interval.

    ``extra['n_boot_used']`` counts the resamples that entered the interval.
    """
    return _correlation(
        proxy,
        full,
        label="spearman",
        point=lambda x, y: stats.spearmanr(x, y).statistic,
        kernel=_spearman_rows,
        per_row_cost=lambda n: 4 * n,
        ci=ci,
        n_boot=n_boot,
        seed=seed,
    )


def kendall(
    proxy: Any, full: Any, *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Correlation:
    """Kendall tau-b (``scipy.stats.kendalltau``) with a percentile bootstrap interval."""
    n_pairs = _paired(proxy, full)[0].size
    vectorised = n_pairs <= _KENDALL_VECTOR_MAX_N
    return _correlation(
        proxy,
        full,
        label="kendall",
        point=lambda x, y: stats.kendalltau(x, y).statistic,
        kernel=_kendall_rows if vectorised else _kendall_rows_scipy,
        per_row_cost=(lambda n: 3 * n * n) if vectorised else (lambda n: n),
        ci=ci,
        n_boot=n_boot,
        seed=seed,
    )


def _top_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """Probability that each item lands in the top k when boundary ties are broken at random.

    Items strictly above the k-th score: 1. Items tied with the k-th score share the remaining
    slots equally. Everything else: 0. The weights sum to k.
    """
    kth = np.sort(scores)[::-1][k - 1]
    above = scores > kth
    tied = scores == kth
    w = above.astype(float)
    w[tied] = (k - above.sum()) / tied.sum()
    return w


def top_k_overlap(proxy: Any, full: Any, k: int) -> float | None:
    """|top-k by proxy ∩ top-k by full| / k.

    Ties at the top-k boundary: the result is the *expected* overlap when each side's boundary
    ties are broken uniformly at random (each tied item counts as the fraction of the remaining
    slots it would get). This is deterministic and does not depend on the order of the input,
    unlike breaking ties by index. Non-finite pairs are dropped; k > n is clipped to n (overlap
    then 1.0). Returns None when no pairs remain.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x, y, _ = _paired(proxy, full)
    if x.size == 0:
        return None
    k = min(k, x.size)
    return float(np.dot(_top_weights(x, k), _top_weights(y, k)) / k)


def regret(proxy: Any, full: Any) -> float | None:
    """max(full) - full of the proxy's pick (0 = the proxy picked the best candidate).

    If several candidates share the best proxy score, the proxy's pick is ambiguous; the regret
    uses the mean full score over the tied picks (the expected regret of a random tie-break).
    Non-finite pairs are dropped; None when no pairs remain.
    """
    x, y, _ = _paired(proxy, full)
    if x.size == 0:
        return None
    picks = x == x.max()
    return float(y.max() - y[picks].mean())


def _spearman_brown(r: float, n_seeds: int) -> float:
    # Reliability of the mean of n_seeds measurements whose pairwise correlation is r.
    return n_seeds * r / (1.0 + (n_seeds - 1) * r)


def _ceiling_from_agreement(r: float, n_seeds: int) -> float:
    # Upper bound on any score's correlation with the seed-mean: sqrt of its reliability.
    # With r <= 0 the seed-mean carries no rank signal, so nothing can agree with it.
    return math.sqrt(_spearman_brown(r, n_seeds)) if r > 0 else 0.0


def _mean_pairwise_rows(ranks_bnr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean pairwise Pearson between the R columns of each (n, R) slice of a (b, n, R) array."""
    c = ranks_bnr - ranks_bnr.mean(axis=1, keepdims=True)
    norms = np.sqrt((c * c).sum(axis=1))  # (b, R)
    valid = np.all(norms > 0, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    c = c / safe[:, None, :]
    gram = np.einsum("bnr,bns->brs", c, c)  # correlation matrices
    r = ranks_bnr.shape[2]
    iu = np.triu_indices(r, k=1)
    mean = np.clip(gram[:, iu[0], iu[1]], -1.0, 1.0).mean(axis=1)
    return mean, valid


def noise_ceiling(
    full_by_seed: Any, *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Correlation:
    """How well the full-data ground truth agrees with itself across training seeds.

    ``full_by_seed`` is n candidates × R seeds (R >= 2). Rows with a non-finite score are dropped.

    * ``value``: mean pairwise Spearman between seeds, r1, i.e. how well one full-training run
      ranks the candidates the way another does.
    * ``extra['spearman_brown']``: R*r1 / (1 + (R-1)*r1), the reliability of the R-seed mean.
    * ``extra['ceiling']`` (with ``extra['ceiling_ci']``): sqrt of that reliability. **This is the
      ceiling for a proxy compared against the seed-mean ground truth**: even a noise-free
      proxy that ranks exactly by the true quality correlates with a noisy R-seed mean only
      this well (classical test theory; for rank correlations an approximation). It is 0 when
      r1 <= 0. Its interval is the interval of r1 mapped through the same monotone function,
      which is exact for percentile intervals.

    ``extra['seeds']`` is R. Non-finite values never appear.
    """
    _check_ci(ci, n_boot)
    a = np.asarray(full_by_seed, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"full_by_seed must be n × R (2-D), got shape {a.shape}")
    n_in, n_seeds = a.shape
    keep = np.all(np.isfinite(a), axis=1)
    a = a[keep]
    n = int(a.shape[0])
    notes = []
    if n < n_in:
        notes.append(f"dropped {n_in - n} of {n_in} candidates with a NaN or infinite seed score")
    extra: dict[str, Any] = {
        "seeds": int(n_seeds),
        "spearman_brown": None,
        "ceiling": None,
        "ceiling_ci": None,
    }

    def undefined(why: str) -> Correlation:
        return Correlation(None, None, None, n, "; ".join(notes + [why]), extra)

    if n_seeds < 2:
        return undefined(f"{n_seeds} seed(s) < 2: seed-to-seed agreement undefined")
    if n < 3:
        return undefined(f"n={n} < 3: correlation undefined")
    constant = [j for j in range(n_seeds) if _constant(a[:, j])]
    if constant:
        which = ", ".join(str(j) for j in constant)
        return undefined(f"full scores of seed(s) {which} are constant: correlation undefined")

    rho = stats.spearmanr(a).statistic  # scalar for R=2, R×R matrix otherwise
    if n_seeds == 2:
        r1 = float(rho)
    else:
        iu = np.triu_indices(n_seeds, k=1)
        r1 = float(np.mean(np.asarray(rho)[iu]))
    extra["spearman_brown"] = _spearman_brown(r1, n_seeds) if r1 > 0 else None
    extra["ceiling"] = _ceiling_from_agreement(r1, n_seeds)
    if r1 <= 0:
        notes.append(
            f"seeds do not agree (mean pairwise rho={r1:.3f} <= 0): the ground truth has no "
            "reliable ranking, ceiling 0"
        )

    if n_boot:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        chunk = max(1, _CHUNK_ELEMENTS // (4 * n * n_seeds))
        parts = []
        for start in range(0, n_boot, chunk):
            block = a[idx[start : start + chunk]]  # (b, n, R)
            stat, valid = _mean_pairwise_rows(stats.rankdata(block, axis=1))
            parts.append(stat[valid])
        samples = np.concatenate(parts)
    else:
        samples = np.empty(0)
    lo, hi, ci_notes = _percentile_ci(samples, n_boot, ci, "ceiling", "a seed was constant")
    notes += ci_notes
    if lo is not None and hi is not None:
        extra["ceiling_ci"] = [
            _ceiling_from_agreement(lo, n_seeds),
            _ceiling_from_agreement(hi, n_seeds),
        ]
    extra["n_boot_used"] = int(samples.size)
    return Correlation(r1, lo, hi, n, "; ".join(notes), extra)


def ranks(scores: Any) -> np.ndarray:
    """Rank of each score, 1 = best (highest); ties share their average rank.

    NaN scores get rank NaN and do not take a place among the others.
    """
    s = _as_1d(scores, "scores")
    out = np.full(s.shape, np.nan)
    ok = ~np.isnan(s)
    out[ok] = stats.rankdata(-s[ok], method="average")
    return out


def dev_test_split(groups: Sequence[str], seed: int) -> list[str]:
    """``"dev"`` or ``"test"`` for each item, half and half within every group, fixed by seed.

    Proxy settings are chosen on the dev half and reported once on the test half, so a setting
    tuned to the benchmark cannot flatter itself. Splitting within groups (architecture
    families) keeps both halves alike; an odd group gives its extra item to alternating halves.
    """
    rng = np.random.default_rng(seed)
    out = [""] * len(groups)
    odd = 0
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        rng.shuffle(idx)
        n_dev = len(idx) // 2 + (len(idx) % 2 and odd % 2 == 0)
        odd += len(idx) % 2
        for j, i in enumerate(idx):
            out[i] = "dev" if j < n_dev else "test"
    return out


def stratified_sample(scores: Any, n: int, top_k: int, seed: int) -> list[int]:
    """Indices of candidates to retrain: the top_k by score plus a spread over the score range.

    Why: a search (e.g. TPE) crowds its trials into one region; a plain random sample would
    inherit that and make rho look better or worse than it is across the space.

    * Candidates with a non-finite score are never chosen (they have no place in the range).
    * The top_k highest scores are always included (ties broken by lower index).
    * The rest, sorted by score, are cut into (n - top_k) contiguous bins of near-equal count
      (quantile bins) and one candidate is drawn at random from each bin, so the lowest and the
      highest bins are both represented. Deterministic under ``seed``.
    * n >= the number of finite scores: all of them. Returned sorted ascending.
    """
    if n < 0 or top_k < 0:
        raise ValueError(f"n and top_k must be >= 0, got n={n}, top_k={top_k}")
    s = _as_1d(scores, "scores")
    finite = np.flatnonzero(np.isfinite(s))
    if n >= finite.size:
        return [int(i) for i in finite]
    top_k = min(top_k, n)
    # Stable sort on -score: best first, ties keep index order.
    order = finite[np.argsort(-s[finite], kind="stable")]
    chosen = list(order[:top_k])
    rest = order[top_k:][::-1]  # ascending score, so bin 0 holds the minimum
    n_bins = n - top_k
    if n_bins:
        rng = np.random.default_rng(seed)
        for b in np.array_split(rest, n_bins):
            chosen.append(b[rng.integers(0, b.size)])
    return sorted(int(i) for i in chosen)


def rank_summary(
    proxy: Any,
    full: Any,
    *,
    top_k: int = 5,
    full_by_seed: Any = None,
    seed: int = 0,
    ci: float = 0.95,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Every metric above as one plain, JSON-safe dict (no NaN; undefined values are None).

    Keys: n (pairs used), dropped, spearman, spearman_ci [lo, hi], kendall, kendall_ci, top_k
    (after clipping to n), top_k_overlap, regret, ceiling, ceiling_ci, ceiling_agreement (mean
    pairwise seed rho), ceiling_seeds, fraction_of_ceiling (spearman / ceiling), notes (list of
    sentences). An interval is None when undefined.

    ``full`` should be the seed mean of ``full_by_seed`` (when given): the ceiling is the bound for
    exactly that comparison, and a note says so if they disagree.
    """
    x, y, notes = _paired(proxy, full)
    n_in = _as_1d(proxy, "proxy").size
    n = int(x.size)
    rho = spearman(x, y, ci=ci, n_boot=n_boot, seed=seed)
    tau = kendall(x, y, ci=ci, n_boot=n_boot, seed=seed)
    notes += [s for c in (rho, tau) for s in c.note.split("; ") if s]

    k_used = min(top_k, n)
    if n and top_k > n:
        notes.append(f"top_k={top_k} > n={n}: clipped to {n}")
    overlap = top_k_overlap(x, y, top_k) if n else None
    reg = regret(x, y)
    if n:
        n_best = int(np.sum(x == x.max()))
        if n_best > 1:
            notes.append(
                f"the best proxy score is shared by {n_best} candidates: "
                "regret is the mean over them"
            )
    else:
        notes.append("no pairs with finite scores: nothing to compare")

    out: dict[str, Any] = {
        "n": n,
        "dropped": int(n_in - n),
        "spearman": rho.value,
        "spearman_ci": None if rho.ci_low is None else [rho.ci_low, rho.ci_high],
        "kendall": tau.value,
        "kendall_ci": None if tau.ci_low is None else [tau.ci_low, tau.ci_high],
        "top_k": int(k_used),
        "top_k_overlap": overlap,
        "regret": reg,
        "ceiling": None,
        "ceiling_ci": None,
        "ceiling_agreement": None,
        "ceiling_seeds": None,
        "fraction_of_ceiling": None,
    }

    if full_by_seed is not None:
        a = np.asarray(full_by_seed, dtype=float)
        if a.ndim != 2 or a.shape[0] != n_in:
            raise ValueError(
                f"full_by_seed must be {n_in} × R (one row per candidate), got shape {a.shape}"
            )
        ceil = noise_ceiling(a, ci=ci, n_boot=n_boot, seed=seed)
        notes += [s for s in ceil.note.split("; ") if s]
        out["ceiling"] = ceil.extra["ceiling"]
        out["ceiling_ci"] = ceil.extra["ceiling_ci"]
        out["ceiling_agreement"] = ceil.value
        out["ceiling_seeds"] = ceil.extra["seeds"]
        y_all = _as_1d(full, "full")
        rows = np.isfinite(y_all) & np.all(np.isfinite(a), axis=1)
        if rows.any() and not np.allclose(y_all[rows], a[rows].mean(axis=1), rtol=1e-6, atol=1e-9):
            notes.append("full is not the seed mean of full_by_seed: the ceiling assumes it is")
        if rho.value is not None and out["ceiling"]:
            out["fraction_of_ceiling"] = rho.value / out["ceiling"]
        elif rho.value is not None and out["ceiling"] == 0.0:
            notes.append("ceiling is 0: fraction of ceiling undefined")

    # Deduplicate (spearman and kendall give the same degenerate-case reasons), keep order.
    out["notes"] = list(dict.fromkeys(notes))
    return out
