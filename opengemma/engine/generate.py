"""Prefill then cached decode, for a batch of ragged prompts (left-padded; each row stops on its own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..model import Gemma
from .sampling import as_row_tensor, sample


class PromptTooLongError(ValueError):
    pass


@dataclass
class GenerationOutput:
    tokens: list[int] = field(default_factory=list)  # generated ids, stop token excluded
    finish_reason: str = "length"  # "stop" (stop token or the caller said so) or "length"
    stop_token: int | None = None


@torch.inference_mode()
def generate(
    model: Gemma,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    temperature: float | Sequence[float] = 0.0,
    top_k: int | Sequence[int] = 0,
    top_p: float | Sequence[float] = 1.0,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    on_token: Callable[[int, int], bool | None] | None = None,
) -> list[GenerationOutput]:
    """Generate for each prompt (lists of ids, <bos> included).

    on_token(row, token) is called for every generated token (not stop tokens); returning True stops
    that row (stop strings are found this way by the text layer).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (<bos>)")
    ctx = model.config.max_seq_len
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    if longest >= ctx:
        raise PromptTooLongError(f"prompt has {longest} tokens; the model's context is {ctx} tokens "
                                 f"(at most {ctx - 1} prompt tokens leave room for one new token)")
    max_new_tokens = max(0, min(max_new_tokens, ctx - longest))
    B = len(prompts)
    device = model.embed.weight.device
    outputs = [GenerationOutput() for _ in prompts]
    if max_new_tokens == 0:
        return outputs

    pad_id = model.config.pad_id
    tokens = torch.full((B, longest), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    tokens = tokens.to(device)
    pad = torch.tensor([longest - n for n in lengths], device=device)
    temp = as_row_tensor(temperature, B, torch.float32, device)
    tk = as_row_tensor(top_k, B, torch.long, device)
    tp = as_row_tensor(top_p, B, torch.float32, device)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    stop = torch.tensor(list(stop_ids) or [-1], device=device)

    model.setup_cache(B, longest + max_new_tokens)
    try:
        logits = model(tokens, torch.arange(longest, device=device), pad=pad, last_only=True)  # (B, 1, V)
        done = [False] * B
        for step in range(max_new_tokens):
            nxt = sample(logits[:, -1], temp, tk, tp, gen)  # (B,)
            is_stop = torch.isin(nxt, stop)
            for b, (tok, st) in enumerate(zip(nxt.tolist(), is_stop.tolist())):
                if done[b]:
                    continue
                if st:
                    outputs[b].finish_reason, outputs[b].stop_token, done[b] = "stop", tok, True
                    continue
                outputs[b].tokens.append(tok)
                if on_token is not None and on_token(b, tok):
                    outputs[b].finish_reason, done[b] = "stop", True
            if all(done) or step == max_new_tokens - 1:
                break
            pos = torch.tensor([longest + step], device=device)
            logits = model(nxt.view(B, 1), pos, pad=pad)
    finally:
        model.clear_cache()
    return outputs
