"""Studies: storage behind a URL, samplers and pruners, workers, resuming, outputs.

Storage
    Default: ``sqlite:///OUT/study.db``, embedded, no server. SQLite rather than Optuna's journal
    file because in Optuna 5.0 only the RDB storage implements heartbeats (``BaseHeartbeat``),
    which is what turns the trial of a killed worker from RUNNING into FAIL and re-queues it;
    SQLite handles the few writes per trial of a handful of local workers (a 60 s busy timeout
    absorbs lock contention), and optuna-dashboard opens the file as it is.
    ``--storage`` takes any Optuna URL: ``sqlite:///PATH``, ``postgresql://USER@HOST/DB``,
    ``mysql://...`` (many workers on many machines), or a journal file written
    ``journal:PATH`` (or a path ending in ``.log``/``.journal``; one machine only, no heartbeats:
    killed local workers are still detected through their process ids, see below).

Stale trials
    Every trial records ``worker`` = ``HOST:PID:START`` (START = the process start time, so a
    re-used pid is not mistaken for the worker). Before each trial, and while waiting, a worker
    fails the RUNNING trials of dead processes on its own host and re-queues them (at once, on
    any storage); RDB storages also beat every ``HEARTBEAT_INTERVAL`` s, so a trial whose worker
    vanished on another machine is failed and re-queued after ``GRACE_PERIOD`` s. A re-queued
    trial is a new WAITING trial with the same parameters (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), up to ``MAX_RETRY`` times.

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
import datetime
import hashlib
import importlib.util
import multiprocessing as mp
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nas_proxy.errors import UserError
from nas_proxy.io import atomic_write

DEFAULT_STUDY = "nas-proxy"
DB_FILE = "study.db"
TRIALS_CSV = "trials.csv"
HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial (RDB storages)
GRACE_PERIOD = 60  # a running trial without a heartbeat for this long is failed and re-queued
MAX_RETRY = 2  # re-queue a lost trial at most this many times
READY_TIMEOUT_S = 300  # how long workers wait for each other to load before starting
POLL_S = 1.0  # how often a worker with nothing to start looks at the study again
MAX_STUDY_NAME = 512  # Optuna's study_name column (VARCHAR(512) on PostgreSQL and MySQL)
SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsga2")
PRUNERS = ("median", "successive-halving", "hyperband", "none")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# Drivers tried, in order, for a URL that names none (SQLAlchemy 2.1 defaults postgresql:// to
# psycopg 3, which the `postgres` extra does not install).
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}


# --------------------------------------------------------------------------- storage


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / DB_FILE).resolve()}"


def journal_path(url: str) -> str | None:
    if url.startswith("journal:"):
        path = url[len("journal:") :]
        return path[2:] if path.startswith("///") else path
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return url
    return None


def _with_driver(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme not in _DRIVERS:
        return url
    for module, driver in _DRIVERS[scheme]:
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}{sep}{rest}"
    modules = " or ".join(m for m, _ in _DRIVERS[scheme])
    raise UserError(
        f"--storage {redact(url)}: needs the {modules} package "
        "(pip install 'nas-proxy[postgres]' for PostgreSQL)"
    )


def redact(url: str) -> str:
    """The URL with any password hidden (what the JSON output shows)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: leave it as given
        return url


def _requeue_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def make_storage(url: str, create_under: str | Path | None = None) -> BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring for the accepted forms).

    A missing parent folder of a SQLite or journal file is created only inside
    ``create_under`` (the search's ``--out``); anywhere else it is an error, so that a typo in
    ``--storage`` does not scatter folders over the file system.
    """
    journal = journal_path(url)
    if journal is not None:
        _parent_folder(url, journal, create_under)
        return JournalStorage(JournalFileBackend(journal))
    if "://" not in url:
        raise UserError(
            f"--storage {url}: expected an Optuna storage URL (sqlite:///PATH, "
            "postgresql://..., mysql://...) or journal:PATH"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            _parent_folder(url, path, create_under)
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for other workers' writes
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental"
            storage = RDBStorage(
                _with_driver(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                grace_period=GRACE_PERIOD,
                heartbeat_stale_trial_callback=_requeue_lost,
            )
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--storage {redact(url)}: cannot open ({_first_line(e)})") from None
    if url.startswith("sqlite:"):
        _tune_sqlite(storage)
    return storage


def _parent_folder(url: str, path: str, create_under: str | Path | None) -> None:
    parent = Path(path).parent
    if parent.is_dir():
        return
    if create_under is not None and parent.resolve().is_relative_to(Path(create_under).resolve()):
        parent.mkdir(parents=True, exist_ok=True)
        return
    raise UserError(f"--storage {redact(url)}: folder {parent} does not exist")


# Any fixed 64-bit number: the key of the PostgreSQL advisory lock taken around schema creation.
_SCHEMA_LOCK_KEY = 0x6E61_7370_726F_7879  # "nasproxy"


@contextlib.contextmanager
def _schema_lock(url: str):
    """On PostgreSQL, hold an advisory lock while Optuna creates its tables.

    Optuna checks for its tables, then creates them: two processes that start together on an
    empty database both create, and one fails on a duplicate key. Serialised, the second one
    finds the tables. Other databases are opened as they are.
    """
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(_with_driver(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _tune_sqlite(storage: RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: a trial makes ~30 small commits, and the default
    rollback journal fsyncs each (~250 ms per trial measured). WAL keeps the file consistent
    through kill -9 (only an OS crash can lose the last commits) and lets readers work while
    another worker writes."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while creating the tables reconnect tuned


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
        raise UserError(f"--storage {redact(storage)}: cannot open ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# --------------------------------------------------------------------------- samplers, pruners


def make_sampler(name: str, space: Any, seed: int, *, multi: bool) -> optuna.samplers.BaseSampler:
    """``tpe`` | ``random`` | ``cmaes`` | ``grid`` | ``nsga2``, reseeded before every trial from
    ``seed`` and the trial's number (see :class:`_TrialSeeded`)."""
    samplers = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if name == "tpe":
            # multivariate+group model the joint and conditional structure of a NAS space;
            # constant_liar keeps workers (here or in other processes) from sampling the
            # point a running trial is evaluating.
            return _seeded(
                samplers.TPESampler, seed, multivariate=True, group=True, constant_liar=True
            )
        if name == "random":
            return _seeded(samplers.RandomSampler, seed)
        if name == "nsga2":
            return _seeded(samplers.NSGAIISampler, seed)
        if name == "grid":
            return _seeded(samplers.GridSampler, seed, space.grid())
        if name == "cmaes":
            if multi:
                raise UserError("--sampler cmaes: single objective only (use nsga2 or tpe)")
            if not space.numeric:
                raise UserError(
                    f"--sampler cmaes: {space.path} has no int/float ranges for "
                    "CMA-ES to work on (use tpe)"
                )
            if importlib.util.find_spec("cmaes") is None:
                raise UserError("--sampler cmaes: needs the 'cmaes' package (pip install cmaes)")
            return _seeded(
                samplers.CmaEsSampler,
                seed,
                warn_independent_sampling=False,
                independent_sampler=samplers.TPESampler(seed=seed),
            )
    raise UserError(f"--sampler {name}: expected one of {', '.join(SAMPLERS)}")


class _TrialSeeded:
    """Sampler mixin: before each trial, reseed every random state from (seed, trial number).

    Trial numbers are unique in a study whichever process takes them, so processes on one study
    (on this machine or others) draw different random choices by construction, and a resumed
    search continues with new numbers instead of replaying its seed; a fresh single-process
    search is still reproducible.
    """

    _nas_proxy_seed: int = 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _reseed(self, trial_seed(self._nas_proxy_seed, trial.number), set())
        super().before_trial(study, trial)  # type: ignore[misc]


_SEEDED_CLASSES: dict[type, type] = {}


def _seeded(cls: type, seed: int, *args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
    """``cls(*args, seed=seed, **kwargs)`` with :class:`_TrialSeeded` mixed in (a subclass, so
    Optuna's own ``isinstance`` checks still see the sampler it is)."""
    if cls not in _SEEDED_CLASSES:
        _SEEDED_CLASSES[cls] = type(f"TrialSeeded{cls.__name__}", (_TrialSeeded, cls), {})
    sampler = _SEEDED_CLASSES[cls](*args, seed=seed, **kwargs)
    sampler._nas_proxy_seed = seed
    return sampler


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a search run with ``--seed seed``."""
    return int(hashlib.sha256(f"{seed}:{number}".encode()).hexdigest()[:8], 16)


def _reseed(sampler: Any, seed: int, seen: set[int]) -> None:
    """Seed the random states of ``sampler`` and of the samplers it delegates to.

    Optuna keeps them in private attributes (``LazyRandomState`` or numpy ``RandomState``),
    whose names differ between samplers, so they are found by type rather than by name.
    """
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for i, value in enumerate(vars(sampler).values()):
        derived = (seed + 7919 * i) % 2**32  # distinct streams for distinct attributes
        if isinstance(value, LazyRandomState):
            value.rng.seed(derived)
        elif isinstance(value, np.random.RandomState):
            value.seed(derived)
        elif isinstance(value, optuna.samplers.BaseSampler):
            _reseed(value, derived + 1, seen)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``median`` | ``successive-halving`` | ``hyperband`` | ``none``; steps are epochs."""
    pruners = optuna.pruners
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "successive-halving":
        return pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "hyperband":
        return pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs))
    if name == "none":
        return pruners.NopPruner()
    raise UserError(f"--pruner {name}: expected one of {', '.join(PRUNERS)}")


# --------------------------------------------------------------------------- counting, staleness


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


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` ("" where /proc is absent; None when not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else ""
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # zombies are dead workers


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid()) or ''}"


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return now is not None and (not start or not now or now == start)


def owner_died_here(owner: str, host: str | None = None) -> bool:
    """Whether the worker ``HOST:PID:START`` ran on this host and its process is gone."""
    h, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    return h == (host or socket.gethostname()) and pid.isdigit() and not _alive(int(pid), start)


def fail_dead_workers(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> int:
    """Fail and re-queue RUNNING trials whose worker process on this host has died."""
    host = socket.gethostname()
    storage = study._storage  # Optuna has no public API to fail another process's trial
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    n = 0
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB storages in a cache
    single_machine = isinstance(backend, JournalStorage) or str(
        getattr(getattr(backend, "engine", None), "url", "")
    ).startswith("sqlite")
    now = datetime.datetime.now()
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        owner = str(t.user_attrs.get("worker", ""))
        if not owner:
            # Its creator died between creating the trial and recording itself (it held the
            # creation lock, which we hold now). Workers on other machines do not share that
            # lock, so on a shared server wait out the grace period first.
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if not (single_machine or age > GRACE_PERIOD):
                continue
            h, pid = host, "?"
        else:
            if not owner_died_here(owner, host):
                continue
            h, _, rest = owner.partition(":")
            pid = rest.partition(":")[0]
        try:
            storage.set_trial_user_attr(
                t._trial_id, "fail_reason", f"worker {h}:{pid} died; re-queued"
            )
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first
        _requeue_lost(study, storage.get_trial(t._trial_id))
        n += 1
    return n


def _stale_from_elsewhere_only(study: optuna.Study) -> bool:
    """Running trials all belong to other hosts and nothing will ever time them out."""
    if isinstance(study._storage, JournalStorage):
        host = socket.gethostname()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return bool(running) and all(
            not str(t.user_attrs.get("worker", "")).startswith(host + ":") for t in running
        )
    return False


# --------------------------------------------------------------------------- the worker loop


class _Lock:
    """An exclusive lock on a file (fcntl), released at most once per acquire."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def run_worker(
    study: optuna.Study,
    objective: Any,
    target: int,
    lock_path: Path,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> None:
    """Run trials until ``target`` have finished (see Counting in the module docstring)."""
    lock = _Lock(lock_path)
    objective.on_start = lock.release  # the trial exists once the objective is entered
    callbacks = [on_trial] if on_trial else None
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
                if _stale_from_elsewhere_only(study):
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
    proxy: str
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


def _worker_main(cfg: WorkerConfig, ready: Any = None) -> None:
    from nas_proxy.runtime import die_with_parent

    die_with_parent()
    os.environ.setdefault("NAS_PROXY_NO_PROGRESS", "1")  # the parent draws the only bar
    _quiet_optuna()
    study, objective = build_worker(cfg)
    if ready is not None:
        # Start together once every worker has loaded its data, so that a worker that loads
        # faster does not take all the first trials; a worker that never gets here (crashed)
        # only delays the others by the timeout.
        with contextlib.suppress(Exception):
            ready.wait(timeout=READY_TIMEOUT_S)
    run_worker(study, objective, cfg.target, Path(cfg.lock_path))


def build_worker(cfg: WorkerConfig) -> tuple[optuna.Study, Any]:
    """Load space, proxy and dataset (once per process) and open the study with this worker's
    seeded sampler."""
    import torch

    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import check_compatible, load_proxy
    from nas_proxy.runtime import resolve_device
    from nas_proxy.search.objective import Objective
    from nas_proxy.search.space import load_space

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    space = load_space(cfg.space)
    proxy = load_proxy(cfg.proxy)
    dataset = load_dataset(proxy.meta["dataset"], data_dir=cfg.data_dir, download=cfg.download)
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
        device=resolve_device(cfg.device),
        epochs=cfg.epochs,
        lr=cfg.lr,
        max_params=cfg.max_params,
        max_flops=cfg.max_flops,
        worker=worker_id(),
    )
    return study, objective


def _quiet_optuna() -> int:
    """Silence Optuna below ERROR; return the verbosity it had (to restore).

    Our progress bar and trials.csv report trials; Optuna's per-trial INFO lines (and the
    traceback it logs for each failed trial, whose reason we record) would drown them.
    """
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return before


# --------------------------------------------------------------------------- run_search


def worker_devices(device: str, devices: Sequence[str] | None, workers: int) -> list[str]:
    """One device per worker: ``devices`` round-robin, else the visible GPUs round-robin when
    ``device`` is auto/cuda and GPUs exist, else ``device`` for all."""
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
        "proxy_sha256": proxy.meta.get("tensors_sha256"),
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
    device: str = "auto",
    devices: Sequence[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    max_params: int | None = None,
    max_flops: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a search until ``trials`` trials have finished; return the summary
    (the ``--json`` object of ``nas-proxy search``)."""
    from nas_proxy.data import load_dataset
    from nas_proxy.distill.proxy import check_compatible, load_proxy
    from nas_proxy.search.objective import parse_objectives
    from nas_proxy.search.space import load_space

    start = time.perf_counter()
    objectives = parse_objectives(objectives)
    multi = len(objectives) > 1
    sampler = sampler or ("nsga2" if multi else "tpe")
    pruner = pruner or ("none" if multi else "median")
    if trials < 1 or workers < 1:
        raise UserError(f"need --trials >= 1 and --workers >= 1 (got {trials}, {workers})")
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
    proxy = load_proxy(proxy_dir)
    space.check_build(tuple(proxy.images.shape[1:]), proxy.num_classes)
    make_sampler(sampler, space, seed, multi=multi)  # fail early
    if workers > 1:  # worker processes check it too, but their errors are not one line
        check_compatible(proxy, load_dataset(proxy.meta["dataset"], data_dir, download))
    url = storage or default_storage(out)
    out.mkdir(parents=True, exist_ok=True)
    verbosity = _quiet_optuna()
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
                proxy=str(Path(proxy_dir).resolve()),
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
            )
            for i in range(workers)
        ]

        with _Progress(study, trials, out / TRIALS_CSV) as bar:
            if workers == 1:
                worker_study, objective = build_worker(configs[0])
                run_worker(
                    worker_study, objective, trials, lock_path, on_trial=lambda s, t: bar.update()
                )
            else:
                _run_processes(configs, bar)
        return summarize(
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
            },
        )
    finally:
        optuna.logging.set_verbosity(verbosity)


def lock_file_name(study_name: str) -> str:
    """The name of the study's creation lock under ``--out``: a hash of the study name, since
    a name may hold slashes, ``..`` or more characters than a file name can."""
    return f".study-{hashlib.sha256(study_name.encode()).hexdigest()[:16]}.lock"


def _run_processes(configs: list[WorkerConfig], bar: _Progress) -> None:
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


class _Progress:
    """Progress bar with the best score so far; rewrites trials.csv as trials finish."""

    CSV_EVERY_S = 5.0

    def __init__(self, study: optuna.Study, target: int, csv_path: Path) -> None:
        from nas_proxy.runtime import progress

        self.study = study
        self.csv_path = csv_path
        self.done = count_trials(study).finished
        self.bar = progress(
            total=target, initial=min(self.done, target), desc="search", unit="trial"
        )
        self._csv_at = 0.0

    def update(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
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


# --------------------------------------------------------------------------- outputs


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


FULL_SCORE_PREFIX = "full_score:"


def set_full_score(storage: str, study_name: str, trial_number: int, value: float) -> None:
    """Record a trial's full-data score (written by ``rank``).

    Optuna refuses to change a finished trial, so the score is a study user attribute
    ``full_score:<number>`` (one key per trial: concurrent writers never overwrite each other);
    :func:`full_scores` and :func:`trials_dataframe` read it back as the trial's ``full_score``.
    """
    study = open_study(storage, study_name)
    numbers = {t.number for t in study.get_trials(deepcopy=False)}
    if trial_number not in numbers:
        raise UserError(f"study {study_name} has no trial {trial_number}")
    study.set_user_attr(f"{FULL_SCORE_PREFIX}{int(trial_number)}", float(value))


def full_scores(study: optuna.Study) -> dict[int, float]:
    return {
        int(k[len(FULL_SCORE_PREFIX) :]): v
        for k, v in study.user_attrs.items()
        if k.startswith(FULL_SCORE_PREFIX)
    }


USER_COLUMNS = (
    "arch",
    "params",
    "flops",
    "proxy_score",
    "full_score",
    "wall_s",
    "latency_ms",
    "reused_from",
    "prune_reason",
    "fail_reason",
    "worker",
)


def trials_dataframe(study: optuna.Study):
    """One row per trial: number, state, objective values, the user attributes, duration, and
    the sampled parameters as ``param_<name>`` columns."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    names = objective_names(study)
    requeued_as = {
        t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs
    }
    fulls = full_scores(study)
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values else None
        for key in USER_COLUMNS:
            row[key] = t.user_attrs.get(key)
        if t.number in fulls:
            row["full_score"] = fulls[t.number]
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


def dry_run(proxy_dir: str | Path, space_path: str | Path, n: int, seed: int = 0) -> dict[str, Any]:
    """``n`` specs sampled at random from the space, with params and FLOPs; nothing trains."""
    from nas_proxy.distill.proxy import load_proxy
    from nas_proxy.models import model_profile
    from nas_proxy.search.space import load_space

    space = load_space(space_path)
    proxy = load_proxy(proxy_dir)
    in_shape = tuple(proxy.images.shape[1:])
    space.check_build(in_shape, proxy.num_classes)
    samples = [
        model_profile(spec, in_shape, proxy.num_classes) for spec in space.sample(n, seed=seed)
    ]
    return {"space": str(space_path), "input": list(in_shape), "samples": samples}
