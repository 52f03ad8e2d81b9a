"""The embedded model registry: versioned, sha256-verified artifacts and aliases in a directory.

Layout: `<root>/<model>/v<N>/<artifact>` + `version.json`, `<root>/<model>/aliases.json`, and
`<root>/<model>/alias_history.jsonl` (one line per alias move, oldest first). File contents are stored once, by
their sha256, in `<root>/.blobs/sha256/<digest>`; a version's files are hard links to them, so versions that share
a file (every text version's encoder, a rebuilt model) share its bytes on disk. Where the file system has no hard
links (or the blob store is on another), a version gets its own copy. Blobs are read-only and never removed
(versions are never deleted).
Versions are monotonic per model type; services load only artifacts whose sha256 matches.
Aliases move by registering, `promote`, `rollback` or `set_alias`; every move is recorded, so
`rollback` knows where an alias was before and an operator can see who moved what, when.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from aiaas.errors import ArtifactCorrupted, NothingToRollBack, UnknownModelVersion

__all__ = ["Registry", "ModelVersion", "AliasMove", "MoveReason", "sha256_of", "sha256_of_file"]

log = logging.getLogger("aiaas.registry")

MoveReason = Literal["registered", "promoted", "rolled_back", "set"]
"""Why an alias moved: the first three match `ModelEvent.action`; `set` is a plain `set_alias`."""


_BLOBS = ".blobs"
"""The folder under the root where file contents are stored by sha256."""


class ModelVersion(BaseModel):
    """One registered version of a model type."""

    model: str = Field(description="Model type.")
    version: int = Field(ge=1, description="Monotonic per model type.")
    artifact: str = Field(description="File name of the artifact inside the version folder.")
    sha256: str = Field(description="sha256 of the artifact bytes.")
    files: dict[str, str] = Field(
        default_factory=dict, description="Companion files of the artifact (tokenizer, lookup tables): name → sha256."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics.")
    output_profile: dict[str, float] = Field(
        default_factory=dict,
        description="Share of each output category (a predicted label, a score's bin) on the held-out set when the "
        "version was made: what model monitoring compares the served outputs with (`aiaas_model_output_drift`).",
    )
    params: dict[str, object] = Field(default_factory=dict, description="Hyper-parameters of training.")
    data_hash: str | None = Field(None, description="sha256 of the training data.")
    parent: int | None = Field(None, description="Version this one was fine-tuned from.")
    job_id: str | None = Field(None, description="Training job that created it.")
    created_at: float = Field(default_factory=time.time, description="Unix seconds.")


class AliasMove(BaseModel):
    """One line of `alias_history.jsonl`: an alias pointed at `previous`, then at `version`."""

    alias: str = Field(description="The alias that moved (`production`, `staging`, …).")
    version: int = Field(ge=1, description="Version the alias points at after the move.")
    previous: int | None = Field(None, description="Version it pointed at before; None when it was new.")
    at: float = Field(default_factory=time.time, description="Unix seconds.")
    reason: MoveReason = Field(description="What moved it.")


def sha256_of(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks (weights of hundreds of megabytes never sit in memory whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _append_line(path: Path, line: str) -> None:
    # One O_APPEND write per line: concurrent writers never interleave inside a line, and a
    # crash leaves at most one torn last line (which the reader skips). A torn line has no
    # newline, so start on a fresh one rather than glue this move onto it.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        fresh = size == 0 or os.pread(fd, 1, size - 1) == b"\n"
        os.write(fd, (("" if fresh else "\n") + line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


class Registry:
    """A registry rooted at one directory (shared volume in a deployment)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[str]:
        """Model types with at least one version."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name != _BLOBS) \
            if self.root.exists() else []

    def versions(self, model: str) -> list[ModelVersion]:
        """Every version of a model type, oldest first."""
        folder = self.root / model
        found = [
            ModelVersion.model_validate_json((d / "version.json").read_text())
            for d in folder.glob("v*")
            if (d / "version.json").exists()
        ]
        return sorted(found, key=lambda v: v.version)

    def aliases(self, model: str) -> dict[str, int]:
        """Alias → version for a model type."""
        path = self.root / model / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_alias(self, model: str, alias: str, version: int, *, reason: MoveReason = "set") -> None:
        """Point `alias` at `version` (atomic) and record the move; no-op when it already points there."""
        self.resolve(model, str(version))
        with self._alias_lock(model):
            self._move(model, alias, version, reason)

    def promote(self, model: str, ref: str, alias: str = "production") -> ModelVersion:
        """Point `alias` at the version `ref` names (a number, `v3`, or another alias) and record it."""
        version = self.resolve(model, ref)
        with self._alias_lock(model):
            self._move(model, alias, version.version, "promoted")
        return version

    def rollback(self, model: str, alias: str = "production") -> ModelVersion:
        """Move `alias` back to where it pointed before its latest move that is not yet undone.

        Rolling back twice walks two moves back (v3 → v2 → v1), not back and forth: a rollback
        undoes a move instead of being a move that the next rollback would undo.
        """
        if alias not in self.aliases(model):
            raise NothingToRollBack(f"{model} has no alias {alias!r}, so there is nothing to roll back")
        with self._alias_lock(model):
            trail = self._alias_trail(model, alias)
            if len(trail) < 2:
                raise NothingToRollBack(
                    f"{model} {alias} points at v{trail[-1]} and has no earlier version to roll back to; "
                    f"move it with `aiaas models promote {model} <version> --alias {alias}`"
                )
            target = self.resolve(model, str(trail[-2]))
            self._move(model, alias, target.version, "rolled_back")
        return target

    def alias_history(self, model: str, alias: str | None = None) -> list[AliasMove]:
        """Every recorded alias move of a model type (or of one alias), oldest first."""
        path = self.root / model / "alias_history.jsonl"
        if not path.exists():
            return []
        moves = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                move = AliasMove.model_validate_json(line)
            except ValueError:  # a torn line from a crash mid-write: the move itself still stands
                log.warning("%s:%d is not an alias move; skipped", path, number)
                continue
            if alias is None or move.alias == alias:
                moves.append(move)
        return moves

    def _move(self, model: str, alias: str, version: int, reason: MoveReason) -> AliasMove | None:
        # Caller holds the alias lock. aliases.json first: services read it, so it is the truth;
        # a crash before the history line leaves an unrecorded move that `_alias_trail` still sees.
        aliases = self.aliases(model)
        if aliases.get(alias) == version:
            return None
        move = AliasMove(alias=alias, version=version, previous=aliases.get(alias), reason=reason)
        text = json.dumps(aliases | {alias: version}, indent=2, sort_keys=True)
        _write_atomic(self.root / model / "aliases.json", text)
        _append_line(self.root / model / "alias_history.jsonl", move.model_dump_json())
        return move

    def _alias_trail(self, model: str, alias: str) -> list[int]:
        """The versions `alias` has pointed at, oldest first, with rolled-back moves taken off."""
        trail: list[int] = []
        for move in self.alias_history(model, alias):
            if move.reason == "rolled_back" and trail:
                trail.pop()
            if not trail or trail[-1] != move.version:
                trail.append(move.version)
        current = self.aliases(model).get(alias)
        if current is not None and (not trail or trail[-1] != current):
            trail.append(current)  # moved without a history line (hand edit, older registry): still a move
        return trail

    @contextmanager
    def _alias_lock(self, model: str) -> Iterator[None]:
        # aliases.json is read-modify-write: without the lock two processes moving different
        # aliases at once could drop one move. flock dies with its process, so no stale locks.
        with open(self.root / model / "aliases.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def register(
        self, model: str, artifact: Path, *, aliases: tuple[str, ...] = ("production",),
        companions: tuple[Path, ...] = (), **meta: object,
    ) -> ModelVersion:
        """Copy `artifact` (and `companions`) in as the next version, record sha256s and metadata, move `aliases`."""
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        number = max((v.version for v in self.versions(model)), default=0) + 1
        while True:  # mkdir is the lock: two trainers never get the same number
            try:
                (folder / f"v{number}").mkdir()
                break
            except FileExistsError:
                number += 1
        digest = self._store(artifact, folder / f"v{number}" / artifact.name)
        files = {companion.name: self._store(companion, folder / f"v{number}" / companion.name)
                 for companion in companions}
        version = ModelVersion(model=model, version=number, artifact=artifact.name, sha256=digest, files=files,
                               **meta)
        _write_atomic(folder / f"v{number}" / "version.json", version.model_dump_json(indent=2))
        for alias in aliases:
            self.set_alias(model, alias, number, reason="registered")
        return version

    def _store(self, source: Path, target: Path) -> str:
        """Put `source`'s bytes at `target` (a new file) as a hard link to their blob, stored now if new, read-only;
        their sha256."""
        if target.exists():
            raise ValueError(f"two files of one version are named {target.name}")
        blobs = self.root / _BLOBS / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=blobs, prefix=".partial-")  # unique: many writers share the registry
        os.close(handle)
        partial = Path(name)
        try:
            shutil.copyfile(source, partial)
            digest = sha256_of_file(partial)  # hashed as stored: what the registry records is what it holds
            blob = blobs / digest
            if blob.exists():
                partial.unlink()
            else:
                partial.chmod(0o444)  # a blob is never written again: in-place writes would reach every version
                os.replace(partial, blob)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        try:
            os.link(blob, target)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (another file system, a volume that refuses them): a copy of its own
            shutil.copyfile(blob, target)
        return digest

    def resolve(self, model: str, ref: str) -> ModelVersion:
        """A version number (`3`, `v3`) or an alias (`production`) to its ModelVersion."""
        number = self.aliases(model).get(ref)
        if number is None and ref.removeprefix("v").isdigit():
            number = int(ref.removeprefix("v"))
        path = self.root / model / f"v{number}" / "version.json"
        if number is None or not path.exists():
            known = [str(v.version) for v in self.versions(model)] + sorted(self.aliases(model))
            raise UnknownModelVersion(
                f"model {model!r} has no version or alias {ref!r} (known: {', '.join(known) or 'none'}); "
                f"build one with `aiaas models build {model}`"
            )
        return ModelVersion.model_validate_json(path.read_text())

    def load_verified(self, model: str, ref: str) -> tuple[ModelVersion, bytes]:
        """The version and its artifact bytes, after checking the sha256."""
        version = self.resolve(model, ref)
        return version, self.load_artifact(version)

    def load_artifact(self, version: ModelVersion) -> bytes:
        """The artifact of a resolved version, after checking its sha256."""
        return self._read_checked(version, version.artifact, version.sha256)

    def load_companions(self, version: ModelVersion) -> dict[str, bytes]:
        """The companion files of a version, each after checking its sha256."""
        return {name: self._read_checked(version, name, digest) for name, digest in version.files.items()}

    def load_companion(self, version: ModelVersion, name: str) -> bytes:
        """One companion file of a version, after checking its sha256 (KeyError: the version has no such file)."""
        return self._read_checked(version, name, version.files[name])

    def verified_folder(self, version: ModelVersion) -> Path:
        """The folder of a resolved version, after checking the sha256 of its artifact and every companion file
        (block by block: for weights too large to read whole). Readers load from it straight after; the registry
        directory is the operator's, as for every other read."""
        folder = self.root / version.model / f"v{version.version}"
        for name, digest in {version.artifact: version.sha256, **version.files}.items():
            if sha256_of_file(folder / name) != digest:
                raise ArtifactCorrupted(f"{version.model} v{version.version}: {name} sha256 does not match the "
                                        "registry record")
        return folder

    def _read_checked(self, version: ModelVersion, name: str, digest: str) -> bytes:
        data = (self.root / version.model / f"v{version.version}" / name).read_bytes()
        if sha256_of(data) != digest:
            raise ArtifactCorrupted(f"{version.model} v{version.version}: {name} sha256 does not match the "
                                    "registry record")
        return data
