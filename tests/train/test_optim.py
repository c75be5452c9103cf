"""Learning-rate schedules against hand-worked values, and AdamW's decay / no-decay groups on a tiny Gemma."""

import math

import pytest
import torch
from helpers import tiny_model

from opengemma.train.optim import build_optimizer, lr_at, param_groups, set_lr


def test_warmup_then_cosine_hand_worked():
    kw = dict(lr=1.0, steps=10, warmup=2, schedule="cosine", min_ratio=0.1)
    assert [lr_at(s, **kw) for s in (0, 1)] == [0.5, 1.0]  # (step + 1) / warmup
    assert lr_at(2, **kw) == 1.0  # p = 0
    assert lr_at(6, **kw) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)  # p = 4/8: 0.55
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 7 / 8)) / 2)
    assert lr_at(10, **kw) == pytest.approx(0.1) and lr_at(50, **kw) == pytest.approx(0.1)  # past the end: floor


def test_wsd_holds_then_decays_linearly_over_the_last_fraction():
    kw = dict(lr=2.0, steps=10, warmup=1, schedule="wsd", min_ratio=0.0, decay=0.2)
    got = [lr_at(s, **kw) for s in range(10)]
    assert got == [2.0] * 8 + [1.0, 0.0]  # steps 8 and 9 decay: 2 + (0 - 2) * 1/2, * 2/2
    assert [lr_at(s, lr=1.0, steps=4, warmup=4, schedule="constant") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, lr=1.0, steps=10, schedule="linear")
    with pytest.raises(ValueError, match="warmup"):
        lr_at(0, lr=1.0, steps=10, warmup=11)


def test_matrices_decay_vectors_do_not_and_each_parameter_is_in_one_group():
    model = tiny_model("tiny-gemma3", std=0.02)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    in_decay = {id(p) for p in decay["params"]}
    assert all((id(p) in in_decay) == (p.dim() >= 2) for p in named.values())
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)  # the tied matrix once
    assert any("norm" in n for n, p in named.items() if id(p) not in in_decay)


def test_adamw_step_matches_the_formula_with_and_without_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))  # weight decays, bias does not
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5, betas=(0.9, 0.95), eps=1e-8)
    model[0].weight.grad, model[0].bias.grad = torch.ones(2, 3), torch.full((2,), 2.0)
    set_lr(opt, 0.01)
    opt.step()
    # first AdamW step: p -= lr * wd * p, then p -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat = g, v_hat = g^2
    step = 0.01 * 1.0 / (1.0 + 1e-8)
    torch.testing.assert_close(model[0].weight.detach(), w0 * (1 - 0.01 * 0.5) - step)
    torch.testing.assert_close(model[0].bias.detach(), b0 - 0.01 * 2.0 / (2.0 + 1e-8))
