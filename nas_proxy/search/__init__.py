"""Architecture search on a proxy: search-space files, the Optuna objective, studies.

Notebooks and the rank stage use this API; ``nas-proxy search`` is a thin layer over it.
"""

from nas_proxy.search.results import count_trials, trials_dataframe, write_trials_csv
from nas_proxy.search.space import SearchSpace, load_space
from nas_proxy.search.study import dry_run, run_search
from nas_proxy.study_records import DEFAULT_STUDY, full_scores, open_study, set_full_score
from nas_proxy.study_storage import default_storage, make_storage

__all__ = [
    "DEFAULT_STUDY",
    "SearchSpace",
    "count_trials",
    "default_storage",
    "dry_run",
    "full_scores",
    "load_space",
    "make_storage",
    "open_study",
    "run_search",
    "set_full_score",
    "trials_dataframe",
    "write_trials_csv",
]
