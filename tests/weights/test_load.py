"""opengemma.load and the loader's disk caches (opengemma/weights/store.py): a GGUF converted once, quantized
weights cached per setting, the int4 method's fallback without a tokenizer, clear errors for unknown names."""

import pytest
import torch
from helpers import random_tokens, tiny_model

import opengemma
from opengemma.weights.gguf import save_gguf
from opengemma.weights.hf import save_hf_dir


def test_load_gguf_path_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    model = tiny_model("tiny-gemma2", std=0.1)
    path = save_gguf(model, tmp_path / "m.gguf")
    with pytest.warns(UserWarning, match="no tokenizer"):
        a = opengemma.load(path)
    from opengemma.weights import store

    monkeypatch.setattr(store, "convert_gguf", lambda *a, **k: pytest.fail("converted twice"))
    with pytest.warns(UserWarning, match="no tokenizer"):
        b = opengemma.load(path)
    tok = random_tokens(model.config, 2, 24, seed=5)
    with torch.no_grad():
        assert torch.equal(a.model(tok), b.model(tok))


def test_unknown_model_names():
    with pytest.raises(ValueError, match="unknown model 'gemma-9000'"):
        opengemma.load("gemma-9000")
    with pytest.raises(ValueError, match="architecture preset without real weights"):
        opengemma.load("gemma-7b")


def test_load_with_quantize_caches_the_quantized_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    save_hf_dir(tiny_model("tiny-gemma3", std=0.1), tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="no tokenizer"):
        a = opengemma.load(tmp_path / "ckpt", quantize="int8")
    assert a.model.norm.weight.dtype == torch.bfloat16  # quantized models default to bf16 activations
    import opengemma.quantize as q

    monkeypatch.setattr(q, "quantize_model", lambda *a, **k: pytest.fail("quantized twice"))
    with pytest.warns(UserWarning, match="no tokenizer"):
        b = opengemma.load(tmp_path / "ckpt", quantize="int8")
    tok = torch.tensor([[2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(a.model(tok), b.model(tok))
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        opengemma.load(tmp_path / "ckpt", quantize="int3")


def test_int4_embedding_of_an_int8_model_has_its_own_group_size_and_method(tmp_path, monkeypatch):
    """An int4 output matrix under quantize="int8" is cached per group size (the cache once ignored it), and
    it is rounded by int4_method like every int4 matrix: GPTQ needs the tokenizer for its calibration text."""
    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    save_hf_dir(tiny_model("tiny-gemma3", std=0.1), tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="no tokenizer"):
        groups = [
            opengemma.load(
                tmp_path / "ckpt", quantize="int8", embedding_quantize="int4", group_size=g, int4_method="rtn"
            ).model.embed.table.group_size
            for g in (32, 64)
        ]
    assert groups == [32, 64]
    with pytest.warns(UserWarning, match="falls back to round-to-nearest"):
        opengemma.load(tmp_path / "ckpt", quantize="int8", embedding_quantize="int4+int8")


def test_int4_load_without_a_tokenizer_falls_back_to_round_to_nearest(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    save_hf_dir(tiny_model("tiny-gemma3", std=0.1), tmp_path / "ckpt")
    with pytest.warns(UserWarning, match="falls back to round-to-nearest"):
        llm = opengemma.load(tmp_path / "ckpt", quantize="int4")
    assert llm.model.quantization["method"] == "rtn"
    with pytest.raises(ValueError, match="unknown int4 method"):
        opengemma.load(tmp_path / "ckpt", quantize="int4", int4_method="awq")
