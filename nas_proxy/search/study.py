"""The search driver: create or resume a study, start the workers, report the outcome.

The jobs around it have their own modules: storage (nas_proxy/study_storage.py), the record
format (nas_proxy/study_records.py), samplers and pruners (``samplers``), worker liveness
(``liveness``), the worker loop and processes (``workers``), and results (``results``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from nas_proxy.errors import UserError
from nas_proxy.search.promote import PromoteStage, check_stages, parse_stage, promotion_summary
from nas_proxy.search.report import write_search_outputs
from nas_proxy.search.results import (
    TRIALS_CSV,
    best_trial,
    count_trials,
    summarize,
    write_trials_csv,
)
from nas_proxy.search.samplers import PRUNERS, SAMPLERS, make_sampler
from nas_proxy.search.workers import (
    WorkerConfig,
    build_worker,
    lock_file_name,
    promote_after,
    run_processes,
    run_worker,
    worker_devices,
)
from nas_proxy.study_records import DEFAULT_STUDY, MAX_STUDY_NAME, quiet_optuna, real_studies
from nas_proxy.study_storage import default_storage, make_storage, redact

if TYPE_CHECKING:
    import torch

Callback = Callable[[optuna.Study, FrozenTrial], None]


def _settings_fingerprint(
    space: Any,
    proxy: Any,
    objectives: Sequence[str],
    seed: int,
    epochs: int | None,
    lr: float | None,
) -> dict[str, Any]:
    """What decides a trial's score: a study is only resumed under the same settings."""
    return {
        "space_sha256": space.sha256,
        "proxy_sha256": proxy.fingerprint,
        "objectives": list(objectives),
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
    }


def create_or_resume(
    url: str,
    study_name: str,
    objectives: Sequence[str],
    settings: dict[str, Any],
    info: dict[str, Any],
    create_under: str | Path | None = None,
) -> optuna.Study:
    """Create the study, or load it after checking it was made with the same settings
    (``create_under``: see :func:`make_storage`)."""
    from nas_proxy.search.objective import OBJECTIVES

    directions = [OBJECTIVES[o] for o in objectives]
    study = optuna.create_study(
        storage=make_storage(url, create_under),
        study_name=study_name,
        directions=directions,
        load_if_exists=True,
    )
    if study.metric_names is None:  # optuna-dashboard and Optuna's plots label axes with them
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and in the tested 5.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    stored = study.user_attrs.get("nas_proxy_settings")
    if stored is None:
        study.set_user_attr("nas_proxy_settings", settings)
        for key, value in info.items():
            study.set_user_attr(key, value)
        study.set_user_attr("objectives", list(objectives))
        return study
    changed = [k for k in settings if stored.get(k) != settings[k]]
    if changed:
        what = ", ".join(
            f"{k} ({stored.get(k)} -> {settings[k]})" if "sha" not in k else k for k in changed
        )
        raise UserError(
            f"--study {study_name} in {redact(url)} was run with other settings: "
            f"{what}; scores would not compare. Use another --study or --out"
        )
    return study


def run_search(
    proxy_dir: str | Path,
    space_path: str | Path,
    out: str | Path,
    *,
    trials: int = 20,
    workers: int = 1,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    objectives: str | Sequence[str] = ("accuracy",),
    sampler: str | None = None,
    pruner: str | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    devices: Sequence[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    max_params: int | None = None,
    max_flops: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
    promote: Sequence[str | PromoteStage] = (),
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Run (or resume) a search until ``trials`` trials have finished, then the ``promote``
    stages (nas_proxy/search/promote.py); write the plots, report.html and the study's
    artifacts (nas_proxy/search/report.py); return the summary (the ``--json`` object of
    ``nas-proxy search``).

    ``callbacks``: Optuna callbacks ``f(study, frozen_trial)`` (an MLflow or Weights & Biases
    integration callback, say), called in this process once per trial this run finishes
    (COMPLETE, PRUNED or FAIL). With ``workers=1`` they go to ``study.optimize`` as they are,
    right after each trial, and ``study.stop()`` works from them. With several workers the
    trials run in worker processes, so nothing has to be pickled: this process calls them as
    it sees trials finish (within a second), with its own copy of the study, where
    ``study.stop()`` is refused (RuntimeError)."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import check_compatible, is_real_ref, open_proxy
    from nas_proxy.search.objective import parse_objectives
    from nas_proxy.search.space import load_space

    start = time.perf_counter()
    stages = tuple(parse_stage(s) if isinstance(s, str) else s for s in promote)
    check_stages(stages)
    objectives = parse_objectives(objectives)
    multi = len(objectives) > 1
    sampler = sampler or ("nsga2" if multi else "tpe")
    pruner = pruner or ("none" if multi else "median")
    if trials < 1 or workers < 1:
        raise UserError(f"need --trials >= 1 and --workers >= 1 (got {trials}, {workers})")
    callbacks = tuple(callbacks)
    if not all(callable(c) for c in callbacks):
        raise UserError("callbacks: expected callables f(study, trial)")
    if multi and pruner != "none":
        raise UserError(
            f"--pruner {pruner}: Optuna cannot prune multi-objective trials; use --pruner none"
        )
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler}: expected one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner {pruner}: expected one of {', '.join(PRUNERS)}")
    if not study_name.strip() or len(study_name) > MAX_STUDY_NAME:
        raise UserError(
            f"--study: expected a name of 1 to {MAX_STUDY_NAME} characters (got {len(study_name)})"
        )
    out = Path(out)
    space = load_space(space_path)
    proxy = open_proxy(proxy_dir, data_dir=data_dir, download=download)
    space.check_build(tuple(proxy.images.shape[1:]), proxy.num_classes)
    make_sampler(sampler, space, seed, multi=multi)  # fail early
    if workers > 1 and proxy.data is None:  # workers check it too, but not in one line
        check_compatible(proxy, load_dataset(proxy.meta["dataset"], data_dir, download))
    url = storage or default_storage(out)
    out.mkdir(parents=True, exist_ok=True)
    verbosity = quiet_optuna()
    try:
        settings = _settings_fingerprint(space, proxy, objectives, seed, epochs, lr)
        info = {"space": str(space_path), "proxy": str(proxy_dir), "dataset": proxy.meta["dataset"]}
        study = create_or_resume(url, study_name, objectives, settings, info, create_under=out)

        devs = worker_devices(device, devices, workers)
        from nas_proxy.runtime import available_cores

        threads = max(1, available_cores() // workers) if workers > 1 else None
        lock_path = out / lock_file_name(study_name)
        configs = [
            WorkerConfig(
                index=i,
                storage=url,
                study_name=study_name,
                space=str(space.path.resolve()),  # a shipped space name resolved to its file
                proxy=str(proxy_dir) if is_real_ref(proxy_dir) else str(Path(proxy_dir).resolve()),
                target=trials,
                lock_path=str(lock_path),
                objectives=objectives,
                sampler=sampler,
                pruner=pruner,
                seed=seed,
                device=devs[i],
                threads=threads if devs[i] == "cpu" else None,
                epochs=epochs,
                lr=lr,
                max_params=max_params,
                max_flops=max_flops,
                data_dir=data_dir,
                download=download,
                promote=stages,
            )
            for i in range(workers)
        ]

        trained_now = None  # worker processes train promotions out of sight
        in_parent = callbacks if workers > 1 else ()
        with _Progress(study, trials, out / TRIALS_CSV, callbacks=in_parent) as bar:
            if workers == 1:
                worker_study, objective = build_worker(configs[0])
                run_worker(
                    worker_study,
                    objective,
                    trials,
                    lock_path,
                    callbacks=[*callbacks, lambda s, t: bar.update()],
                )
                trained_now = promote_after(worker_study, objective, configs[0])
            else:
                run_processes(configs, bar)
        summary = summarize(
            study,
            out / TRIALS_CSV,
            url,
            time.perf_counter() - start,
            extra={
                "workers": workers,
                "sampler": sampler,
                "pruner": pruner,
                "objectives": list(objectives),
                "devices": devs,
                **(
                    {"promotion": {**promotion_summary(study, stages), "trained_now": trained_now}}
                    if stages
                    else {}
                ),
                "real_studies": real_studies(study),
            },
        )
        return {**summary, **write_search_outputs(study, out, summary, proxy_dir)}
    finally:
        optuna.logging.set_verbosity(verbosity)


class _Progress:
    """Progress bar with the best score so far; rewrites trials.csv as trials finish, and calls
    ``callbacks`` once for each trial that finishes after it starts (several workers: see
    :func:`run_search`)."""

    CSV_EVERY_S = 5.0

    def __init__(
        self,
        study: optuna.Study,
        target: int,
        csv_path: Path,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        from nas_proxy.runtime import progress

        self.study = study
        self.csv_path = csv_path
        self.callbacks = callbacks
        trials = study.get_trials(deepcopy=False)
        self.seen = {t.number for t in trials if t.state.is_finished()}
        self.done = count_trials(study, trials).finished
        self.bar = progress(
            total=target, initial=min(self.done, target), desc="search", unit="trial"
        )
        self._csv_at = 0.0

    def update(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                for callback in self.callbacks:
                    callback(self.study, t)
        c = count_trials(self.study, trials)
        if c.finished != self.done:
            self.bar.update(c.finished - self.done)
            self.done = c.finished
            best = best_trial(self.study, trials)
            if best is not None:
                self.bar.set_postfix(
                    best=f"{best.user_attrs.get('proxy_score', 0):.4f}",
                    failed=c.failed,
                    pruned=c.pruned,
                )
            if time.monotonic() - self._csv_at > self.CSV_EVERY_S:
                write_trials_csv(self.study, self.csv_path)
                self._csv_at = time.monotonic()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        write_trials_csv(self.study, self.csv_path)


def dry_run(
    proxy_dir: str | Path,
    space_path: str | Path,
    n: int,
    seed: int = 0,
    *,
    data_dir: str | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """``n`` specs sampled at random from the space, with params and FLOPs; nothing trains."""
    from nas_proxy.distill.proxy import open_proxy
    from nas_proxy.models import model_profile
    from nas_proxy.search.space import load_space

    space = load_space(space_path)
    proxy = open_proxy(proxy_dir, data_dir=data_dir, download=download)
    in_shape = tuple(proxy.images.shape[1:])
    space.check_build(in_shape, proxy.num_classes)
    samples = [
        model_profile(spec, in_shape, proxy.num_classes) for spec in space.sample(n, seed=seed)
    ]
    return {"space": str(space_path), "input": list(in_shape), "samples": samples}
