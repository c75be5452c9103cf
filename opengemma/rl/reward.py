"""The reward model: the Gemma trunk and a scalar head read at each sequence's last real token.

    add_reward_head(model)                         # model.score: a module swap (its output layer goes unused)
    r = rewards(model, tokens, lengths)            # (B, T) right-padded ids, (B,) real lengths -> (B,) float32
    save_reward_model(model, "rm/", tokenizer)     # transformers' *ForSequenceClassification layout, num_labels 1
    model = load_reward_model("rm/")               # and back (also what TRL's RewardTrainer writes)

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


def add_reward_head(model: Gemma, score: torch.Tensor | None = None) -> Gemma:
    """Give `model` its reward head, `model.score` (Linear(hidden, 1, bias=False)), in place: a module swap, so the
    train/ seam builds, shards (FSDP2 keeps it in the root, gathered inside the forward) and checkpoints it as any
    other parameter. score: trained weights (1, hidden); else N(0, 1 / (hidden + 1))."""
    d = model.config.d_model
    device = model.norm.weight.device
    model.score = nn.Linear(d, 1, bias=False, device=device)
    if score is not None:
        if tuple(score.shape) != (1, d):
            raise ValueError(f"a reward head is (1, {d}), got {tuple(score.shape)}")
        with torch.no_grad():
            model.score.weight.copy_(score)
    elif device.type != "meta":
        nn.init.normal_(model.score.weight, std=1 / math.sqrt(d + 1))
    return model


def init_reward_head(model: Gemma, seed: int) -> None:
    """Draw the head's initial weights from `seed` (after a meta-device build, e.g. every rank the same)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(model.score.weight.shape, generator=g) / math.sqrt(model.config.d_model + 1)
    with torch.no_grad():
        model.score.weight.copy_(w)


def rewards(model: Gemma, tokens: torch.Tensor, lengths: torch.Tensor, segments=None) -> torch.Tensor:
    """tokens (B, T) with each row's real tokens first; lengths (B,) >= 1 -> rewards (B,) float32. The head runs
    inside the model's forward (`head=`), where a sharded root's parameters are gathered."""
    if not hasattr(model, "score"):
        raise ValueError("this model has no reward head (add_reward_head)")
    if (lengths < 1).any() or (lengths > tokens.shape[1]).any():
        raise ValueError(f"lengths must be in [1, {tokens.shape[1]}], got {lengths.tolist()}")
    last = lengths.to(tokens.device) - 1
    rows = torch.arange(tokens.shape[0], device=tokens.device)

    def head(h, _):  # h (B, T, D) final-normed; the output matrix is not used
        pooled = h[rows, last]  # (B, D)
        return model.score(pooled.to(model.score.weight.dtype)).squeeze(-1).float()

    return model(tokens, segments=segments, head=head)


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The fraction of pairs whose chosen answer scores strictly higher (ties count as wrong)."""
    return float((r_chosen > r_rejected).float().mean())


def save_reward_model(model: Gemma, path: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """transformers' *ForSequenceClassification layout (num_labels 1), which its AutoModel and TRL read."""
    from ..weights.hf import save_hf_dir

    return save_hf_dir(model, path, tokenizer=tokenizer, dtype=dtype)


def load_reward_model(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> Gemma:
    """A reward model directory (ours, or TRL's / transformers' with one label) -> a Gemma with its reward head."""
    from ..weights.hf import load_hf_reward_dir

    trunk, score = load_hf_reward_dir(path, dtype=dtype, device=device)
    if score.shape[0] != 1:
        raise ValueError(f"{path}: a reward model has one label, this one has {score.shape[0]}")
    return add_reward_head(trunk, score.to(dtype))
