"""The exact scorer (engine.score, behind evaluation): shared-prefix batched log-likelihoods equal scoring each
request alone."""

import random

import pytest
import torch
from helpers import tiny_model

from opengemma.engine.score import Scorer


def reference_logprob(model, ctx, cont):
    """log p(cont | ctx) from one plain forward over ctx + cont, and whether it is the greedy path."""
    seq = torch.tensor([ctx + cont])
    with torch.no_grad():
        lsm = torch.log_softmax(model(seq)[0].double(), -1)  # (T, V)
    pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
    want = torch.tensor(cont)
    return float(lsm[pos, want].sum()), bool((lsm[pos].argmax(-1) == want).all())


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_batched_shared_prefix_scores_equal_scoring_alone(name):
    model = tiny_model(name, std=0.3)
    rng = random.Random(0)
    shots = [2] + [rng.randrange(3, 500) for _ in range(40)]  # a few-shot prefix shared by most requests
    pairs = []
    for q in range(7):
        question = [rng.randrange(3, 500) for _ in range(rng.randrange(3, 15))]
        for choice in ([11], [12], [13], [14], [rng.randrange(3, 500) for _ in range(5)]):
            pairs.append((shots + question, choice))  # one-token choices share a row; the long one has its own
    pairs.append(([2, 7], [8, 9]))  # no shared prefix at all
    pairs.append(([2] + [rng.randrange(3, 500) for _ in range(70)], [5]))  # longer than the sliding window
    # the greedy continuation of a context, so that is_greedy is exercised as True
    ctx = shots[:10]
    with torch.no_grad():
        g = int(model(torch.tensor([ctx]))[0, -1].argmax())
    pairs.append((ctx, [g]))
    scorer = Scorer(model, batch_size=4, max_len=128, chunk=16, progress=False)
    got = scorer.loglikelihood_tokens(pairs)
    for (ctx, cont), (lp, greedy, n) in zip(pairs, got):
        ref, ref_greedy = reference_logprob(model, ctx, cont)
        assert n == len(cont)
        assert lp == pytest.approx(ref, abs=1e-3)
        assert greedy == ref_greedy
    assert got[-1][1] is True


def test_rolling_loglikelihood_windows():
    model = tiny_model("tiny-gemma3", std=0.3)
    rng = random.Random(1)
    short = [2] + [rng.randrange(3, 500) for _ in range(30)]
    long = [2] + [rng.randrange(3, 500) for _ in range(100)]
    scorer = Scorer(model, max_len=48, chunk=16, progress=False)
    (lp_short, n_short), (lp_long, n_long) = scorer.rolling_tokens([short, long], stride=20)
    # fits one window: the plain log-likelihood of the whole sequence
    assert n_short == 30 and lp_short == pytest.approx(reference_logprob(model, short[:1], short[1:])[0], abs=1e-3)
    # windows of 48: the first predicts tokens 1..47, then 20 more each with the 28 tokens before as context
    expect, start = 0.0, 1
    while start < len(long):
        end = min(len(long), start + (47 if start == 1 else 20))
        s = max(0, end - 48)
        expect += reference_logprob(model, long[s:start], long[start:end])[0]
        start = end
    assert n_long == 100 and lp_long == pytest.approx(expect, abs=1e-3)


def test_bad_requests():
    scorer = Scorer(tiny_model("tiny-gemma", std=0.1), max_len=32, progress=False)
    with pytest.raises(ValueError, match="empty continuation"):
        scorer.loglikelihood_tokens([([2, 5], [])])
    with pytest.raises(ValueError, match="does not fit"):
        scorer.loglikelihood_tokens([([2], list(range(3, 40)))])


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_forked_contexts_equal_scoring_alone(name, monkeypatch):
    """Items with several multi-token choices and nothing shared between items: each context is computed
    once, left-padded, and its cache rows forked into one row per choice."""
    model = tiny_model(name, std=0.3)
    rng = random.Random(5)
    pairs = []
    for q in range(6):
        ctx = [2] + [rng.randrange(3, 500) for _ in range(rng.choice([3, 12, 40, 75]))]  # 75 > sliding window
        for _ in range(3):
            pairs.append((ctx, [rng.randrange(3, 500) for _ in range(rng.randrange(2, 6))]))
    forks = []
    orig = type(model).select_cache_rows
    monkeypatch.setattr(type(model), "select_cache_rows", lambda self, idx: forks.append(len(idx)) or orig(self, idx))
    got = Scorer(model, batch_size=7, max_len=128, chunk=16, progress=False).loglikelihood_tokens(pairs)
    assert forks, "the fork plan was not used"
    for (ctx, cont), (lp, greedy, _) in zip(pairs, got):
        ref, ref_greedy = reference_logprob(model, ctx, cont)
        assert lp == pytest.approx(ref, abs=1e-3) and greedy == ref_greedy
