"""The worker loop and process supervision: run trials until the study has enough.

Counting
    ``--trials N`` counts finished trials: COMPLETE + PRUNED (constraint rejections included) +
    FAIL, except a FAIL that was re-queued (its retry takes its place). Re-running resumes until N
    have finished; a larger N extends the study. Local workers take a file lock under ``--out``
    around "count, then create the trial", so W workers on one machine stop at exactly N.
    Workers on several machines sharing a database each lock their own ``--out``: they can
    over-run N by at most (machines - 1) trials.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial

from nas_proxy.search.liveness import (
    POLL_S,
    FileLock,
    fail_dead_workers,
    stale_from_elsewhere_only,
    worker_id,
)
from nas_proxy.search.results import count_trials
from nas_proxy.search.samplers import make_pruner, make_sampler
from nas_proxy.study_records import quiet_optuna
from nas_proxy.study_storage import make_storage

if TYPE_CHECKING:
    import torch  # worker_devices' annotation; loaded lazily where used

READY_TIMEOUT_S = 300  # how long workers wait for each other to load before starting


def run_worker(
    study: optuna.Study,
    objective: Any,
    target: int,
    lock_path: Path,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> None:
    """Run trials until ``target`` have finished (see Counting in the module docstring);
    ``callbacks`` go to ``study.optimize``, called after each trial in this process."""
    lock = FileLock(lock_path)
    objective.on_start = lock.release  # the trial exists once the objective is entered
    callbacks = list(callbacks) or None
    while True:
        lock.acquire()
        try:
            trials = study.get_trials(deepcopy=False)  # one read serves both checks
            if fail_dead_workers(study, trials):
                trials = study.get_trials(deepcopy=False)
            c = count_trials(study, trials)
            if c.finished >= target:
                return
            if c.waiting == 0 and c.finished + c.running >= target:
                lock.release()
                with warnings.catch_warnings():  # Optuna does this itself before each trial
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                if stale_from_elsewhere_only(study):
                    return
                time.sleep(POLL_S)  # in-flight trials may finish the study, or be re-queued
                continue
            study.optimize(objective, n_trials=1, catch=_catch(), callbacks=callbacks)
        finally:
            lock.release()


def _catch() -> tuple[type[Exception], ...]:
    from nas_proxy.search.objective import CATCH

    return CATCH


@dataclass
class WorkerConfig:
    """Everything a worker process needs, picklable (each worker loads its own data)."""

    index: int
    storage: str
    study_name: str
    space: str
    proxy: str  # a resolved folder, or a real-data reference (real:DATASET[:...])
    target: int
    lock_path: str
    objectives: tuple[str, ...]
    sampler: str
    pruner: str
    seed: int
    device: str
    threads: int | None
    epochs: int | None
    lr: float | None
    max_params: int | None
    max_flops: int | None
    data_dir: str | None
    download: bool
    promote: tuple[Any, ...] = ()  # PromoteStage: real-data stages after the proxy search


def _worker_main(cfg: WorkerConfig, ready: Any = None) -> None:
    from nas_proxy.runtime import die_with_parent

    die_with_parent()
    os.environ.setdefault("NAS_PROXY_NO_PROGRESS", "1")  # the parent draws the only bar
    quiet_optuna()
    study, objective = build_worker(cfg)
    if ready is not None:
        # Start together once every worker has loaded its data, so that a worker that loads
        # faster does not take all the first trials; a worker that never gets here (crashed)
        # only delays the others by the timeout.
        with contextlib.suppress(Exception):
            ready.wait(timeout=READY_TIMEOUT_S)
    run_worker(study, objective, cfg.target, Path(cfg.lock_path))
    promote_after(study, objective, cfg)


def promote_after(study: optuna.Study, objective: Any, cfg: WorkerConfig) -> int:
    """Run the ``--promote`` stages on this worker's data and device; how many it trained."""
    if not cfg.promote:
        return 0
    from nas_proxy.search.promote import run_promotion

    return len(
        run_promotion(
            study,
            objective.dataset,
            cfg.promote,
            Path(cfg.lock_path),
            storage=cfg.storage,
            seed=cfg.seed,
            device=objective.device,
        )
    )


def build_worker(cfg: WorkerConfig) -> tuple[optuna.Study, Any]:
    """Load space, proxy and dataset (once per process) and open the study with this worker's
    seeded sampler."""
    import torch

    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import check_compatible, open_proxy
    from nas_proxy.runtime import resolve_device
    from nas_proxy.search.objective import Objective
    from nas_proxy.search.space import load_space

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    space = load_space(cfg.space)
    proxy = open_proxy(cfg.proxy, data_dir=cfg.data_dir, download=cfg.download)
    dataset = proxy.data or load_dataset(
        proxy.meta["dataset"], data_dir=cfg.data_dir, download=cfg.download
    )
    check_compatible(proxy, dataset)  # once, not as a failure of every trial
    epochs = cfg.epochs or int(proxy.recipe["epochs"])
    multi = len(cfg.objectives) > 1
    sampler = make_sampler(cfg.sampler, space, cfg.seed, multi=multi)
    study = optuna.load_study(
        study_name=cfg.study_name,
        storage=make_storage(cfg.storage),
        sampler=sampler,
        pruner=make_pruner(cfg.pruner, epochs),
    )
    objective = Objective(
        space,
        proxy,
        dataset,
        objectives=cfg.objectives,
        seed=cfg.seed,
        device=resolve_device(cfg.device),  # the worker's entry: its one resolution
        epochs=cfg.epochs,
        lr=cfg.lr,
        max_params=cfg.max_params,
        max_flops=cfg.max_flops,
        worker=worker_id(),
        report=cfg.pruner != "none" and not multi,  # Optuna cannot prune multi-objective
    )
    return study, objective


def worker_devices(
    device: str | torch.device, devices: Sequence[str] | None, workers: int
) -> list[str]:
    """One device per worker: ``devices`` round-robin, else the visible GPUs round-robin when
    ``device`` is auto/cuda and GPUs exist, else ``device`` for all. ``run_search`` resolves
    its device here, once; each worker's config carries the name (a process boundary), which
    :func:`build_worker`, the worker's entry, resolves."""
    import torch

    from nas_proxy.runtime import resolve_device

    if devices:
        for d in devices:
            resolve_device(d)
        return [devices[i % len(devices)] for i in range(workers)]
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [str(resolved)] * workers


def lock_file_name(study_name: str) -> str:
    """The name of the study's creation lock under ``--out``: a hash of the study name, since
    a name may hold slashes, ``..`` or more characters than a file name can."""
    return f".study-{hashlib.sha256(study_name.encode()).hexdigest()[:16]}.lock"


def run_processes(configs: list[WorkerConfig], bar: Any) -> None:
    ctx = mp.get_context("spawn")  # CUDA-safe, and no inherited locks or threads
    ready = ctx.Barrier(len(configs))
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(cfg, ready),
            daemon=True,
            name=f"nas-proxy-worker-{cfg.index}",
        )
        for cfg in configs
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=POLL_S / len(procs))
            bar.update()
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    bar.update()
    bad = [
        f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(procs) if p.exitcode != 0
    ]
    if bad and count_trials(bar.study).finished < configs[0].target:
        raise RuntimeError("; ".join(bad))
