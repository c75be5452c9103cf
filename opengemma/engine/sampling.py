"""Sampling as pure functions on logits. Per-row parameters are tensors so a batch can mix settings
(the server needs that) and nothing here synchronizes with the host."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row.

    logits (B, V); temperature (B,) float, 0 = greedy; top_k (B,) int, 0 = off; top_p (B,) float, 1 = off.
    Returns (B,) int64.
    """
    logits = logits.float()
    V = logits.shape[-1]
    greedy = logits.argmax(dim=-1)  # (B,)
    scaled = logits / temperature.clamp(min=1e-5).unsqueeze(-1)
    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)  # (B, V)
    ranks = torch.arange(V, device=logits.device)
    k = torch.where(top_k > 0, top_k, V).unsqueeze(-1)  # (B, 1)
    remove = ranks.unsqueeze(0) >= k
    probs = sorted_logits.softmax(dim=-1)
    # nucleus: drop a token once the mass *before* it reaches top_p (the top token always stays)
    remove |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(-1)
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # Exponential race (= Gumbel-max): argmax(p / E), E ~ Exp(1), draws exactly from p with one kernel.
    e = torch.empty_like(probs).exponential_(1.0, generator=generator)
    choice = (probs / e).argmax(dim=-1, keepdim=True)  # (B, 1)
    sampled = sorted_idx.gather(-1, choice).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)


def as_row_tensor(value, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A scalar or a per-row sequence -> (B,) tensor."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(batch).clone() if t.ndim == 0 else t
