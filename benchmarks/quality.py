"""Quality of each inference mode of the default model: perplexity on held-out text vs the float32 model.

    python benchmarks/quality.py [--tokens 8192] [--modes fp32,bf16,int8,gguf,gguf-emb48,int4,int4-emb8,int4-rtn,int4-emb4]
                                 [--text stdlib|licenses|PATH]

Modes: fp32, bf16, int8, int4 (GPTQ; the default int4+int8 output layer: scored in int4, best 64
recomputed in int8, so perplexity over many rows is the int8 layer's, and its decode path, <= 16 rows at a
time, is reported too), int4-rtn (round to nearest); -emb8 / -emb4 / -emb48 for an int8 / int4 / int4+int8
output matrix; gguf (the GGUF's own quantization kept; gguf-emb48 adds the int4+int8 output layer). The int4 modes take the file's Q4_K
matrices as they are and round the others. Held-out text (--text): `stdlib`, the documentation strings of a fixed list of
Python standard-library modules (ordinary technical English that every machine has; GPTQ calibrates on
other modules' documentation, opengemma.calibration); `licenses`, the license texts of
/usr/share/common-licenses (another genre, to check that GPTQ did not just fit the calibration genre); or a
file. Scored in windows of 512 tokens, each starting with <bos>. Prints a table and writes
benchmarks/results/quality[-<text>].json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

MODULES = [
    "argparse",
    "collections",
    "json",
    "logging",
    "pathlib",
    "subprocess",
    "threading",
    "unittest",
    "email",
    "http.client",
    "sqlite3",
    "asyncio.tasks",
    "decimal",
    "fractions",
    "statistics",
    "heapq",
]


def mode_kwargs(mode: str) -> dict:
    """fp32 | bf16 | int8 | gguf | int4 (GPTQ) | int4-rtn | ...-emb8 / -emb4 / -emb48 (int8 / int4 / int4+int8
    output matrix)."""
    if mode in ("fp32", "bf16"):
        return {"dtype": "float32" if mode == "fp32" else "bfloat16"}
    quant, *flags = mode.split("-")
    emb = next((f for f in flags if f.startswith("emb")), "emb")
    emb = {"emb4": "int4", "emb8": "int8", "emb48": "int4+int8", "emb": "default"}[emb]
    return {"quantize": quant, "embedding_quantize": emb, "int4_method": "rtn" if "rtn" in flags else "gptq"}


def heldout_text(which: str = "stdlib") -> str:
    """stdlib: the documentation of MODULES and of the objects each defines itself; licenses; or a file."""
    if which == "licenses":
        root = Path("/usr/share/common-licenses")
        return "\n\n".join(
            p.read_text(errors="replace") for p in sorted(root.iterdir()) if p.is_file() and not p.is_symlink()
        )
    if which != "stdlib":
        return Path(which).read_text()
    from opengemma.calibration import stdlib_documentation

    return stdlib_documentation(MODULES)


@torch.inference_mode()
def score(model, ids: list[int], window: int, bos: int) -> tuple[float, int, list[torch.Tensor], dict]:
    """Mean NLL over windows, the argmax at each position, and for an int4+int8 output layer what its
    decode path gives (logits of <= SMALL_M rows at a time: the best 64 by int4 recomputed in int8)."""
    from opengemma.qlinear import SMALL_M, RescoredEmbedding

    rescored = isinstance(model.embed, RescoredEmbedding)
    nll, count, argmaxes, dec_nll, dec_same = 0.0, 0, [], 0.0, 0
    for s in range(0, len(ids), window - 1):
        chunk = [bos] + ids[s : s + window - 1]
        if len(chunk) < 2:
            break
        x = torch.tensor([chunk])
        h = model(x, hidden=True)[0, :-1]
        logits = model.logits(h).float()
        nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += len(chunk) - 1
        argmaxes.append(logits.argmax(-1))
        if rescored:  # decode's few rows: against the int8 layer on as few rows (the same kernel, same rounding)
            rows = [h[i : i + SMALL_M] for i in range(0, len(h), SMALL_M)]
            dec = torch.cat([model.logits(r) for r in rows]).float()
            int8 = torch.cat([model.embed.table(r) for r in rows]).float()
            dec_nll += F.cross_entropy(dec, x[0, 1:], reduction="sum").item()
            dec_same += (dec.argmax(-1) == int8.argmax(-1)).sum().item()
    extra = {"decode_path_nll": dec_nll / count, "decode_path_argmax_same": dec_same / count} if rescored else {}
    return nll / count, count, argmaxes, extra


def main() -> None:
    import opengemma

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--modes", default="fp32,bf16,int8,gguf,gguf-emb48,int4,int4-emb8,int4-emb4")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--text", default="stdlib", help="stdlib | licenses | a text file")
    ap.add_argument(
        "--update",
        action="store_true",
        help="keep the other modes' rows of the existing results file (same text and token count)",
    )
    args = ap.parse_args()
    suffix = "" if args.text == "stdlib" else "-" + Path(args.text).stem
    out = Path(__file__).parent / "results" / f"quality{suffix}.json"
    rows = {}
    ref_argmax = None
    for mode in args.modes.split(","):
        llm = opengemma.load("gemma-3-270m", group_size=args.group_size, progress=False, **mode_kwargs(mode))
        ids = llm.tokenizer.encode(heldout_text(args.text), bos=False)[: args.tokens]
        nll, n, argmaxes, extra = score(llm.model, ids, 512, llm.tokenizer.bos_id)
        am = torch.cat(argmaxes)
        if ref_argmax is None:
            ref_argmax = am
        rows[mode] = {
            "nll": nll,
            "perplexity": math.exp(nll),
            "tokens": n,
            "argmax_agreement_vs_first": (am == ref_argmax).float().mean().item(),
            **extra,
        }
        del llm
    if args.update and out.exists():  # the earlier rows of the same text and tokens, this run's rows over them
        old = json.loads(out.read_text())
        n = next(iter(rows.values()))["tokens"]
        if (old["text"], old["group_size"]) == (args.text, args.group_size):
            rows = {**{m: r for m, r in old["results"].items() if r["tokens"] == n}, **rows}
    base = rows[args.modes.split(",")[0]]["perplexity"]
    print(f"{'mode':8s} {'perplexity':>11s} {'vs ' + args.modes.split(',')[0]:>10s} {'argmax agree':>13s}  tokens")
    for mode, r in rows.items():
        r["ratio"] = r["perplexity"] / base
        print(
            f"{mode:8s} {r['perplexity']:11.3f} {100 * (r['ratio'] - 1):+9.2f}% {r['argmax_agreement_vs_first']:13.4f}"
            f"  {r['tokens']}"
        )
        if "decode_path_nll" in r:
            r["decode_path_ratio"] = math.exp(r["decode_path_nll"]) / base
            print(
                f"{'':8s} decode path (int4 scores, best 64 in int8): perplexity "
                f"{100 * (r['decode_path_ratio'] - 1):+.2f}%, argmax as with int8 logits at "
                f"{100 * r['decode_path_argmax_same']:.2f}% of positions"
            )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"group_size": args.group_size, "text": args.text, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
