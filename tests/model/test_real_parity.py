"""The real default model (Gemma 3 270M, pretrained, Q4_K_M GGUF from PyPI) against transformers: its config and
parameter count, teacher-forced logits equal to transformers' (past the sliding window too). The llm and
hf_model fixtures are tests/conftest.py's."""

import pytest
import torch
import torch.nn.functional as F
from helpers import LONG_TEXT, PARAGRAPH

pytestmark = pytest.mark.real_model


def test_default_model_config(llm):
    c = llm.config
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size) == (
        640,
        18,
        4,
        1,
        256,
        2048,
        262144,
    )
    assert sum(p.numel() for p in llm.model.parameters()) == 268_098_176
    assert not llm.instruction_tuned


@pytest.mark.parametrize("text", [PARAGRAPH, LONG_TEXT], ids=["paragraph", "long>window"])
def test_teacher_forced_logits_match_transformers(llm, hf_model, text):
    ids = torch.tensor([llm.tokenizer.encode(text)])
    if text is LONG_TEXT:
        assert ids.shape[1] > llm.config.sliding_window + 256  # exercises the sliding-window layers
    with torch.no_grad():
        ref = hf_model(ids).logits
        ours = llm.model(ids)
    diff = (ours - ref).abs().max().item()
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    loss = F.cross_entropy(ours[0, :-1], ids[0, 1:]).item()
    print(f"\n{ids.shape[1]} tokens: max |logit diff| {diff:.2e}, argmax agreement {agree:.4f}, loss {loss:.3f}")
    assert diff <= 1e-3 and agree == 1.0
    # a wrong RoPE layout, a doubled +1 or a wrong local base push this to 4.3-19 nats (ASSETS.md)
    assert loss < 3.0
