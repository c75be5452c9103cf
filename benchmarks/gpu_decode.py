"""GPU decode benchmark: gemma-2b and gemma-7b with random bf16 weights, against the memory-bandwidth
roofline and transformers' eager generate, measured in the same run.

    python benchmarks/gpu_decode.py [--models gemma-2b,gemma-7b] [--batches 8,32,128] [--steps 128]
                                    [--budget-s 420] [--out DIR]
    python benchmarks/gpu_decode.py --device cpu --models tiny-gemma --batches 2 --steps 8   # dry run

Measures, in order of importance (a lent GPU has minutes, so each stage checks --budget-s first and the
results file is rewritten after every stage): the copy bandwidth (device-to-device copy of 2 GiB, bytes
read + written); per model the roofline tok/s = bandwidth / bytes read per token; opengemma batch-1 decode
(compiled step + CUDA graphs) in bf16, int8 and int4 (group 32, output matrix int8), each also with the
Triton GEMV kernel (mode suffix -gemv, opengemma/kernels.py); transformers eager
generate at batch 1; decode throughput at larger batches; prefill tok/s of a 2048-token prompt. Compile
times, and whether any CUDA graph was skipped, are recorded too. Writes <out>/gpu_decode.json and, on a
GPU, a kernel profile of a few bf16 decode steps (<out>/gpu_profile_<model>.txt).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch

T0 = time.perf_counter()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device, gib: float = 2.0) -> float:
    n = int(gib * 2**30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        b.copy_(a)
    sync(device)
    dt = (time.perf_counter() - t) / reps
    del a, b
    return 2 * n * 2 / dt  # read + write, bytes/s


def random_model(name: str, device, dtype=torch.bfloat16):
    from opengemma.config import GemmaConfig
    from opengemma.model import Gemma

    cfg = GemmaConfig.from_name(name)
    with torch.device("meta"):
        model = Gemma(cfg)
    model.to_empty(device=device)
    model.init_rope()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0, 0.02) if not n.endswith("norm.weight") else p.zero_()
    return model.to(dtype).eval()


def bytes_per_token(model) -> int:
    """Bytes a batch-1 decode step must read: every weight once (the tied embedding as the output matrix;
    int4 layers through their kernel layout), not the KV cache or RoPE tables."""
    from opengemma.model import KVCache
    from opengemma.qlinear import RESCORE_K, Int4Linear, RescoredEmbedding

    skip, total = set(), 0
    for m in model.modules():
        if isinstance(m, KVCache):
            skip.update(id(t) for t in m.buffers())
        if isinstance(m, Int4Linear):  # the portable copy is only read row-wise by the embedding lookup
            skip.update((id(m.qweight), id(m.scales), id(m.zeros)))
        if isinstance(m, RescoredEmbedding):  # of the int8 table, decode reads only the rescored rows
            skip.update((id(m.table.weight), id(m.table.scales)))
            total += RESCORE_K * (m.embedding_dim + m.table.scales.element_size())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) not in skip and not name.startswith(("slot_pos", "inv_freq")):
            total += t.numel() * t.element_size()
    return total


def time_decode(model, batch: int, steps: int, prompt_len: int = 16) -> dict:
    """Decode tok/s summed over the batch, with the engine's generate loop (compiled step, CUDA graphs)."""
    from torch._dynamo.utils import counters

    from opengemma.engine.generate import generate

    device = model.norm.weight.device
    prompts = [[2] + list(range(100 + b, 100 + b + prompt_len - 1)) for b in range(batch)]
    kw = dict(compile=True, sync_every=16 if device.type == "cuda" else 1)
    skips = counters["inductor"]["cudagraph_skips"]
    t = time.perf_counter()
    generate(model, prompts, max_new_tokens=steps, **kw)  # compile and record at these shapes
    compile_s = time.perf_counter() - t
    generate(model, prompts, max_new_tokens=1, **kw)
    runs = []
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        generate(model, prompts, max_new_tokens=1, **kw)
        sync(device)
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        out = generate(model, prompts, max_new_tokens=steps, **kw)
        sync(device)
        tn = time.perf_counter() - t
        assert all(len(o.tokens) == steps for o in out)
        runs.append(batch * (steps - 1) / (tn - t1))
    return {
        "tok_s": sorted(runs)[1],
        "runs": runs,
        "first_call_s": compile_s,
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips,
    }


def time_prefill(model, tokens: int = 2048) -> float:
    device = model.norm.weight.device
    x = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    with torch.inference_mode():
        model(x, last_only=True)
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            model(x, last_only=True)
        sync(device)
    return 3 * tokens / (time.perf_counter() - t)


def transformers_decode(name: str, device, steps: int) -> float:
    import transformers

    from opengemma.config import GemmaConfig

    cfg = GemmaConfig.from_name(name).to_hf_config()
    hf_cfg = transformers.GemmaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = transformers.GemmaForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    ids = torch.tensor([[2] + list(range(100, 115))], device=device)
    gen = lambda n: model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
    )
    gen(4)
    sync(device)
    t = time.perf_counter()
    gen(1)
    sync(device)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    gen(steps)
    sync(device)
    tn = time.perf_counter() - t
    model = None  # free it (gen, which reads it, is done)
    return (steps - 1) / (tn - t1)


def profile_decode(model, path: Path, steps: int = 8) -> None:
    """Kernel times of a few batch-1 decode steps (after time_decode compiled them)."""
    from opengemma.engine.generate import generate

    prompts = [[2] + list(range(100, 115))]
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        generate(model, prompts, max_new_tokens=steps, compile=True, sync_every=16)
        torch.cuda.synchronize()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-2b,gemma-7b")
    ap.add_argument("--batches", default="8,32,128", help="batch sizes beyond 1, for the first model")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip stages once this much time has passed")
    ap.add_argument("--skip", default="", help="comma list of stages to skip: transformers,batches,prefill")
    ap.add_argument(
        "--modes",
        default="bf16,bf16-gemv,int8,int8-gemv,int4,int4-gemv,int4r,int4r-gemv",
        help="decode modes at batch 1 (int4: int8 output matrix; int4r: the int4+int8 output layer; "
        "-gemv: products through opengemma's Triton GEMV kernel, opengemma/kernels.py)",
    )
    ap.add_argument(
        "--no-cd-tuning",
        action="store_true",
        help="compile without coordinate-descent tuning (one-row matmuls stay cuBLAS calls)",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.no_cd_tuning:  # an experiment switch: the engine's options minus coordinate-descent tuning
        import opengemma.engine.generate as engine

        default_options = engine.decode_compile_options
        engine.decode_compile_options = lambda dev: (
            {k: v for k, v in (default_options(dev) or {}).items() if k != "coordinate_descent_tuning"} or None
        )
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bw = copy_bandwidth(device, 2.0 if device.type == "cuda" else 0.25)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "args": vars(args),
        "torch": torch.__version__,
        "copy_bandwidth_GBps": bw / 1e9,
        "steps": args.steps,
        "models": {},
        "skipped": [],
    }
    print(f"device: {results['device']}; copy bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}", flush=True)
    names = args.models.split(",")
    models = {name: random_model(name, device) for name in names}
    for name in names:
        results["models"][name] = {
            "weight_GB": bytes_per_token(models[name]) / 1e9,
            "roofline_tok_s": bw / bytes_per_token(models[name]),
        }

    def stage(label, fn, cost_s=60):
        """Run fn() unless the budget is spent; record and print the result, rewrite the JSON."""
        if time.perf_counter() - T0 + cost_s > args.budget_s:
            results["skipped"].append(label)
            print(f"[{time.perf_counter() - T0:5.0f}s] skip {label} (budget)", flush=True)
            return None
        t = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # report, keep the rest of the run
            value = {"error": repr(e)[:400]}
        print(f"[{time.perf_counter() - T0:5.0f}s] {label} ({time.perf_counter() - t:.0f}s): {value}", flush=True)
        (out / "gpu_decode.json").write_text(json.dumps(results, indent=2))
        return value

    def decode(name, mode, batch=1):
        from opengemma.engine.generate import set_gemv

        model = models[name]
        base, gemv = mode.removesuffix("-gemv"), mode.endswith("-gemv")  # -gemv: the Triton GEMV kernel
        if base != "bf16":
            from opengemma.quantize import quantize_model

            # int4: an int8 output matrix (as measured before); int4r: the int4+int8 output layer
            model = quantize_model(
                copy.deepcopy(model),
                "int4" if base == "int4r" else base,
                group_size=32,
                embedding="int4+int8" if base == "int4r" else "int8",
            )
        set_gemv(model, gemv)
        try:
            r = time_decode(model, batch, args.steps)
            if batch == 1:
                r["bytes_per_token_GB"] = bytes_per_token(model) / 1e9
                r["roofline_tok_s"] = bw / bytes_per_token(model)
                r["vs_roofline"] = r["tok_s"] / r["roofline_tok_s"]
            results["models"][name][f"{mode}_batch{batch}"] = r
            if base == "bf16" and batch == 1 and device.type == "cuda":
                profile_decode(model, out / f"gpu_profile_{name}{'_gemv' if gemv else ''}.txt")
            return r
        finally:
            set_gemv(model, False)
            if base != "bf16":
                del model
                gc.collect()
                torch.cuda.empty_cache() if device.type == "cuda" else None

    def hf(name):
        r = results["models"][name]
        r["transformers_eager_tok_s"] = transformers_decode(name, device, args.steps)
        if "bf16_batch1" in r:
            r["speedup_vs_transformers"] = r["bf16_batch1"]["tok_s"] / r["transformers_eager_tok_s"]
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
        return r["transformers_eager_tok_s"]

    def prefill(name):
        from opengemma.model import Attention

        r = results["models"][name]
        for flag, key in ((True, "prefill_2048_tok_s"), (False, "prefill_2048_grouped_bmm_tok_s")):
            Attention.use_sdpa = flag
            r[key] = time_prefill(models[name])
        Attention.use_sdpa = True
        return {k: v for k, v in r.items() if k.startswith("prefill")}

    def sdpa_backends():
        """Which fused kernel takes a prefill chunk of gemma-2b's shape (boolean mask, 8 query heads on
        1 key/value head), and how fast each is."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        T = 1024
        q = torch.randn(1, 8, T, 256, device=device, dtype=torch.bfloat16)
        k = v = torch.randn(1, 1, T, 256, device=device, dtype=torch.bfloat16)
        mask = torch.ones(T, T, dtype=torch.bool, device=device).tril().view(1, 1, T, T)
        r = {}
        for backend in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.MATH,
        ):
            for gqa in (True, False):
                kk, vv = (k, v) if gqa else (k.expand(1, 8, T, 256), v.expand(1, 8, T, 256))
                try:
                    with sdpa_kernel([backend]):
                        fn = lambda: torch.nn.functional.scaled_dot_product_attention(
                            q, kk, vv, attn_mask=mask, enable_gqa=gqa
                        )
                        fn()
                        sync(device)
                        t = time.perf_counter()
                        for _ in range(10):
                            fn()
                        sync(device)
                    r[f"{backend.name} gqa={gqa}"] = f"{(time.perf_counter() - t) / 10 * 1e6:.0f} us"
                except Exception as e:
                    r[f"{backend.name} gqa={gqa}"] = repr(e)[:120]
        results["sdpa_backends"] = r
        return r

    first = names[0]
    plan = []
    modes = args.modes.split(",")
    for name in names:
        for mode in ("bf16", "bf16-gemv"):
            if mode in modes:
                plan.append((f"{name} {mode} batch 1", lambda n=name, m=mode: decode(n, m), 90))
        if "transformers" not in skip:
            plan.append((f"{name} transformers eager", lambda n=name: hf(n), 30))
    for mode in ("int8-gemv", "int8"):
        if mode in modes:
            plan += [(f"{name} {mode} batch 1", lambda n=name, m=mode: decode(n, m), 90) for name in names]
    if "prefill" not in skip:
        if device.type == "cuda":
            plan.append(("sdpa backends", sdpa_backends, 5))
        plan += [(f"{name} prefill", lambda n=name: prefill(n), 10) for name in names]
    for mode in ("int4-gemv", "int4r-gemv", "int4", "int4r"):
        if mode in modes:
            plan += [(f"{name} {mode} batch 1", lambda n=name, m=mode: decode(n, m), 90) for name in names]
    if "batches" not in skip:
        plan += [
            (f"{first} bf16 batch {b}", lambda b=b: decode(first, "bf16", b), 60)
            for b in map(int, filter(None, args.batches.split(",")))
        ]
    for label, fn, cost in plan:
        stage(label, fn, cost)
    print(json.dumps(results, indent=2))
    print(f"wrote {out / 'gpu_decode.json'}")


if __name__ == "__main__":
    main()
