"""Sampling as pure functions on logits, compile-friendly: per-row parameters are tensors (a batch can
mix settings, as the server needs), randomness comes in as one uniform number per row (drawn outside
with a seeded generator), and nothing here synchronizes with the host."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    u: torch.Tensor,
    max_k: int | None = None,
) -> torch.Tensor:
    """Next token per row.

    logits (B, V); temperature (B,) float, 0 = greedy; top_k (B,) int, 0 = off; top_p (B,) float, 1 = off;
    u (B,) uniform in [0, 1). max_k: a static bound on top_k for every row, so only the max_k best
    candidates are sorted (topk instead of a full sort of the vocabulary); 0: no row filters at all (top_k 0,
    top_p 1: plain sampling, RL's rollouts), so nothing is sorted and the inverse CDF runs over the vocabulary in
    its own order (the same distribution; a 262k-entry sort per row per step cost 8x the rest of sampling).
    Returns (B,) int64. Order as in transformers: temperature, then top-k, then top-p on what top-k kept.
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)  # (B,)
    scaled = logits / temperature.clamp(min=1e-5).unsqueeze(-1)
    if max_k == 0:
        cdf = scaled.softmax(dim=-1).cumsum(dim=-1)  # (B, V), in vocabulary order
        choice = (cdf <= u.unsqueeze(-1) * cdf[:, -1:]).sum(dim=-1).clamp(max=cdf.shape[-1] - 1)
        return torch.where(temperature > 0, choice, greedy)
    if max_k is not None:
        vals, idx = scaled.topk(max_k, dim=-1)  # (B, K), sorted descending
    else:
        vals, idx = scaled.sort(dim=-1, descending=True)  # (B, V)
    K = vals.shape[-1]
    ranks = torch.arange(K, device=logits.device)
    vals = vals.masked_fill(ranks >= torch.where(top_k > 0, top_k, K).unsqueeze(-1), float("-inf"))
    probs = vals.softmax(dim=-1)
    # nucleus: drop a token once the mass *before* it reaches top_p (the best token always stays)
    probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(-1), 0.0)
    cdf = probs.cumsum(dim=-1)  # (B, K), unnormalized
    choice = (cdf <= u.unsqueeze(-1) * cdf[:, -1:]).sum(dim=-1, keepdim=True).clamp(max=K - 1)  # inverse CDF
    sampled = idx.gather(-1, choice).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)


def as_row_tensor(value, batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A scalar or a per-row sequence -> (B,) tensor."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(batch).clone() if t.ndim == 0 else t
