"""The quantized real default model (Gemma 3 270M): each mode's loss on ordinary text stays near the float
model's, with the method it says it used. The llm fixture is tests/conftest.py's."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import LONG_TEXT

import opengemma

pytestmark = pytest.mark.real_model


@pytest.mark.parametrize(
    "mode,method,max_increase",
    [("int8", "gptq", 0.02), ("int4", "rtn", 0.35), ("int4", "gptq", 0.15), ("gguf", "auto", 0.02)],
)
def test_quantized_real_model_quality(llm, mode, method, max_increase):
    """Loss of the quantized default model on ordinary text stays near the float model's."""
    ids = torch.tensor([llm.tokenizer.encode(LONG_TEXT)])
    q = opengemma.load("gemma-3-270m", quantize=mode, int4_method=method)
    want = {"int4": "gptq" if method == "gptq" else "rtn", "int8": "rtn", "gguf": "kept"}[mode]
    assert q.model.quantization.get("method") == want
    if mode in ("int4", "gguf"):  # the file's Q4_K matrices (18 o_proj, 9 down_proj) are kept as they are
        assert len(q.model.quantization["exact_int4"]) == 27
    with torch.no_grad():
        ref = F.cross_entropy(llm.model(ids)[0, :-1], ids[0, 1:]).item()
        got = F.cross_entropy(q.model(ids)[0, :-1].float(), ids[0, 1:]).item()
    print(f"\n{mode}: loss {got:.4f} vs float32 {ref:.4f} (perplexity x{math.exp(got - ref):.3f})")
    assert math.exp(got - ref) <= 1 + max_increase
    assert q.generate("The capital of France is", max_new_tokens=6).strip()
