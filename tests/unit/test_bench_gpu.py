"""The GPU benchmark's capture-safe attention mask (bench/gpu.py) computes what transformers' own does."""

import torch
from transformers import BertConfig, BertModel, masking_utils

from bench.gpu import capture_safe_attention_masks


def test_the_capture_safe_eager_mask_gives_the_encoder_the_same_outputs(monkeypatch):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="eager")
    model = BertModel(config).eval()
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])  # ragged: padding must stay masked
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    monkeypatch.setattr(masking_utils.ALL_MASK_ATTENTION_FUNCTIONS, "_local_mapping", {})  # restored after the test
    capture_safe_attention_masks()
    assert masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["eager"] is not masking_utils.eager_mask
    with torch.inference_mode():
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(before, after)
