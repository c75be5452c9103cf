"""The decode step's matrix-vector products one at a time, on a GPU: opengemma's Triton GEMV kernel
(opengemma/kernels.py) against torch's kernels for the same product, as bandwidth (weight bytes / time) and
as a fraction of the copy bandwidth measured in the same run.

    python benchmarks/gpu_gemv.py [--models gemma-2b,gemma-7b] [--rows 1,4] [--out DIR]
    TRITON_INTERPRET=1 python benchmarks/gpu_gemv.py --device cpu --models tiny-gemma   # dry run, no GPU

Per model, the products of one decode step (fused q|k|v, o, fused gate|up, down, the tied output matrix) in
bf16, int8 (per-row scales) and int4 (groups of 32). torch's side: F.linear (cuBLAS) for bf16; for int8 and
int4 what the engine runs without the kernel, compiled with the engine's decode options (inductor's
reductions with coordinate-descent tuning; tinygemm for int4). Each timed with CUDA-graph replay
(triton.testing.do_bench_cudagraph), so launch overhead is out as it is in the engine's decode step.
Writes <out>/gpu_gemv.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

T0 = time.perf_counter()


def shapes(name: str) -> dict[str, tuple[int, int]]:
    from opengemma.config import GemmaConfig

    c = GemmaConfig.from_name(name)
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    return {
        "qkv": (qkv, c.d_model),
        "o": (c.d_model, c.n_heads * c.head_dim),
        "gate_up": (2 * c.d_ff, c.d_model),
        "down": (c.d_model, c.d_ff),
        "output": (c.vocab_size, c.d_model),
    }


def bench(fn, device) -> float:
    """Seconds per call: CUDA-graph replay on a GPU; a plain timer for a CPU dry run."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench_cudagraph(fn, rep=50) / 1e3
    fn()
    t = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - t) / 3


def main() -> None:
    from opengemma import kernels
    from opengemma.engine.generate import decode_compile_options
    from opengemma.qlinear import Int4Linear, Int8Linear

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-2b,gemma-7b")
    ap.add_argument("--rows", default="1,4", help="rows of x (batch at decode); the second only for the first model")
    ap.add_argument("--budget-s", type=float, default=1e9)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a = torch.empty(2**30 if dev.type == "cuda" else 2**26, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    t_copy = bench(lambda: b.copy_(a), dev)
    bw = 2 * a.numel() / t_copy
    a = b = None  # free the buffers (the timed lambda is done with them)
    results = {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_bandwidth_GBps": bw / 1e9,
        "products": [],
    }
    print(f"{results['device']}: copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(
        f"{'model':9} {'product':8} {'N x K':>14} {'M':>2} {'fmt':5} {'triton GB/s':>11} {'of copy':>7} "
        f"{'torch GB/s':>10} {'of copy':>7} {'triton/torch':>12}"
    )
    opts = decode_compile_options(dev)
    torch._dynamo.config.cache_size_limit = 64  # Int8Linear.forward compiles once per shape
    for mi, name in enumerate(args.models.split(",")):
        for label, (N, K) in shapes(name).items():
            w = torch.randn(N, K, device=dev) * 0.02
            for fmt in ("bf16", "int8", "int4"):
                if fmt == "bf16":
                    lin = torch.nn.Linear(K, N, bias=False, device=dev, dtype=torch.bfloat16)
                    lin.weight.data.copy_(w)
                    nbytes = N * K * 2
                    ours = lambda x: kernels.gemv(x, lin.weight)
                elif fmt == "int8":
                    lin = Int8Linear.from_float(w, torch.bfloat16)
                    nbytes = N * K + N * 2
                    ours = lambda x: kernels.gemv(x, lin.weight, kernels.INT8, lin.scales)
                else:
                    lin = Int4Linear.from_float(w, 32, torch.bfloat16)
                    lin.prepare()
                    nbytes = N * K // 2 + 2 * N * (K // 32) * 2
                    ours = lambda x: kernels.gemv(x, lin.qweight, kernels.INT4, lin.scales, lin.zeros, 32)
                # int8's torch side is inductor's reduction, compiled per shape (~10 s each): first model only
                compiled = fmt == "int8" and mi == 0
                torch_fn = torch.compile(lin, fullgraph=True, options=opts) if compiled else lin
                for M in map(int, args.rows.split(",")):
                    if M > 1 and (mi > 0 or compiled):
                        continue
                    if time.perf_counter() - T0 > args.budget_s:
                        results["skipped"] = "budget"
                        break
                    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
                    ref = torch_fn(x).float()
                    err = ((ours(x).float() - ref).abs().max() / ref.abs().max()).item()
                    t_ours, t_torch = bench(lambda: ours(x), dev), bench(lambda: torch_fn(x), dev)
                    r = {
                        "model": name,
                        "product": label,
                        "N": N,
                        "K": K,
                        "M": M,
                        "fmt": fmt,
                        "bytes": nbytes,
                        "torch_kernel": {"bf16": "cuBLAS (F.linear)", "int4": "tinygemm (_weight_int4pack_mm)"}.get(
                            fmt, "inductor reduction, compiled" if compiled else "eager: bf16 copy + F.linear"
                        ),
                        "triton_us": t_ours * 1e6,
                        "torch_us": t_torch * 1e6,
                        "triton_GBps": nbytes / t_ours / 1e9,
                        "torch_GBps": nbytes / t_torch / 1e9,
                        "rel_err_vs_torch": err,
                        "split": kernels.split_k(N, K, 32 if fmt == "int4" else kernels.CHUNK, kernels._sms(dev)),
                    }
                    results["products"].append(r)
                    print(
                        f"{name:9} {label:8} {N:>7}x{K:<6} {M:>2} {fmt:5} {r['triton_GBps']:11.0f} "
                        f"{r['triton_GBps'] * 1e9 / bw:7.0%} {r['torch_GBps']:10.0f} {r['torch_GBps'] * 1e9 / bw:7.0%} "
                        f"{t_torch / t_ours:11.2f}x  (err {err:.1e}, split {r['split']})",
                        flush=True,
                    )
                    (out / "gpu_gemv.json").write_text(json.dumps(results, indent=2))
                lin = torch_fn = None  # free them before the next format
            del w
            torch.cuda.empty_cache() if dev.type == "cuda" else None
    # per model and format: a decode step's products (M = 1): each layer's four, n_layers times, plus the output
    for name in args.models.split(","):
        from opengemma.config import GemmaConfig

        L = GemmaConfig.from_name(name).n_layers
        for fmt in ("bf16", "int8", "int4"):
            rs = [r for r in results["products"] if r["model"] == name and r["fmt"] == fmt and r["M"] == 1]
            if len(rs) == 5:
                times = lambda r: 1 if r["product"] == "output" else L
                nbytes = sum(r["bytes"] * times(r) for r in rs)
                t_o = sum(r["triton_us"] * times(r) for r in rs)
                t_t = sum(r["torch_us"] * times(r) for r in rs)
                print(
                    f"{name} {fmt}: one decode step's products, triton {nbytes / t_o / 1e3:.0f} GB/s, torch "
                    f"{nbytes / t_t / 1e3:.0f} GB/s ({t_t / t_o:.2f}x)"
                )
    print(f"wrote {out / 'gpu_gemv.json'}")


if __name__ == "__main__":
    main()
