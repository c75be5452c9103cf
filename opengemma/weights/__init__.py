"""Checkpoint formats in and out. Each format has one weight map (data, not hooks) from its tensor names
to opengemma's; every load accounts for every tensor (PITFALLS.md #9)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: names the file and the offending tensors."""


def expand_map(template: Iterable[tuple[str, str]], n_layers: int) -> dict[str, str]:
    """[(ours, theirs)] with '{i}' per layer -> {our_name: their_name}."""
    out: dict[str, str] = {}
    for ours, theirs in template:
        if "{i}" in ours:
            for i in range(n_layers):
                out[ours.format(i=i)] = theirs.format(i=i)
        else:
            out[ours] = theirs
    return out


def _short(names: Iterable[str], n: int = 12) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_names(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Strict accounting: missing, unexpected and mis-shaped tensors are one clear error that names them."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    wrong = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(found[k])}"
        for k in sorted(set(expected) & set(found))
        if tuple(expected[k]) != tuple(found[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_short(unexpected)}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:12]))
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def meta_model(cfg, build: Callable[[nn.Module], nn.Module] | None = None) -> tuple[nn.Module, dict[str, tuple]]:
    """The first half of every loader: the model built on the meta device (no memory, no init), and the
    shapes its state dict expects, for check_names. build: module swaps to apply first (a quantized skeleton)."""
    from ..model import Gemma

    with torch.device("meta"):
        model = Gemma(cfg)
        if build is not None:
            model = build(model)
    return model, expected_shapes(model)


def assign_state_dict(model: nn.Module, state: dict[str, torch.Tensor], device: torch.device | str) -> nn.Module:
    """The second half: a complete, checked state dict assigned into the meta model (its tensors become the
    parameters: no copies), RoPE buffers computed, everything on `device`, eval mode."""
    model.load_state_dict(state, strict=True, assign=True)
    model.init_rope()
    return model.to(device).eval()
