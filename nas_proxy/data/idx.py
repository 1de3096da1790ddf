"""The IDX file format (MNIST, Fashion-MNIST), gzipped or not, read strictly.

Layout: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per
dimension, then the data. Images are magic 2051 (ubyte, 3 dims), labels 2049 (ubyte, 1 dim).
A file whose size does not match its header exactly is refused, so a truncated download never
turns into silently fewer samples.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from nas_proxy.errors import UserError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxHeader:
    magic: int
    dtype: np.dtype
    dims: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of header."""
        return 4 + 4 * len(self.dims)

    @property
    def data_bytes(self) -> int:
        return prod(self.dims) * self.dtype.itemsize


def _parse_header(path: Path, head: bytes, expect_magic: int | None) -> IdxHeader:
    if len(head) < 4:
        raise UserError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    magic = int.from_bytes(head[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise UserError(
            f"{path}: bad magic number {magic} (expected {expect_magic}); "
            "not an IDX file of the expected kind"
        )
    code, ndim = head[2], head[3]
    if head[:2] != b"\0\0" or code not in _DTYPES or ndim == 0:
        raise UserError(f"{path}: bad magic number {magic}; not an IDX file")
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated IDX header ({len(head)} of {4 + 4 * ndim} bytes)")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return IdxHeader(magic, np.dtype(_DTYPES[code]), dims)


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's (decompressed) bytes; only the first ``limit`` when given."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit if limit is not None else -1)
        if data[:2] != _GZIP_MAGIC:
            return data
        if limit is None:
            return gzip.decompress(data)
        with gzip.open(path, "rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx_header(path: str | Path, expect_magic: int | None = None) -> IdxHeader:
    """Only the header (cheap even for gzipped files): for counting samples without loading."""
    path = Path(path)
    return _parse_header(path, _read_bytes(path, limit=4 + 4 * 255), expect_magic)


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """The whole array, in native byte order; its size must match the header exactly."""
    path = Path(path)
    data = _read_bytes(path)
    header = _parse_header(path, data, expect_magic)
    found = len(data) - header.size
    if found < header.data_bytes:
        raise UserError(
            f"{path}: truncated: header {list(header.dims)} needs "
            f"{header.data_bytes} bytes of data, file holds {found}"
        )
    if found > header.data_bytes:
        raise UserError(
            f"{path}: corrupt: {found - header.data_bytes} unexpected bytes after "
            f"the {list(header.dims)} data"
        )
    array = np.frombuffer(data, dtype=header.dtype, offset=header.size).reshape(header.dims)
    return array.astype(header.dtype.newbyteorder("="))  # a writable, native-order copy
