"""Sampling and the generation loop on tiny random models (token ids; text is tested with the real model)."""
import pytest
import torch

from opengemma.config import GemmaConfig
from opengemma.engine.generate import PromptTooLongError, generate
from opengemma.engine.sampling import sample
from helpers import tiny_model


def tiny(name="tiny-gemma3", **kw):
    return tiny_model(name, std=0.3, **kw)


def rows(B, v, dtype=torch.float32):
    return torch.full((B,), v, dtype=dtype)


def uniform(n, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def test_greedy_and_degenerate_filters_pick_argmax():
    logits = torch.randn(4, 1000)
    am = logits.argmax(-1)
    assert torch.equal(sample(logits, rows(4, 0.0), rows(4, 0, torch.long), rows(4, 1.0), uniform(4)), am)
    assert torch.equal(sample(logits, rows(4, 1.0), rows(4, 1, torch.long), rows(4, 1.0), uniform(4)), am)  # top-k 1
    assert torch.equal(sample(logits, rows(4, 1.0), rows(4, 0, torch.long), rows(4, 1e-6), uniform(4)), am)  # top-p ~0
    assert torch.equal(sample(logits, rows(4, 1.0), rows(4, 1, torch.long), rows(4, 1.0), uniform(4), max_k=1), am)


@pytest.mark.parametrize("max_k", [None, 5])
def test_sampling_matches_the_distribution(max_k):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -9.0]])
    n = 20000
    k0 = rows(n, 0 if max_k is None else 5, torch.long)
    draws = sample(logits.expand(n, 5), rows(n, 0.7), k0, rows(n, 1.0), uniform(n, 1), max_k)
    freq = torch.bincount(draws, minlength=5).float() / n
    expect = (logits[0] / 0.7).softmax(-1)
    assert (freq - expect).abs().max() < 0.015
    # top-k 2 renormalizes over the two best
    draws = sample(logits.expand(n, 5), rows(n, 1.0), rows(n, 2, torch.long), rows(n, 1.0), uniform(n, 2), max_k)
    assert set(draws.tolist()) == {0, 1}
    # top-p 0.8 keeps the smallest head reaching 0.8: p = 0.64, 0.23, 0.09, ...
    p = logits[0].softmax(-1)
    draws = sample(logits.expand(n, 5), rows(n, 1.0), k0, rows(n, 0.8), uniform(n, 3), max_k)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean() - p[0] / (p[0] + p[1])) < 0.015
    # top-p applies to what top-k kept (transformers' order): top-k 3 then top-p 0.7 of {0.67, 0.24, 0.09}
    draws = sample(logits.expand(n, 5), rows(n, 1.0), rows(n, 3, torch.long), rows(n, 0.7), uniform(n, 4), max_k)
    assert set(draws.tolist()) == {0, 1}


def test_mixed_rows_in_one_batch():
    logits = torch.randn(3, 50)
    out = sample(logits, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([1.0, 1.0, 1.0]),
                 uniform(3))
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_greedy_generate_equals_uncached_argmax_loop():
    model = tiny()
    prompt = [2, 5, 17, 99, 3]
    out = generate(model, [prompt], max_new_tokens=20)[0]  # crosses the sliding window (8)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out.tokens == seq[len(prompt):] and out.finish_reason == "length"


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_ragged_batch_equals_one_at_a_time(name):
    model = tiny(name)
    prompts = [[2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [2, 40], [2, 300, 301, 302, 303]]
    batch = generate(model, prompts, max_new_tokens=15)
    for p, b in zip(prompts, batch):
        assert generate(model, [p], max_new_tokens=15)[0].tokens == b.tokens


def test_seeded_sampling_is_reproducible():
    model = tiny()
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    a = generate(model, [[2, 5, 6]], seed=3, **kw)[0].tokens
    assert a == generate(model, [[2, 5, 6]], seed=3, **kw)[0].tokens
    assert any(generate(model, [[2, 5, 6]], seed=s, **kw)[0].tokens != a for s in range(4, 8))


def test_stop_ids_and_on_token_stop_each_row_alone():
    model = tiny()
    free = generate(model, [[2, 5, 6], [2, 9]], max_new_tokens=10)
    stop_tok = free[0].tokens[3]
    out = generate(model, [[2, 5, 6], [2, 9]], max_new_tokens=10, stop_ids=[stop_tok])
    k = free[0].tokens.index(stop_tok)
    assert out[0].tokens == free[0].tokens[:k] and out[0].finish_reason == "stop" and out[0].stop_token == stop_tok
    if stop_tok not in free[1].tokens:
        assert out[1].tokens == free[1].tokens and out[1].finish_reason == "length"
    seen = []
    out = generate(model, [[2, 5, 6]], max_new_tokens=10, on_token=lambda b, t: seen.append(t) or len(seen) == 4)
    assert out[0].tokens == seen == free[0].tokens[:4] and out[0].finish_reason == "stop"


def test_prompt_longer_than_context_is_a_clear_error():
    model = tiny(max_seq_len=32)
    with pytest.raises(PromptTooLongError, match="prompt has 40 tokens; the model's context is 32"):
        generate(model, [[2] * 40], max_new_tokens=4)
    # room is clamped to the context
    out = generate(model, [[2] * 28], max_new_tokens=100)[0]
    assert len(out.tokens) <= 4
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]])
