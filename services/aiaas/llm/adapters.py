"""LoRA adapter versions: a registry version that holds only an adapter and names the version it adapts.

A fine-tuning job registers `adapter_model.safetensors` and `adapter_config.json` (peft's files) with the param
`adapter_of` = the base version's number; the base weights are never copied. Serving an adapter version loads its
base version's runtime, then the adapter into it (`runtime.py`).
"""

from __future__ import annotations

from aiaas.errors import ArtifactCorrupted
from aiaas.registry.store import ModelVersion, Registry

__all__ = ["ADAPTER_OF", "adapter_base", "base_of"]

ADAPTER_OF = "adapter_of"
"""The param of an adapter version that names its base version (a number)."""


def adapter_base(version: ModelVersion) -> int | None:
    """The base version an adapter version adapts; None for a full model."""
    base = version.params.get(ADAPTER_OF)
    return int(base) if isinstance(base, (int, str)) and str(base).isdigit() else None


def base_of(registry: Registry, version: ModelVersion) -> ModelVersion:
    """The full model under `version`: itself, or the base an adapter version names (adapters do not stack)."""
    base = adapter_base(version)
    if base is None:
        return version
    found = registry.resolve(version.model, str(base))
    if adapter_base(found) is not None:
        raise ArtifactCorrupted(f"{version.model} v{version.version} adapts v{base}, itself an adapter")
    return found
