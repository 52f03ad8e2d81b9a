"""LoRA adapter versions: a registry version that holds only an adapter and names the version it adapts.

A fine-tuning job registers `adapter_model.safetensors` and `adapter_config.json` (peft's files) with the param
`adapter_of` = the base version's number; the base weights are never copied. Serving an adapter version loads its
base version, then the adapter on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiaas.errors import ArtifactCorrupted
from aiaas.registry.store import ModelVersion, Registry

__all__ = ["ADAPTER_OF", "adapter_base", "base_of", "with_adapter"]

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


def with_adapter(model: Any, folder: Path) -> Any:
    """`model` with the adapter in `folder` merged into its weights (as fast as the base model to run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
