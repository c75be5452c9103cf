"""Supervised fine-tuning of a Gemma on conversations: full weights, LoRA or QLoRA (LoRA over an int8/int4 base).

    python -m opengemma.recipes.sft --model gemma-3-270m --data chat.jsonl --lora-rank 16 --out tuned/
    torchrun --nproc_per_node 2 -m opengemma.recipes.sft --config sft.toml        # FSDP2, full or LoRA
    opengemma finetune --model gemma-3-270m --data chat.jsonl --lora-rank 16 --out tuned/      # the same

`data`: JSONL, one conversation per line (`messages`, or `prompt`/`completion`; data/sft.py), rendered in Gemma's
chat format; the loss is on the model's turns only, their `<end_of_turn>` included, conversations packed into rows
with document masking. Without `lora_rank` every weight trains (fp32 master weights and AdamW state); with it, only
the adapters (lora.py) and the base is frozen (kept in the compute dtype: a frozen weight needs no fp32 master).
`quantize` int8/int4 makes the frozen base weight-only quantized (QLoRA; one process).

The run directory (its layout is the interface): metrics.jsonl (a line per step; validation loss and samples at
each eval), loss.png, samples.jsonl, checkpoints/step_N/ (LoRA: the adapters and their optimizer state only; the
base is rebuilt from `model`), and at the end adapter/ (PEFT layout, LoRA runs) and merged/ (Hugging Face layout:
`opengemma.load`, `opengemma chat --model`, `serve`, `eval` and transformers read it; a chat model: its tokenizer
config carries Gemma's chat template). Rerunning the same command resumes exactly; Ctrl-C saves and exits.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from opengemma.data import sft as sft_data
from opengemma.lora import LoRAConfig, apply_lora
from opengemma.quantize import quantize_model
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint, dist
from opengemma.train.loss import chunked_cross_entropy
from opengemma.train.metrics import (
    MetricsLog,
    Progress,
    flops_per_token,
    measure_peak_flops,
    mfu,
    peak_memory_gib,
    plot_loss,
)
from opengemma.train.optim import build_optimizer, lr_at, set_lr
from opengemma.train.settings import lora_settings, optim_settings, run_recipe, run_settings

SETTINGS = {
    "model": (
        "gemma-3-270m",
        str,
        "the model to tune: a real model's name, a Hugging Face directory, a .gguf, a checkpoint",
    ),
    "data": (None, str, "training conversations, JSONL (messages, or prompt/completion)"),
    "val_data": (None, str, "held-out conversations (default: a seeded val_fraction of data)"),
    "val_fraction": (0.02, float, "held out of data when there is no val_data"),
    "val_max": (200, int, "at most this many held-out conversations"),
    "out": ("runs/sft", str, "the run directory"),
    "steps": (0, int, "optimizer steps (0: `epochs` passes over the data)"),
    "epochs": (1.0, float, "passes over the data when steps is 0"),
    "batch_size": (8, int, "packed rows per optimizer step, over all ranks and micro-batches"),
    "seq_len": (1024, int, "tokens per packed row (longer conversations are cut)"),
    "grad_accum": (1, int, "micro-batches per optimizer step"),
    **optim_settings(
        None,
        "peak learning rate (default 2e-4 with LoRA, QLoRA's; 2e-5 for full fine-tuning)",
        weight_decay_help="AdamW decay on matrices (TRL's and PEFT's default: 0)",
    ),
    **lora_settings(dropout=True),
    "quantize": ("none", str, "none | int8 | int4: QLoRA, the frozen base weight-only quantized (needs lora_rank)"),
    "samples": (3, int, "held-out prompts answered at each eval (one process only)"),
    "sample_tokens": (64, int, "new tokens per sample"),
    **run_settings(
        eval_help="steps between validation losses and samples",
        seed_help="data order, held-out split and adapter init",
        export_help="write adapter/ and merged/ at the end",
    ),
}


def main(argv=None) -> int:
    return run_recipe(train, SETTINGS, argv, __doc__, "sft", input_errors=(sft_data.DataError, FileNotFoundError))


def train(s: dict, stop: dict) -> int:
    if not s["data"]:
        sys.exit("sft: `data` (a JSONL file of conversations) is required")
    if s["quantize"] not in ("none", "int8", "int4"):
        sys.exit(f"sft: quantize must be none, int8 or int4, got {s['quantize']!r}")
    if s["quantize"] != "none" and not s["lora_rank"]:
        sys.exit("sft: a quantized base is frozen: QLoRA needs --lora-rank")
    d = dist.init(s["device"])
    if s["quantize"] != "none" and d.sharded:
        sys.exit("sft: QLoRA runs in one process (FSDP shards parameters; a quantized base has none)")
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    dtype = dist.compute_dtype(s["dtype"], d.device)
    out, lora = Path(s["out"]), None
    if s["lora_rank"]:
        alpha = s["lora_alpha"] or 2.0 * s["lora_rank"]
        lora = LoRAConfig(rank=s["lora_rank"], alpha=alpha, dropout=s["lora_dropout"], targets=s["lora_targets"])
    lr = s["lr"] or (2e-4 if lora else 2e-5)

    records = sft_data.read_jsonl(s["data"])  # bad data fails before the model is loaded
    held = sft_data.read_jsonl(s["val_data"]) if s["val_data"] else []
    base, tok_path = checkpoint.import_weights(s["model"])
    if tok_path is None:
        sys.exit(f"sft: {s['model']} has no tokenizer.model")
    tokenizer, cfg = Tokenizer(tok_path), base.config
    if not held:
        records, held = sft_data.split_holdout(records, s["val_fraction"], s["val_max"], s["seed"])
    examples, stats = sft_data.encode(records, tokenizer, s["seq_len"], source=s["data"])
    val_examples, _ = sft_data.encode(held, tokenizer, s["seq_len"], source=s["val_data"] or s["data"])
    pad = tokenizer.pad_id or 0
    loader = sft_data.SFTLoader(examples, s["seq_len"], batch_size=s["batch_size"], grad_accum=s["grad_accum"],
                                rank=d.rank, world=d.world, seed=s["seed"], pad_id=pad)  # fmt: skip
    steps = s["steps"] or max(1, math.ceil(s["epochs"] * loader.rows_per_epoch / s["batch_size"]))
    schedule = dict(
        lr=lr, steps=steps, warmup=min(s["warmup"], steps), schedule=s["schedule"], min_ratio=s["min_lr_ratio"]
    )
    lr_at(0, **schedule)  # bad schedule settings fail here, before the model is built
    val = sft_data.validation_rows(val_examples, s["seq_len"], pad) if val_examples else None

    def swap(model):  # QLoRA: quantize the frozen base first (its embedding too), then the adapters
        if s["quantize"] != "none":
            quantize_model(model, s["quantize"], dtype=dtype)
        return apply_lora(model, lora) if lora else model

    state = base.state_dict()
    del base
    model = dist.build(cfg, d, state=state, seed=s["seed"], dtype=dtype, ac=s["activation_checkpointing"],
                       compile=s["compile"], swap=swap if lora else None)  # fmt: skip
    del state
    if lora and not d.sharded:  # the frozen base in the compute dtype: no fp32 master copy is needed
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    optimizer = build_optimizer(model, lr=lr, weight_decay=s["weight_decay"])
    base_source = str(Path(s["model"]).resolve()) if Path(s["model"]).exists() else s["model"]
    run_meta = {
        "config": cfg.to_dict(),
        "base": base_source,
        "lora": lora and vars(lora) | {"targets": list(lora.targets)},
    }
    start, tokens_seen = 0, 0
    resume = checkpoint.latest(out)
    if resume is not None:
        meta = checkpoint.load(resume, model=model, optimizer=optimizer, d=d, trainable_only=lora is not None)
        loader.load_state_dict(meta["data"])
        start, tokens_seen = meta["step"], meta["tokens"]
        dist.print0(d, f"resumed from {resume} (step {start})")
    log = MetricsLog(out, enabled=d.main)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_tok = None if lora else flops_per_token(cfg, s["seq_len"])
    peak = measure_peak_flops(d.device, dtype) if d.main and flops_tok else None
    dist.print0(
        d,
        f"{cfg.name}: {'full fine-tuning' if not lora else f'LoRA r={lora.rank} on {len(lora.targets)} projections'}"
        f"{'' if s['quantize'] == 'none' else ' over an ' + s['quantize'] + ' base'}, {n_train / 1e6:.2f}M trained "
        f"parameters; {stats['examples']} conversations ({stats['truncated']} cut, {stats['dropped']} dropped), "
        f"{loader.rows_per_epoch} rows of {s['seq_len']} per epoch, {len(val_examples)} held out; {steps} steps x "
        f"{s['batch_size']} rows; {d.world} process(es) on {d.device}",
    )

    def loss_sum(x, y, seg):
        # only positions with a learned target reach the output layer (60% of the 270M's FLOPs): the prompts' and
        # the padding's hidden states are never multiplied by the 262k-row matrix
        learned = y != -100
        head = lambda h, w: chunked_cross_entropy(h[learned], w, y[learned], softcap=cfg.final_softcap, reduction="sum")
        with dist.autocast(d, dtype):
            return model(x, segments=seg, head=head)

    def evaluate(step):
        record = {"step": step}
        model.eval()
        if val is not None:
            with torch.no_grad():
                total = count = 0.0
                for i in range(0, len(val[0]), s["batch_size"]):
                    x, y, seg = (torch.from_numpy(a[i : i + s["batch_size"]]).to(d.device) for a in val)
                    total, count = total + float(loss_sum(x, y, seg)), count + int((y != -100).sum())
            record["val_loss"] = total / count  # every rank scores every held-out row: the same value on each
        if s["samples"] and not d.sharded and held:
            record["samples"] = samples(step)
        model.train()
        log.log(record)
        return record.get("val_loss")

    def samples(step):
        from opengemma.engine.generate import generate

        prompts = [sft_data.prompt_of(r) for r in held[: s["samples"]]]
        ids = [tokenizer.encode_chat(p, add_generation_prompt=True)[0] for p in prompts]
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            outs = generate(model, ids, s["sample_tokens"], stop_ids=tokenizer.stop_ids, compile=False)
        model.clear_cache()
        shown = []
        for p, o in zip(prompts, outs):
            reply = tokenizer.decode([t for t in o.tokens if t not in tokenizer.stop_ids])
            shown.append({"prompt": p[-1]["content"], "reply": reply})
            print(f"  [{step}] {p[-1]['content'][:70]!r} -> {reply[:200]!r}", flush=True)
        return shown

    def save(step):
        meta = {**run_meta, "data": loader.state_dict(), "tokens": tokens_seen, "settings": s}
        checkpoint.save(out, step, model=model, optimizer=optimizer, meta=meta, d=d, keep=s["keep"],
                        tokenizer=tok_path, trainable_only=lora is not None)  # fmt: skip
        plot_loss(out) if d.main else None

    if start == 0:
        evaluate(0)
    bar = Progress(steps, initial=start, enabled=d.main)
    model.train()
    for step in range(start, steps):
        t0 = time.perf_counter()
        lr_now = lr_at(step, **schedule)
        set_lr(optimizer, lr_now)
        batch = loader.next_step()
        total = 0.0
        for m in range(s["grad_accum"]):
            dist.set_sync(model, m == s["grad_accum"] - 1)
            x, y, seg = (torch.from_numpy(a[m]).to(d.device) for a in (batch.inputs, batch.targets, batch.segments))
            loss = loss_sum(x, y, seg)
            (loss * (d.world / batch.n_targets)).backward()  # the global mean over learned tokens
            total += float(loss.detach())
        grad_norm = dist.clip_grad_norm(model, s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = dist.all_sum(d, total) / batch.n_targets
        if not math.isfinite(step_loss):
            dist.print0(d, f"step {step + 1}: loss is {step_loss}; stopping without saving")
            dist.shutdown(d)
            return 1
        real = int(dist.all_sum(d, float((batch.inputs != pad).sum())))  # tokens that are not padding
        tokens_seen += real
        dt = time.perf_counter() - t0
        tps = real / dt
        record = {"step": step + 1, "loss": step_loss, "lr": lr_now, "tokens": tokens_seen, "tokens_per_s": tps,
                  "learned_tokens": batch.n_targets, "grad_norm": grad_norm, "epoch": loader.epoch, "step_s": dt,
                  "peak_memory_gib": peak_memory_gib(d.device)}  # fmt: skip
        if flops_tok:
            record["mfu"] = mfu(tps, flops_tok, peak)
        log.log(record)
        bar.update(step + 1, step_loss, tps)
        done = step + 1 == steps
        if (step + 1) % s["eval_every"] == 0 or done:
            v = evaluate(step + 1)
            bar.write(f"step {step + 1}: loss {step_loss:.4f}" + (f", validation {v:.4f}" if v is not None else ""))
        interrupted = dist.all_sum(d, float(stop["now"])) > 0  # every rank agrees, or a collective would hang
        if (step + 1) % s["save_every"] == 0 or done or interrupted:
            save(step + 1)
        if interrupted:
            dist.print0(d, f"\ninterrupted: saved {out / 'checkpoints' / f'step_{step + 1}'}; rerun to resume")
            break
    bar.close()
    dist.shutdown(d)
    if d.main and not stop["now"]:
        plot_loss(out)
        if s["export"]:
            checkpoint.export_tuned(checkpoint.latest(out), out, lora is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
