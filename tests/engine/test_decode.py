"""The static decode path: ring-buffer sliding-window caches, chunked prefill, the compiled decode step (no
graph breaks, recompiled when caches or the model change), rows joining a running batch."""

import pytest
import torch
from helpers import explain_decode_step, tiny_model

from opengemma.engine.generate import generate


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_ring_buffer_equals_full_attention_over_several_windows(name, chunk):
    model = tiny_model(name, std=0.3)
    T = 60  # 7.5 windows of 8
    tok = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(tok)
        model.setup_cache(2, T, prefill_chunk=chunk)
        local = next(layer.attn.kv_cache for layer in model.layers if layer.attn.is_local)
        assert local.k.shape[2] == 8 + chunk < T  # a ring, not the full length
        parts = []
        for s in range(0, 20, chunk):  # chunked prefill, then one token at a time
            e = min(s + chunk, 20)
            parts.append(model(tok[:, s:e], torch.arange(s, e)))
        for t in range(20, T):
            parts.append(model(tok[:, t : t + 1], torch.tensor([t])))
        model.clear_cache()
    cached = torch.cat(parts, dim=1)
    assert (cached - full).abs().max().item() <= 1e-4
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


def test_chunked_prefill_generation_equals_unchunked():
    model = tiny_model("tiny-gemma3", std=0.3)
    prompts = [list(range(2, 40)), [2, 9, 10]]
    ref = generate(model, prompts, max_new_tokens=12, prefill_chunk=512)
    for chunk in (1, 5, 16):
        out = generate(model, prompts, max_new_tokens=12, prefill_chunk=chunk)
        assert [o.tokens for o in out] == [r.tokens for r in ref]


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("greedy,max_k", [(True, None), (False, None), (False, 40)])
def test_decode_step_has_no_graph_breaks(name, greedy, max_k):
    explanation = explain_decode_step(tiny_model(name, std=0.3), greedy=greedy, max_k=max_k)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_decode_gives_the_same_tokens_as_eager():
    model = tiny_model("tiny-gemma3", std=0.3)
    prompts = [list(range(2, 30)), [2, 9, 10, 11]]
    eager = generate(model, prompts, max_new_tokens=24, compile=False, prefill_chunk=8)
    compiled = generate(model, prompts, max_new_tokens=24, compile=True, prefill_chunk=8)
    assert [o.tokens for o in compiled] == [o.tokens for o in eager]
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9, seed=4, prefill_chunk=8)
    assert [o.tokens for o in generate(model, prompts, compile=True, **kw)] == [
        o.tokens for o in generate(model, prompts, compile=False, **kw)
    ]


def test_compiled_decode_follows_cache_changes_and_each_model_keeps_its_own():
    """The compiled step re-checks only the KV caches' guards (cache_guards_only): new cache shapes (batch
    size, ring length) still recompile, and another model, even of the same shapes, has its own step."""
    import copy

    from opengemma.quantize import quantize_model

    a, b = tiny_model("tiny-gemma3", std=0.3), tiny_model("tiny-gemma3", std=0.3, seed=1)
    c = copy.deepcopy(a).to(torch.bfloat16)  # same shapes, another dtype: a's graph would be wrong for it
    d = quantize_model(copy.deepcopy(a), "int8", dtype=torch.float32)  # same caches, other modules
    two, one = [list(range(2, 30)), [2, 9, 10, 11]], [[2, 50, 51, 52, 53]]
    for model, prompts, chunk in (
        (a, two, 8),
        (a, one, 8),
        (a, two, 4),
        (b, two, 8),
        (c, two, 8),
        (d, two, 8),
        (a, two, 8),
    ):
        kw = dict(max_new_tokens=12, prefill_chunk=chunk)
        assert [o.tokens for o in generate(model, prompts, compile=True, **kw)] == [
            o.tokens for o in generate(model, prompts, compile=False, **kw)
        ], (model.config.name, len(prompts), chunk)


def test_compiled_decode_notices_a_model_changed_in_place():
    """Nobody tells the engine that a model changed: modules swapped in place (quantize_model) or weights
    cast to another dtype after a compiled generate are noticed (module_fingerprint) and compiled afresh."""
    from opengemma.quantize import quantize_model

    model = tiny_model("tiny-gemma3", std=0.3)
    prompts = [list(range(2, 30)), [2, 9, 10, 11]]

    def same():
        kw = dict(max_new_tokens=12, prefill_chunk=8)
        return [o.tokens for o in generate(model, prompts, compile=True, **kw)] == [
            o.tokens for o in generate(model, prompts, compile=False, **kw)
        ]

    assert same()
    quantize_model(model, "int8", dtype=torch.float32)  # the same object
    assert same()
    model.to(torch.bfloat16)
    assert same()


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_rows_join_a_running_batch_at_any_step(name):
    """Continuous batching on the model's terms: one clock for all rows (positions are clock ticks, slots
    are positions modulo the cache length, wrapping round), a request joins by prefilling its own row
    just before the clock, then decodes in lockstep. Each row's greedy tokens equal generating alone."""
    from opengemma.engine.generate import generate

    model = tiny_model(name, std=0.3)
    prompts = [[2, 5, 6, 7, 8, 9, 10, 11, 12, 13], [2, 40, 41], [2, 77, 78, 79, 80, 81]]
    n_new = 14
    alone = [generate(model, [p], max_new_tokens=n_new)[0].tokens for p in prompts]
    S, chunk = 48, 4
    clock = 100  # > S: the ring wraps during the test
    with torch.inference_mode():
        model.setup_cache(2, S, prefill_chunk=chunk)
        pads = torch.full((2,), clock, dtype=torch.long)  # an idle row sees nothing
        nxt = torch.zeros(2, dtype=torch.long)
        owner, got = [None, None], {i: [] for i in range(len(prompts))}
        queue = [(0, 0), (3, 1), (17, 2)]  # (step at which it arrives, prompt index)
        for step in range(60):
            while queue and queue[0][0] <= step and None in owner:
                _, i = queue.pop(0)
                row = owner.index(None)
                owner[row] = i
                start = clock - len(prompts[i])
                pads[row] = start
                for s in range(0, len(prompts[i]), chunk):
                    ids = prompts[i][s : s + chunk]
                    logits = model(
                        torch.tensor([ids]),
                        torch.arange(start + s, start + s + len(ids)),
                        pad=pads[row : row + 1],
                        row=row,
                        last_only=True,
                    )
                nxt[row] = logits[0, -1].argmax()
            for row, i in enumerate(owner):  # record, and free rows that are done
                if i is not None:
                    got[i].append(int(nxt[row]))
                    if len(got[i]) == n_new:
                        owner[row] = None
            if all(o is None for o in owner) and not queue:
                break
            logits = model(nxt.view(2, 1), torch.tensor([clock]), pad=pads)
            nxt = logits[:, -1].argmax(-1)
            clock += 1
    assert [got[i] for i in range(len(prompts))] == alone
