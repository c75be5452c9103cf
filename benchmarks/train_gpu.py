"""GPU training benchmark: gemma-2b (random init) at 8 x 2048 and 2 x 8192 tokens per step, opengemma against
transformers' GemmaForCausalLM of the same config on the same recipe, measured in the same run; gemma-7b ours
only, FSDP2 on one rank with activation checkpointing.

    python benchmarks/train_gpu.py [--model gemma-2b] [--shapes 8x2048,2x8192] [--variants default,compile,ac]
                                   [--big-model gemma-7b] [--steps 8] [--budget-s 240] [--out DIR]
    python benchmarks/train_gpu.py --device cpu --model tiny-gemma --shapes 2x64,1x128 --big-model tiny-gemma3 \
        --big-shape 2x64 --steps 2                                        # dry run of every code path on CPU

The recipe, both sides: float32 master weights, forward + loss under torch.autocast(bfloat16), fused AdamW
(lr 1e-5, betas (0.9, 0.95), eps 1e-8, weight decay 0.1: train.optim.build_optimizer's values), one fixed
batch of random token ids. Ours: Gemma.init_weights(), `model(x, head=...)` running train.loss's
chunked_cross_entropy through the tied output matrix inside the forward (no (B*T, V) logits); variants
`compile` / `ac`: train.dist.apply_compile (torch.compile per block) / apply_ac (activation checkpointing per
block). Transformers: its own init, attention "sdpa", `model(input_ids=x, labels=x).loss` (full float32
logits). gemma-7b: FSDP2 (fully_shard per block,
then the root; MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), torchtitan's policy) on a 1-rank
process group, + AC; its master weights and AdamW state are bfloat16 by default (--big-master): float32
would need 16 bytes per parameter, 8.5e9 x 16 = 137 GB, more than one H200 holds with activations.

Each stage runs in its own process (peak memory = that process's torch.cuda.max_memory_allocated), in order
of importance (the first shape: ours, transformers, ours' variants; gemma-7b; then the other shapes); a stage
starts only if its estimated cost fits in what is left of --budget-s, and its process is killed at the
budget's end; the JSON is rewritten after every stage. Per stage: median step time over
--steps steps after --warmup (compiles happen there) -> tokens/s = B*T / median; MFU = tokens/s x
flops_per_token(cfg, T) / measured dense bf16 GEMM FLOP/s (train.metrics: PaLM's 6N + 12LHQT per token).
Targets (issue 16): MFU >= 0.65 at <= 0.5x transformers' peak memory. Measured earlier on the lent H200:
transformers 29.2k tok/s at 8 x 2048, MFU 0.59 against 790 TFLOP/s measured, 119 GB peak.
Writes <out>/train_gpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's opengemma, wherever the script is run from
T0 = time.perf_counter()
TARGET_MFU, TARGET_MEMORY = 0.65, 0.5  # issue 16
LR, BETAS, EPS, WEIGHT_DECAY = 1e-5, (0.9, 0.95), 1e-8, 0.1
COST_S = {"default": 30, "transformers": 40, "compile": 100, "ac": 30, "compile+ac": 100, "big": 60, "lora": 30}
# (guesses, s)


# -- the child: one stage ------------------------------------------------------------------------------------
def build_ours(spec: dict, device):
    """Gemma built on the meta device, wrapped as spec says (AC, then compile, then FSDP2: torchtitan's order,
    as train.dist.build does), materialized on the device and given Gemma.init_weights()."""
    import torch

    from opengemma.config import GemmaConfig
    from opengemma.model import Gemma

    with torch.device("meta"):
        model = Gemma(GemmaConfig.from_name(spec["model"]))
    if spec["master"] == "bfloat16":
        model = model.to(torch.bfloat16)
    if spec["ac"]:
        from opengemma.train.dist import apply_ac

        apply_ac(model)
    if spec["compile"]:
        from opengemma.train.dist import apply_compile

        apply_compile(model)
    if spec["fsdp"]:  # one rank: what sharding adds (the gathers, the fp32 reduce) without a second device
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        with socket.socket() as s:  # a free port for the 1-rank group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        mesh = init_device_mesh(device.type, (1,))  # a CPU mesh on CPU, or gloo moves parameters to CUDA
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
    model.to_empty(device=device)
    model.init_weights()  # N(0, 0.02), residual projections scaled, norms 0; RoPE tables too
    if spec.get("lora"):  # the SFT stage: adapters (float32) on every projection of the frozen bf16 base
        from opengemma.lora import LoRAConfig, apply_lora

        apply_lora(model, LoRAConfig(rank=spec["lora"], alpha=2.0 * spec["lora"], targets="all"))
    return model


def build_transformers(spec: dict, device):
    import torch
    import transformers

    from opengemma.config import GemmaConfig

    cfg = GemmaConfig.from_name(spec["model"])
    cfg_cls, model_cls = {
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[cfg.family]
    hf_cfg = cfg_cls(**{k: v for k, v in cfg.to_hf_config().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = spec["hf_attn"]
    with torch.device(device):
        model = model_cls(hf_cfg)  # float32, its own init (N(0, 0.02)), built on the device
    if spec.get("lora"):  # peft's LoRA on the same projections over the frozen base, held in bf16 as ours
        import peft

        model = model.to(torch.bfloat16)
        lcfg = peft.LoraConfig(r=spec["lora"], lora_alpha=2 * spec["lora"], lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
        model = peft.get_peft_model(model, lcfg, autocast_adapter_dtype=True)  # adapters float32, as ours
    return model


def child(spec: dict) -> dict:
    import contextlib
    import resource

    import torch

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    B, T = spec["batch"], spec["seq"]
    if spec["side"] == "ours":
        from opengemma.train.loss import IGNORE_INDEX, chunked_cross_entropy
        from opengemma.train.optim import build_optimizer

        model = build_ours(spec, device)
        opt = build_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)  # fused on CUDA
        vocab, softcap = model.config.vocab_size, model.config.final_softcap
    else:
        from opengemma.train.optim import build_optimizer

        model = build_transformers(spec, device)
        fused = build_optimizer(torch.nn.Linear(2, 2, device=device), lr=LR).defaults["fused"]  # ours' choice
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=fused)
        vocab = model.config.vocab_size
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1234)).to(device)
    if spec["side"] == "ours":  # transformers' shifted labels: position t predicts x[t+1]; the last has none
        y = torch.cat([x[:, 1:], torch.full((B, 1), IGNORE_INDEX, device=device)], dim=1)
    # FSDP's policy casts the parameters itself; otherwise autocast runs the matmuls in bf16
    amp = contextlib.nullcontext if spec["fsdp"] else lambda: torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> torch.Tensor:
        with amp():
            if spec["side"] == "ours":
                # the loss runs inside the forward (head=): under FSDP the tied matrix is gathered there
                loss = model(x, head=lambda h, w: chunked_cross_entropy(h, w, y, softcap=softcap))
            else:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        sync()
        t = time.perf_counter()
        losses.append(step())
        sync()
        dt = time.perf_counter() - t
        if i == 0:
            first_step_s = dt
        if i >= spec["warmup"]:
            times.append(dt)
    result = {
        "params": n_params,
        "trained_params": n_trained,
        "first_step_s": first_step_s,
        "step_s": times,
        "losses": [float(v) for v in losses],
        "tok_s": B * T / statistics.median(times),
    }
    if cuda:
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    else:  # the dry run: the process's peak RSS stands in
        result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    if spec["fsdp"]:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def run_child(spec: dict, timeout: float | None) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"killed at the budget's end, after {timeout:.0f} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if "warn" not in ln.lower()]
        return {"error": " | ".join(lines[-3:]) or f"exit status {proc.returncode}"}
    return json.loads(line[len("RESULT ") :])


# -- the parent: plan, run within the budget, report --------------------------------------------------------
def shape(s: str) -> tuple[int, int]:
    try:
        b, t = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {s!r}: expected BATCHxSEQ, e.g. 8x2048") from None
    if b < 1 or t < 2:
        raise argparse.ArgumentTypeError(f"shape {s!r}: batch >= 1 and seq >= 2")
    return b, t


def peak_flops(device) -> dict:
    import torch

    try:
        from opengemma.train.metrics import measure_peak_flops
    except ImportError as e:
        return {"error": f"opengemma.train.metrics.measure_peak_flops unavailable: {e}"}
    flops = measure_peak_flops(device, torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the GEMM's buffers back before the stages' processes start
    return {"flops": flops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-2b")
    ap.add_argument("--shapes", default="8x2048,2x8192", help="BATCHxSEQ, comma-separated; the first one is main")
    ap.add_argument("--variants", default="default,compile,ac", help="ours at the first shape: default,compile,ac,"
                    "compile+ac (compile / ac need opengemma.train.dist)")  # fmt: skip
    ap.add_argument(
        "--lora-rank",
        type=int,
        default=16,
        help="the SFT stage at the first shape: ours LoRA vs "
        "transformers + peft LoRA (all 7 projections, alpha 2r, bf16 frozen base); 0 skips it",
    )
    ap.add_argument("--big-model", default="gemma-7b", help="ours only, FSDP2 (1 rank) + AC; '' to skip")
    ap.add_argument("--big-shape", default="8x2048", type=shape)
    ap.add_argument("--big-master", default="bfloat16", choices=["bfloat16", "float32"], help="its weights' dtype")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=1e9, help="no stage starts, or runs, past this many seconds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    shapes = [shape(s) for s in args.shapes.split(",")]
    variants = args.variants.split(",")
    if bad := [v for v in variants if v not in ("default", "compile", "ac", "compile+ac")]:
        ap.error(f"--variants: unknown {bad}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps >= 1, --warmup >= 0")
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu for a dry run")
    try:
        from opengemma.train.dist import apply_ac, apply_compile  # noqa: F401

        have_dist = True
    except ImportError:
        have_dist = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "peak": peak_flops(device),
        "stages": {},
        "skipped": [],
    }
    peak = results["peak"].get("flops")
    what = f"{peak / 1e12:.1f} TFLOP/s" if peak else results["peak"]["error"]
    print(f"device {results['device']}, torch {torch.__version__}; measured dense bf16 GEMM: {what}", flush=True)

    base = dict(device=args.device, warmup=args.warmup, steps=args.steps, hf_attn=args.hf_attn, fsdp=False)
    ours = lambda model, bt, v, **kw: dict(
        base, side="ours", model=model, batch=bt[0], seq=bt[1], ac="ac" in v, compile="compile" in v, **kw
    )
    theirs = lambda model, bt: dict(base, side="transformers", model=model, batch=bt[0], seq=bt[1])
    plan = []  # (label, spec, cost estimate s), most important first: the main shape, its variants, the
    name = lambda model, bt, side: f"{model} {bt[0]}x{bt[1]} {side}"  # big model, then the other shapes
    for i, bt in enumerate(shapes):
        plan.append((name(args.model, bt, "ours"), ours(args.model, bt, "default", master="float32"), "default"))
        if not args.skip_transformers:
            plan.append((name(args.model, bt, "transformers"), theirs(args.model, bt), "transformers"))
        for v in variants if i == 0 else ():
            if v != "default":
                plan.append((name(args.model, bt, f"ours {v}"), ours(args.model, bt, v, master="float32"), v))
        if i == 0 and args.lora_rank:
            lo = dict(lora=args.lora_rank)
            plan.append((name(args.model, bt, "ours lora"), ours(args.model, bt, "default", master="bfloat16", **lo),
                         "lora"))  # fmt: skip
            if not args.skip_transformers:
                plan.append(
                    (name(args.model, bt, "transformers+peft lora"), dict(theirs(args.model, bt), **lo), "lora")
                )
        if i == 0 and args.big_model:
            spec = ours(args.big_model, args.big_shape, "ac", master=args.big_master, fsdp=True)
            plan.append((name(args.big_model, args.big_shape, f"ours fsdp+ac {args.big_master}"), spec, "big"))

    for label, spec, kind in plan:
        left = args.budget_s - (time.perf_counter() - T0)
        if spec.get("lora") and spec["side"] != "ours" and importlib.util.find_spec("peft") is None:
            results["skipped"].append(f"{label} (peft is not installed)")
            print(f"skip {label}: peft is not installed", flush=True)
            continue
        if (spec.get("ac") or spec.get("compile")) and not have_dist:
            results["skipped"].append(f"{label} (opengemma.train.dist.apply_ac / apply_compile not available)")
            print(f"skip {label}: opengemma.train.dist not available", flush=True)
            continue
        if COST_S[kind] > left:
            results["skipped"].append(f"{label} (budget)")
            print(f"[{time.perf_counter() - T0:5.0f}s] skip {label} (budget)", flush=True)
            continue
        t = time.perf_counter()
        r = run_child(spec, timeout=left if left < 1e6 else None)
        r["spec"] = spec
        if peak and "tok_s" in r:
            from opengemma.config import GemmaConfig
            from opengemma.train.metrics import flops_per_token

            r["flops_per_token"] = flops_per_token(GemmaConfig.from_name(spec["model"]), spec["seq"])
            r["mfu"] = r["tok_s"] * r["flops_per_token"] / peak
        results["stages"][label] = r
        mfu = f"{r['mfu']:.3f}" if "mfu" in r else "-"
        brief = r.get("error") or f"{r['tok_s']:.0f} tok/s, peak {r['peak_gb']:.1f} GB, MFU {mfu}"
        print(f"[{time.perf_counter() - T0:5.0f}s] {label} ({time.perf_counter() - t:.0f}s): {brief}", flush=True)
        (out / "train_gpu.json").write_text(json.dumps(results, indent=2))
    report(results)
    (out / "train_gpu.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'train_gpu.json'}")


def report(results: dict) -> None:
    stages = results["stages"]
    print(f"\ntraining step (forward, backward, fused AdamW), bf16 autocast; {results['device']}")
    print("| model | shape | side | tok/s | vs transformers | MFU | peak GB | vs transformers | first step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in stages.items():
        model, bt, side = label.split(" ", 2)
        if "error" in r:
            print(f"| {model} | {bt} | {side} | failed: {r['error'][:200]} | | | | | |")
            continue
        ref = stages.get(f"{model} {bt} transformers" + ("+peft lora" if side.endswith("lora") else ""))
        ref = ref if ref and "error" not in ref else None
        ratio = lambda key: f"{r[key] / ref[key]:.2f}x" if ref else "-"
        mfu = f"{r['mfu']:.3f}" if "mfu" in r else "-"
        print(
            f"| {model} | {bt} | {side} | {r['tok_s']:.0f} | {ratio('tok_s')} | {mfu} | {r['peak_gb']:.1f} | "
            f"{ratio('peak_gb')} | {r['first_step_s']:.1f} |"
        )
        if side.startswith("ours") and "mfu" in r and not side.endswith("lora"):  # issue 16's targets: full training
            r["targets"] = {"mfu_met": r["mfu"] >= TARGET_MFU}
            if ref:
                mem = r["peak_gb"] / ref["peak_gb"]
                r["targets"].update(memory_ratio=mem, memory_met=mem <= TARGET_MEMORY)
    met = lambda ok: "met" if ok else "NOT met"
    for label, r in stages.items():
        if "targets" in r:
            t = r["targets"]
            line = f"{label}: MFU {r['mfu']:.2f} (target >= {TARGET_MFU}: {met(t['mfu_met'])})"
            if "memory_ratio" in t:
                line += f", peak memory {t['memory_ratio']:.2f}x transformers' (target <= {TARGET_MEMORY}x: "
                line += f"{met(t['memory_met'])})"
            print(line)
    for s in results["skipped"]:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
