"""Instruction following, measured by program: a model's greedy replies to held-out conversations, each checked by
its instruction's checker (data/instructions.py, IFEval's method: Zhou et al. 2023, arXiv:2311.07911).

    python -m opengemma.eval.instructions --model gemma-3-270m --adapter runs/sft/adapter \\
        --data sft/heldout_kinds.jsonl --output follow.json --limit 100

The records are `opengemma data build-sft`'s: a conversation whose last turn is the reference answer; the turns
before it are the prompt, in Gemma's chat format. Plain records (kind null) have nothing to check and are skipped.
The score is IFEval's strict prompt-level accuracy with one instruction per prompt: the fraction of replies that
follow (a reply that repeats the instruction's words does not: instructions.follows); per kind too, so
heldout.jsonl (trained kinds, new questions) and heldout_kinds.jsonl (kinds never trained on) tell apart learning
the kinds from learning to follow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ..data.instructions import follows
from ..engine.generate import generate


def read_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """The records of a JSONL file that carry an instruction, the first `limit` of them."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and (rec := json.loads(line)).get("kind"):
                out.append(rec)
                if limit is not None and len(out) == limit:
                    break
    return out


def follow_rates(llm, records: Iterable[dict], *, max_new_tokens: int = 200, batch_size: int = 8) -> dict:
    """{"followed": fraction of records whose reply passes its check, "n", "per_kind": {kind: {"followed", "n"}},
    "records": [{"id", "kind", "params", "prompt", "reply", "followed"}]}. Greedy decoding, a batch of prompts at a
    time (left-padded by the engine), stopping at <end_of_turn> or <eos>."""
    tok = llm._require_tokenizer()
    todo = [r for r in records if r.get("kind")]
    out = []
    for s in range(0, len(todo), batch_size):
        batch = todo[s : s + batch_size]
        prompts = [r["messages"][:-1] for r in batch]
        ids = [tok.encode_chat(p, add_generation_prompt=True)[0] for p in prompts]
        gens = generate(llm.model, ids, max_new_tokens, 0.0, stop_ids=tok.stop_ids, compile=llm.compile)
        for r, p, g in zip(batch, prompts, gens):
            reply = tok.decode(g.tokens)
            out.append({"id": r.get("id"), "kind": r["kind"], "params": r["params"], "prompt": p, "reply": reply,
                        "followed": follows(r["kind"], reply, r["params"], r.get("instruction"))})  # fmt: skip
    per = defaultdict(list)
    for r in out:
        per[r["kind"]].append(r["followed"])
    return {
        "followed": sum(r["followed"] for r in out) / len(out) if out else 0.0,
        "n": len(out),
        "per_kind": {k: {"followed": sum(v) / len(v), "n": len(v)} for k, v in sorted(per.items())},
        "records": out,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opengemma.eval.instructions", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", "-m", default=None, help="model name, Hugging Face directory or .gguf (default: opengemma's)"
    )
    p.add_argument("--adapter", default=None, help="a LoRA adapter directory applied on the model")
    p.add_argument("--data", required=True, help="heldout.jsonl or heldout_kinds.jsonl of `opengemma data build-sft`")
    p.add_argument("--output", required=True, help="JSON: the rates and every reply")
    p.add_argument("--limit", type=int, default=None, help="the first N records with an instruction")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    import opengemma  # the public API, as lm_eval_adapter.py loads models (eval/ never imports api.py itself)

    llm = opengemma.load(
        *([args.model] if args.model else []), dtype=args.dtype, device=args.device, adapter=args.adapter
    )
    result = follow_rates(llm, read_records(args.data, args.limit), max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size)  # fmt: skip
    result = {"model": llm.name, "adapter": args.adapter, "data": str(args.data), **result}
    Path(args.output).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"followed {result['followed']:.3f} of {result['n']} ({args.data})")
    for k, v in result["per_kind"].items():
        print(f"  {k:24s} {v['followed']:.3f}  (n={v['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
