"""On-policy rollouts through opengemma's own engine: k samples for each prompt, for RLOO / REINFORCE.

Each prompt is prefilled once, then its KV cache row is forked into k rows (Gemma.select_cache_rows), which decode
together, one token per row per step, through the engine's decode step (engine/generate.py: compiled with
`compile=True`; it reads the weights as inputs, so an optimizer step made in place between two calls needs no
recompile). Every row draws its uniforms from its own generator, seeded per (step, prompt, sample) by the caller:
a sample does not depend on what else is in the batch, so a resumed run redraws the same rollouts. A row stops at
its first stop id (kept as the completion's last token, so the policy is trained to stop) or at max_new_tokens
(then `finished` is False: the trap of silent zero rewards from truncated answers is counted by the caller).
This is the one module of rl/ that imports the engine (tests/test_layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..engine.generate import CACHE_BUCKET, check_prompts, compiled_decode_step, decode_step, prefill
from ..engine.sampling import as_row_tensor, sample
from ..model import Gemma


@dataclass
class Rollout:
    prompt: int  # index of its prompt
    tokens: list[int] = field(default_factory=list)  # completion ids; the stop id last when finished
    finished: bool = False  # stopped at a stop id (False: cut at max_new_tokens)


@torch.inference_mode()
def rollouts(
    model: Gemma,
    prompts: Sequence[Sequence[int]],
    k: int,
    max_new_tokens: int,
    seeds: Sequence[int],
    stop_ids: Sequence[int],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    *,
    compile: bool = False,
    prefill_chunk: int = 256,
) -> list[Rollout]:
    """len(prompts) * k rollouts, prompt-major (prompt i's samples are rows i*k .. i*k + k - 1). prompts: ids with
    <bos>; seeds: one per row (len(prompts) * k). temperature 1, no top-k/top-p: samples from the policy itself,
    which the policy gradient assumes (a truncated sampler would make the log-probs the loss uses not those of
    the distribution sampled from)."""
    P = len(prompts)
    B = P * k
    if k < 1 or len(seeds) != B:
        raise ValueError(f"need k >= 1 and one seed per rollout ({B}), got k={k}, {len(seeds)} seeds")
    ctx = model.config.max_seq_len
    longest = check_prompts(prompts, ctx)
    max_new_tokens = max(1, min(max_new_tokens, ctx - longest))
    device = model.norm.weight.device
    tokens = torch.full((P, longest), model.config.pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
    tokens = tokens.to(device)
    pad = torch.tensor([longest - len(p) for p in prompts], device=device)
    cache_len = min(ctx, -(-(longest + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET)
    temp = as_row_tensor(temperature, B, torch.float32, device)
    tk = as_row_tensor(top_k, B, torch.long, device)
    tp = as_row_tensor(top_p, B, torch.float32, device)
    greedy = temperature <= 0
    max_k = top_k if top_k > 0 else 0 if top_p >= 1 else None  # 0: no filtering, no sort (engine/sampling.py)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def draw() -> torch.Tensor:  # one uniform per row, each from its own generator
        return torch.cat([torch.rand(1, generator=g, device=device) for g in gens])

    out = [Rollout(prompt=i // k) for i in range(B)]
    stop = set(stop_ids)
    model.setup_cache(P, cache_len, prefill_chunk=prefill_chunk)
    try:
        logits = prefill(model, tokens, pad, prefill_chunk)  # (P, V): each prompt once
        index = torch.arange(P, device=device).repeat_interleave(k)  # (B,) prompt of each row
        model.select_cache_rows(index)  # fork: every row starts from its prompt's cache
        logits, pad = logits[index], pad[index]
        step_fn = compiled_decode_step(model) if compile else decode_step
        tok = sample(logits, temp, tk, tp, draw(), max_k)  # (B,)
        pos = torch.tensor([longest], device=device)
        live = list(range(B))  # the rollout of each cache row still decoding
        for step in range(max_new_tokens):
            keep = []
            for i, (b, t) in enumerate(zip(live, tok.tolist())):
                out[b].tokens.append(t)
                if t in stop:
                    out[b].finished = True
                else:
                    keep.append(i)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(live):  # drop finished rows: the 262k-wide output layer costs per row, and the
                # long tail of a batch is a few rows (each row's generator is its own, so samples do not change)
                rows = torch.tensor(keep, device=device)
                model.select_cache_rows(rows)
                tok, pad, temp, tk, tp = (x.index_select(0, rows) for x in (tok, pad, temp, tk, tp))
                live, gens = [live[i] for i in keep], [gens[i] for i in keep]
            tok = step_fn(model, tok, pos, pad, temp, tk, tp, draw(), greedy, max_k).clone()
            pos = pos + 1
    finally:
        model.clear_cache()
    return out
