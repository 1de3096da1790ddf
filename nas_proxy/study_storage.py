"""Optuna storages behind a URL: the forms accepted, drivers, schema creation, SQLite tuning.

Default: ``sqlite:///OUT/study.db``, embedded, no server. SQLite rather than Optuna's journal
file because in Optuna 5.0 only the RDB storage implements heartbeats (``BaseHeartbeat``),
which is what turns the trial of a killed worker from RUNNING into FAIL and re-queues it;
SQLite handles the few writes per trial of a handful of local workers (a 60 s busy timeout
absorbs lock contention), and optuna-dashboard opens the file as it is.
``--storage`` takes any Optuna URL: ``sqlite:///PATH``, ``postgresql://USER@HOST/DB``,
``mysql://...`` (many workers on many machines), or a journal file written
``journal:PATH`` (or a path ending in ``.log``/``.journal``; one machine only, no heartbeats:
killed local workers are still detected through their process ids, nas_proxy/search/liveness.py).

Below search and rank (docs/architecture.md, "Layers"): both open studies through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial

from nas_proxy.errors import UserError

DB_FILE = "study.db"
HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial (RDB storages)
GRACE_PERIOD = 60  # a running trial without a heartbeat for this long is failed and re-queued
MAX_RETRY = 2  # re-queue a lost trial at most this many times
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# Drivers tried, in order, for a URL that names none (SQLAlchemy 2.1 defaults postgresql:// to
# psycopg 3, which the `postgres` extra does not install).
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}


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


def requeue_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue a trial failed as lost (a new WAITING trial, same parameters), up to MAX_RETRY."""
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
                heartbeat_stale_trial_callback=requeue_lost,
            )
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--storage {redact(url)}: cannot open ({first_line(e)})") from None
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
    """Hold a lock while Optuna creates its tables: on PostgreSQL a database advisory lock, on a
    SQLite file an flock on a hidden file beside it.

    Optuna checks for its tables, then creates them: two processes that start together on an
    empty database both create, and one fails on a duplicate key. Serialised, the second one
    finds the tables. Other databases are opened as they are.
    """
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        with advisory_lock(url, _SCHEMA_LOCK_KEY):
            yield
        return
    db = Path(path)
    try:
        fd = os.open(db.parent / f".{db.name}.schema.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder: nobody creates tables there either
        yield
        return
    try:
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (a study's, say)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(url: str, key: int):
    """On PostgreSQL, hold the database-wide advisory lock ``key`` (every machine sharing the
    database sees it); elsewhere do nothing (callers hold a file lock for this machine)."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(_with_driver(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
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


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
