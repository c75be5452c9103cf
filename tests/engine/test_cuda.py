"""The GPU paths: CUDA graphs in the compiled decode step, no host syncs in it, the CUDA int8/int4 kernels
(tinygemm's packed layout) and ragged batches on the device. Opt-in tier, run on a machine with a GPU:

    python -m pytest --run-cuda -m cuda tests/engine/test_cuda.py

Without a GPU these fail (they are not skipped into green once asked for); the default run leaves them out.
"""

import copy

import pytest
import torch
from helpers import gemv_reference, tiny_model

from opengemma.engine.generate import compiled_decode_step, decode_compile_options, generate, set_gemv
from opengemma.engine.scheduler import Request, Scheduler
from opengemma.qlinear import Int4Linear, Int8Linear
from opengemma.quantize import prepare_quantized, quantize_model

pytestmark = pytest.mark.cuda
DEV = torch.device("cuda")
PROMPTS = [[2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [2, 40], [2, 300, 301, 302, 303]]
# the CUDA int4 kernel tiles K by 128 or more: a tiny model wide enough for it
WIDE = dict(d_model=256, d_ff=512, head_dim=64)


@pytest.fixture(autouse=True)
def _gpu():
    assert torch.cuda.is_available(), "the GPU tier needs a CUDA device"
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_cuda_forward_and_generation_equal_the_cpu(name):
    cpu = tiny_model(name, std=0.3)
    gpu = copy.deepcopy(cpu).to(DEV)
    tok = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = cpu(tok), gpu(tok.to(DEV)).cpu()
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    # eager on both: the cached decode path on the device gives the CPU's tokens
    ref = [o.tokens for o in generate(cpu, PROMPTS, max_new_tokens=20)]
    assert [o.tokens for o in generate(gpu, PROMPTS, max_new_tokens=20, compile=False)] == ref


def test_cuda_graph_decode_equals_eager_and_never_skips_the_graph():
    # (each compile costs 20-60 s on a lent GPU: the tier keeps their number down; soft-capping is in the next)
    model = tiny_model("tiny-gemma3", std=0.3).to(DEV)
    skips = cudagraph_skips()
    for prompts in (PROMPTS, PROMPTS[:1]):  # batch 3 and batch 1 (one-row matmuls become reductions)
        eager = generate(model, prompts, max_new_tokens=24, compile=False)
        compiled = generate(model, prompts, max_new_tokens=24, compile=True)
        assert [o.tokens for o in compiled] == [o.tokens for o in eager]
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9, seed=4)
    assert [o.tokens for o in generate(model, PROMPTS, compile=True, **kw)] == [
        o.tokens for o in generate(model, PROMPTS, compile=False, **kw)
    ]
    assert cudagraph_skips() == skips, "the decode step fell back from CUDA graphs"


@pytest.mark.parametrize("greedy,max_k", [(True, None), (False, 40)])
def test_compiled_decode_step_never_synchronizes_with_the_host(greedy, max_k):
    model = tiny_model("tiny-gemma3", std=0.3).to(DEV)
    B = 2
    model.setup_cache(B, 64, prefill_chunk=8)
    step = compiled_decode_step(model)
    temp = torch.full((B,), 0.0 if greedy else 0.8, device=DEV)
    top_k = torch.full((B,), max_k or 0, device=DEV)
    top_p, pad = torch.full((B,), 0.9, device=DEV), torch.zeros(B, dtype=torch.long, device=DEV)
    u = torch.rand(16, B, device=DEV)
    tok, pos = torch.tensor([5, 6], device=DEV), torch.tensor([0], device=DEV)
    with torch.inference_mode():
        for i in range(3):  # compile and record the graph first
            tok = step(model, tok, pos, pad, temp, top_k, top_p, u[i], greedy, max_k).clone()
            pos = pos + 1
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i in range(3, 16):
                tok = step(model, tok, pos, pad, temp, top_k, top_p, u[i], greedy, max_k).clone()
                pos = pos + 1
        finally:
            torch.cuda.set_sync_debug_mode(0)
    model.clear_cache()


def test_cuda_ragged_batch_and_continuous_batching_equal_one_at_a_time():
    model = tiny_model("tiny-gemma2", std=0.3).to(DEV)  # soft-capping, alternating sliding-window layers
    batch = generate(model, PROMPTS, max_new_tokens=15, compile=True)
    alone = [generate(model, [p], max_new_tokens=15, compile=True)[0].tokens for p in PROMPTS]
    assert [o.tokens for o in batch] == alone
    # the server's scheduler on the device: CUDA graphs, host reads every 8 steps, fewer rows than requests
    sched = Scheduler(model, max_batch=2, max_len=64, prefill_chunk=4)
    assert sched.sync_every == 8
    reqs = [sched.submit(Request(p, max_new_tokens=15)) for p in PROMPTS]
    sched.run_until_idle()
    assert [r.tokens for r in reqs] == alone


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
def test_cuda_ring_buffer_equals_full_attention_over_several_windows(name):
    model = tiny_model(name, std=0.3).to(DEV)
    T, chunk = 60, 3  # 7.5 windows of 8
    tok = torch.randint(0, 512, (2, T), generator=torch.Generator().manual_seed(1)).to(DEV)
    with torch.inference_mode():
        full = model(tok)
        model.setup_cache(2, T, prefill_chunk=chunk)
        parts = [model(tok[:, s : s + chunk], torch.arange(s, s + chunk, device=DEV)) for s in range(0, 21, chunk)]
        parts += [model(tok[:, t : t + 1], torch.tensor([t], device=DEV)) for t in range(21, T)]
        model.clear_cache()
    cached = torch.cat(parts, dim=1)
    assert (cached - full).abs().max() <= 1e-4 * full.abs().max()


QUANT_CASES = [(Int8Linear, ()), (Int4Linear, (32,)), (Int4Linear, (128,))]


def _quantized_linear(cls, args, M):
    torch.manual_seed(2)
    w, x = torch.randn(768, 512) * 0.05, torch.randn(M, 512).bfloat16()
    m = cls.from_float(w, *args, torch.bfloat16).to(DEV)
    prepare_quantized(m)  # tinygemm's layout on the GPU
    return m, x.to(DEV), x.float() @ m.dequantized().cpu().T


@pytest.mark.parametrize("cls,args", QUANT_CASES)
@pytest.mark.parametrize("M", [1, 5, 40])
def test_cuda_quantized_linear_eager_matches_its_dequantized_weights(cls, args, M):
    m, x, ref = _quantized_linear(cls, args, M)  # no compiling: quick, run this first on a lent GPU (-k eager)
    assert (m(x).float().cpu() - ref).abs().max() <= 0.01 * ref.abs().max()


@pytest.mark.parametrize("cls,args", QUANT_CASES)
@pytest.mark.parametrize("M", [1, 40])  # one-row decode (inductor's reduction) and a matmul
def test_cuda_quantized_linear_compiled_matches_its_dequantized_weights(cls, args, M):
    m, x, ref = _quantized_linear(cls, args, M)
    compiled = torch.compile(m, fullgraph=True, options=decode_compile_options(DEV))(x).float().cpu()
    assert (compiled - ref).abs().max() <= 0.01 * ref.abs().max()


@pytest.mark.parametrize("mode,embedding", [("int8", "int8"), ("int4", "int4"), ("int4", "int4+int8")])
def test_cuda_quantized_model_matches_the_cpu_kernels_and_compiles(mode, embedding):
    cpu = quantize_model(tiny_model("tiny-gemma3", std=0.1, **WIDE), mode, group_size=32, embedding=embedding)
    gpu = copy.deepcopy(cpu).to(DEV)
    prepare_quantized(gpu)  # tinygemm's layout on the GPU differs from the CPU kernel's
    tok = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a, b = cpu(tok).float(), gpu(tok.to(DEV)).float().cpu()
    assert (a - b).abs().max() <= 0.05 * a.abs().max()  # same weights, bf16 activations, other kernels
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
    # teacher-forced decode, eager vs compiled (CUDA graphs): the same logits up to bf16 rounding
    step = torch.compile(
        lambda m, t, p: m(t, p)[:, -1].float(), fullgraph=True, dynamic=False, options=decode_compile_options(DEV)
    )
    outs = {}
    with torch.inference_mode():
        for label, fn in (("eager", lambda m, t, p: m(t, p)[:, -1].float()), ("compiled", step)):
            gpu.setup_cache(2, 64, prefill_chunk=8)
            gpu(tok[:, :8].to(DEV), torch.arange(8, device=DEV))
            outs[label] = torch.stack(
                [fn(gpu, tok[:, t : t + 1].to(DEV), torch.tensor([t], device=DEV)).clone() for t in range(8, 30)]
            )
    e, c = outs["eager"], outs["compiled"]
    assert (e - c).abs().max() <= 0.05 * e.abs().max()
    assert (e.argmax(-1) == c.argmax(-1)).float().mean() >= 0.9


# -- the Triton GEMV kernel (opengemma/kernels.py): compiled for the GPU, autotuned ----------------------------
@pytest.mark.parametrize("fmt", [0, 1, 2])
@pytest.mark.parametrize("M,N,K", [(1, 2048, 16384), (3, 2560, 2048), (1, 1000, 640)])
def test_cuda_gemv_kernel_equals_float64(fmt, M, N, K):
    from opengemma import kernels

    gs = 32
    x = torch.randn(M, K).bfloat16()
    ref, args = gemv_reference(fmt, x, torch.randn(N, K), gs)
    w, s, z = (a.to(DEV) for a in args)
    y = kernels.gemv(x.to(DEV), w, fmt, s, z, gs)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    assert (y.double().cpu() - ref).abs().max() <= 0.01 * ref.abs().max()  # bf16 output rounding


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_cuda_gemv_decode_compiled_equals_eager_in_one_graph(mode):

    model = tiny_model("tiny-gemma3", std=0.1, **WIDE)
    if mode is not None:
        model = quantize_model(model, mode, group_size=32, embedding=mode)
    model = set_gemv(model.to(DEV).to(torch.bfloat16) if mode is None else model.to(DEV))
    prepare_quantized(model)
    skips = cudagraph_skips()
    for prompts in (PROMPTS[:2], PROMPTS[:1]):  # M = 2 and M = 1 in every product of the decode step
        eager = generate(model, prompts, max_new_tokens=16, compile=False)
        compiled = generate(model, prompts, max_new_tokens=16, compile=True)
        assert [o.tokens for o in compiled] == [o.tokens for o in eager]
    assert cudagraph_skips() == skips, "the decode step with the Triton kernel fell back from CUDA graphs"
