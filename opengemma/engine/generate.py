"""Prefill then cached decode, for a batch of ragged prompts (left-padded; each row stops on its own).

The static decode path (gpt-fast style): caches are preallocated, one decode step is a pure function of
tensors with static shapes (tokens (B,), position (1,), sampling parameters (B,)) that torch.compile
captures whole (fullgraph, no graph breaks; CUDA graphs on GPU). Sampled tokens stay on the device and
are read by the host only every `sync_every` steps, so the GPU never idles waiting for Python.
"""

from __future__ import annotations

import types
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .. import kernels
from ..model import Gemma, KVCache
from .sampling import as_row_tensor, sample

CACHE_BUCKET = 256
MALLOC_MMAP_THRESHOLD = 32 << 20  # bytes: glibc's own ceiling for its dynamic threshold


_malloc_tuned = False


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory for the large temporaries of CPU prefill. By default it serves blocks over
    128 KB with fresh mmaps and unmaps them on free, so every prefill chunk faulted in new zeroed pages for
    each dequantized weight and activation (measured on 2 cores: bf16 prefill 1381 -> 2201 tok/s, int4 866
    -> 1311 with the thresholds raised). glibc raises the thresholds by itself after the first large free,
    so a process that happened to free one (e.g. building int4 kernel layouts) was fast and one that did not
    was not; this sets them up front, once per process. A no-op without glibc."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (mallopt's parameter numbers are glibc's)
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * MALLOC_MMAP_THRESHOLD)


class PromptTooLongError(ValueError):
    pass


@dataclass
class GenerationOutput:
    tokens: list[int] = field(default_factory=list)  # generated ids, stop token excluded
    finish_reason: str = "length"  # "stop" (stop token or the caller said so) or "length"
    stop_token: int | None = None


def decode_step(
    model: Gemma,
    tok: torch.Tensor,
    input_pos: torch.Tensor,
    pad: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    u: torch.Tensor,
    greedy: bool,
    max_k: int | None,
) -> torch.Tensor:
    """One token per row: tok (B,) at position input_pos (1,) -> next token (B,)."""
    logits = model(tok.view(-1, 1), input_pos, pad=pad)[:, -1]  # (B, V)
    if greedy:
        return logits.argmax(dim=-1)
    return sample(logits, temperature, top_k, top_p, u, max_k)


def decode_compile_options(device: torch.device) -> dict | None:
    """Inductor options for a decode step. On GPU: CUDA graphs (one launch per step), and coordinate-descent
    tuning, with which inductor turns one-row matmuls into its own reductions that fuse int8 dequantization
    into the weight read and reach peak bandwidth (the gpt-fast recipe). Per-compile, not global state."""
    return {"triton.cudagraphs": True, "coordinate_descent_tuning": True} if device.type == "cuda" else None


def cache_guards_only(model: Gemma) -> Callable:
    """Dynamo guard filter for `model`'s decode step. By default every call re-checks ~4,000 guards on the
    model's modules, attributes and ~370 tensors: 0.86 ms of a 10 ms CPU decode step. Once loaded, only the
    KV caches and slot positions change (setup_cache and select_cache_rows replace them, possibly with other
    shapes), so guards on those and on everything outside the model (the step's arguments, global state) are
    kept, and the rest (weights, module attributes) is checked when compiling only. Inductor still asserts
    each input's size and stride on every call; what the filter drops, compiled_decode_step checks itself
    once per call (module_fingerprint)."""
    ref = weakref.ref(model)

    def keep(entries) -> list[bool]:
        caches = {id(t) for t in ref().cache_tensors()}
        return [
            not e.orig_guard.source.is_unspecialized_nn_module()
            or (e.guard_type == "TENSOR_MATCH" and e.has_value and id(e.value) in caches)
            for e in entries
        ]

    return keep


def module_fingerprint(model: Gemma) -> tuple:
    """What a compiled decode step was traced against and its filtered guards no longer re-check: every
    module's path and type and its `gemv` switch, and every parameter's and buffer's shape, dtype and device
    (the KV cache aside: its guards stay). A module swap (quantize, LoRA), a switch (set_gemv) or a weight
    replaced by one of another kind changes it; weights updated in place (an optimizer step) do not, and need
    no recompile: the step reads them as inputs. Walking ~400 entries costs about a millisecond in Python, so
    the engine checks it once per generate() call / scheduler start, never per step."""
    cache = {id(t) for t in model.cache_tensors()}
    modules = tuple(
        (name, type(m).__name__, getattr(m, "gemv", None))
        for name, m in model.named_modules()
        if not isinstance(m, KVCache)
    )
    tensors = tuple(
        (name, tuple(t.shape), t.dtype, t.device)
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if id(t) not in cache
    )
    return modules + tensors


_compiled: "weakref.WeakKeyDictionary[Gemma, tuple[Callable, tuple]]" = weakref.WeakKeyDictionary()


def compiled_decode_step(model: Gemma) -> Callable:
    """torch.compile'd decode_step for this model: whole-graph, static shapes; CUDA graphs on GPU.
    Dynamo keeps compiled code per code object, shared by every torch.compile of one function, and the
    guards that would tell two models apart are filtered out (cache_guards_only): so each model compiles
    its own copy of decode_step, whose entries serve that model alone. The copy is dropped and compiled
    afresh when the model's modules changed since (module_fingerprint): callers never have to say so."""
    fingerprint = module_fingerprint(model)
    fn, seen = _compiled.get(model, (None, None))
    if fn is None or seen != fingerprint:
        options = dict(decode_compile_options(model.norm.weight.device) or {})
        step = decode_step
        if hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):  # guard filters: torch >= 2.7
            options["guard_filter_fn"] = cache_guards_only(model)
            step = types.FunctionType(decode_step.__code__.replace(), decode_step.__globals__, decode_step.__name__)
        fn = torch.compile(step, fullgraph=True, dynamic=False, options=options or None)
        _compiled[model] = (fn, fingerprint)
    return fn


def set_gemv(model: Gemma, on: bool = True) -> Gemma:
    """Route the few-row products of every module that can take the Triton GEMV kernel (model.Linear, the
    embedding's output layer, Int8Linear, Int4Linear: those with a `gemv` switch) through it (on) or through
    torch's kernels (off). Per module, so a compiled step sees a constant (and module_fingerprint a change)."""
    if on and kernels.triton is None:
        raise RuntimeError("the GEMV kernel needs a GPU and Triton (pip install triton; CUDA builds of torch bring it)")
    for m in model.modules():
        if hasattr(type(m), "gemv"):
            m.gemv = on
    kernels.prime_devices({t.device for t in (*model.parameters(), *model.buffers())})
    return model


def check_prompts(prompts: Sequence[Sequence[int]], context: int) -> int:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (<bos>)")
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise PromptTooLongError(
            f"prompt has {longest} tokens; the model's context is {context} tokens "
            f"(at most {context - 1} prompt tokens leave room for one new token)"
        )
    return longest


def prefill_chunks(
    model: Gemma,
    tokens: torch.Tensor,
    start: int = 0,
    chunk: int = 256,
    *,
    pad: torch.Tensor | None = None,
    row: int | None = None,
    last_only: bool = False,
    hidden: bool = False,
    bounded: bool = True,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Feed (B, L) tokens through the KV cache at positions start .. start + L - 1, `chunk` tokens per forward
    (chunks bound the attention matrices and the sliding-window rings: setup_cache's prefill_chunk); yields
    (s, e, out) per chunk, out the model's output for tokens[:, s:e] (logits, or hidden states with hidden).
    bounded: the cache holds nothing at or past the chunk's end (filled from position 0 in order), so
    attention reads only the slots before it (Gemma.forward's `end`); False for rows joining a running ring.
    The one prefill loop of generation, continuous batching and exact scoring (engine/score.py)."""
    L = tokens.shape[1]
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        out = model(
            tokens[:, s:e],
            torch.arange(start + s, start + e, device=tokens.device),
            pad=pad,
            row=row,
            last_only=last_only,
            end=start + e if bounded else None,
            hidden=hidden,
        )
        yield s, e, out


def prefill(model: Gemma, tokens: torch.Tensor, pad: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """Feed (B, L) prompt tokens through the cache in chunks; returns the last position's logits (B, V)."""
    for _, _, logits in prefill_chunks(model, tokens, 0, chunk, pad=pad, last_only=True):
        pass
    return logits[:, -1]


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
    *,
    prefill_chunk: int | None = None,
    compile: bool | None = None,
    sync_every: int | None = None,
    keep_cache: bool | None = None,
) -> list[GenerationOutput]:
    """Generate for each prompt (lists of ids, <bos> included).

    on_token(row, token) is called for every generated token (not stop tokens); returning True stops
    that row (stop strings are found this way by the text layer). compile: None = on for CUDA.
    keep_cache (default: when compiling) leaves the KV cache allocated for the next call of the same shape.
    """
    ctx = model.config.max_seq_len
    longest = check_prompts(prompts, ctx)
    lengths = [len(p) for p in prompts]
    max_new_tokens = max(0, min(max_new_tokens, ctx - longest))
    B = len(prompts)
    device = model.norm.weight.device
    outputs = [GenerationOutput() for _ in prompts]
    if max_new_tokens == 0:
        return outputs
    on_cuda = device.type == "cuda"
    if device.type == "cpu":
        keep_freed_memory()
    compile = on_cuda if compile is None else compile
    # Chunks bound the prefill's attention matrices and the sliding-window rings (window + chunk slots);
    # on 2 CPU cores 256 measured fastest for both prefill and decode, GPUs like bigger matmuls.
    prefill_chunk = prefill_chunk or (1024 if on_cuda else 256)
    keep_cache = compile if keep_cache is None else keep_cache
    sync_every = sync_every or (8 if on_cuda else 1)

    tokens = torch.full((B, longest), model.config.pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
    tokens = tokens.to(device)
    pad = torch.tensor([longest - n for n in lengths], device=device)
    temps = [temperature] * B if isinstance(temperature, (int, float)) else list(temperature)
    ks = [top_k] * B if isinstance(top_k, int) else list(top_k)
    greedy = all(t <= 0 for t in temps)
    tps = [top_p] * B if isinstance(top_p, (int, float)) else list(top_p)
    max_k = max(ks) if all(k > 0 for k in ks) else 0 if all(k == 0 for k in ks) and min(tps) >= 1 else None
    temp = as_row_tensor(temps, B, torch.float32, device)
    tk = as_row_tensor(ks, B, torch.long, device)
    tp = as_row_tensor(top_p, B, torch.float32, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    stop_set = set(stop_ids)
    step_fn = compiled_decode_step(model) if compile else decode_step

    def draw() -> torch.Tensor:
        return torch.rand(B, generator=gen, device=device) if not greedy else torch.zeros(B, device=device)

    # Cache lengths are rounded up so that a compiled decode step (static shapes) serves many requests.
    cache_len = min(ctx, -(-(longest + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET)
    model.setup_cache(B, cache_len, prefill_chunk=prefill_chunk)
    try:
        logits = prefill(model, tokens, pad, prefill_chunk)
        tok = logits.argmax(-1) if greedy else sample(logits, temp, tk, tp, draw(), max_k)  # (B,)
        produced = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
        produced[:, 0] = tok
        done = [False] * B
        read = 0
        pos = torch.tensor([longest], device=device)
        for step in range(1, max_new_tokens + 1):
            # host side: read what the device produced since the last sync, in order
            if step % sync_every == 0 or step == max_new_tokens:
                for b, row in enumerate(produced[:, read:step].tolist()):
                    for t in row:
                        if done[b]:
                            break
                        if t in stop_set:
                            outputs[b].finish_reason, outputs[b].stop_token, done[b] = "stop", t, True
                        else:
                            outputs[b].tokens.append(t)
                            if on_token is not None and on_token(b, t):
                                outputs[b].finish_reason, done[b] = "stop", True
                read = step
                if all(done):
                    break
            if step == max_new_tokens:
                break
            tok = step_fn(model, tok, pos, pad, temp, tk, tp, draw(), greedy, max_k).clone()
            produced[:, step] = tok
            pos = pos + 1
    finally:
        if not keep_cache:
            model.clear_cache()
    return outputs
