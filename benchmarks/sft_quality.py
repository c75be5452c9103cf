"""What supervised fine-tuning bought and cost: a base model against its tuned version on held-out instructions that a
program checks, and on the eval suite, in the same run.

    python benchmarks/sft_quality.py --tuned runs/sft_270m/merged [--base gemma-3-270m] [--data runs/sft_data]
                                     [--limit 64] [--tasks mmlu --eval-limit 100] [--max-new-tokens 160]
    python benchmarks/sft_quality.py --base gemma-3-270m --adapter runs/sft_270m/adapter     # the adapter unmerged

Both models are prompted in Gemma's chat format (what `opengemma chat` sends) and decode greedily, exact float32
weights. Instruction following (opengemma.eval.instructions, IFEval's strict prompt-level accuracy): the first
`--limit` instruction records of heldout.jsonl (kinds trained on, questions never seen) and of heldout_kinds.jsonl
(kinds never trained on), overall and per kind. The eval suite (`--tasks`, opengemma.eval.harness, `--eval-limit`
items per task, the same seeded subset for both models): the headline metric per task. Writes
benchmarks/results/sft_quality.json (every reply included) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_model(name: str, load_kw: dict, args) -> dict:
    import opengemma
    from opengemma.eval.harness import evaluate, headline
    from opengemma.eval.instructions import follow_rates, read_records

    t0 = time.perf_counter()
    llm = opengemma.load(**load_kw)
    out = {"model": name, "load": {k: str(v) for k, v in load_kw.items()}}
    for split in ("heldout", "heldout_kinds"):
        records = read_records(Path(args.data) / f"{split}.jsonl", args.limit)
        r = follow_rates(llm, records, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        out[split] = r
        print(f"{name} {split}: followed {r['followed']:.3f} of {r['n']}", flush=True)
    if args.tasks:
        report = evaluate(llm, args.tasks.split(","), limit=args.eval_limit, progress=False)
        out["eval"] = {t: headline(m) for t, m in report["results"].items() if headline(m)}
        print(f"{name} eval: {out['eval']}", flush=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def table(results: list[dict]) -> str:
    kinds = sorted({k for r in results for s in ("heldout", "heldout_kinds") for k in r[s]["per_kind"]})
    names = [r["model"] for r in results]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for split, label in (("heldout", "trained kinds, new questions"), ("heldout_kinds", "kinds never trained on")):
        n = results[0][split]["n"]
        lines.append(
            f"| **{label}** (n={n}) | " + " | ".join(f"**{r[split]['followed']:.3f}**" for r in results) + " |"
        )
        for k in kinds:
            cells = [r[split]["per_kind"].get(k) for r in results]
            if any(cells):
                lines.append(
                    f"| &nbsp; {k} | "
                    + " | ".join(f"{c['followed']:.2f} ({c['n']})" if c else "" for c in cells)
                    + " |"
                )
    for task in results[0].get("eval", {}):
        lines.append(
            f"| {task} ({results[0]['eval'][task][0]}) | "
            + " | ".join(f"{r['eval'][task][1]:.3f}" for r in results)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--tuned", default=None, help="the tuned model (a merged directory)")
    ap.add_argument("--adapter", default=None, help="or a LoRA adapter applied on --base")
    ap.add_argument("--data", default="runs/sft_data", help="opengemma data build-sft's directory")
    ap.add_argument("--limit", type=int, default=64, help="instruction records per held-out file")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tasks", default="", help="eval suite tasks, comma-separated (e.g. mmlu)")
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--output", default=str(ROOT / "benchmarks/results/sft_quality.json"))
    args = ap.parse_args()
    if not (args.tuned or args.adapter):
        sys.exit("give --tuned DIR or --adapter DIR")
    runs = [("base", {"source": args.base, "dtype": "float32"})]
    if args.tuned:
        runs.append(("tuned", {"source": args.tuned, "dtype": "float32"}))
    if args.adapter:
        runs.append(("base+adapter", {"source": args.base, "dtype": "float32", "adapter": args.adapter}))
    results = []
    for name, kw in runs:
        results.append(run_model(name, kw, args))
        Path(args.output).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
