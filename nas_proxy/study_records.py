"""The study's record format, shared by search (writes it) and rank (reads and extends it).

A study is a plain Optuna study (docs/architecture.md, "File formats"). Each trial carries the
user attributes in :data:`TRIAL_ATTRS`; scores that are bought later for a finished trial (full
training by ``rank``, promotion stages) are study user attributes, one key per trial and
fidelity, because Optuna refuses to change a finished trial and one key per writer means
concurrent writers never overwrite each other.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from nas_proxy.errors import UserError
from nas_proxy.study_storage import first_line, journal_path, make_storage, redact

DEFAULT_STUDY = "nas-proxy"
# User attributes of a trial (nas_proxy/search/objective.py writes them).
TRIAL_ATTRS = (
    "arch",
    "params",
    "flops",
    "proxy_score",
    "wall_s",
    "latency_ms",
    "reused_from",
    "prune_reason",
    "fail_reason",
    "worker",
)
FULL_SCORE_PREFIX = "full_score:"


def open_study(storage: str, study_name: str = DEFAULT_STUDY) -> optuna.Study:
    """Load an existing study (for rank, notebooks); UserError naming the studies there.

    A journal file that does not exist is an error here (``make_storage`` would create it).
    """
    journal = journal_path(storage)
    if journal is not None and not Path(journal).is_file():
        raise UserError(f"--storage {storage}: journal file not found")
    store = make_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise UserError(
            f"--study {study_name}: no such study in {redact(storage)} (it has: "
            f"{', '.join(names) or 'none'})"
        ) from None
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as e:
        raise UserError(f"--storage {redact(storage)}: cannot open ({first_line(e)})") from None


def set_full_score(storage: str, study_name: str, trial_number: int, value: float) -> None:
    """Record a trial's full-data score (written by ``rank``).

    Optuna refuses to change a finished trial, so the score is a study user attribute
    ``full_score:<number>`` (one key per trial: concurrent writers never overwrite each other);
    :func:`full_scores` and ``search.results.trials_dataframe`` read it back as the trial's
    ``full_score``.
    """
    study = open_study(storage, study_name)
    numbers = {t.number for t in study.get_trials(deepcopy=False)}
    if trial_number not in numbers:
        raise UserError(f"study {study_name} has no trial {trial_number}")
    record_full_score(study, trial_number, value)


def record_full_score(study: optuna.Study, trial_number: int, value: float) -> None:
    """Write one trial's full-data score (see :func:`set_full_score`)."""
    study.set_user_attr(f"{FULL_SCORE_PREFIX}{int(trial_number)}", float(value))


def full_scores(study: optuna.Study) -> dict[int, float]:
    return {
        int(k[len(FULL_SCORE_PREFIX) :]): v
        for k, v in study.user_attrs.items()
        if k.startswith(FULL_SCORE_PREFIX)
    }


# Promotion (nas_proxy/search/promote.py): a candidate's real-data score at E epochs, and the
# claim of the worker training it. Keys hold the fidelity and the trial: one writer per key.
PROMOTED_PREFIX = "real_score:e"
CLAIM_PREFIX = "real_claim:e"


def record_claim(study: optuna.Study, epochs: int, trial_number: int, worker: str) -> None:
    study.set_user_attr(f"{CLAIM_PREFIX}{int(epochs)}:{int(trial_number)}", worker)


def record_promoted(
    study: optuna.Study, epochs: int, trial_number: int, record: dict[str, object]
) -> None:
    """Write a real-data score (``{"stage", "score", "cost_s"}``) of a trial at ``epochs``."""
    study.set_user_attr(f"{PROMOTED_PREFIX}{int(epochs)}:{int(trial_number)}", record)


def promoted_scores(study: optuna.Study) -> dict[int, dict[int, dict]]:
    """``{epochs: {trial number: {"stage", "score", "cost_s"}}}`` recorded by promotion; what
    rank can reuse instead of training those candidates again."""
    out: dict[int, dict[int, dict]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(PROMOTED_PREFIX):
            epochs, _, number = key[len(PROMOTED_PREFIX) :].partition(":")
            out.setdefault(int(epochs), {})[int(number)] = value
    return out
