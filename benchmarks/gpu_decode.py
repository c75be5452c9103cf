"""GPU decode benchmark: gemma-2b and gemma-7b with random bf16 weights, against the memory-bandwidth
roofline and transformers' eager generate, measured in the same run.

    python benchmarks/gpu_decode.py [--models gemma-2b,gemma-7b] [--batches 1,8,32,128] [--steps 128]
    python benchmarks/gpu_decode.py --device cpu --models tiny-gemma --batches 1,2 --steps 8   # dry run

Per model: measured copy bandwidth (a device-to-device copy of 2 GiB), roofline tok/s = bandwidth /
weight bytes, opengemma batch-1 decode tok/s (compiled decode step + CUDA graphs; bf16 and int8),
transformers eager generate (batch 1), decode throughput at each batch size, prefill tok/s.
Writes benchmarks/results/gpu_decode.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch


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


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               if t.dtype != torch.float32 or t.numel() > 1_000_000)


def time_decode(model, batch: int, steps: int, prompt_len: int = 16, compile: bool = True) -> tuple[float, float]:
    """(decode tok/s summed over the batch, prefill tok/s) with the engine's generate loop."""
    from opengemma.engine.generate import generate

    device = model.norm.weight.device
    prompts = [[2] + list(range(100 + b, 100 + b + prompt_len - 1)) for b in range(batch)]
    kw = dict(compile=compile, sync_every=16 if device.type == "cuda" else 1)
    generate(model, prompts, max_new_tokens=steps, **kw)  # compile / warm up at these shapes
    generate(model, prompts, max_new_tokens=1, **kw)
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
    return batch * (steps - 1) / (tn - t1), batch * prompt_len / t1


def time_prefill(model, tokens: int = 2048) -> float:
    device = model.norm.weight.device
    x = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    with torch.inference_mode():
        model(x, last_only=True)
        sync(device)
        t = time.perf_counter()
        model(x, last_only=True)
        sync(device)
    return tokens / (time.perf_counter() - t)


def transformers_decode(name: str, device, steps: int) -> float:
    import transformers

    from opengemma.config import GemmaConfig

    cfg = GemmaConfig.from_name(name).to_hf_config()
    hf_cfg = transformers.GemmaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with torch.device(device):
        model = transformers.GemmaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    ids = torch.tensor([[2] + list(range(100, 115))], device=device)
    gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    gen(4)
    sync(device)
    t = time.perf_counter(); gen(1); sync(device); t1 = time.perf_counter() - t
    t = time.perf_counter(); gen(steps); sync(device); tn = time.perf_counter() - t
    del model
    return (steps - 1) / (tn - t1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gemma-2b,gemma-7b")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    bw = copy_bandwidth(device, 2.0 if device.type == "cuda" else 0.25)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
          f"copy bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}")
    results = {"device": str(device), "copy_bandwidth_GBps": bw / 1e9, "models": {}}
    for name in args.models.split(","):
        r: dict = {}
        model = random_model(name, device)
        wb = weight_bytes(model)
        r["weight_GB"] = wb / 1e9
        r["roofline_tok_s"] = bw / wb
        tps, _ = time_decode(model, 1, args.steps)
        r["bf16_batch1_tok_s"] = tps
        r["bf16_vs_roofline"] = tps / r["roofline_tok_s"]
        r["prefill_tok_s"] = time_prefill(model)
        r["batch_tok_s"] = {}
        for b in map(int, args.batches.split(",")):
            try:
                r["batch_tok_s"][b] = time_decode(model, b, args.steps)[0]
            except torch.OutOfMemoryError:
                r["batch_tok_s"][b] = None
        if not args.no_int8:
            from opengemma.quantize import quantize_model

            quantize_model(model, "int8")
            r["int8_batch1_tok_s"] = time_decode(model, 1, args.steps)[0]
            r["int8_roofline_tok_s"] = bw / weight_bytes(model)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_transformers:
            try:
                r["transformers_eager_tok_s"] = transformers_decode(name, device, args.steps)
                r["speedup_vs_transformers"] = r["bf16_batch1_tok_s"] / r["transformers_eager_tok_s"]
            except Exception as e:  # report, don't lose the rest of the run
                r["transformers_error"] = repr(e)[:300]
        results["models"][name] = r
        print(json.dumps({name: r}, indent=2), flush=True)
    out = Path(__file__).parent / "results" / "gpu_decode.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
