"""The study's record format, shared by search (writes it) and rank (reads and extends it).

A study is a plain Optuna study (docs/architecture.md, "File formats"). Each trial carries the
user attributes in :data:`TRIAL_ATTRS`; scores that are bought later for a finished trial (full
training by ``rank``, promotion stages) are study user attributes, one key per trial and
fidelity, because Optuna refuses to change a finished trial and one key per writer means
concurrent writers never overwrite each other.

Those study attributes are the record, but optuna-dashboard shows them only as one long list on
the study's page. So each score is also a trial of a sibling study (:func:`real_study_name`:
``<study>:full`` for rank's scores, ``<study>:real-e<E>`` for a promotion stage), built with
``optuna.trial.create_trial``: the trial's parameters, the real-data score as its value and
``source_trial`` (the search trial's number), so the dashboard plots and lists them per trial.
Optuna 5 refuses user attributes on a finished trial (``UpdateFinishedTrialError`` from the RDB
and journal storages), which rules out writing them onto the search trial itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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
    """Write one trial's full-data score (see :func:`set_full_score`), and mirror it into the
    sibling study ``<study>:full`` (module docstring)."""
    study.set_user_attr(f"{FULL_SCORE_PREFIX}{int(trial_number)}", float(value))
    mirror_real_score(study, FULL_FIDELITY, trial_number, float(value))


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
    """Write a real-data score (``{"stage", "score", "cost_s"}``) of a trial at ``epochs``, and
    mirror it into the sibling study ``<study>:real-e<epochs>`` (module docstring)."""
    study.set_user_attr(f"{PROMOTED_PREFIX}{int(epochs)}:{int(trial_number)}", record)
    extra = {k: v for k, v in record.items() if k != "score"}
    mirror_real_score(study, f"real-e{int(epochs)}", trial_number, float(record["score"]), extra)


def promoted_scores(study: optuna.Study) -> dict[int, dict[int, dict]]:
    """``{epochs: {trial number: {"stage", "score", "cost_s"}}}`` recorded by promotion; what
    rank can reuse instead of training those candidates again."""
    out: dict[int, dict[int, dict]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(PROMOTED_PREFIX):
            epochs, _, number = key[len(PROMOTED_PREFIX) :].partition(":")
            out.setdefault(int(epochs), {})[int(number)] = value
    return out


# Sibling studies of real-data scores, one per fidelity (module docstring).
FULL_FIDELITY = "full"
MAX_STUDY_NAME = 512  # Optuna's study_name column (VARCHAR(512) on PostgreSQL and MySQL)


def real_study_name(study_name: str, fidelity: str) -> str:
    """``<study>:<fidelity>``; a name too long for the column keeps a hash of the rest."""
    name = f"{study_name}:{fidelity}"
    if len(name) <= MAX_STUDY_NAME:
        return name
    digest = hashlib.sha256(study_name.encode()).hexdigest()[:12]
    keep = MAX_STUDY_NAME - len(fidelity) - len(digest) - 2
    return f"{study_name[:keep]}~{digest}:{fidelity}"


def quiet_optuna() -> int:
    """Silence Optuna below ERROR; return the verbosity it had (to restore).

    Our progress bar and trials.csv report trials; Optuna's per-trial INFO lines (and the
    traceback it logs for each failed trial, whose reason we record) would drown them.
    """
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return before


def mirror_real_score(
    study: optuna.Study,
    fidelity: str,
    trial_number: int,
    score: float,
    extra: dict[str, Any] | None = None,
) -> None:
    """Add search trial ``trial_number``'s real-data ``score`` as a trial of the sibling study
    for ``fidelity``; a score already there for that trial is not added twice."""
    source = next((t for t in study.get_trials(deepcopy=False) if t.number == trial_number), None)
    if source is None:
        raise UserError(f"study {study.study_name} has no trial {trial_number}")
    # The search's own storage object: the sibling lives beside the study, whatever the URL.
    # Optuna logs each create-or-load at INFO, once per recorded score: silenced.
    verbosity = quiet_optuna()
    try:
        sibling = optuna.create_study(
            storage=study._storage,
            study_name=real_study_name(study.study_name, fidelity),
            direction="maximize",  # real-data scores are validation accuracies
            load_if_exists=True,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    if "source_study" not in sibling.user_attrs:
        sibling.set_user_attr("source_study", study.study_name)
        sibling.set_user_attr("fidelity", fidelity)
    if any(
        t.user_attrs.get("source_trial") == trial_number and t.value == score
        for t in sibling.get_trials(deepcopy=False)
    ):
        return  # a rerun recording the same score
    attrs = {k: source.user_attrs[k] for k in ("arch", "params", "flops") if k in source.user_attrs}
    sibling.add_trial(
        optuna.trial.create_trial(
            params=source.params,
            distributions=source.distributions,
            value=score,
            user_attrs={
                "source_trial": trial_number,
                "proxy_score": source.user_attrs.get("proxy_score"),
                **attrs,
                **(extra or {}),
            },
        )
    )


def real_studies(study: optuna.Study) -> list[str]:
    """Names of the sibling studies that hold ``study``'s real-data scores (module docstring)."""
    fidelities = [FULL_FIDELITY] if full_scores(study) else []
    fidelities += [f"real-e{e}" for e in sorted(promoted_scores(study))]
    return [real_study_name(study.study_name, f) for f in fidelities]
