"""Reward model training on preference pairs (Bradley-Terry), the first stage of the paper's RLHF.

    python -m opengemma.recipes.reward --model runs/sft/merged --data pairs.jsonl --out runs/rm
    torchrun --nproc_per_node 2 -m opengemma.recipes.reward --config rm.toml             # FSDP2

`data`: JSONL preference pairs (`prompt`/`chosen`/`rejected`, strings or message lists; data/preference.py). The
model (usually the SFT model) gets a scalar head read at each sequence's last token (rl/reward.py) and every
weight trains on
    loss = mean over pairs of -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin)
         + center_rewards * mean((r_chosen + r_rejected)^2)          (Eisenstein et al. 2023, TRL's option)
the two sides of each pair in one batch. Each eval reports the held-out pairwise accuracy (chosen scored higher),
loss and mean reward margin.

The run directory: metrics.jsonl (a line per step: loss, accuracy, margin, ...; val_* at each eval), loss.png,
checkpoints/step_N/, and at the end model/: the reward model in transformers' *ForSequenceClassification layout
(one label), which `opengemma.rl.reward.load_reward_model`, transformers and TRL read. Rerunning the same command
resumes exactly; Ctrl-C saves and exits.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from opengemma.data import preference
from opengemma.data.sft import DataError
from opengemma.rl.reward import add_reward_head, init_reward_head, pairwise_accuracy, rewards, save_reward_model
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint, dist
from opengemma.train.metrics import MetricsLog, Progress, peak_memory_gib, plot_loss
from opengemma.train.optim import build_optimizer, lr_at, set_lr
from opengemma.train.settings import optim_settings, pairs_settings, run_recipe, run_settings

SETTINGS = {
    "model": ("gemma-3-270m", str, "the starting model (usually the SFT model): a name, a HF directory, a checkpoint"),
    **pairs_settings(
        "runs/reward", "passes over the pairs when steps is 0 (InstructGPT's reward models: 1, they overfit)"
    ),
    **optim_settings(1e-5, "peak learning rate (InstructGPT's 6B reward model: 9e-6)"),
    "center_rewards": (0.0, float, "coefficient of mean((r_chosen + r_rejected)^2), keeping rewards centred"),
    **run_settings(seed_help="data order, held-out split and the head's init", export_help="write model/ at the end"),
}


def main(argv=None) -> int:
    return run_recipe(train, SETTINGS, argv, __doc__, "reward", input_errors=(DataError, FileNotFoundError))


def train(s: dict, stop: dict) -> int:
    if not s["data"]:
        sys.exit("reward: `data` (a JSONL file of preference pairs) is required")
    d = dist.init(s["device"])
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if s["batch_size"] % (d.world * s["grad_accum"]):
        sys.exit(f"reward: batch_size {s['batch_size']} must divide into {d.world} ranks x {s['grad_accum']} micro")
    dtype = dist.compute_dtype(s["dtype"], d.device)
    out = Path(s["out"])
    records, held = preference.read_sets(preference.read_pairs, s["data"], s["val_data"], s["val_fraction"],
                                         s["val_max"], s["seed"])  # fmt: skip
    base, tok_path = checkpoint.import_weights(s["model"])
    if tok_path is None:
        sys.exit(f"reward: {s['model']} has no tokenizer.model")
    tokenizer, cfg = Tokenizer(tok_path), base.config
    pairs, stats = preference.encode_pairs(records, tokenizer, s["seq_len"], source=s["data"])
    val_pairs, _ = preference.encode_pairs(held, tokenizer, s["seq_len"], source=s["val_data"] or s["data"])
    pad = tokenizer.pad_id or 0
    loader = preference.Batches(pairs, s["batch_size"], seed=s["seed"], rank=d.rank, world=d.world)
    steps = s["steps"] or max(1, math.ceil(s["epochs"] * loader.batches_per_epoch))
    schedule = dict(
        lr=s["lr"], steps=steps, warmup=min(s["warmup"], steps), schedule=s["schedule"], min_ratio=s["min_lr_ratio"]
    )
    lr_at(0, **schedule)  # bad schedule settings fail here, before the model is built

    def swap(model):  # the head, drawn from the seed: every world size starts from the same one
        add_reward_head(model)
        if model.score.weight.device.type != "meta":
            init_reward_head(model, s["seed"])
        return model

    state = base.state_dict()
    del base
    model = dist.build(cfg, d, state=state, seed=s["seed"], dtype=dtype, ac=s["activation_checkpointing"],
                       compile=s["compile"], swap=swap)  # fmt: skip
    del state
    optimizer = build_optimizer(model, lr=s["lr"], weight_decay=s["weight_decay"])
    base_source = str(Path(s["model"]).resolve()) if Path(s["model"]).exists() else s["model"]
    run_meta = {"config": cfg.to_dict(), "base": base_source, "reward_head": True}
    start, pairs_seen = 0, 0
    resume = checkpoint.latest(out)
    if resume is not None:
        meta = checkpoint.load(resume, model=model, optimizer=optimizer, d=d)
        loader.load_state_dict(meta["data"])
        start, pairs_seen = meta["step"], meta["pairs"]
        dist.print0(d, f"resumed from {resume} (step {start})")
    log = MetricsLog(out, enabled=d.main)
    dist.print0(
        d,
        f"{cfg.name}: reward model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"{stats['pairs']} pairs ({stats['truncated']} sides cut, {stats['dropped']} dropped), {len(val_pairs)} "
        f"held out; {steps} steps x {s['batch_size']} pairs; {d.world} process(es) on {d.device}",
    )

    def score(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(batch["tokens"]).to(d.device)
        lengths = torch.from_numpy(batch["lengths"]).to(d.device)
        with dist.autocast(d, dtype):
            r = rewards(model, tokens, lengths)
        n = len(r) // 2
        return r[:n], r[n:]  # chosen (n,), rejected (n,)

    def pair_losses(rc, rr, margin):  # per pair: -log sigmoid(rc - rr - margin) + center * (rc + rr)^2
        return -F.logsigmoid(rc - rr - margin) + s["center_rewards"] * (rc + rr) ** 2

    def evaluate(step):
        record = {"step": step}
        if val_pairs:
            model.eval()
            chosen, rejected = [], []
            with torch.no_grad():
                for i in range(0, len(val_pairs), s["batch_size"]):  # every rank scores every held-out pair
                    rc, rr = score(preference.collate(val_pairs[i : i + s["batch_size"]], pad))
                    chosen.append(rc)
                    rejected.append(rr)
            rc, rr = torch.cat(chosen), torch.cat(rejected)
            margin = torch.tensor([p.margin for p in val_pairs], device=rc.device)
            record.update(val_loss=float(pair_losses(rc, rr, margin).mean()), val_accuracy=pairwise_accuracy(rc, rr),
                          val_margin=float((rc - rr).mean()))  # fmt: skip
            model.train()
        log.log(record)
        return record

    def save(step):
        meta = {**run_meta, "data": loader.state_dict(), "pairs": pairs_seen, "settings": s}
        checkpoint.save(out, step, model=model, optimizer=optimizer, meta=meta, d=d, keep=s["keep"], tokenizer=tok_path)
        plot_loss(out) if d.main else None

    if start == 0:
        evaluate(0)
    bar = Progress(steps, initial=start, enabled=d.main)
    model.train()
    micro = s["batch_size"] // (d.world * s["grad_accum"])
    for step in range(start, steps):
        t0 = time.perf_counter()
        lr_now = lr_at(step, **schedule)
        set_lr(optimizer, lr_now)
        local = loader.next_batch()  # this rank's pairs of the global batch
        total = correct = gap = 0.0
        n_tokens = 0
        for m in range(s["grad_accum"]):
            dist.set_sync(model, m == s["grad_accum"] - 1)
            batch = preference.collate(local[m * micro : (m + 1) * micro], pad)
            rc, rr = score(batch)
            losses = pair_losses(rc, rr, torch.from_numpy(batch["margin"]).to(rc.device))
            (losses.sum() * (d.world / s["batch_size"])).backward()  # the global mean over pairs
            total += float(losses.detach().sum())
            correct += float((rc > rr).sum())
            gap += float((rc - rr).detach().sum())
            n_tokens += int(batch["lengths"].sum())
        grad_norm = dist.clip_grad_norm(model, s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n = s["batch_size"]
        step_loss = dist.all_sum(d, total) / n
        if not math.isfinite(step_loss):
            dist.print0(d, f"step {step + 1}: loss is {step_loss}; stopping without saving")
            dist.shutdown(d)
            return 1
        pairs_seen += n
        dt = time.perf_counter() - t0
        tokens = dist.all_sum(d, float(n_tokens))
        record = {"step": step + 1, "loss": step_loss, "accuracy": dist.all_sum(d, correct) / n,
                  "margin": dist.all_sum(d, gap) / n, "lr": lr_now, "pairs": pairs_seen, "grad_norm": grad_norm,
                  "tokens_per_s": tokens / dt, "step_s": dt, "epoch": loader.epoch,
                  "peak_memory_gib": peak_memory_gib(d.device)}  # fmt: skip
        log.log(record)
        bar.update(step + 1, step_loss, tokens / dt)
        done = step + 1 == steps
        if (step + 1) % s["eval_every"] == 0 or done:
            r = evaluate(step + 1)
            if "val_accuracy" in r:
                bar.write(f"step {step + 1}: loss {step_loss:.4f}, held-out accuracy {r['val_accuracy']:.3f}")
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
            export(checkpoint.latest(out), out)
    return 0


def export(ckpt: Path, out: Path) -> Path:
    """The reward model of the last checkpoint, in one process: out/model (float32, *ForSequenceClassification)."""
    model, tok = checkpoint.load_model(ckpt, swap=add_reward_head)
    path = save_reward_model(model, out / "model", tokenizer=Tokenizer(tok) if tok else None)
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
