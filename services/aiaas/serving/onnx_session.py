"""ONNX Runtime sessions for every model type: CUDA execution provider when present, CPU otherwise."""

from __future__ import annotations

import onnxruntime as ort

__all__ = ["choose_providers", "open_session"]


def choose_providers(preference: str = "auto") -> list[str]:
    """CUDA first when the installed ONNX Runtime has it (and it is not switched off), CPU always."""
    available = ort.get_available_providers()
    if preference != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preference == "cuda":
        raise RuntimeError("CUDA was requested but this ONNX Runtime has no CUDAExecutionProvider "
                           "(pip install aiaas[gpu])")
    return ["CPUExecutionProvider"]


def open_session(onnx_bytes: bytes, providers: str = "auto", intra_op_threads: int = 0, *,
                 warnings: bool = True) -> ort.InferenceSession:
    """A session over verified model bytes; `intra_op_threads` 0 keeps ONNX Runtime's default. `warnings=False`:
    ONNX Runtime logs errors only (for a graph whose design it warns about at every load)."""
    options = ort.SessionOptions()
    if not warnings:
        options.log_severity_level = 3  # 0 verbose … 2 warning (ONNX Runtime's default), 3 error
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(onnx_bytes, options, providers=choose_providers(providers))
