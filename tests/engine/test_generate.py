"""generate()'s behaviour on tiny random models (token ids; text is tested with the real model): greedy equals
the uncached argmax loop, ragged batches equal one prompt at a time, seeded sampling, stops, limits."""

import pytest
import torch
from helpers import tiny_model

from opengemma.engine.generate import PromptTooLongError, generate


def test_greedy_generate_equals_uncached_argmax_loop():
    model = tiny_model("tiny-gemma3", std=0.3)
    prompt = [2, 5, 17, 99, 3]
    out = generate(model, [prompt], max_new_tokens=20)[0]  # crosses the sliding window (8)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out.tokens == seq[len(prompt) :] and out.finish_reason == "length"


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_ragged_batch_equals_one_at_a_time(name):
    model = tiny_model(name, std=0.3)
    prompts = [[2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [2, 40], [2, 300, 301, 302, 303]]
    batch = generate(model, prompts, max_new_tokens=15)
    for p, b in zip(prompts, batch):
        assert generate(model, [p], max_new_tokens=15)[0].tokens == b.tokens


def test_seeded_sampling_is_reproducible():
    model = tiny_model("tiny-gemma3", std=0.3)
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95)
    a = generate(model, [[2, 5, 6]], seed=3, **kw)[0].tokens
    assert a == generate(model, [[2, 5, 6]], seed=3, **kw)[0].tokens
    assert any(generate(model, [[2, 5, 6]], seed=s, **kw)[0].tokens != a for s in range(4, 8))


def test_stop_ids_and_on_token_stop_each_row_alone():
    model = tiny_model("tiny-gemma3", std=0.3)
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
    model = tiny_model("tiny-gemma3", std=0.3, max_seq_len=32)
    with pytest.raises(PromptTooLongError, match="prompt has 40 tokens; the model's context is 32"):
        generate(model, [[2] * 40], max_new_tokens=4)
    # room is clamped to the context
    out = generate(model, [[2] * 28], max_new_tokens=100)[0]
    assert len(out.tokens) <= 4
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]])


def test_sync_every_does_not_change_results():
    model = tiny_model("tiny-gemma3", std=0.3)
    prompts = [list(range(2, 12)), [2, 3]]
    a = generate(model, prompts, max_new_tokens=20, sync_every=1, stop_ids=[7, 8, 9])
    b = generate(model, prompts, max_new_tokens=20, sync_every=6, stop_ids=[7, 8, 9])
    assert [(o.tokens, o.finish_reason) for o in a] == [(o.tokens, o.finish_reason) for o in b]
