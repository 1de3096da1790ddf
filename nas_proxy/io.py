"""Safe, atomic file I/O: JSON, safetensors, figures, CSV logs, hashing.

Nothing here unpickles. Every writer goes through a temp file + rename so that a killed process
never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nas_proxy.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (atomic on POSIX).

    The file gets the mode a plain ``open()`` would give it: an existing file's mode, else
    0666 minus the umask (mkstemp's 0600 would hide shared caches from other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    try:
        mode = (path if path.exists() else tmp_path).stat().st_mode & 0o7777
        write(tmp_path)
        os.chmod(tmp_path, mode)  # after: some writers (safetensors) recreate the file as 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure atomically, in the format its suffix names."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda p: fig.savefig(p, format=fmt, **savefig_kwargs))


def data_uri(path: str | Path, mimetype: str = "image/png") -> str:
    """A file as a ``data:`` URI, for HTML reports that must stand alone (no file beside them)."""
    return f"data:{mimetype};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


HTML_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
    "padding:3px 8px;text-align:left;font-size:14px}th{background:#f3f3f3}"
    "img{max-width:48%;margin:1%}"
)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table, every cell escaped."""
    import html

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_images(images: Mapping[str, str | Path]) -> str:
    """``<img>`` tags embedding each file (alt text -> PNG) as a data URI."""
    import html

    return "".join(
        f'<img alt="{html.escape(alt)}" src="{data_uri(path)}">' for alt, path in images.items()
    )


def write_html_page(path: str | Path, title: str, body: str) -> Path:
    """A standalone HTML page (inline style, no external source) around ``body``, which the
    caller has escaped; the title is escaped here."""
    import html

    t = html.escape(title)
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title>"
        f"<style>{HTML_CSS}</style></head><body><h1>{t}</h1>{body}</body></html>\n"
    )
    return atomic_write(path, lambda p: p.write_text(doc, encoding="utf-8"))


def require_writable_dir(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder this process cannot create or write into:
    an existing folder must accept a new file; a missing one needs a writable nearest parent."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == path else f"is inside {probe}, which is"
        raise UserError(f"{flag} {path}: {where} a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):  # a nameless file where the kernel allows one
            pass
    except OSError as e:
        where = "" if probe == path else f" (its parent {probe} exists)"
        raise UserError(f"{flag} {path}: cannot write there{where}: {e.strerror}") from None


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(flat, str(p), metadata=dict(metadata or {})))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle, a truncated file) is a UserError."""
    return load_tensors_and_metadata(path, device)[0]


def load_tensors_and_metadata(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of one safetensors file, read in one open (so both come
    from the same version of a file that is being replaced)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a valid safetensors file ({_first_line(e)})") from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict ordering."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class CsvLog:
    """Append-only CSV log, flushed every row so a killed run keeps what it logged.

    ``keep`` decides which rows of an existing log survive (a resumed run keeps the rows up to
    its checkpoint, so the rows it repeats are not logged twice); without it the log starts
    over. Kept rows are rewritten atomically before appending."""

    def __init__(
        self,
        path: str | Path,
        fields: Iterable[str],
        keep: Callable[[dict[str, str]], bool] | None = None,
    ):
        self.path = Path(path)
        self.fields = list(fields)
        kept = [row for row in _read_csv_rows(self.path) if keep(row)] if keep else []
        atomic_write(self.path, lambda p: _write_csv_rows(p, self.fields, kept))
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")

    def log(self, **row: Any) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _write_csv_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
