"""The reward model: the Gemma trunk and a scalar head read at each sequence's last real token.

    rm = RewardModel(trunk)                        # trunk: a Gemma (its output layer unused)
    r = rm(tokens, lengths)                        # (B, T) right-padded ids, (B,) real lengths -> (B,) float32
    save_reward_model(rm, "rm/", tokenizer)        # transformers' *ForSequenceClassification layout, num_labels 1
    rm = load_reward_model("rm/")                  # and back (also what TRL's RewardTrainer writes)

The head is transformers' `score` (Linear(hidden, 1, bias=False)) on the final-normed hidden state of the last
token that is not padding, which is how its sequence-classification models and TRL pool; here the lengths say
where that token is instead of a search for pad ids, so a real token that happens to equal pad_id (or a batch
padded on the left) is still read right. Initialized N(0, 1 / (hidden + 1)): the reward head of Ziegler et al.
2019 (lm-human-preferences), which keeps the initial rewards near unit scale.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..model import Gemma


class RewardModel(nn.Module):
    def __init__(self, trunk: Gemma, score: torch.Tensor | None = None):
        super().__init__()
        self.trunk = trunk
        d = trunk.config.d_model
        device = trunk.norm.weight.device
        self.score = nn.Linear(d, 1, bias=False, device=None if device.type == "meta" else device)
        if score is not None:
            if tuple(score.shape) != (1, d):
                raise ValueError(f"a reward head is (1, {d}), got {tuple(score.shape)}")
            with torch.no_grad():
                self.score.weight.copy_(score)
        elif device.type != "meta":
            nn.init.normal_(self.score.weight, std=1 / math.sqrt(d + 1))

    @property
    def config(self):
        return self.trunk.config

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, segments: torch.Tensor | None = None):
        """tokens (B, T) with each row's real tokens first; lengths (B,) >= 1 -> rewards (B,) float32."""
        if (lengths < 1).any() or (lengths > tokens.shape[1]).any():
            raise ValueError(f"lengths must be in [1, {tokens.shape[1]}], got {lengths.tolist()}")
        last = lengths.to(tokens.device) - 1
        pooled = self.trunk(tokens, hidden=True, segments=segments)[torch.arange(tokens.shape[0]), last]  # (B, D)
        return self.score(pooled.to(self.score.weight.dtype)).squeeze(-1).float()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The fraction of pairs whose chosen answer scores strictly higher (ties count as wrong)."""
    return float((r_chosen > r_rejected).float().mean())


def save_reward_model(rm: RewardModel, path: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    from ..weights.hf import save_hf_dir

    return save_hf_dir(rm.trunk, path, tokenizer=tokenizer, dtype=dtype, score=rm.score.weight)


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> RewardModel:
    from ..weights.hf import load_hf_reward_dir

    trunk, score = load_hf_reward_dir(path, dtype=dtype, device=device)
    if score.shape[0] != 1:
        raise ValueError(f"{path}: a reward model has one label, this one has {score.shape[0]}")
    return RewardModel(trunk, score.to(dtype))
