"""Rank metrics: agreement with scipy, hand cases, degenerate inputs, JSON safety."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from nas_proxy.rank import (
    Correlation,
    kendall,
    noise_ceiling,
    rank_summary,
    ranks,
    regret,
    spearman,
    stratified_sample,
    top_k_overlap,
)
from nas_proxy.rank.metrics import _kendall_rows, _spearman_rows

# Fewer resamples keep the suite fast; the kernels are the same at 2000.
NB = 400


def _correlated(n: int, seed: int, noise: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    full = rng.normal(size=n)
    return full + noise * rng.normal(size=n), full


# --------------------------------------------------------------------------- against scipy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_equal_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    assert spearman(x, y, n_boot=0).value == float(stats.spearmanr(x, y).statistic)
    assert kendall(x, y, n_boot=0).value == float(stats.kendalltau(x, y).statistic)


def test_values_equal_scipy_with_ties():
    proxy, full = [1, 1, 2, 3], [1, 2, 3, 4]
    assert spearman(proxy, full).value == float(stats.spearmanr(proxy, full).statistic)
    assert kendall(proxy, full).value == float(stats.kendalltau(proxy, full).statistic)
    assert spearman(proxy, full).value < 1.0


def test_bootstrap_kernels_match_scipy_row_by_row():
    # Integer scores make plenty of ties and some constant rows.
    rng = np.random.default_rng(3)
    xs = rng.integers(0, 4, size=(60, 9)).astype(float)
    ys = rng.integers(0, 4, size=(60, 9)).astype(float)
    for kernel, ref in ((_spearman_rows, stats.spearmanr), (_kendall_rows, stats.kendalltau)):
        vals, valid = kernel(xs, ys)
        for i in range(xs.shape[0]):
            constant = np.ptp(xs[i]) == 0 or np.ptp(ys[i]) == 0
            assert valid[i] == (not constant)
            if valid[i]:
                assert vals[i] == pytest.approx(ref(xs[i], ys[i]).statistic, abs=1e-12)


def test_kendall_large_n_path_agrees_with_scipy():
    x, y = _correlated(250, seed=4)  # above the vectorised threshold
    c = kendall(x, y, n_boot=50)
    assert c.value == float(stats.kendalltau(x, y).statistic)
    assert c.ci_low <= c.value <= c.ci_high


# --------------------------------------------------------------------------- hand cases


@pytest.mark.parametrize("fn", [spearman, kendall])
def test_perfect_and_reversed(fn):
    a = [0.1, 0.5, 0.2, 0.9, 0.7]
    assert fn(a, a, n_boot=NB).value == pytest.approx(1.0)
    assert fn(a, [-v for v in a], n_boot=NB).value == pytest.approx(-1.0)


@pytest.mark.parametrize("fn", [spearman, kendall])
def test_constant_input_is_none_with_note(fn):
    c = fn([2, 2, 2, 2], [1, 2, 3, 4])
    assert (c.value, c.ci_low, c.ci_high) == (None, None, None)
    assert "proxy scores are constant" in c.note
    assert "full scores are constant" in fn([1, 2, 3], [5, 5, 5]).note
    assert "both constant" in fn([1, 1, 1], [5, 5, 5]).note


@pytest.mark.parametrize("fn", [spearman, kendall])
def test_small_n_is_none_with_note(fn):
    c = fn([1, 2], [2, 1])
    assert c.value is None and c.n == 2
    assert "n=2 < 3" in c.note
    assert "n=0 < 3" in fn([], []).note


@pytest.mark.parametrize("fn", [spearman, kendall])
def test_nan_pairs_dropped_and_noted(fn):
    proxy = [1.0, 2.0, np.nan, 4.0, 5.0, 3.0]
    full = [1.0, 3.0, 2.0, np.inf, 5.0, 2.5]
    c = fn(proxy, full, n_boot=NB)
    kept_x, kept_y = [1.0, 2.0, 5.0, 3.0], [1.0, 3.0, 5.0, 2.5]
    assert c.n == 4
    assert c.value == fn(kept_x, kept_y, n_boot=0).value
    assert "dropped 2 of 6 pairs" in c.note


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


def test_ci_contains_estimate_and_narrows_with_n():
    small = spearman(*_correlated(20, seed=5), n_boot=NB)
    large = spearman(*_correlated(400, seed=5), n_boot=NB)
    for c in (small, large):
        assert c.ci_low <= c.value <= c.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)
    k = kendall(*_correlated(30, seed=6), n_boot=NB)
    assert k.ci_low <= k.value <= k.ci_high


def test_bootstrap_is_deterministic_under_seed():
    x, y = _correlated(25, seed=7)
    assert spearman(x, y, n_boot=NB, seed=1) == spearman(x, y, n_boot=NB, seed=1)
    assert spearman(x, y, n_boot=NB, seed=1).ci_low != spearman(x, y, n_boot=NB, seed=2).ci_low


def test_too_few_valid_resamples_gives_no_ci():
    # Fewer than MIN_VALID_RESAMPLES (10) resamples can never give an interval.
    c = spearman([1, 2, 3, 4], [1, 3, 2, 4], n_boot=5)
    assert c.value is not None and c.ci_low is None and c.ci_high is None
    assert "confidence interval undefined" in c.note
    # n=3 with two tied proxy scores: about a third of resamples are constant, dropped and counted.
    c = spearman([1, 1, 2], [1, 2, 3], n_boot=NB)
    assert c.ci_low is not None and "resamples dropped" in c.note
    assert 0 < c.extra["n_boot_used"] < NB
    off = spearman([1, 2, 3, 4], [1, 3, 2, 4], n_boot=0)
    assert off.ci_low is None and "bootstrap disabled" in off.note


def test_to_dict_is_plain():
    d = spearman([1, 2, 3, 4], [1, 3, 2, 4], n_boot=NB).to_dict()
    assert set(d) >= {"value", "ci_low", "ci_high", "n", "note"}
    json.dumps(d, allow_nan=False)
    assert isinstance(Correlation(None, None, None, 0, "x").to_dict()["note"], str)


# --------------------------------------------------------------------------- top-k, regret


def test_top_k_overlap_hand_cases():
    assert top_k_overlap([4, 3, 2, 1], [4, 3, 2, 1], 2) == 1.0
    assert top_k_overlap([4, 3, 2, 1], [1, 2, 3, 4], 2) == 0.0
    assert top_k_overlap([4, 3, 2, 1], [4, 1, 3, 2], 2) == 0.5
    # k > n is clipped: everything overlaps.
    assert top_k_overlap([1, 2, 3], [3, 1, 2], 10) == 1.0


def test_top_k_overlap_boundary_ties_are_expected_overlap():
    # Proxy's 2nd place is a tie between items 1 and 2, each gets half a slot:
    # top-2 by full = {0, 1} -> (1 + 0.5) / 2.
    assert top_k_overlap([4, 3, 3, 1], [4, 3, 2, 1], 2) == 0.75
    # Independent of input order.
    perm = [2, 0, 3, 1]
    p, f = np.array([4, 3, 3, 1]), np.array([4, 3, 2, 1])
    assert top_k_overlap(p[perm], f[perm], 2) == 0.75
    # All tied: each item has k/n chance on the proxy side.
    assert top_k_overlap([1, 1, 1, 1], [4, 3, 2, 1], 2) == 0.5


def test_top_k_overlap_degenerate():
    assert top_k_overlap([], [], 3) is None
    assert top_k_overlap([np.nan, 1.0], [1.0, np.nan], 1) is None
    with pytest.raises(ValueError):
        top_k_overlap([1, 2], [1, 2], 0)


def test_regret_hand_cases():
    assert regret([0.1, 0.9, 0.5], [0.70, 0.80, 0.95]) == pytest.approx(0.15)
    assert regret([1, 2, 3], [1, 2, 3]) == 0.0
    # Tied proxy picks: mean of their full scores (0.8 and 0.6) -> 0.95 - 0.7.
    assert regret([0.9, 0.9, 0.1], [0.8, 0.6, 0.95]) == pytest.approx(0.25)
    assert regret([], []) is None


# --------------------------------------------------------------------------- noise ceiling


def test_noise_ceiling_identical_seeds_is_one():
    a = np.random.default_rng(8).normal(size=15)
    c = noise_ceiling(np.c_[a, a, a], n_boot=NB)
    assert c.value == pytest.approx(1.0)
    assert c.extra["ceiling"] == pytest.approx(1.0)
    assert c.extra["seeds"] == 3
    json.dumps(c.to_dict(), allow_nan=False)


def test_noise_ceiling_lower_with_noise_and_spearman_brown():
    rng = np.random.default_rng(9)
    truth = rng.normal(size=60)
    seeds = truth[:, None] + 0.8 * rng.normal(size=(60, 2))
    c = noise_ceiling(seeds, n_boot=NB)
    r1 = float(stats.spearmanr(seeds[:, 0], seeds[:, 1]).statistic)
    assert c.value == r1 and 0.0 < r1 < 0.95
    assert c.extra["spearman_brown"] == pytest.approx(2 * r1 / (1 + r1))
    assert c.extra["ceiling"] == pytest.approx(math.sqrt(2 * r1 / (1 + r1)))
    # The R-seed mean is more reliable than one seed, so the ceiling sits above r1.
    assert c.extra["ceiling"] > r1
    assert c.ci_low <= c.value <= c.ci_high
    lo, hi = c.extra["ceiling_ci"]
    assert lo <= c.extra["ceiling"] <= hi


def test_noise_ceiling_degenerate():
    assert "< 2" in noise_ceiling(np.ones((5, 1))).note
    assert "n=2 < 3" in noise_ceiling([[1, 2], [2, 1]]).note
    c = noise_ceiling([[1, 1], [2, 1], [3, 1]])
    assert c.value is None and "seed(s) 1 are constant" in c.note
    c = noise_ceiling([[1, 1], [2, np.nan], [3, 3], [4, 4]], n_boot=NB)
    assert c.n == 3 and "dropped 1 of 4" in c.note
    # Seeds that disagree: ceiling 0, said in words.
    c = noise_ceiling([[1, 4], [2, 3], [3, 2], [4, 1]], n_boot=NB)
    assert c.value == pytest.approx(-1.0)
    assert c.extra["ceiling"] == 0.0 and "do not agree" in c.note


# --------------------------------------------------------------------------- ranks, sampling


def test_ranks_best_is_one_average_ties():
    assert ranks([0.1, 0.9, 0.5, 0.5]).tolist() == [4.0, 1.0, 2.5, 2.5]
    r = ranks([1.0, np.nan, 2.0])
    assert r[0] == 2.0 and r[2] == 1.0 and np.isnan(r[1])


def test_stratified_sample_properties():
    rng = np.random.default_rng(10)
    # Skewed scores, as a TPE study crowds trials near its optimum.
    scores = np.concatenate([rng.normal(0.9, 0.01, 150), rng.uniform(0.1, 0.9, 50)])
    idx = stratified_sample(scores, n=20, top_k=5, seed=3)
    assert len(idx) == 20 and len(set(idx)) == 20
    assert idx == sorted(idx)
    top5 = set(np.argsort(-scores, kind="stable")[:5].tolist())
    assert top5 <= set(idx)
    # Range coverage: the lowest and the highest of the 15 quantile bins (of non-top scores)
    # are both represented.
    rest = np.argsort(scores, kind="stable")[: len(scores) - 5]
    bins = np.array_split(rest, 15)
    assert set(bins[0].tolist()) & set(idx)
    assert set(bins[-1].tolist()) & set(idx)
    assert stratified_sample(scores, 20, 5, seed=3) == idx
    assert stratified_sample(scores, 20, 5, seed=4) != idx


def test_stratified_sample_edges():
    assert stratified_sample([3, 1, 2], n=5, top_k=2, seed=0) == [0, 1, 2]
    assert stratified_sample([3, 1, 2], n=3, top_k=0, seed=0) == [0, 1, 2]
    # Non-finite scores are never chosen.
    assert stratified_sample([3, np.nan, 2], n=5, top_k=1, seed=0) == [0, 2]
    assert stratified_sample([5, 4, 3, 2, 1], n=2, top_k=2, seed=0) == [0, 1]
    assert stratified_sample([5, 4, 3, 2, 1], n=0, top_k=2, seed=0) == []
    assert all(isinstance(i, int) for i in stratified_sample([1, 2, 3, 4], 2, 1, seed=0))


# --------------------------------------------------------------------------- summary


def test_rank_summary_is_json_safe_on_normal_data():
    x, y = _correlated(30, seed=11)
    seeds = np.c_[y + 0.1, y - 0.1]  # seed mean equals y
    s = rank_summary(x, y, top_k=5, full_by_seed=seeds, n_boot=NB)
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text) == s
    assert s["n"] == 30 and s["spearman"] == float(stats.spearmanr(x, y).statistic)
    assert s["spearman_ci"][0] <= s["spearman"] <= s["spearman_ci"][1]
    assert s["ceiling"] == pytest.approx(1.0)
    assert s["fraction_of_ceiling"] == pytest.approx(s["spearman"] / s["ceiling"])
    assert not any("seed mean" in note for note in s["notes"])


@pytest.mark.parametrize(
    "proxy, full",
    [
        ([1, 1, 1, 1], [1, 2, 3, 4]),
        ([1, 2], [2, 1]),
        ([np.nan, np.nan], [1, 2]),
        ([], []),
        ([1, 2, np.nan, 4, 4], [1, 3, 2, 5, 4]),
    ],
)
def test_rank_summary_degenerate_never_nan(proxy, full):
    n = len(proxy)
    seeds = np.c_[np.arange(n), np.ones(n)] if n else np.empty((0, 2))
    s = rank_summary(proxy, full, top_k=3, full_by_seed=seeds, n_boot=NB)
    json.dumps(s, allow_nan=False)
    assert isinstance(s["notes"], list) and s["notes"]
    assert len(s["notes"]) == len(set(s["notes"]))


def test_rank_summary_notes_mismatched_seed_mean():
    x, y = _correlated(10, seed=12)
    s = rank_summary(x, y, full_by_seed=np.c_[x, x], n_boot=NB)
    assert any("not the seed mean" in note for note in s["notes"])
    with pytest.raises(ValueError, match="full_by_seed"):
        rank_summary(x, y, full_by_seed=np.ones((3, 2)))
