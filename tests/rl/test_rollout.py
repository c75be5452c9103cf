"""Rollouts through the engine: each row equals a cache-free sampling loop drawing from the same per-row generator;
a row's sample does not depend on the other rows; rows stop at a stop id; the compiled decode step follows weights
updated in place (an optimizer step between two rollouts)."""

import pytest
import torch
from helpers import tiny_model

from opengemma.engine.sampling import sample
from opengemma.rl.rollout import rollouts


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-gemma3", std=0.3).eval()


PROMPTS = [[2, 10, 11, 12], [2, 20, 21], [2, 30, 31, 32, 33, 34]]


def reference(model, prompt, n, seed, stop=()):
    """Sampling without a cache: a full forward over prompt + what was drawn, the same draws as a rollout row."""
    g = torch.Generator().manual_seed(seed)
    one = lambda v, dt: torch.tensor([v], dtype=dt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([prompt + out]))[:, -1]
            u = torch.rand(1, generator=g)
            t = int(sample(logits, one(1.0, torch.float32), one(0, torch.long), one(1.0, torch.float32), u, max_k=0)[0])
            out.append(t)
            if t in stop:
                break
    return out


def test_each_row_is_the_cache_free_sampler_with_its_own_seed(model):
    seeds = list(range(100, 106))
    rs = rollouts(model, PROMPTS, k=2, max_new_tokens=10, seeds=seeds, stop_ids=[])
    assert [r.prompt for r in rs] == [0, 0, 1, 1, 2, 2]
    assert all(len(r.tokens) == 10 and not r.finished for r in rs)
    for r, s in zip(rs, seeds):
        assert r.tokens == reference(model, PROMPTS[r.prompt], 10, s)
    assert rs[0].tokens != rs[1].tokens  # two samples of one prompt differ
    # a row's sample is its own: the same seed alone, in another batch, gives the same tokens
    alone = rollouts(model, [PROMPTS[2]], k=1, max_new_tokens=10, seeds=[105], stop_ids=[])
    assert alone[0].tokens == rs[5].tokens


def test_rows_stop_at_a_stop_id_and_keep_it(model):
    rs = rollouts(
        model,
        PROMPTS,
        k=4,
        max_new_tokens=40,
        seeds=list(range(12)),
        stop_ids=list(range(0, model.config.vocab_size, 3)),
    )
    assert any(r.finished for r in rs) and not all(r.finished for r in rs)
    assert len({len(r.tokens) for r in rs}) > 2  # rows stop at different steps: finished rows leave the batch
    stop = set(range(0, model.config.vocab_size, 3))
    for r, s in zip(rs, range(12)):  # and the rows still decoding are unchanged by that
        assert r.tokens == reference(model, PROMPTS[r.prompt], 40, s, stop)
        if r.finished:
            assert r.tokens[-1] % 3 == 0 and all(t % 3 for t in r.tokens[:-1])
        else:
            assert len(r.tokens) == 40
    with pytest.raises(ValueError, match="one seed per rollout"):
        rollouts(model, PROMPTS, k=2, max_new_tokens=4, seeds=[1, 2], stop_ids=[])


def test_the_compiled_step_follows_weights_updated_in_place():
    model = tiny_model("tiny-gemma3", std=0.3).eval()
    kw = dict(k=2, max_new_tokens=6, seeds=[1, 2, 3, 4, 5, 6], stop_ids=[])
    compiled = rollouts(model, PROMPTS, compile=True, **kw)
    assert [r.tokens for r in compiled] == [r.tokens for r in rollouts(model, PROMPTS, **kw)]
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    loss = model(torch.tensor([PROMPTS[0]])).logsumexp(-1).sum()
    loss.backward()
    opt.step()  # in place, as the RLHF loop updates the policy between rollouts
    after = rollouts(model, PROMPTS, compile=True, **kw)
    eager = rollouts(model, PROMPTS, **kw)
    assert [r.tokens for r in after] == [r.tokens for r in eager]
    assert [r.tokens for r in after] != [r.tokens for r in compiled]
