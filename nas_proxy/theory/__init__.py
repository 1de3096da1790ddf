"""Low-dimensional structure check: does distillation write span(W) of a multi-index task into
the synthetic data? (``nas-proxy theory``; docs/theory.md.)

``subspace`` holds the pure metrics, ``distill_tasks`` the perf / gm / mtt adapters over the
shared distillation pieces, ``experiment`` the measurements and plots.
"""
