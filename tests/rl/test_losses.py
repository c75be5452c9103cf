"""rl/losses.py against values worked out by hand (the numbers in the comments), their gradients included."""

import math

import pytest
import torch

from opengemma.rl import losses as L

t = lambda *v: torch.tensor(v, dtype=torch.float32)
sig = lambda x: 1 / (1 + math.exp(-x))


def test_bradley_terry_values_gradients_and_margin():
    rc = t(2.0, 0.0).requires_grad_()
    loss = L.bradley_terry_loss(rc, t(0.0, 0.0))
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928, -log sigmoid(0) = log 2
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    # d/dr_c -log sigmoid(d) = -sigmoid(-d), over the mean of 2
    assert rc.grad.tolist() == pytest.approx([-sig(-2) / 2, -0.25], rel=1e-6)
    with_margin = L.bradley_terry_loss(t(2.0, 0.0), t(0.0, 0.0), margin=t(1.0, 1.0))
    assert with_margin.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2, rel=1e-6)
    far = t(-200.0).requires_grad_()  # log(sigmoid(-200)) is -inf in float32; logsigmoid is 200
    loss = L.bradley_terry_loss(far, t(0.0))
    loss.backward()
    assert loss.item() == pytest.approx(200.0) and far.grad.item() == pytest.approx(-1.0)


def test_dpo_sigmoid_conservative_and_ipo():
    pc = t(-5.0).requires_grad_()
    args = (pc, t(-7.0), t(-6.0), t(-6.0))  # chosen ratio +1, rejected ratio -1: h = 2
    loss, rw_c, rw_r = L.dpo_loss(*args, beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-6)  # -log sigmoid(0.2) = 0.598139
    assert (rw_c.item(), rw_r.item()) == pytest.approx((0.1, -0.1))
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 * sig(-0.2), rel=1e-6)  # -beta sigmoid(-beta h)
    cons, _, _ = L.dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    assert cons.item() == pytest.approx(0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2)), rel=1e-6)
    ipo, _, _ = L.dpo_loss(*args, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx((2 - 1 / 0.2) ** 2)  # (h - 1/(2 tau))^2 = 9
    # equal policy and reference: h = 0, loss log 2, rewards 0
    same, a, b = L.dpo_loss(t(-3.0, -4.0), t(-5.0, -1.0), t(-3.0, -4.0), t(-5.0, -1.0))
    assert same.item() == pytest.approx(math.log(2)) and a.abs().max() == 0 and b.abs().max() == 0
    for bad in (
        dict(beta=0.0),
        dict(loss_type="hinge"),
        dict(label_smoothing=0.5),
        dict(loss_type="ipo", label_smoothing=0.1),
    ):
        with pytest.raises(ValueError):
            L.dpo_loss(*args, **bad)


def test_rloo_advantages_leave_one_out():
    a = L.rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 6.0, 3.0], [3.0, 3.0, 3.0, 3.0]]))
    # r_i - mean of the other three
    assert a[0].tolist() == pytest.approx([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    assert a[1].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 6 - 2, 3 - 3])
    assert a[2].tolist() == [0.0] * 4  # a group that agrees teaches nothing
    assert a.sum(dim=1).abs().max() < 1e-6
    with pytest.raises(ValueError, match="samples >= 2"):
        L.rloo_advantages(torch.ones(3, 1))


def test_kl_estimators_hand_worked_and_exact_in_expectation():
    logp, ref = torch.log(t(0.5)), torch.log(t(0.25))  # l = log 2
    assert L.kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    assert L.kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))  # exp(-l) - 1 + l = 0.193147
    # both unbiased: their expectation under pi over the whole support is KL(pi || ref)
    pi, rf = t(0.5, 0.3, 0.2), t(0.2, 0.5, 0.3)
    kl = (pi * (pi / rf).log()).sum().item()
    for est in (L.kl_k1, L.kl_k3):
        assert (pi * est(pi.log(), rf.log())).sum().item() == pytest.approx(kl, rel=1e-5)
    assert (L.kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()  # k3 never negative; k1 can be
    same = torch.randn(50)
    assert L.kl_k1(same, same).abs().max() == 0 and L.kl_k3(same, same).abs().max() == 0
    tiny = L.kl_k3(t(0.0), t(-1e-5)).item()  # l = 1e-5: k3 = l^2 / 2 - l^3 / 6 + ... = 5e-11
    assert tiny == pytest.approx(5e-11, rel=1e-3)


def test_kl_penalized_rewards_and_reinforce_gradient():
    kl_tok = t(0.1, 0.2, 5.0, 0.3, 0.4, 0.5).reshape(2, 3).requires_grad_()
    mask = t(1, 1, 0, 1, 1, 1).reshape(2, 3)  # the 5.0 is padding
    shaped, kl = L.kl_penalized_rewards(t(1.0, 0.0), kl_tok, mask, beta=0.5)
    assert kl.tolist() == pytest.approx([0.3, 1.2]) and shaped.tolist() == pytest.approx([1 - 0.15, -0.6])
    assert not shaped.requires_grad  # the penalty shapes the reward: no gradient through it
    logp = t(-1.0, -2.0, -3.0, -0.5, -0.5, -0.5).reshape(2, 3).requires_grad_()
    adv = t(2.0, -1.0)
    loss = L.reinforce_loss(logp, mask, adv)
    assert loss.item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -1.5) / 2)
    loss.backward()
    # d/d logp_it = -A_i mask_it / N
    assert logp.grad.tolist() == [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]


def test_entropy_and_whiten():
    assert L.entropy(torch.zeros(3, 4)).tolist() == pytest.approx([math.log(4)] * 3)
    assert L.entropy(t(0.0, math.log(3.0))).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert L.entropy(t(100.0, 0.0, 0.0)).item() == pytest.approx(0.0, abs=1e-6)
    w = L.whiten(t(1.0, 2.0, 3.0, 4.0))
    assert w.mean().abs() < 1e-6 and w.std().item() == pytest.approx(1.0, rel=1e-6)
    assert L.whiten(t(7.0)).tolist() == [0.0]


def test_adaptive_kl_controller():
    c = L.AdaptiveKL(0.1, target=6.0, horizon=10_000)
    assert c.update(kl=12.0, n=100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))  # error clipped at +0.2
    c = L.AdaptiveKL(0.1, target=6.0)
    assert c.update(kl=6.6, n=100) == pytest.approx(0.1 * (1 + 0.1 * 0.01))
    assert c.update(kl=0.0, n=100) == pytest.approx(0.1 * 1.001 * (1 - 0.2 * 0.01))
    fixed = L.AdaptiveKL(0.05)
    assert fixed.update(kl=100.0, n=100) == 0.05
    restored = L.AdaptiveKL(1.0)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()
    with pytest.raises(ValueError):
        L.AdaptiveKL(-1.0)
