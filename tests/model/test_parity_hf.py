"""Parity with Hugging Face transformers on tiny random models of each generation."""

import pytest
import torch
from helpers import make_hf_model, random_tokens, tiny_model

import opengemma
from opengemma.config import GemmaConfig
from opengemma.weights.hf import load_hf_dir

TINY = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]
SEQ = 40  # longer than the tiny sliding window (8)


@pytest.fixture(scope="module", params=TINY)
def pair(request, tmp_path_factory):
    cfg = GemmaConfig.from_name(request.param)
    hf = make_hf_model(cfg)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return request.param, cfg, hf, d


def test_fp32_logits_match_transformers(pair):
    name, cfg, hf, d = pair
    with pytest.warns(UserWarning, match="no tokenizer"):
        llm = opengemma.load(d, dtype="float32", device="cpu")
    assert llm.config.family == cfg.family
    tok = random_tokens(cfg, 2, SEQ, seed=1)
    with torch.no_grad():
        ref = hf(tok).logits
        out = llm.model(tok)
    assert out.shape == ref.shape == (2, SEQ, cfg.vocab_size)
    diff = (out - ref).abs().max().item()
    print(f"{name}: fp32 max |diff| = {diff:.2e} (logit scale {ref.abs().max().item():.1f})")
    assert diff <= 1e-4
    assert ref.abs().max() > 1.0  # not a degenerate comparison (e.g. saturated soft-cap)


def test_bf16_logits_within_bf16_tolerance(pair):
    name, cfg, hf, d = pair
    tok = random_tokens(cfg, 2, SEQ, seed=1)
    with torch.no_grad():
        ref32 = hf(tok).logits
        hf16 = make_hf_model(cfg).to(torch.bfloat16)
        ref16 = hf16(tok).logits.float()
        out16 = load_hf_dir(d, dtype=torch.bfloat16)(tok).float()
    ours_err = (out16 - ref32).abs().max().item()
    hf_err = (ref16 - ref32).abs().max().item()
    vs_hf = (out16 - ref16).abs().max().item()
    print(f"{name}: bf16 max err vs fp32: ours {ours_err:.3f}, transformers {hf_err:.3f}; ours vs hf bf16 {vs_hf:.3f}")
    # as close to the exact answer as the reference is in the same precision
    assert ours_err <= 2 * hf_err + 0.02
    agree = (out16.argmax(-1) == ref32.argmax(-1)).float().mean().item()
    assert agree >= 0.9


@pytest.mark.parametrize(
    "field,value",
    [("query_pre_attn_scalar", 64.0), ("sliding_window", 9), ("rope_local_base", 1e6), ("norm_eps", 1e-2)],
)
def test_parity_check_catches_wrong_switches(tmp_path, field, value):
    """Negative control: the comparison above fails when one switch is wrong."""
    cfg = GemmaConfig.from_name("tiny-gemma3", rope_base=1e4)
    hf = make_hf_model(cfg)
    hf.save_pretrained(tmp_path)
    model = load_hf_dir(tmp_path)
    setattr(model.config, field, value)
    if field == "query_pre_attn_scalar":
        for layer in model.layers:
            layer.attn.scale = value**-0.5
    if field == "norm_eps":
        for m in model.modules():
            if hasattr(m, "eps"):
                m.eps = value
    model.init_rope()
    tok = random_tokens(cfg, 2, SEQ, seed=1)
    with torch.no_grad():
        diff = (model(tok) - hf(tok).logits).abs().max().item()
    assert diff > 1e-2


@pytest.mark.parametrize("name", TINY)
def test_cached_decode_equals_uncached(name):
    cfg = GemmaConfig.from_name(name)
    model = tiny_model(cfg.name, std=0.1)
    tok = random_tokens(cfg, 2, 30, seed=1)
    with torch.no_grad():
        full = model(tok)
        model.setup_cache(2, 32)
        prefill = 5
        parts = [model(tok[:, :prefill], torch.arange(prefill))]
        for t in range(prefill, 30):  # crosses the sliding window (8) several times
            parts.append(model(tok[:, t : t + 1], torch.tensor([t])))
        model.clear_cache()
    cached = torch.cat(parts, dim=1)
    assert (cached - full).abs().max().item() <= 1e-4
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_left_padded_rows_equal_unpadded(name):
    cfg = GemmaConfig.from_name(name)
    model = tiny_model(cfg.name, std=0.1)
    a = random_tokens(cfg, 1, 20, seed=2)
    b = random_tokens(cfg, 1, 13, seed=3)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 7, dtype=torch.long), b], dim=1)])
    with torch.no_grad():
        model.setup_cache(2, 20)
        out = model(batch, torch.arange(20), pad=torch.tensor([0, 7]))
        model.clear_cache()
        ra, rb = model(a), model(b)
    assert (out[0] - ra[0]).abs().max() <= 1e-4
    assert (out[1, 7:] - rb[0]).abs().max() <= 1e-4
