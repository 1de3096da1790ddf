"""Scoring records as a CSV table: the durable, shareable form of the rank cache.

A ground truth or a proxy's per-candidate scores can cost hours; as a committed CSV they are data
that anyone can reuse without retraining. One row per record (one scorer, spec and seed); the
nested parts are flattened so the file reads well in pandas and spreadsheets:

* ``settings`` (recipe, proxy checksum, overrides...) is a JSON string;
* ``cpu_model`` / ``cpu_flags`` / ``cpu_threads`` / ``cpu_load_1m`` say where the wall seconds
  were measured, and how busy that machine was (1-minute load average when the run ended);
* a full-data run's per-epoch history becomes columns ``val_accuracy@E``, ``test_accuracy@E``,
  ``train_s@E`` (seconds of training up to epoch E, evaluations excluded) and ``steps@E``.

:func:`import_records` turns rows back into cache files, keyed exactly as
:func:`~nas_proxy.rank.ground_truth.cache_key` would key them, so a rank run over the same
candidates, recipe and data finds them and trains nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from nas_proxy.errors import UserError
from nas_proxy.io import atomic_write, write_json

SCALARS = (
    "key",
    "kind",
    "scorer",
    "spec",
    "seed",
    "dataset",
    "score",
    "val_accuracy",
    "test_accuracy",
    "val_loss",
    "wall_s",
    "epochs",
    "steps",
    "params",
    "flops",
    "lr_scale",
    "error",
    "device",
    "created",
)
HISTORY = ("val_accuracy", "test_accuracy", "train_s", "steps")
_HISTORY_COLUMN = re.compile(r"^(?P<name>[a-z_]+)@(?P<epoch>\d+)$")


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One record as a flat CSV row."""
    row = {k: record.get(k) for k in SCALARS}
    row["settings"] = json.dumps(record.get("settings", {}), sort_keys=True)
    row["scorer_info"] = json.dumps(record.get("scorer_info") or {}, sort_keys=True)
    cpu = record.get("cpu") or {}
    row["cpu_model"], row["cpu_flags"] = cpu.get("model"), cpu.get("flags")
    row["cpu_threads"] = cpu.get("threads")
    row["cpu_load_1m"] = cpu.get("load_1m")
    row["torch"] = (record.get("versions") or {}).get("torch")
    for h in record.get("history") or []:
        for name in HISTORY:
            if h.get(name) is not None:
                row[f"{name}@{int(h['epoch'])}"] = h[name]
    return row


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Records as a table, sorted by scorer, spec and seed (a stable file under git)."""
    rows = [record_row(r) for r in records]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*SCALARS, "settings"])
    fixed = [c for c in df.columns if not _HISTORY_COLUMN.match(c)]
    history = sorted(
        (c for c in df.columns if _HISTORY_COLUMN.match(c)),
        key=lambda c: (int(c.split("@")[1]), HISTORY.index(c.split("@")[0])),
    )
    return df[fixed + history].sort_values(["scorer", "spec", "seed"], kind="stable")


def write_records_csv(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` to ``path`` atomically (a reader never sees half a table)."""
    df = records_frame(records)
    return atomic_write(path, lambda p: df.to_csv(p, index=False, float_format="%.6g"))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def read_records_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a table written by :func:`write_records_csv`, as records (history rebuilt)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"key": str, "error": str})
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a records table ({str(e).splitlines()[0]})") from None
    missing = {"key", "kind", "scorer", "spec", "seed", "settings"} - set(df.columns)
    if missing:
        raise UserError(f"{path}: not a records table (no column {', '.join(sorted(missing))})")
    epochs = sorted({int(m["epoch"]) for c in df.columns if (m := _HISTORY_COLUMN.match(c))})
    out = []
    for row in df.to_dict("records"):
        row = {k: _clean(v) for k, v in row.items()}
        record = {k: row.get(k) for k in SCALARS}
        record["seed"] = int(record["seed"])
        try:
            record["settings"] = json.loads(row["settings"])
            record["scorer_info"] = json.loads(row.get("scorer_info") or "{}")
        except (TypeError, ValueError):
            raise UserError(f"{path}: row {record['key']}: settings is not JSON") from None
        record["cpu"] = {
            "model": row.get("cpu_model"),
            "flags": row.get("cpu_flags"),
            "threads": row.get("cpu_threads"),
            "load_1m": row.get("cpu_load_1m"),
        }
        record["versions"] = {"torch": row.get("torch")}
        history = []
        for e in epochs:
            h = {n: row.get(f"{n}@{e}") for n in HISTORY if row.get(f"{n}@{e}") is not None}
            if h:
                history.append({"epoch": e, **h})
        record["history"] = history or None
        record["imported_from"] = path.name
        out.append(record)
    return out


def cached_records(cache_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished record in a rank cache (unreadable or mis-keyed files are skipped, as
    :func:`~nas_proxy.rank.ground_truth.read_cached` would skip them)."""
    out = []
    for path in sorted(Path(cache_dir).glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("key") == path.stem:
            out.append(record)
    return out


def import_records(path: str | Path, cache_dir: str | Path) -> int:
    """Write the rows of ``path`` into the rank cache as records (existing ones are kept);
    returns how many were added."""
    added = 0
    for record in read_records_csv(path):
        target = Path(cache_dir) / str(record["kind"]) / f"{record['key']}.json"
        if not target.exists():
            write_json(target, record)
            added += 1
    return added


__all__ = [
    "cached_records",
    "import_records",
    "read_records_csv",
    "records_frame",
    "write_records_csv",
]
