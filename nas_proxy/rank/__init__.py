"""Rank fidelity: how well a proxy's ranking of candidates matches full-data training."""

from nas_proxy.rank.metrics import (
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

__all__ = [
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

# The ranking machinery (ground truth, proxies side by side, reports) imports torch and pandas;
# it is loaded on first use so that ``import nas_proxy.rank`` for the metrics stays light.
_LAZY = {
    "rank": "nas_proxy.rank.api",
    "rank_candidates": "nas_proxy.rank.compare",
    "Candidate": "nas_proxy.rank.candidates",
    "load_candidates_file": "nas_proxy.rank.candidates",
    "load_study": "nas_proxy.rank.candidates",
    "sample_study": "nas_proxy.rank.candidates",
    "DataRef": "nas_proxy.rank.ground_truth",
    "Scorer": "nas_proxy.rank.ground_truth",
    "full_scorer": "nas_proxy.rank.ground_truth",
    "run_jobs": "nas_proxy.rank.ground_truth",
    "ZERO_COST": "nas_proxy.rank.baselines",
    "zero_cost_score": "nas_proxy.rank.baselines",
    "write_report": "nas_proxy.rank.report",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nas_proxy.rank' has no attribute {name!r}")
