"""Cross-entropy and token log-probabilities from hidden states through the (tied) output matrix, a chunk of
tokens at a time, so the full (N, V) float32 logits never exist: at Gemma's 262,144-piece vocabulary they are
1 MB per token (8 x 2048 tokens: 17 GB), which dominates transformers' training memory (it materializes them).

    loss = -1/|M| sum_{i in M} log softmax(c(h_i W^T))[y_i]      M: tokens whose target is not ignore_index
    c(z) = cap * tanh(z / cap)                                     Gemma 2's final-logit soft-capping (cap 30)

`chunked_cross_entropy` (the training loss, a scalar) computes its gradient in the forward, chunk by chunk, the
way fused linear-cross-entropy kernels do (Liger Kernel, Hsu et al. 2024; Apple's Cut Cross-Entropy, Wijmans et
al. 2024): with p = softmax(c(z)), dloss/dz = (p - onehot(y)) c'(z) / |M|, so each chunk's logits are made once,
turned into dz in place, and folded into dh = dz W and dW += dz^T h before the next chunk. Nothing is recomputed
in the backward (the output layer is 60% of the 270M model's FLOPs: a recompute would add a fifth to the step),
and the backward only scales the two saved gradients by the incoming one.
`token_logprobs` (per-token values for DPO / RLHF, any upstream gradient) keeps autograd: each chunk under
torch.utils.checkpoint, recomputed in the backward.

Logits are float32 whatever the input dtype (softmax in float32, PITFALLS.md 4; bf16 keeps 8 bits of mantissa,
too few for the log-probabilities of 262k entries); the matmuls run in the inputs' dtype (or autocast's), as the
inference path's output layer does, with the weight gradient accumulated in float32.
Dimensions: N tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # the targets of padding and of tokens not trained on (torch's and transformers' convention)
CHUNK = 1024  # token_logprobs' tokens per chunk: 1024 x 262,144 float32 logits = 1 GiB at a time
LOSS_CHUNK_ELEMENTS = 1 << 27  # the loss's chunk: 2^27 logits (512 MiB float32; 512 tokens at V = 262,144)


def _logits(h: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    z = (h @ weight.t()).float()  # (n, D) @ (D, V) -> (n, V) float32
    return softcap * torch.tanh(z / softcap) if softcap else z


def _chunk_logprobs(h, weight, y, softcap, ignore_index):
    logp = torch.log_softmax(_logits(h, weight, softcap), dim=-1)  # (n, V)
    safe = y.clamp_min(0)
    return logp.gather(1, safe[:, None])[:, 0].masked_fill(y == ignore_index, 0.0)


def _flatten(hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} differ before the last dim")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)  # (B, T, D) -> (N, D); (B, T) -> (N,)


def _chunks(hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    h, y = _flatten(hidden, targets, chunk)
    return [(h[s : s + chunk], y[s : s + chunk]) for s in range(0, h.shape[0], chunk)]


def _run(fn, h, weight, y, softcap, ignore_index):
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return checkpoint(fn, h, weight, y, softcap, ignore_index, use_reentrant=False)
    return fn(h, weight, y, softcap, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * -log softmax(c(h_i W^T))[y_i] with w_i = scale (0 for ignored targets); gradients made in forward."""

    @staticmethod
    def forward(ctx, h, weight, y, softcap, ignore_index, chunk, scale):
        # h (N, D), weight (V, D), y (N,)
        w = weight if weight.dtype == h.dtype or torch.is_autocast_enabled(h.device.type) else weight.to(h.dtype)
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s : s + chunk], y[s : s + chunk]
            z = F.linear(hc, w).float()  # (n, V)
            if softcap:
                t = torch.tanh(z / softcap)
                z = t * softcap
            valid = yc != ignore_index
            safe = yc.clamp_min(0)[:, None]
            lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (n, 1)
            total += ((lse - z.gather(1, safe))[:, 0] * valid).sum()
            if grad_h is None and grad_w is None:
                continue
            dz = z.sub_(lse).exp_()  # softmax, in place of the logits (n, V)
            dz.scatter_add_(1, safe, torch.full_like(lse, -1.0))  # - onehot(y)
            dz.mul_((valid * scale)[:, None].to(dz.dtype))  # ignored rows contribute nothing
            if softcap:
                dz.mul_(1 - t * t)  # d c(z) / dz = 1 - tanh^2
            dz = dz.to(w.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = dz @ w  # (n, V) @ (V, D)
            if grad_w is not None:
                grad_w += (dz.t() @ hc.to(w.dtype)).float()  # (V, n) @ (n, D)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, g):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * g).to(ctx.h_dtype)
        gw = None if grad_w is None else grad_w.mul_(g).to(ctx.w_dtype)  # in place: the buffer is done
        return gh, gw, None, None, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of `targets` (..., ) under logits c(hidden (..., D) @ weight (V, D)^T), float32.
    reduction "mean": over the tokens not ignored (0 when there are none); "sum": their total (for gradient
    accumulation across micro-batches and ranks, divided by the global token count by the caller)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    chunk = chunk or max(1, LOSS_CHUNK_ELEMENTS // weight.shape[0])
    h, y = _flatten(hidden, targets, chunk)
    # the mean's 1/|M| is a host number: a pretraining batch's count is known before the step anyway
    scale = 1.0 if reduction == "sum" else 1.0 / max(1, int((y != ignore_index).sum()))
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        with torch.no_grad():
            return _LinearCrossEntropy.forward(_NoCtx(), h, weight, y, softcap, ignore_index, chunk, scale)
    return _LinearCrossEntropy.apply(h, weight, y, softcap, ignore_index, chunk, scale)


class _NoCtx:
    """Stands in for autograd's ctx when no gradient is wanted (evaluation): no gradient made, nothing kept."""

    needs_input_grad = (False,) * 7

    def save_for_backward(self, *tensors):
        pass


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
