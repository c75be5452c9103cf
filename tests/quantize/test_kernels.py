"""The Triton GEMV kernel (opengemma/kernels.py) against float64 matmuls, and the modules that route their
few-row products through it. Without a GPU it runs through Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1): same kernel source, same index arithmetic and masks; the GPU tier (tests/engine/test_cuda.py)
runs it compiled, inside the CUDA-graph decode step."""

import copy

import pytest
import torch
from helpers import explain_decode_step, gemv_reference, tiny_model

from opengemma import kernels
from opengemma.engine.generate import generate, set_gemv
from opengemma.model import Linear
from opengemma.qlinear import Int4Linear, Int8Linear
from opengemma.quantize import quantize_model

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() and not kernels.INTERPRET,
    reason="on a GPU, tests/engine/test_cuda.py runs the compiled kernel",
)


@pytest.mark.parametrize("fmt", [kernels.FLOAT, kernels.INT8, kernels.INT4])
@pytest.mark.parametrize(
    "M,N,K,group_size,split",
    [
        (1, 40, 256, 32, 1),  # N not a multiple of the 16-row tile
        (3, 24, 512, 64, 2),  # rows padded to 4, two partial sums
        (4, 17, 1024, 32, 4),  # chunks per split (8) not a multiple of the 4 chunks a step: masked tail
        (2, 33, 2048, 128, 8),  # int4 groups of 128
    ],
)
def test_gemv_equals_float64_matmul(fmt, M, N, K, group_size, split):
    gs = group_size if fmt == kernels.INT4 else kernels.CHUNK
    if K // gs % split:
        split = 1
    x = torch.randn(M, K).bfloat16()
    ref, (w, s, z) = gemv_reference(fmt, x, torch.randn(N, K), gs)
    out = torch.ops.opengemma.gemv(x, w, s, z, fmt, gs, split)  # (split, M, N) float32 partial sums
    assert out.shape == (split, M, N)
    # float32 accumulation of K products: error ~ sqrt(K) * eps32 * |terms|, far below bf16 rounding
    assert (out.double().sum(0) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_split_k_gives_every_multiprocessor_rows_and_divides_k():
    # gemma-2b on an H100/H200 (132 SMs): the down projection (2,048 rows, K = 16,384) splits 8 ways, the
    # output matrix (256,000 rows) not at all
    assert kernels.split_k(2048, 16384, 32, 132) == 8
    assert kernels.split_k(256000, 2048, 32, 132) == 1
    assert kernels.split_k(2048, 2048, 32, 132) == 8  # capped: at least 8 chunks (256 elements) per split
    for N, K in [(2560, 2048), (3072, 24576), (100, 96), (7, 64 * 1024)]:
        s = kernels.split_k(N, K, 32, 132)
        assert s & (s - 1) == 0 and (K // 32) % s == 0 and (s == 1 or K // 32 // s >= 8)


def close(a, b, rel):
    return (a.float() - b.float()).abs().max() <= rel * b.float().abs().max()


@pytest.mark.parametrize("M", [1, 2, 4, 5])
def test_modules_route_few_rows_through_the_kernel(M, monkeypatch):
    calls = []
    real = kernels.gemv
    monkeypatch.setattr(kernels, "gemv", lambda *a, **k: calls.append(a[2] if len(a) > 2 else 0) or real(*a, **k))
    w = torch.randn(96, 128)
    x = torch.randn(M, 128).bfloat16()
    flin = Linear(128, 96, bias=False).bfloat16()
    flin.weight.data.copy_(w)
    mods = [flin, Int8Linear.from_float(w, torch.bfloat16), Int4Linear.from_float(w, 32, torch.bfloat16)]
    mods[2].prepare()
    for mod in mods:
        off = mod(x)
        mod.gemv = True
        on = mod(x)
        assert on.dtype == off.dtype == torch.bfloat16 and on.shape == (M, 96)
        assert close(on, off, 0.02)  # the two paths round differently in bf16; both are the layer's product
    # M <= GEMV_MAX_M goes to the kernel in each format; more rows use torch's kernels
    assert calls == ([kernels.FLOAT, kernels.INT8, kernels.INT4] if M <= kernels.GEMV_MAX_M else [])
    biased = Linear(128, 96).bfloat16()  # the kernel has no bias: such a layer keeps torch's, bias included
    biased.gemv = True
    assert torch.equal(biased(x), torch.nn.functional.linear(x, biased.weight, biased.bias))
    assert len(calls) == (3 if M <= kernels.GEMV_MAX_M else 0)


@pytest.mark.parametrize("mode", [None, "int8", "int4"])
def test_model_with_gemv_gives_the_same_logits_and_tokens(mode):
    model = tiny_model("tiny-gemma3", std=0.3)
    if mode is not None:
        model = quantize_model(model, mode, group_size=32, dtype=torch.float32, embedding=mode)
    gm = set_gemv(copy.deepcopy(model))
    flags = [m.gemv for m in gm.modules() if hasattr(type(m), "gemv")]
    assert flags and all(flags) and not any(m.gemv for m in model.modules() if hasattr(type(m), "gemv"))
    tok = torch.tensor([[2, 17, 99, 5]])
    with torch.inference_mode():  # one row at a time: the kernel's shapes in decode
        for t in range(tok.shape[1]):
            a, b = model(tok[:, : t + 1])[:, -1], gm(tok[:, : t + 1])[:, -1]
            assert close(b, a, 1e-4)  # float32 activations: only the summation order differs
    prompts = [[2, 7, 8, 9], [2, 40, 41]]  # batch of 2 ragged rows: M = 2 in every decode product
    ref = [o.tokens for o in generate(model, prompts, max_new_tokens=6)]
    assert [o.tokens for o in generate(gm, prompts, max_new_tokens=6)] == ref


def test_set_gemv_off_restores_torch_kernels():
    model = set_gemv(tiny_model("tiny-gemma", std=0.1))
    set_gemv(model, False)
    assert not any(m.gemv for m in model.modules() if hasattr(type(m), "gemv"))


@pytest.mark.parametrize("mode", [None, "int4+int8"])
def test_decode_step_with_gemv_is_one_graph_and_compiles_to_the_eager_tokens(mode):
    # On CPU the interpreter's kernel is an opaque op (a GPU inlines the Triton kernel): this checks that the
    # modules' dispatch, the split choice and the op trace as one graph, and that the compiled step agrees
    model = tiny_model("tiny-gemma3", std=0.3)
    if mode is not None:
        model = quantize_model(model, "int4", group_size=32, dtype=torch.float32, embedding=mode)
    explanation = explain_decode_step(set_gemv(model))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert "opengemma.gemv" in str(explanation.graphs[0].graph)
    if mode is None:  # one compile (~30 s on 2 cores) is enough for the tier
        prompts = [[2, 7, 8, 9], [2, 40, 41]]
        ref = [o.tokens for o in generate(model, prompts, max_new_tokens=6)]
        assert [o.tokens for o in generate(model, prompts, max_new_tokens=6, compile=True)] == ref


AOT = r"""
import json, os, subprocess, sys
import torch
torch.cuda.is_available = lambda: True  # define the kernels as for a GPU (compiled only, never launched)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from opengemma import kernels as K
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
types = {0: "*bf16", 1: "*i8", 2: "*u8"}
out = []
for (fmt, m_pad), tuned in K._TUNED.items():
    if m_pad == 2:
        continue
    gs = 32
    for c in tuned.configs:
        sig = {"x_ptr": "*bf16", "w_ptr": types[fmt], "s_ptr": "*bf16", "z_ptr": "*bf16", "out_ptr": "*fp32",
               "M": "i32", **{k: "constexpr" for k in ("N", "K", "FMT", "GS", "CH", "M_PAD", "SPLIT", "BLOCK_N", "NG")}}
        consts = dict(N=2048, K=16384, FMT=fmt, GS=gs, CH=gs // 2 if fmt == 2 else gs, M_PAD=m_pad, SPLIT=8, **c.kwargs)
        k = triton.compile(ASTSource(fn=K._gemv_kernel, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": c.num_warps, "num_stages": c.num_stages})
        path = sys.argv[1] + f"/k{len(out)}.cubin"
        open(path, "wb").write(k.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        fields = dict(f.split(":") for line in usage.splitlines() if "REG:" in line for f in line.split())
        out.append({"fmt": fmt, "m_pad": m_pad, **c.kwargs, "warps": c.num_warps, "regs": int(fields["REG"]),
                    "stack": int(fields["STACK"])})
print(json.dumps(out))
"""


def test_kernel_compiles_for_hopper_without_register_spills(tmp_path):
    # Triton's own compiler (not the interpreter) builds every autotuned config for sm_90 (H100/H200) at
    # gemma-2b's down projection, 1 and 4 rows: it compiles, and no config spills registers to the stack
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", AOT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    configs = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(configs) == 10 + 7 + 10 + 7 + 10 + 10  # (float, int8, int4) x (1, 4 rows), pruned lists
    spilled = [c for c in configs if c["stack"] > 0]
    assert not spilled, spilled


def test_available_only_for_few_rows_and_whole_chunks():
    assert kernels.available(torch.zeros(4, 128)) and kernels.available(torch.zeros(1, 128), 64)
    assert not kernels.available(torch.zeros(5, 128))  # more rows: torch's kernels
    assert not kernels.available(torch.zeros(1, 100))  # K not in whole 32-element chunks
    assert not kernels.available(torch.zeros(1, 96), 64) and not kernels.available(torch.zeros(1, 96), 48)
