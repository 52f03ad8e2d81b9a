"""The embedded model registry: versioned, sha256-verified artifacts and aliases in a directory.

Layout: `<root>/<model>/v<N>/<artifact>` + `version.json`, and `<root>/<model>/aliases.json`.
Versions are monotonic per model type; services load only artifacts whose sha256 matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import UnknownModelVersion

__all__ = ["Registry", "ModelVersion", "sha256_of", "ArtifactCorrupted"]


class ArtifactCorrupted(Exception):
    """The artifact's bytes do not match the sha256 recorded when it was registered."""


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
    params: dict[str, object] = Field(default_factory=dict, description="Hyper-parameters of training.")
    data_hash: str | None = Field(None, description="sha256 of the training data.")
    parent: int | None = Field(None, description="Version this one was fine-tuned from.")
    job_id: str | None = Field(None, description="Training job that created it.")
    created_at: float = Field(default_factory=time.time, description="Unix seconds.")


def sha256_of(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Registry:
    """A registry rooted at one directory (shared volume in a deployment)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[str]:
        """Model types with at least one version."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []

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

    def set_alias(self, model: str, alias: str, version: int) -> None:
        """Point `alias` at `version` (atomic)."""
        self.resolve(model, str(version))
        aliases = self.aliases(model) | {alias: version}
        _write_atomic(self.root / model / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True))

    def register(
        self, model: str, artifact: Path, *, aliases: tuple[str, ...] = ("production",),
        companions: tuple[Path, ...] = (), **meta: object,
    ) -> ModelVersion:
        """Copy `artifact` (and `companions`) in as the next version, record sha256s and metadata, move `aliases`."""
        data = artifact.read_bytes()
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        number = max((v.version for v in self.versions(model)), default=0) + 1
        while True:  # mkdir is the lock: two trainers never get the same number
            try:
                (folder / f"v{number}").mkdir()
                break
            except FileExistsError:
                number += 1
        shutil.copyfile(artifact, folder / f"v{number}" / artifact.name)
        files = {}
        for companion in companions:
            shutil.copyfile(companion, folder / f"v{number}" / companion.name)
            files[companion.name] = sha256_of(companion.read_bytes())
        version = ModelVersion(
            model=model, version=number, artifact=artifact.name, sha256=sha256_of(data), files=files, **meta
        )
        _write_atomic(folder / f"v{number}" / "version.json", version.model_dump_json(indent=2))
        for alias in aliases:
            self.set_alias(model, alias, number)
        return version

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
        return version, self._read_checked(version, version.artifact, version.sha256)

    def load_companions(self, version: ModelVersion) -> dict[str, bytes]:
        """The companion files of a version, each after checking its sha256."""
        return {name: self._read_checked(version, name, digest) for name, digest in version.files.items()}

    def _read_checked(self, version: ModelVersion, name: str, digest: str) -> bytes:
        data = (self.root / version.model / f"v{version.version}" / name).read_bytes()
        if sha256_of(data) != digest:
            raise ArtifactCorrupted(f"{version.model} v{version.version}: {name} sha256 does not match the registry record")
        return data
