"""What a study holds: trial counts by state, the best trial, one row per trial, the summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_proxy.io import atomic_write
from nas_proxy.study_records import TRIAL_ATTRS, full_scores, promoted_scores
from nas_proxy.study_storage import redact

TRIALS_CSV = "trials.csv"


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # FAIL trials that were not re-queued
    running: int = 0
    waiting: int = 0
    requeued: int = 0  # FAIL trials replaced by a retry

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def requeued_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of trials that were failed as lost and re-queued under a new number."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def count_trials(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> Counts:
    """Trials by state; ``trials`` saves a storage read when the caller already has them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    requeued = requeued_numbers(trials)
    c = Counts()
    for t in trials:
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            if t.number in requeued:
                c.requeued += 1
            else:
                c.failed += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
    return c


def objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives")
    if names and len(names) == len(study.directions):
        return list(names)
    return [f"value_{i}" for i in range(len(study.directions))]


def best_trial(
    study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
) -> FrozenTrial | None:
    """Single objective: the best trial. Several: the Pareto trial with the best accuracy (or
    the first Pareto trial when accuracy is not an objective)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    if len(study.directions) == 1:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        return pick(complete, key=lambda t: t.value)
    front = study.best_trials
    names = objective_names(study)
    if "accuracy" in names:
        i = names.index("accuracy")
        return max(front, key=lambda t: t.values[i])
    return front[0] if front else None


USER_COLUMNS = (*TRIAL_ATTRS[:4], "full_score", *TRIAL_ATTRS[4:])


def trials_dataframe(study: optuna.Study):
    """One row per trial: number, state, objective values, the user attributes, real-data
    scores and costs of ``--promote`` stages (``real_score@E``, ``real_cost_s@E``), duration,
    and the sampled parameters as ``param_<name>`` columns."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    names = objective_names(study)
    requeued_as = {
        t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs
    }
    fulls = full_scores(study)
    promoted = promoted_scores(study)
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values else None
        for key in USER_COLUMNS:
            row[key] = t.user_attrs.get(key)
        if t.number in fulls:
            row["full_score"] = fulls[t.number]
        for epochs, records in sorted(promoted.items()):  # --promote's real-data stages
            record = records.get(t.number) or {}
            row[f"real_score@{epochs}"] = record.get("score")
            row[f"real_cost_s@{epochs}"] = record.get("cost_s")
        row["requeued_as"] = requeued_as.get(t.number)
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else None
        row["datetime_start"] = t.datetime_start.isoformat() if t.datetime_start else None
        row["datetime_complete"] = t.datetime_complete.isoformat() if t.datetime_complete else None
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_csv(study: optuna.Study, path: str | Path) -> Path:
    frame = trials_dataframe(study)
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


def summarize(
    study: optuna.Study,
    csv_path: Path,
    url: str,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``--json`` object (docs/architecture.md, "Command-line contract")."""
    trials = study.get_trials(deepcopy=False)
    c = count_trials(study, trials)
    best = best_trial(study, trials)
    result: dict[str, Any] = {
        "study": study.study_name,
        "storage": redact(url),
        "trials": c.finished,
        "complete": c.complete,
        "pruned": c.pruned,
        "failed": c.failed,
        "running": c.running,
        "requeued": c.requeued,
        "rejected": sum(
            1 for t in trials if str(t.user_attrs.get("prune_reason", "")).startswith("constraint")
        ),
        "reused": sum(
            1 for t in trials if t.state == TrialState.COMPLETE and "reused_from" in t.user_attrs
        ),
        "best": (
            {
                "number": best.number,
                "arch": best.user_attrs.get("arch"),
                "score": best.user_attrs.get("proxy_score"),
            }
            if best
            else None
        ),
        "trials_csv": str(csv_path),
        **(extra or {}),
        "wall_s": round(wall_s, 3),
    }
    if len(study.directions) > 1:
        names = objective_names(study)
        result["pareto"] = [
            {
                "number": t.number,
                "arch": t.user_attrs.get("arch"),
                **dict(zip(names, t.values, strict=True)),
            }
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]
    return result
