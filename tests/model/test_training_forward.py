"""The no-cache training forward (SDPA, is_causal where the mask allows it; flex_attention for soft-capped scores on
GPU) equals the cached inference forward, and init_weights() draws what its docstring says."""

import math

import pytest
import torch
from helpers import random_tokens, tiny_model

from opengemma.config import GemmaConfig
from opengemma.model import Gemma
from opengemma.train.loss import chunked_cross_entropy

# every generation's switches; sliding windows of 8 against 24 tokens, so windows cut into the sequence
CONFIGS = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]


def cached_logits(model, tokens, chunk):
    """The inference path: KV cache, prefill in chunks (the ring buffers of the sliding layers wrap)."""
    B, T = tokens.shape
    model.setup_cache(B, T, prefill_chunk=chunk)
    out = [model(tokens[:, i : i + chunk], torch.arange(i, min(i + chunk, T))) for i in range(0, T, chunk)]
    model.clear_cache()
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_forward_equals_the_cached_inference_forward(name):
    model = tiny_model(name, std=0.05)
    tokens = random_tokens(model.config, 2, 24, seed=1)
    with torch.no_grad():
        want = cached_logits(model, tokens, chunk=5)
        got = model(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma3"])
def test_sdpa_training_path_gradients_equal_the_dense_path(monkeypatch, name):
    """Gradients through SDPA (is_causal / dense bool mask) equal those of the grouped-matmul path."""
    tokens = random_tokens(GemmaConfig.from_name(name), 2, 24, seed=2)
    grads = []
    for dense in (False, True):
        model = tiny_model(name, std=0.05).train()
        if dense:  # the soft-cap branch: a zero-effect huge cap sends every layer down the grouped-matmul path
            for layer in model.layers:
                layer.attn.softcap = 1e9
            monkeypatch.setattr(model.config, "attn_softcap", 1e9)
        h = model(tokens, hidden=True)
        loss = chunked_cross_entropy(h[:, :-1], model.embed.weight, tokens[:, 1:])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_flex_attention_path_equals_the_dense_path(name):
    """Soft-capped scores (Gemma 2), a window shorter than the documents and packed documents through flex_attention's
    score_mod and BlockMask (forward only: flex has no CPU backward in torch 2.13; on GPU it is the default)."""
    model = tiny_model(name, std=0.2)  # std large enough that the soft-cap of 50 bends scores
    cfg = model.config
    tokens = random_tokens(cfg, 2, 32, seed=3)
    segments = torch.tensor([[0] * 20 + [1] * 12, [0] * 5 + [1] * 27])
    with torch.no_grad():
        want = model(tokens, segments=segments)
        model.flex = True
        got = model(tokens, segments=segments)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_init_weights_statistics():
    torch.manual_seed(0)
    cfg = GemmaConfig.from_name("tiny-gemma3", d_model=256, d_ff=512, vocab_size=4096, n_layers=8)
    model = Gemma(cfg)
    model.init_weights()
    residual = 0.02 / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.count_nonzero(p) == 0, name  # (1 + w) = 1: the identity norm
            continue
        want = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        assert abs(p.mean().item()) < 4 * want / math.sqrt(p.numel()), name
        assert abs(p.std().item() / want - 1) < 0.05, (name, p.std().item(), want)
    # the first loss on random tokens is about ln(V): logits of std 0.02 sqrt(d) add ~var/2 nats
    tokens = random_tokens(cfg, 4, 64, seed=0)
    with torch.no_grad():
        h = model(tokens, hidden=True)
        loss = chunked_cross_entropy(h[:, :-1], model.embed.weight, tokens[:, 1:]).item()
    assert abs(loss - math.log(cfg.vocab_size)) < 0.05 + (0.02**2 * cfg.d_model) / 2, loss
