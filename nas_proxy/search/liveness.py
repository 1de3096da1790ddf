"""Which worker owns a trial, whether it is alive, and failing the trials of dead ones.

Every trial records ``worker`` = ``HOST:PID:START`` (START = the process start time, so a
re-used pid is not mistaken for the worker). Before each trial, and while waiting, a worker
fails the RUNNING trials of dead processes on its own host and re-queues them (at once, on
any storage); RDB storages also beat every ``HEARTBEAT_INTERVAL`` s, so a trial whose worker
vanished on another machine is failed and re-queued after ``GRACE_PERIOD`` s
(nas_proxy/study_storage.py). A re-queued trial is a new WAITING trial with the same
parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``), up to ``MAX_RETRY`` times.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from nas_proxy.study_storage import GRACE_PERIOD, requeue_lost

POLL_S = 1.0  # how often a worker with nothing to start looks at the study again


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
        requeue_lost(study, storage.get_trial(t._trial_id))
        n += 1
    return n


def stale_from_elsewhere_only(study: optuna.Study) -> bool:
    """Running trials all belong to other hosts and nothing will ever time them out."""
    if isinstance(study._storage, JournalStorage):
        host = socket.gethostname()
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return bool(running) and all(
            not str(t.user_attrs.get("worker", "")).startswith(host + ":") for t in running
        )
    return False


class FileLock:
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

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
