"""Pretrain (or continue pretraining) a Gemma on token shards.

    python -m opengemma.recipes.pretrain --config run.toml [--steps 1000 --batch-size 8 ...]
    torchrun --nproc_per_node 8 -m opengemma.recipes.pretrain --config run.toml
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m opengemma.recipes.pretrain --config run.toml                     # on every node

`model` is a preset name (train from scratch; the vocabulary follows the shards' tokenizer, `[model_config]`
overrides any field) or a checkpoint to continue from (a real model name, a Hugging Face directory, a .gguf, a
training checkpoint). `data` is a mixture .toml, a shards root or one source's shard directory. `batch_size` is the
global batch (rows per optimizer step, split over grad_accum x ranks), so any number of processes sees the same
data. The run directory: metrics.jsonl, loss.png, checkpoints/step_N/. Rerunning the same command resumes from the
latest complete checkpoint; Ctrl-C saves one and exits. Export: `opengemma convert OUT/checkpoints/step_N HF_DIR`.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path

import torch

from opengemma.config import PRESETS, REAL_MODELS, GemmaConfig
from opengemma.data.loader import PackedLoader, holdout_docs, open_data, validation_rows
from opengemma.data.shards import load_manifest
from opengemma.train import checkpoint, dist
from opengemma.train.loss import chunked_cross_entropy
from opengemma.train.metrics import MetricsLog, Progress, flops_per_token, measure_peak_flops, mfu, plot_loss
from opengemma.train.optim import build_optimizer, lr_at, set_lr
from opengemma.train.settings import run_recipe

SETTINGS = {
    "model": ("tiny-gemma3", str, "a preset to train from scratch, or a checkpoint to continue from"),
    "model_config": ({}, dict, "GemmaConfig fields over the preset (from scratch)"),
    "from_scratch": (False, bool, "a real model's name (gemma-3-270m) as an architecture only: random init"),
    "data": (None, str, "a mixture .toml, a token shards root or a source's shard directory"),
    "tokenizer": (None, str, "the shards' tokenizer.model (default: next to the shards root)"),
    "out": ("runs/pretrain", str, "the run directory"),
    "steps": (1000, int, "optimizer steps"),
    "batch_size": (8, int, "rows per optimizer step, over all ranks and micro-batches"),
    "seq_len": (512, int, "tokens per row"),
    "grad_accum": (1, int, "micro-batches per optimizer step"),
    "lr": (3e-4, float, "peak learning rate"),
    "min_lr_ratio": (0.1, float, "the schedule's floor, as a fraction of lr"),
    "schedule": ("cosine", str, "cosine | wsd | constant, after linear warmup"),
    "warmup": (100, int, "warmup steps"),
    "weight_decay": (0.1, float, "AdamW decay on matrices"),
    "grad_clip": (1.0, float, "global gradient-norm clip (0: off)"),
    "save_every": (200, int, "steps between checkpoints"),
    "keep": (3, int, "checkpoints kept"),
    "eval_every": (100, int, "steps between validation losses"),
    "val_rows": (16, int, "validation rows per source (held-out documents)"),
    "seed": (0, int, "weights init (and the data order of a plain shard directory)"),
    "dtype": ("float32", str, "float32 | bfloat16 compute (master weights and optimizer state stay fp32)"),
    "compile": (False, bool, "torch.compile each block"),
    "activation_checkpointing": (False, bool, "recompute each block in backward"),
    "device": (None, str, "cpu | cuda (default: cuda when available)"),
    "threads": (0, int, "torch CPU threads per process (0: torch's default)"),
}


def model_source(s: dict, manifest: dict, root: Path):
    """(config, full weights or None, tokenizer file) for a preset (from scratch) or a checkpoint to continue."""
    tok_info = manifest["tokenizer"]
    real = s["model"] in REAL_MODELS and not s["from_scratch"]  # gemma-3-270m: its weights, unless from scratch
    if s["model"] in PRESETS and not real and not Path(s["model"]).exists():
        ids = {k: tok_info[k] for k in ("bos_id", "eos_id") if k in tok_info}
        fields = {"vocab_size": tok_info["vocab_size"], **ids, **s["model_config"]}
        cfg = GemmaConfig.from_name(s["model"], **fields)
        tok = Path(s["tokenizer"] or root.parent / "tokenizer.model")  # where `opengemma data prepare` puts it
        return cfg, None, tok
    model, tok = checkpoint.import_weights(s["model"])  # a real model, HF directory, .gguf or run checkpoint
    return model.config, model.state_dict(), Path(s["tokenizer"]) if s["tokenizer"] else tok


def main(argv=None) -> int:
    return run_recipe(train, SETTINGS, argv, __doc__, "pretrain")


def train(s: dict, stop: dict) -> int:
    if not s["data"]:
        sys.exit("pretrain: `data` (a mixture .toml or a shard directory) is required")
    schedule = dict(
        lr=s["lr"], steps=s["steps"], warmup=s["warmup"], schedule=s["schedule"], min_ratio=s["min_lr_ratio"]
    )
    lr_at(0, **schedule)  # bad schedule settings fail here, before anything is built
    d = dist.init(s["device"])
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s["dtype"]]
    out = Path(s["out"])
    mixture = open_data(s["data"], seed=s["seed"])
    manifests = [load_manifest(Path(p).parent) for p in mixture.sources.values()]
    manifest = manifests[0]
    if len({m["tokenizer"]["sha256"] for m in manifests}) > 1:
        sys.exit("pretrain: the mixture's sources were tokenized with different tokenizers")
    cfg, state, tok = model_source(s, manifest, Path(next(iter(mixture.sources.values()))).parent)
    if (
        tok is None
        or not tok.is_file()
        or hashlib.sha256(tok.read_bytes()).hexdigest() != manifest["tokenizer"]["sha256"]
    ):
        sys.exit(f"pretrain: {tok} is missing or is not the tokenizer the shards were made with (--tokenizer)")
    if cfg.vocab_size < manifest["tokenizer"]["vocab_size"]:
        sys.exit(
            f"pretrain: the shards' tokenizer has {manifest['tokenizer']['vocab_size']} ids, the model {cfg.vocab_size}"
        )
    run_tokens = s["steps"] * s["batch_size"] * s["seq_len"]
    if mixture.total_tokens != run_tokens:  # stage boundaries are fractions of the run's own token budget
        dist.print0(
            d, f"mixture: stage boundaries scaled from {mixture.total_tokens:,} to the run's {run_tokens:,} tokens"
        )
        mixture.total_tokens = run_tokens
    held = holdout_docs(mixture, seed=s["seed"])
    loader = PackedLoader(
        mixture,
        s["seq_len"],
        batch_size=s["batch_size"],
        grad_accum=s["grad_accum"],
        rank=d.rank,
        world=d.world,
        holdout=held,
    )
    val = validation_rows(mixture, held, s["seq_len"], max_rows=s["val_rows"])

    model = dist.build(
        cfg, d, state=state, seed=s["seed"], dtype=dtype, ac=s["activation_checkpointing"], compile=s["compile"]
    )
    optimizer = build_optimizer(model, lr=s["lr"], weight_decay=s["weight_decay"])
    start, tokens_seen = 0, 0
    resume = checkpoint.latest(out)
    if resume is not None:
        meta = checkpoint.load(resume, model=model, optimizer=optimizer, d=d)
        loader.load_state_dict(meta["data"])
        start, tokens_seen = meta["step"], meta["tokens"]
        dist.print0(d, f"resumed from {resume} (step {start})")
    log = MetricsLog(out, enabled=d.main)
    flops_tok = flops_per_token(cfg, s["seq_len"])
    peak = measure_peak_flops(d.device, dtype) if d.main else None
    dist.print0(
        d,
        f"{cfg.name}: {cfg.num_params() / 1e6:.1f}M parameters, {d.world} process(es) on {d.device}, "
        f"{s['steps']} steps x {s['batch_size']} x {s['seq_len']} tokens",
    )

    def loss_sum(x, y, seg):
        head = lambda h, w: chunked_cross_entropy(h, w, y, softcap=cfg.final_softcap, reduction="sum")
        with dist.autocast(d, dtype):
            return model(x, segments=seg, head=head)

    def evaluate(step):
        model.eval()
        record, total, count = {"step": step}, 0.0, 0
        with torch.no_grad():
            for name, (x, y, seg) in val.items():
                t = [torch.from_numpy(a).to(d.device) for a in (x, y, seg)]
                src_sum, src_n = float(loss_sum(*t)), int((t[1] != -100).sum())
                record[f"val_loss/{name}"] = src_sum / src_n
                total, count = total + src_sum, count + src_n
        model.train()
        if count:
            record["val_loss"] = total / count
            log.log(record)
        return record.get("val_loss")

    def save(step):
        meta = {"config": cfg.to_dict(), "data": loader.state_dict(), "tokens": tokens_seen, "settings": s}
        checkpoint.save(
            out,
            step,
            model=model,
            optimizer=optimizer,
            meta=meta,
            d=d,
            keep=s["keep"],
            tokenizer=tok,
        )
        plot_loss(out) if d.main else None

    if start == 0 and val:
        evaluate(0)
    bar = Progress(s["steps"], initial=start, enabled=d.main)
    model.train()
    for step in range(start, s["steps"]):
        t0 = time.perf_counter()
        lr = lr_at(step, **schedule)
        set_lr(optimizer, lr)
        batch = loader.next_step()
        total = 0.0
        for m in range(s["grad_accum"]):
            dist.set_sync(model, m == s["grad_accum"] - 1)
            x, y, seg = (torch.from_numpy(a[m]).to(d.device) for a in (batch.inputs, batch.targets, batch.segments))
            loss = loss_sum(x, y, seg)
            # FSDP averages gradients over ranks: scale so the step's gradient is that of the global mean loss
            (loss * (d.world / batch.n_targets)).backward()
            total += float(loss.detach())
        grad_norm = dist.clip_grad_norm(model, s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = dist.all_sum(d, total) / batch.n_targets
        if not math.isfinite(step_loss):
            dist.print0(d, f"step {step + 1}: loss is {step_loss}; stopping without saving")
            dist.shutdown(d)
            return 1
        tokens_seen += s["batch_size"] * s["seq_len"]
        dt = time.perf_counter() - t0
        tps = s["batch_size"] * s["seq_len"] / dt
        log.log(
            {
                "step": step + 1,
                "loss": step_loss,
                "lr": lr,
                "tokens": tokens_seen,
                "tokens_per_s": tps,
                "mfu": mfu(tps, flops_tok, peak),
                "grad_norm": grad_norm,
                "stage": batch.stage,
                "step_s": dt,
            }
        )
        bar.update(step + 1, step_loss, tps)
        done = step + 1 == s["steps"]
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
    if d.main:
        plot_loss(out)
    dist.shutdown(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
