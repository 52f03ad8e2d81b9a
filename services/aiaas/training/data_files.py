"""Training data by reference: a local file (path or file:// URI), Parquet, NPZ or JSONL, sha256-checked.

The trainer reads only plain data: NPZ with `allow_pickle=False`, JSON lines, Parquet
columns. A file whose sha256 differs from the one the job gives is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from ..errors import InvalidJob

__all__ = ["read_data_file"]


def read_data_file(uri: str, sha256: str | None, max_bytes: int) -> dict[str, Any]:
    """Columns of the file at `uri` (name → numpy array or list); InvalidJob when it cannot be used."""
    path = _local_path(uri)
    if not path.is_file():
        raise InvalidJob(f"data file {path} does not exist (or is not a file) on the trainer's machine")
    if path.stat().st_size > max_bytes:
        raise InvalidJob(f"data file {path} has {path.stat().st_size} bytes; the trainer accepts at most {max_bytes}")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise InvalidJob(f"data file {path} does not match the given data_sha256 (was it changed?)")
    readers = {".npz": _npz, ".jsonl": _jsonl, ".parquet": _parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InvalidJob(f"data file {path.name}: use .parquet, .npz or .jsonl")
    try:
        return reader(data)
    except InvalidJob:
        raise
    except Exception as exc:  # a corrupt file is the job's problem, said plainly
        raise InvalidJob(f"data file {path.name} cannot be read: {type(exc).__name__}: {exc}") from exc


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        # file:// URIs are percent-encoded (Path.as_uri() writes a space as %20); a plain path is taken as is.
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise InvalidJob(f"data_uri {uri!r}: only local paths and file:// URIs are supported")


def _npz(data: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _jsonl(data: bytes) -> dict[str, Any]:
    columns: dict[str, list] = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict):
            raise InvalidJob(f"JSONL line {number} is not an object")
        for name, value in row.items():
            columns.setdefault(name, []).append(value)
    return columns


def _parquet(data: bytes) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pydict()
