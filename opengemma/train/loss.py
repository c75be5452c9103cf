"""Cross-entropy and token log-probabilities from hidden states through the (tied) output matrix, a chunk of
tokens at a time, so the full (N, V) float32 logits never exist: at Gemma's 262,144-piece vocabulary they are
1 MB per token (8 x 2048 tokens: 17 GB), which dominates transformers' training memory (it materializes them).

Each chunk's logits are computed in the forward, reduced to what the loss needs, and dropped; the backward
recomputes them one chunk at a time (torch.utils.checkpoint per chunk), so peak memory holds one chunk's logits
(chunk x V floats) instead of all of them, and autograd (not a hand-written backward) gives the gradient.

    loss = -1/|M| sum_{i in M} log softmax(c(h_i W^T))[y_i]      M: tokens whose target is not ignore_index
    c(z) = cap * tanh(z / cap)                                     Gemma 2's final-logit soft-capping (cap 30)

Logits are float32 whatever the input dtype (softmax in float32, PITFALLS.md 4; bf16 keeps 8 bits of mantissa,
too few for the log-probabilities of 262k entries); the matmul runs in the inputs' dtype, as the inference
path's output layer does.
Dimensions: N tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # the targets of padding and of tokens not trained on (torch's and transformers' convention)
CHUNK = 1024  # tokens per chunk: 1024 x 262,144 float32 logits = 1 GiB at a time, ~1/16 of 8 x 2048's


def _logits(h: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    z = (h @ weight.t()).float()  # (n, D) @ (D, V) -> (n, V) float32
    return softcap * torch.tanh(z / softcap) if softcap else z


def _chunk_logprobs(h, weight, y, softcap, ignore_index):
    logp = torch.log_softmax(_logits(h, weight, softcap), dim=-1)  # (n, V)
    safe = y.clamp_min(0)
    return logp.gather(1, safe[:, None])[:, 0].masked_fill(y == ignore_index, 0.0)


def _chunks(hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} differ before the last dim")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    h = hidden.reshape(-1, hidden.shape[-1])  # (B, T, D) -> (N, D)
    y = targets.reshape(-1)  # (B, T) -> (N,)
    return [(h[s : s + chunk], y[s : s + chunk]) for s in range(0, h.shape[0], chunk)]


def _run(fn, h, weight, y, softcap, ignore_index):
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return checkpoint(fn, h, weight, y, softcap, ignore_index, use_reentrant=False)
    return fn(h, weight, y, softcap, ignore_index)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int = CHUNK,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of `targets` (..., ) under logits c(hidden (..., D) @ weight (V, D)^T), float32.
    reduction "mean": over the tokens not ignored (0 when there are none); "sum": their total (for gradient
    accumulation across micro-batches and ranks, divided by the global token count by the caller)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    total = -token_logprobs(hidden, weight, targets, softcap=softcap, ignore_index=ignore_index, chunk=chunk).sum()
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp_min(1)


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """log p(targets) per token, shaped like `targets`, float32, 0 where the target is ignore_index: what DPO's
    and RLHF's sequence log-probabilities and KL terms are sums of."""
    out = [_run(_chunk_logprobs, h, weight, y, softcap, ignore_index) for h, y in _chunks(hidden, targets, chunk)]
    return torch.cat(out).reshape(targets.shape)
