"""Promotion: successive halving across fidelities, from the proxy to real-data training.

After the proxy search, each ``--promote NAME:epochs=E,top=T[,budget=S]`` stage trains the
best ``T`` candidates of the stage below (a fraction below 1 or a count; the proxy's score
ranks the first stage) on the real data the proxy was distilled from, for ``E`` epochs of the
full-data recipe (nas_proxy/recipe.py ``FULL_DATA``) through the one training loop, stopping
early once the stage has spent ``S`` seconds. The pick is the best candidate at the highest
stage reached.

The study is the single source of truth (records: nas_proxy/study_records.py). A worker claims
a candidate under the study's lock file under ``--out`` (the same lock trial creation takes;
on PostgreSQL also under a database advisory lock, for machines that share the study),
trains it, and records score and cost; a claim whose worker died on this host is taken over.
So with ``--workers``, several processes on one study, or a rerun after kill -9, every candidate
is trained at most once per fidelity to completion, and a rerun continues the stage it was in.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from nas_proxy.errors import UserError
from nas_proxy.search.liveness import (
    POLL_S,
    FileLock,
    fail_dead_workers,
    owner_died_here,
    worker_id,
)
from nas_proxy.search.replay import promoted_count
from nas_proxy.study_records import (
    CLAIM_PREFIX,
    promoted_scores,
    record_claim,
    record_promoted,
)
from nas_proxy.study_storage import advisory_lock, lock_key

if TYPE_CHECKING:
    import torch

_STAGE = re.compile(r"^(?P<name>[A-Za-z][\w-]*):(?P<opts>.+)$")


@dataclass(frozen=True)
class PromoteStage:
    name: str
    epochs: int
    top: float | int  # float: fraction (0, 1] of the stage below; int: a count
    budget_s: float | None = None


def parse_stage(text: str) -> PromoteStage:
    """``"short:epochs=1,top=0.2"`` (optionally ``,budget=SECONDS``) -> a stage; UserError."""
    where = f"--promote {text}"
    m = _STAGE.match(text.strip())
    if not m:
        raise UserError(f"{where}: expected NAME:epochs=E,top=T[,budget=SECONDS]")
    opts: dict[str, str] = {}
    for part in m["opts"].split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("epochs", "top", "budget"):
            raise UserError(f"{where}: {part!r} is not epochs=E, top=T or budget=SECONDS")
        opts[key.strip()] = value.strip()
    if "epochs" not in opts or "top" not in opts:
        raise UserError(f"{where}: needs epochs= and top=")
    try:
        epochs = int(opts["epochs"])
        # "0.5" and "1.0" are fractions, "3" a count
        top: float | int = float(opts["top"]) if "." in opts["top"] else int(opts["top"])
        budget = float(opts["budget"]) if "budget" in opts else None
    except ValueError:
        raise UserError(f"{where}: epochs must be an integer, top and budget numbers") from None
    if (
        epochs < 1
        or not 0 < top <= (1 if isinstance(top, float) else top)
        or (budget is not None and budget <= 0)
    ):
        raise UserError(
            f"{where}: need epochs >= 1, top a fraction in (0, 1] (0.2) or a count (3), budget > 0"
        )
    return PromoteStage(m["name"], epochs, top, budget)


def check_stages(stages: Sequence[PromoteStage]) -> None:
    names = [s.name for s in stages]
    if len(set(names)) != len(names) or "proxy" in names:
        raise UserError(f"--promote: stage names must be distinct and not 'proxy' (got {names})")
    epochs = [s.epochs for s in stages]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"--promote: each stage needs its own epochs (got {epochs})")


def proxy_ranked(study: optuna.Study) -> list[tuple[int, str, float]]:
    """(trial, arch, proxy score) of the COMPLETE, non-reused trials, best first."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        score = t.user_attrs.get("proxy_score")
        if score is not None and "reused_from" not in t.user_attrs:
            out.append((t.number, str(t.user_attrs["arch"]), float(score)))
    return sorted(out, key=lambda r: (-r[2], r[0]))


def stage_plan(study: optuna.Study, stages: Sequence[PromoteStage]) -> list[dict[str, Any]]:
    """Per stage, from the records so far: the candidates promoted into it (best first), the
    scores and costs recorded, whether it is finished. A stage's ranking is final only once the
    stage below is finished, so the plan stops at the first unfinished stage."""
    records = promoted_scores(study)
    below = proxy_ranked(study)
    plan = []
    for stage in stages:
        done = records.get(stage.epochs, {})
        chosen = below[: promoted_count(stage.top, len(below))]
        spent = sum(r["cost_s"] for r in done.values())
        over = stage.budget_s is not None and spent >= stage.budget_s
        finished = over or all(n in done for n, _, _ in chosen)
        plan.append(
            {"stage": stage, "chosen": chosen, "done": done, "spent": spent, "finished": finished}
        )
        if not finished:
            break
        scored = [(n, a, done[n]["score"]) for n, a, _ in chosen if n in done]
        below = sorted(scored, key=lambda r: (-r[2], r[0]))
    return plan


def run_promotion(
    study: optuna.Study,
    dataset: Any,
    stages: Sequence[PromoteStage],
    lock_path: Path,
    *,
    storage: str = "",
    seed: int = 0,
    device: torch.device,
) -> list[tuple[str, int]]:
    """Train promoted candidates until every stage is finished (see the module docstring);
    returns the (stage, trial) pairs this call trained. ``storage``: the study's URL; on
    PostgreSQL claims also take a database advisory lock, so machines that share the study
    (each with its own ``--out``) never claim the same candidate."""
    from nas_proxy.recipe import FULL_DATA
    from nas_proxy.train import fit

    me = worker_id()
    lock = FileLock(lock_path)
    trained: list[tuple[str, int]] = []
    db_key = lock_key(f"promote:{study.study_name}")
    while True:
        with lock, advisory_lock(storage, db_key):
            fail_dead_workers(study)
            if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                job, waiting = None, True  # the proxy ranking is final once no trial runs
            else:
                job, waiting = _claim_next(study, stages, me)
        if job is None:
            if not waiting:
                return trained
            time.sleep(POLL_S)
            continue
        stage, number, arch = job
        cfg = FULL_DATA.replace(epochs=stage.epochs, seed=seed)
        _, res = fit(
            arch,
            dataset.train_x,
            dataset.train_y,
            cfg,
            num_classes=dataset.num_classes,
            device=device,
            val=(dataset.val_x, dataset.val_y),
            desc=f"{stage.name} trial {number}",
        )
        record_promoted(
            study,
            stage.epochs,
            number,
            {
                "stage": stage.name,
                "score": float(res.val_accuracy),
                "cost_s": round(res.wall_s, 3),
                "worker": me,
            },
        )
        trained.append((stage.name, number))


def _claim_next(
    study: optuna.Study, stages: Sequence[PromoteStage], me: str
) -> tuple[tuple[PromoteStage, int, str] | None, bool]:
    """Claim the best unclaimed candidate of the current stage (call under the locks):
    ((stage, trial, arch) or None, whether candidates are in training elsewhere)."""
    plan = stage_plan(study, stages)
    if not plan or plan[-1]["finished"]:
        return None, False
    stage, done = plan[-1]["stage"], plan[-1]["done"]
    claims = study.user_attrs
    waiting = False
    for number, arch, _ in plan[-1]["chosen"]:
        if number in done:
            continue
        owner = claims.get(claim_key(stage.epochs, number))
        if owner and owner != me and not owner_died_here(str(owner)):
            waiting = True  # another live worker trains it
            continue
        record_claim(study, stage.epochs, number, me)
        return (stage, number, arch), waiting
    return None, waiting


def claim_key(epochs: int, number: int) -> str:
    return f"{CLAIM_PREFIX}{epochs}:{number}"


def promotion_summary(study: optuna.Study, stages: Sequence[PromoteStage]) -> dict[str, Any]:
    """Scores and compute per stage, and the pick: the best at the highest stage reached."""
    ranked = proxy_ranked(study)
    proxy_s = {
        t.number: float(t.user_attrs.get("wall_s") or 0.0) for t in study.get_trials(deepcopy=False)
    }
    records = promoted_scores(study)
    rows = [
        {
            "stage": "proxy",
            "epochs": None,
            "trained": len(ranked),
            "cost_s": round(sum(proxy_s.values()), 3),
        }
    ]
    pick = ranked[0][0] if ranked else None
    for stage in stages:
        done = records.get(stage.epochs, {})
        rows.append(
            {
                **asdict(stage),
                "stage": stage.name,
                "trained": len(done),
                "cost_s": round(sum(r["cost_s"] for r in done.values()), 3),
            }
        )
        if done:
            pick = max(done, key=lambda n: (done[n]["score"], -n))
    if pick is None:
        return {"stages": rows, "pick": None}
    arch = next(a for n, a, _ in ranked if n == pick)
    scores = {"proxy": next(s for n, _, s in ranked if n == pick)}
    for stage in stages:
        if pick in records.get(stage.epochs, {}):
            scores[stage.name] = records[stage.epochs][pick]["score"]
    return {"stages": rows, "pick": {"number": pick, "arch": arch, "scores": scores}}
