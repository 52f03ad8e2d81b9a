"""Training data by reference: a local file (path or file:// URI), Parquet, NPZ or JSONL, sha256-checked.

A `data_uri` is untrusted input, so a file is read only when all of this holds:

* its real path (symlinks and `..` resolved first) lies inside one of the trainer's data roots
  (`AIAAS_TRAINER_DATA_ROOTS`); a link inside a root to a file outside is outside. Whether a
  file outside the roots exists is never said: every such `data_uri` gets the same message;
* it is a regular file (not a folder, FIFO or device), opened without following a link that
  appeared after the check, and (on Linux) the file actually opened is inside a root too;
* at most `max_bytes` are read, whatever its size claims to be (`/proc` files say 0, a file
  may grow while read): one byte more than the limit is read, and that byte refuses the file;
* its columns hold at most `max_rows` rows, and compressed contents (NPZ, Parquet) unpack to at
  most `max_bytes`: both are checked from the file's headers before anything is unpacked.

The trainer reads only plain data: NPZ with `allow_pickle=False`, JSON lines, Parquet
columns. A file whose sha256 differs from the one the job gives is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from aiaas.errors import InvalidJob

__all__ = ["read_data_file", "DataLimits", "rows_of"]


@dataclass(frozen=True)
class DataLimits:
    """Where data files may be read from and how much a job's data may hold."""

    roots: Sequence[Path]
    max_bytes: int
    max_rows: int


def read_data_file(uri: str, sha256: str | None, limits: DataLimits) -> dict[str, Any]:
    """Columns of the file at `uri` (name → numpy array or list); InvalidJob when it cannot be used."""
    path = _inside_roots(uri, limits.roots)
    data = _read_at_most(path, uri, limits)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise InvalidJob(f"data file {path.name} does not match the given data_sha256 (was it changed?)")
    readers = {".npz": _npz, ".jsonl": _jsonl, ".parquet": _parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InvalidJob(f"data file {path.name}: use .parquet, .npz or .jsonl")
    try:
        return reader(data, limits)
    except InvalidJob:
        raise
    except Exception as exc:  # a corrupt file is the job's problem, said plainly
        raise InvalidJob(f"data file {path.name} cannot be read: {type(exc).__name__}: {exc}") from exc


def rows_of(columns: dict[str, Any]) -> int:
    """The most rows any column holds (an array's first axis, a list's length; a scalar is one row)."""
    counts = [len(v) if isinstance(v, (list, tuple)) else (v.shape[0] if isinstance(v, np.ndarray) and v.ndim else 1)
              for v in columns.values()]
    return max(counts, default=0)


def _outside(uri: str) -> InvalidJob:
    # One message for every path outside the roots, present or not: a job must not learn what exists there.
    return InvalidJob(f"data_uri {uri[:200]!r} is not a file under the trainer's data roots (AIAAS_TRAINER_DATA_ROOTS)")


def _inside_roots(uri: str, roots: Sequence[Path]) -> Path:
    """The real path `uri` names, when it lies inside a root; InvalidJob (one message for all) otherwise."""
    given = _local_path(uri)
    if not roots:
        raise _outside(uri)
    try:
        real_roots = [os.path.realpath(root) for root in roots]
        # Relative paths mean "inside the first root", never the trainer's working folder.
        joined = given if given.is_absolute() else Path(real_roots[0]) / given
        # realpath before the check: a symlink or `..` must not carry the path out of a root.
        real = Path(os.path.realpath(joined))
    except (OSError, ValueError):  # NUL bytes, names too long: nothing a root can hold
        raise _outside(uri) from None
    if not any(real.is_relative_to(root) for root in real_roots):
        raise _outside(uri)
    return real


def _read_at_most(path: Path, uri: str, limits: DataLimits) -> bytes:
    """At most `max_bytes` of the regular file at `path`; InvalidJob when there is more, or it is no file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO planted in a root must not hang the trainer
    except FileNotFoundError:
        raise InvalidJob(f"data file {path.name} does not exist under the trainer's data roots") from None
    except OSError as exc:  # ELOOP: the checked path became a link since; EACCES, EISDIR, ...
        raise InvalidJob(f"data file {path.name} cannot be opened ({os.strerror(exc.errno or 0)})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidJob(f"data file {path.name} is not a regular file")
        if not _opened_inside(fd, limits.roots):  # a folder on the way was swapped for a link after the check
            raise _outside(uri)
        data = bytearray()
        while len(data) <= limits.max_bytes:  # st_size is not trusted: read until EOF or one byte past the limit
            chunk = os.read(fd, min(limits.max_bytes + 1 - len(data), 1 << 24))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:
        raise InvalidJob(f"data file {path.name} is larger than {limits.max_bytes} bytes, the most the trainer "
                         "accepts (AIAAS_TRAINER_MAX_DATA_BYTES)")
    return bytes(data)


def _opened_inside(fd: int, roots: Sequence[Path]) -> bool:
    """Whether the file behind `fd` is inside a root (Linux tells through /proc; elsewhere the path check stands)."""
    link = f"/proc/self/fd/{fd}"
    if not os.path.exists(link):
        return True
    opened = Path(os.readlink(link))
    return any(opened.is_relative_to(os.path.realpath(root)) for root in roots)


def _local_path(uri: str) -> Path:
    try:
        parsed = urlparse(uri)
    except ValueError:
        raise InvalidJob(f"data_uri {uri[:200]!r}: only local paths and file:// URIs are supported") from None
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        # file:// URIs are percent-encoded (Path.as_uri() writes a space as %20); a plain path is taken as is.
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    raise InvalidJob(f"data_uri {uri[:200]!r}: only local paths and file:// URIs are supported")


def _too_many_rows(rows: int, limits: DataLimits) -> InvalidJob:
    return InvalidJob(f"the training data has more than {limits.max_rows} rows, the most the trainer accepts "
                      f"(AIAAS_TRAINER_MAX_DATA_ROWS); it has {rows}")


def _npz(data: bytes, limits: DataLimits) -> dict[str, Any]:
    _check_npz_headers(data, limits)
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _check_npz_headers(data: bytes, limits: DataLimits) -> None:
    """Refuse an NPZ whose arrays are too long or unpack to too much, from their headers (a zip bomb stays packed)."""
    unpacked = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.infolist():
            if not member.filename.endswith(".npy"):
                continue
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise InvalidJob(f"NPZ member {member.filename[:100]!r}: .npy format {version} is not supported")
            rows = shape[0] if shape else 1
            if rows > limits.max_rows:
                raise _too_many_rows(rows, limits)
            unpacked += math.prod(shape) * dtype.itemsize
            if unpacked > limits.max_bytes:
                raise _unpacks_to_too_much("NPZ arrays", limits)


def _jsonl(data: bytes, limits: DataLimits) -> dict[str, Any]:
    columns: dict[str, list] = {}
    rows = 0
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rows += 1
        if rows > limits.max_rows:  # stop at once: parsing every line first would cost the memory we guard
            raise _too_many_rows(rows, limits)
        row = json.loads(line)
        if not isinstance(row, dict):
            raise InvalidJob(f"JSONL line {number} is not an object")
        if columns and set(row) != set(columns):  # columns of rows with other keys would pair values of other rows
            raise InvalidJob(f"JSONL line {number} has the keys {', '.join(sorted(row)) or 'none'}; the lines before "
                             f"it have {', '.join(sorted(columns))}: every line needs the same keys")
        for name, value in row.items():
            columns.setdefault(name, []).append(value)
    return columns


def _parquet(data: bytes, limits: DataLimits) -> dict[str, Any]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(io.BytesIO(data))
    if file.metadata.num_rows > limits.max_rows:
        raise _too_many_rows(file.metadata.num_rows, limits)
    texts, unpacked = _parquet_unpacked_bytes(file)
    # Text columns are read as dictionaries (as they are stored, mostly), so that what they expand
    # to is measured before any value is repeated in memory: one 1 MB string may stand for every row.
    table = pq.ParquetFile(io.BytesIO(data), read_dictionary=sorted(texts)).read()
    unpacked += sum(_expanded_bytes(table[name]) for name in texts)
    if unpacked > limits.max_bytes:
        raise _unpacks_to_too_much("Parquet columns", limits)
    return table.to_pydict()


_FIXED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 12, "FLOAT": 4, "DOUBLE": 8}
_PLAIN_TEXT = {"PLAIN", "RLE", "BIT_PACKED", "DELTA_LENGTH_BYTE_ARRAY"}
"""Encodings whose text values are all stored in full: their uncompressed size is what they unpack to."""


def _parquet_unpacked_bytes(file) -> tuple[set[str], int]:  # noqa: ANN001 (a pyarrow ParquetFile)
    """(the top-level text columns, the bytes every other column unpacks to), from the file's metadata alone.

    Counts leaf values, not encoded sizes: dictionary and run-length encoding store a million equal
    values in a few bytes. Nested text, or text stored with prefix sharing (DELTA_BYTE_ARRAY), cannot
    be measured before it is unpacked, and is refused.
    """
    meta, schema = file.metadata, file.metadata.schema
    texts, unpacked = set(), 0
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            chunk, column = meta.row_group(group).column(index), schema.column(index)
            if chunk.physical_type in _FIXED_WIDTH or chunk.physical_type == "FIXED_LEN_BYTE_ARRAY":
                unpacked += chunk.num_values * _FIXED_WIDTH.get(chunk.physical_type, max(column.length, 1))
            elif column.max_repetition_level == 0 and "." not in chunk.path_in_schema and \
                    "DELTA_BYTE_ARRAY" not in chunk.encodings:
                texts.add(chunk.path_in_schema)
            elif set(chunk.encodings) <= _PLAIN_TEXT:
                unpacked += chunk.total_uncompressed_size
            else:
                raise InvalidJob(f"Parquet column {chunk.path_in_schema[:100]!r}: nested or prefix-encoded text "
                                 "cannot be checked before it is unpacked; write it as a plain text column")
    return texts, unpacked


def _expanded_bytes(column) -> int:  # noqa: ANN001 (a pyarrow ChunkedArray)
    """The bytes a (dictionary-encoded) text column holds once every row has its own value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for chunk in column.chunks:
        if isinstance(chunk, pa.DictionaryArray):
            total += (pc.sum(pc.take(pc.binary_length(chunk.dictionary), chunk.indices)).as_py() or 0) \
                + 8 * len(chunk)
        else:
            total += chunk.nbytes
    return total


def _unpacks_to_too_much(what: str, limits: DataLimits) -> InvalidJob:
    return InvalidJob(f"the {what} unpack to more than {limits.max_bytes} bytes (AIAAS_TRAINER_MAX_DATA_BYTES)")
