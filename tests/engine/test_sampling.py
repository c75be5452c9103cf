"""Sampling (engine/sampling.py): greedy and degenerate filters, the sampled distribution, top-k / top-p, mixed rows."""

import pytest
import torch

from opengemma.engine.sampling import sample


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


def test_unfiltered_sampling_skips_the_sort_and_matches_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -9.0]])
    n = 20000
    draws = sample(logits.expand(n, 5), rows(n, 0.7), rows(n, 0, torch.long), rows(n, 1.0), uniform(n, 1), max_k=0)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert (freq - (logits[0] / 0.7).softmax(-1)).abs().max() < 0.015
    # greedy rows stay greedy; the inverse CDF runs in vocabulary order: u just under a boundary picks its token
    mixed = sample(logits.expand(2, 5), torch.tensor([0.0, 1.0]), rows(2, 0, torch.long), rows(2, 1.0),
                   torch.tensor([0.9, 0.0]), max_k=0)  # fmt: skip
    assert mixed.tolist() == [0, 0]
    big = torch.randn(3, 262144)
    u = uniform(3, 5)
    cdf = big.softmax(-1).cumsum(-1)
    expect = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1)
    assert torch.equal(sample(big, rows(3, 1.0), rows(3, 0, torch.long), rows(3, 1.0), u, max_k=0), expect)


def test_mixed_rows_in_one_batch():
    logits = torch.randn(3, 50)
    out = sample(
        logits, torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0, 0, 0]), torch.tensor([1.0, 1.0, 1.0]), uniform(3)
    )
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()
