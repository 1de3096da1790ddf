"""Which architectures to rank: a YAML list of specs, or a sample of an Optuna study's trials.

The study is read through its record format (nas_proxy/study_records.py, docs/architecture.md,
"File formats"), which sits below both search and rank: rank does not import the search stage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nas_proxy.errors import UserError
from nas_proxy.models import parse_spec
from nas_proxy.rank.metrics import stratified_sample
from nas_proxy.study_records import (
    FULL_SCORE_PREFIX,
    open_study,
    promoted_scores,
    record_full_score,
)
from nas_proxy.study_storage import redact

log = logging.getLogger(__name__)  # under the "nas_proxy" logger: configured by the user


@dataclass
class Candidate:
    """One architecture to rank. ``trial``/``proxy_score``/``proxy_wall_s`` come from a study."""

    arch: str  # canonical spec
    family: str
    trial: int | None = None
    proxy_score: float | None = None
    proxy_wall_s: float | None = None
    # Real-data val scores that ``search --promote`` already paid for: {epochs: (score, cost_s)}
    promoted: dict[int, tuple[float, float]] = field(default_factory=dict)


def _canonical(where: str, spec: Any) -> tuple[str, str]:
    if not isinstance(spec, str):
        raise UserError(
            f"{where}: expected a spec string like 'convnet:depth=3,width=64', got {spec!r}"
        )
    try:
        parsed = parse_spec(spec)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return str(parsed), parsed.family


def load_candidates_file(path: str | Path) -> list[Candidate]:
    """A YAML list of spec strings (duplicates, after canonicalisation, are kept once)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--candidates {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--candidates {path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--candidates {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"--candidates {path}: expected a non-empty YAML list of spec strings")
    out: dict[str, Candidate] = {}
    for i, spec in enumerate(data, 1):
        arch, family = _canonical(f"--candidates {path}: entry {i}", spec)
        out.setdefault(arch, Candidate(arch, family))
    return list(out.values())


def load_study(storage: str, study_name: str):
    """Open an existing Optuna study; a missing study or bad URL is a UserError.

    ``storage`` is what ``search --storage`` accepts (``sqlite:///…``, ``postgresql://…``, a
    journal file ``…/study.log`` or ``journal:///path``), opened by the search's own
    :func:`nas_proxy.study_records.open_study` (drivers, SQLite tuning, the errors).
    """
    # Optuna's own log level is the user's to set (loading a study logs nothing at INFO).
    study = open_study(storage, study_name)
    log.info("loaded study %s from %s", study_name, redact(storage))
    return study


def study_trials(study) -> list[Candidate]:
    """Finished trials with an ``arch`` attribute and a finite proxy score, one per spec, with
    the real-data scores promotion recorded for them."""
    import optuna

    out: dict[str, Candidate] = {}
    promoted = promoted_scores(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch")
        score = t.user_attrs.get("proxy_score", t.value if len(t.values or []) == 1 else None)
        if not arch or score is None or not math.isfinite(float(score)):
            continue
        canonical, family = _canonical(f"trial {t.number}", arch)
        if canonical in out:  # a repeat of an evaluated spec carries no new information
            continue
        wall = t.user_attrs.get("wall_s")
        out[canonical] = Candidate(
            canonical,
            family,
            trial=t.number,
            proxy_score=float(score),
            proxy_wall_s=None if wall is None else float(wall),
            promoted={
                epochs: (float(r["score"]), float(r["cost_s"]))
                for epochs, records in promoted.items()
                if (r := records.get(t.number)) is not None
            },
        )
    return list(out.values())


def sample_study(study, n: int, top_k: int, seed: int) -> list[Candidate]:
    """The top_k trials by proxy score plus a stratified sample over the score range (n in all).

    Why stratified: TPE crowds trials into one region, and a plain random sample would inherit
    that crowding and make ρ look better or worse than it is across the space.
    """
    trials = study_trials(study)
    if not trials:
        raise UserError(
            f"study '{study.study_name}' has no finished trial with 'arch' and "
            "'proxy_score' attributes"
        )
    chosen = stratified_sample([c.proxy_score for c in trials], n, top_k, seed)
    return [trials[i] for i in chosen]


def record_full_scores(study, scores: dict[int, float | None]) -> str:
    """Write each trial's ``full_score`` back to the study; returns where it went.

    Optuna refuses to change a finished trial's attributes, so each score is the study user
    attribute ``full_score:<trial number>``. Candidates without a score are skipped.
    """
    for number, value in scores.items():
        if value is not None and math.isfinite(value):
            record_full_score(study, number, value)
    return f"study user attributes '{FULL_SCORE_PREFIX}<trial number>'"


def search_seed(study) -> int | None:
    """The seed the search trained its candidates with, when the study records it."""
    seed = (study.user_attrs.get("nas_proxy_settings") or {}).get("seed")
    return None if seed is None else int(seed)
