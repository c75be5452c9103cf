"""Serving benchmark: the OpenAI-compatible server under concurrent streaming clients.

    python benchmarks/serve.py [--concurrency 1,8,32] [--max-tokens 64] [--max-batch 8]
    python benchmarks/serve.py --random gemma-2b --device cuda --max-batch 32     # on a lent GPU

The server runs in its own process (as `opengemma serve` would), so the load generator does not share
its interpreter. Each concurrency level is a closed loop: C clients, each sending its next request as
soon as its previous answer ends, `--requests-per-client` requests each, all greedy with streaming.
Measured per level: requests/s and output tok/s over the level's wall time, time to first token
(request sent -> first text chunk) and inter-token latency (gap between text chunks), p50/p99.
`--random PRESET` serves random bf16 weights of a preset (e.g. gemma-2b), with the default model's
tokenizer and its 262,144-entry vocabulary. Writes benchmarks/results/serve[-PRESET].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made, sold and read across Europe. "
)


def serve_main(args) -> None:
    """Child process: build the app and run it until killed."""
    import torch
    import uvicorn

    import opengemma
    from opengemma.serve.app import create_app

    torch.set_num_threads(args.threads)
    if args.random:
        from opengemma.api import LLM
        from opengemma.config import GemmaConfig
        from opengemma.model import Gemma

        tok = opengemma.load("gemma-3-270m", progress=False).tokenizer
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.device(device):
            model = Gemma(GemmaConfig.from_name(args.random, vocab_size=tok.vocab_size)).to(torch.bfloat16).eval()
        for p in model.parameters():
            p.data.normal_(0, 0.02)
        model.init_rope()
        llm = LLM(model, tok, name=args.random)
    else:
        llm = opengemma.load(args.model, dtype=args.dtype, quantize=args.quantize, device=args.device, progress=False)
    app = create_app(
        llm,
        model_name="bench",
        max_batch=args.max_batch,
        max_queue=1024,
        max_len=args.max_len,
        compile=args.compile is not False,
    )  # as `opengemma serve`: compiled, warmed at start
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


async def one_request(http, base: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    stamps, usage = [], None
    async with http.stream("POST", base + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
            usage = chunk.get("usage") or usage
    return {
        "ttft": stamps[0] - t0 if stamps else None,
        "itl": [b - a for a, b in zip(stamps, stamps[1:])],
        "tokens": usage["completion_tokens"],
        "end": time.perf_counter(),
    }


async def level(base: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    import httpx

    async def client(c: int, http) -> list[dict]:
        return [await one_request(http, base, f"Request {c}.{i}. " + TEXT * 4, max_tokens) for i in range(per_client)]

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as http:
        t0 = time.perf_counter()
        runs = await asyncio.gather(*(client(c, http) for c in range(concurrency)))
        wall = time.perf_counter() - t0
    reqs = [r for run in runs for r in run]
    ttft = sorted(r["ttft"] for r in reqs if r["ttft"] is not None)
    itl = sorted(x for r in reqs for x in r["itl"])
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": len(reqs),
        "wall_s": wall,
        "req_s": len(reqs) / wall,
        "output_tok_s": sum(r["tokens"] for r in reqs) / wall,
        "mean_output_tokens": statistics.mean(r["tokens"] for r in reqs),
        "ttft_p50_ms": q(ttft, 0.5),
        "ttft_p99_ms": q(ttft, 0.99),
        "itl_p50_ms": q(itl, 0.5),
        "itl_p99_ms": q(itl, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--random", default=None, help="serve random bf16 weights of this preset instead")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.serve:
        return serve_main(args)

    import httpx

    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--serve", "--port", str(port)] + [
        a for a in sys.argv[1:] if a not in ("--serve",)
    ]
    server = subprocess.Popen(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # first load of a quantized mode can take a while
            if server.poll() is not None:
                raise SystemExit(f"server exited with {server.returncode}")
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        asyncio.run(level(base, 1, 1, 8))  # warm-up (first-call costs, compile)
        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            row = asyncio.run(level(base, c, args.requests_per_client, args.max_tokens))
            rows.append(row)
            print(
                f"concurrency {c:3d}: {row['req_s']:.2f} req/s, {row['output_tok_s']:.1f} output tok/s, "
                f"TTFT p50 {row['ttft_p50_ms']:.0f} / p99 {row['ttft_p99_ms']:.0f} ms, "
                f"ITL p50 {row['itl_p50_ms']:.0f} / p99 {row['itl_p99_ms']:.0f} ms",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)

    name = args.random or args.model
    print(f"\n{name}, max batch {args.max_batch}, {args.max_tokens} new tokens, greedy, streaming\n")
    print("| concurrency | requests | req/s | output tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['req_s']:.2f} | {r['output_tok_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.0f} / {r['itl_p99_ms']:.0f} |"
        )
    out = Path(__file__).parent / "results" / (f"serve-{args.random}.json" if args.random else "serve.json")
    out.write_text(json.dumps({"model": name, "args": vars(args), "results": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
