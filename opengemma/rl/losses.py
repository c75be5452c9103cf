"""The preference and policy-gradient losses, as pure tensor functions (no model, no module state).

Notation: a sequence's log-probability log pi(y|x) is the sum of its completion tokens' log-probabilities
(train.loss.token_logprobs, summed under the completion mask); "ref" is the frozen reference (the SFT model).

- Bradley-Terry reward loss (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1; TRL RewardTrainer):
      L = mean( -log sigmoid(r_chosen - r_rejected - margin) )
- DPO (Rafailov et al. 2023, eq. 7), with h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):
      sigmoid:  L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps: conservative DPO's label
                smoothing, Mitchell 2023; 0 is plain DPO)
      ipo:      L = (h - 1 / (2 tau))^2                                       (Azar et al. 2023, eq. 17; tau = beta)
  implicit rewards: beta (log pi(y) - log ref(y)) for the chosen and the rejected answer.
- RLOO advantages (Kool et al. 2019; Ahmadian et al. 2024): k samples per prompt, each baselined by the mean
  reward of the other k - 1:   A_i = r_i - 1/(k-1) sum_{j != i} r_j = k/(k-1) (r_i - mean_j r_j).
- Per-token KL estimators of KL(pi || ref) on tokens sampled from pi (Schulman 2020, "Approximating KL
  divergence"), with log ratio l = log pi(t) - log ref(t):
      k1 = l                      unbiased, high variance, can be negative per token
      k3 = exp(-l) - 1 + l        unbiased, always >= 0, lower variance (GRPO's per-token KL)
- REINFORCE with a KL penalty (the paper's RLHF: "a variant of REINFORCE with a KL regularization term towards
  the initially tuned model"; Ziegler et al. 2019 fold the penalty into the reward):
      R_i = r_i - beta * sum_t k1_it                 (the shaped reward; the KL term carries no gradient)
      L   = -1/N sum_i A_i sum_t log pi(t_it)        (A: RLOO advantages of R; a sequence-level sum, not a
                                                      per-token mean: length normalization biases the gradient
                                                      towards long answers, Liu et al. 2025, "Dr. GRPO")
- The adaptive KL coefficient (Ziegler et al. 2019, section 2.2): e = clip(KL / target - 1, -0.2, 0.2),
  beta <- beta (1 + e n / horizon), n the samples of the step.
Entropy of a categorical from its logits: H = logsumexp(z) - sum softmax(z) z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """mean(-log sigmoid(r_chosen - r_rejected - margin)); rewards (N,), margin (N,) or a number. logsigmoid, not
    log(sigmoid(.)): the latter is -inf (and its gradient NaN) once the difference passes about -100 in float32."""
    diff = r_chosen.float() - r_rejected.float()
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss (scalar, the mean over pairs), chosen implicit rewards (N,), rejected implicit rewards (N,)).
    Arguments: sequence log-probabilities (N,) of the policy and of the reference. beta: DPO's 0.1 default (the
    paper's and TRL's). loss_type "sigmoid" (DPO; label_smoothing > 0: conservative DPO) or "ipo" (beta is IPO's
    tau; give it log-probabilities averaged over tokens, as IPO's authors and TRL do, or the 1/(2 tau) target is
    lost in the sums' scale)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = policy_chosen.float() - ref_chosen.float()  # log pi(y_w)/ref(y_w)
    rejected = policy_rejected.float() - ref_rejected.float()
    h = chosen - rejected
    if loss_type == "sigmoid":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing is for the sigmoid loss")
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    return losses.mean(), beta * chosen.detach(), beta * rejected.detach()


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, K) rewards of K samples for each of P prompts -> (P, K) leave-one-out advantages r_i - mean_{j!=i} r_j.
    K >= 2 (one sample has no other to baseline it). A group whose samples all got the same reward gets zeros."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, samples >= 2), got {tuple(rewards.shape)}")
    r = rewards.float()
    k = r.shape[1]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    return r - baseline


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(pi || ref): log pi - log ref (tokens sampled from pi)."""
    return logp.float() - ref_logp.float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref): exp(-l) - 1 + l, l = log pi - log ref; >= 0 everywhere.
    expm1 keeps the small-l values exact (exp(-l) - 1 cancels to float32 noise for |l| < 1e-4)."""
    log_ratio = logp.float() - ref_logp.float()
    return torch.expm1(-log_ratio) + log_ratio


def kl_penalized_rewards(rewards: torch.Tensor, kl_tokens: torch.Tensor, mask: torch.Tensor, beta: float):
    """R = r - beta * sum_t kl_t over each completion's tokens (mask 1), without gradient through the KL.
    rewards (N,), kl_tokens (N, T), mask (N, T) -> ((N,) shaped rewards, (N,) the sequences' KL)."""
    kl = (kl_tokens.detach().float() * mask).sum(dim=-1)
    return rewards.float() - beta * kl, kl


def reinforce_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-1/N sum_i A_i sum_t log pi(t_it): the REINFORCE estimator of -grad E[R] (advantages carry no gradient).
    logp, mask (N, T); advantages (N,)."""
    seq_logp = (logp.float() * mask).sum(dim=-1)  # (N,)
    return -(advantages.detach().float() * seq_logp).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy of softmax(logits), float32: logsumexp(z) - sum p z."""
    z = logits.float()
    logp = torch.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over all of x: reward normalization for the step (a single value stays 0)."""
    x = x.float()
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + eps)


class AdaptiveKL:
    """Ziegler et al. 2019's proportional controller: beta follows the measured KL towards `target` (nats per
    sequence). horizon: their 10,000 samples. A fixed coefficient is target None."""

    def __init__(self, beta: float, target: float | None = None, horizon: int = 10_000):
        if beta < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {beta}")
        if target is not None and target <= 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        self.beta, self.target, self.horizon = float(beta), target, horizon

    def update(self, kl: float, n: int) -> float:
        """After a step whose `n` sequences had mean KL `kl`: the next step's beta."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]
