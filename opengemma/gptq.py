"""GPTQ (Frantar et al., 2023), format-agnostic: the error-compensating column sweep, given a grid (how a
group's scale and zero are fitted, how a value is rounded onto the grid and read back), and the calibration
statistics it weighs errors by (input_moments). quantize.py binds it to its int4 grid (gptq_int4), as gpt-fast
keeps GPTQ apart from its quantized formats; calibration.py holds the calibration text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Grid:
    """A grouped quantization grid, as GPTQ needs to see it."""

    fit: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # (N, K), group -> scales, zeros (N, K/g)
    round: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # column (N,), its scale, zero -> q
    value: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # q, scale, zero -> the weight it is
    dtype: torch.dtype = torch.uint8  # how the grid values are stored


def gptq(
    w: torch.Tensor,
    hessian: torch.Tensor,
    grid: Grid,
    group_size: int,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al., 2023) onto any grouped grid: columns are rounded one at a time and each
    one's rounding error is spread over the columns not yet rounded, weighted by the inverse of the layer's
    input second moment H = E[x x^T] (K, K), so the layer's *output* error on real inputs shrinks, not just
    the weight error. act_order: round the columns with the largest inputs first (their errors can still be
    compensated by the rest), with each group's scale and zero fixed up front from the original weights
    ("static groups", so the kernel's contiguous groups stay valid); without it, a group's grid is chosen
    from the error-corrected weights when its first column is reached. Returns the grid values (N, K) in
    grid.dtype and the groups' scales and zeros (N, K // group_size)."""
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"in_features {K} is not a multiple of the group size {group_size}")
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = H.diagonal() == 0  # inputs never seen: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    G = K // group_size
    q = torch.empty(N, K, dtype=grid.dtype, device=W.device)
    if act_order:
        scales, zeros = grid.fit(W, group_size)
        perm = torch.argsort(H.diagonal(), descending=True)
    else:
        scales, zeros = W.new_empty(N, G), W.new_empty(N, G)
        perm = torch.arange(K, device=W.device)
        block = group_size * max(1, block // group_size)  # whole groups per block
    W, H = W[:, perm], H[perm][:, perm]
    order = perm.tolist()  # host-side indices: no device sync per column
    group_of = [c // group_size for c in order]  # the (original) group of each column in rounding order
    # upper Cholesky factor of H^-1: row i holds how column i's error propagates to the later columns
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        Wb, Err = W[:, b0:b1].clone(), W.new_empty(N, b1 - b0)
        for j in range(b1 - b0):
            i = b0 + j
            g = group_of[i]
            if not act_order and i % group_size == 0:  # the group's grid, from the weights as corrected so far
                s, z = grid.fit(Wb[:, j : j + group_size], group_size)
                scales[:, g], zeros[:, g] = s[:, 0], z[:, 0]
            s, z = scales[:, g], zeros[:, g]
            qi = grid.round(Wb[:, j], s, z)
            q[:, order[i]] = qi.to(grid.dtype)
            err = (Wb[:, j] - grid.value(qi, s, z)) / Hinv[i, i]
            Wb[:, j + 1 :] -= err[:, None] * Hinv[i, i + 1 : b1][None, :]
            Err[:, j] = err
        W[:, b1:] -= Err @ Hinv[b0:b1, b1:]
    return q, scales, zeros


@torch.no_grad()
def input_moments(model: nn.Module, batches, progress: bool = False) -> dict[str, torch.Tensor]:
    """H = E[x x^T] (K, K) of the input of every nn.Linear, and of the output layer under its own name
    ("embed" when tied), over all tokens of `batches` ((1, T) id tensors run through the float model): what
    GPTQ weighs rounding errors by."""
    totals: dict[str, list] = {}
    last: list = [None, None]  # the last input seen and its x^T x: q/k/v (and gate/up) share one input
    hooks = []

    def hook(name, mod, inp, out):
        x = inp[0]
        if last[0] is not x:
            x2 = x.reshape(-1, x.shape[-1]).float()
            last[:] = [x, (x2.T @ x2, x2.shape[0])]
        h, n = last[1]
        t = totals.setdefault(name, [torch.zeros_like(h), 0])
        t[0] += h
        t[1] += n

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m is not model.lm_head:
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: hook(name, mod, inp, out)))
    # the output layer reads the final norm's output (the forward below stops there)
    out_name = "embed" if model.lm_head is None else "lm_head"
    hooks.append(model.norm.register_forward_hook(lambda mod, inp, out: hook(out_name, mod, (out,), None)))
    try:
        from tqdm import tqdm

        for ids in tqdm(batches, desc="GPTQ calibration", disable=not progress, leave=False):
            model(ids, hidden=True)  # no logits: the output layer needs only its input, and they cost the most
    finally:
        for h in hooks:
            h.remove()
        last.clear()
    return {name: h / n for name, (h, n) in totals.items()}
