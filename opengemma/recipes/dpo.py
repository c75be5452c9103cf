"""Direct preference optimization (Rafailov et al. 2023): the offline alternative to RLHF on the same pairs.

    python -m opengemma.recipes.dpo --model runs/sft/merged --data pairs.jsonl --beta 0.1 --out runs/dpo
    torchrun --nproc_per_node 2 -m opengemma.recipes.dpo --config dpo.toml                  # FSDP2

`data`: preference pairs (data/preference.py, as the reward recipe takes them). The loss (rl/losses.py):
    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)),   L = -log sigmoid(beta h)
(`loss_type ipo`: (h - 1/(2 beta))^2 on per-token mean log-probabilities; `label_smoothing`: conservative DPO),
log-probabilities summed over the final answer's tokens and its <end_of_turn>. `rpo_alpha` > 0 adds
alpha * NLL(y_w), the chosen answers' mean per-token negative log-likelihood (RPO: Pang et al. 2024, "Iterative
Reasoning Preference Optimization", where DPO alone lowered both sides' likelihood and hurt GSM8K accuracy).
The reference is the starting model (`ref_model` to name another); its log-probabilities are computed once, before
training, without gradients, through the engine's exact scoring (engine/score.py), and kept in the run directory
(ref_logps.npz), so neither a second model in memory nor a second forward per step is needed. Full fine-tuning or
LoRA.
Logged: loss, accuracy (the implicit reward of the chosen answer above the rejected one's), margin, the mean
implicit rewards beta (log pi - log ref) of each side, nll (the chosen answers' per-token NLL); val_* the same on
held-out pairs at each eval.

The run directory: metrics.jsonl, loss.png, checkpoints/step_N/, ref_logps.npz, and at the end merged/ (and adapter/
for LoRA runs), which `opengemma.load`, `chat`, `serve` and `eval` read. Reruns resume exactly; Ctrl-C saves.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from opengemma.data import preference
from opengemma.data.sft import DataError, data_fingerprint
from opengemma.engine.score import Scorer
from opengemma.lora import LoRAConfig, apply_lora
from opengemma.rl.losses import dpo_loss
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint, dist
from opengemma.train.loss import token_logprobs
from opengemma.train.metrics import MetricsLog, Progress, peak_memory_gib, plot_loss
from opengemma.train.optim import build_optimizer, lr_at, set_lr
from opengemma.train.settings import lora_settings, optim_settings, pairs_settings, run_recipe, run_settings

SETTINGS = {
    "model": ("gemma-3-270m", str, "the starting policy (the SFT model): a name, a HF directory, a checkpoint"),
    "ref_model": (None, str, "the reference (default: the starting model)"),
    **pairs_settings("runs/dpo"),
    "beta": (0.1, float, "DPO's beta (the paper's and TRL's 0.1); IPO's tau with loss_type ipo"),
    "loss_type": ("sigmoid", str, "sigmoid (DPO) | ipo"),
    "label_smoothing": (0.0, float, "conservative DPO's assumed label noise (sigmoid only)"),
    "rpo_alpha": (
        0.0,
        float,
        "weight of the chosen answers' per-token NLL added to the loss (RPO, Pang et al. "
        "2024: 1.0; TRL's rpo_alpha); keeps DPO from lowering the chosen answers on reasoning tasks",
    ),
    **optim_settings(None, "peak learning rate (default 1e-6, TRL's and the DPO paper's; 1e-5 with LoRA)"),
    **lora_settings(),
    **run_settings(
        seed_help="data order, held-out split and adapter init", export_help="write merged/ (and adapter/) at the end"
    ),
}


def main(argv=None) -> int:
    return run_recipe(train, SETTINGS, argv, __doc__, "dpo", input_errors=(DataError, FileNotFoundError))


def reference_logps(model, pairs: list[preference.Pair], progress: bool = True) -> np.ndarray:
    """(N, 2) float64: sum of log ref(answer | context) of each pair's chosen and rejected side, by exact scoring."""
    reqs = []
    for p in pairs:
        for ids, mask in ((p.chosen, p.chosen_mask), (p.rejected, p.rejected_mask)):
            a, b = preference.answer_span(mask)
            reqs.append((ids[:a].tolist(), ids[a:b].tolist()))
    scores = Scorer(model, batch_size=8, progress=progress).loglikelihood_tokens(reqs, desc="reference log-probs")
    return np.array([lp for lp, _, _ in scores], np.float64).reshape(-1, 2)


def train(s: dict, stop: dict) -> int:
    if not s["data"]:
        sys.exit("dpo: `data` (a JSONL file of preference pairs) is required")
    if s["loss_type"] not in ("sigmoid", "ipo"):
        sys.exit(f"dpo: loss_type must be sigmoid or ipo, got {s['loss_type']!r}")
    d = dist.init(s["device"])
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if s["batch_size"] % (d.world * s["grad_accum"]):
        sys.exit(f"dpo: batch_size {s['batch_size']} must divide into {d.world} ranks x {s['grad_accum']} micro")
    dtype = dist.compute_dtype(s["dtype"], d.device)
    out = Path(s["out"])
    lora = None
    if s["lora_rank"]:
        lora = LoRAConfig(rank=s["lora_rank"], alpha=s["lora_alpha"] or 2.0 * s["lora_rank"], targets=s["lora_targets"])
    lr = s["lr"] or (1e-5 if lora else 1e-6)
    records, held = preference.read_sets(preference.read_pairs, s["data"], s["val_data"], s["val_fraction"],
                                         s["val_max"], s["seed"])  # fmt: skip
    base, tok_path = checkpoint.import_weights(s["model"])
    if tok_path is None:
        sys.exit(f"dpo: {s['model']} has no tokenizer.model")
    tokenizer, cfg = Tokenizer(tok_path), base.config
    pairs, stats = preference.encode_pairs(records, tokenizer, s["seq_len"], source=s["data"])
    val_pairs, _ = preference.encode_pairs(held, tokenizer, s["seq_len"], source=s["val_data"] or s["data"])
    pad = tokenizer.pad_id or 0
    loader = preference.Batches(pairs, s["batch_size"], seed=s["seed"], rank=d.rank, world=d.world)
    steps = s["steps"] or max(1, math.ceil(s["epochs"] * loader.batches_per_epoch))
    schedule = dict(lr=lr, steps=steps, warmup=min(s["warmup"], steps), schedule=s["schedule"],
                    min_ratio=s["min_lr_ratio"])  # fmt: skip
    lr_at(0, **schedule)

    # the reference's log-probs, once (every rank the same: each scores all pairs; kept for resumes)
    fingerprint = [data_fingerprint(s["data"]), data_fingerprint(s["val_data"]) if s["val_data"] else "", s["seq_len"],
                   str(s["ref_model"] or s["model"]), s["seed"], s["val_fraction"], s["val_max"]]  # fmt: skip
    cache = out / "ref_logps.npz"
    ref_lp = val_ref_lp = None
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if z["fingerprint"].tolist() == [str(x) for x in fingerprint]:
            ref_lp, val_ref_lp = z["train"], z["val"]
    if ref_lp is None:
        ref = checkpoint.import_weights(s["ref_model"])[0] if s["ref_model"] else base
        ref = ref.to(d.device).eval()
        ref_lp = reference_logps(ref, pairs, progress=d.main)
        val_ref_lp = reference_logps(ref, val_pairs, progress=d.main) if val_pairs else np.zeros((0, 2))
        del ref
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / "ref_logps.tmp.npz"
            np.savez(tmp, train=ref_lp, val=val_ref_lp, fingerprint=np.array([str(x) for x in fingerprint]))
            tmp.replace(cache)
    index = {id(p): i for i, p in enumerate(pairs)}

    state = base.state_dict()
    del base
    model = dist.build(cfg, d, state=state, seed=s["seed"], dtype=dtype, ac=s["activation_checkpointing"],
                       compile=s["compile"], swap=(lambda m: apply_lora(m, lora)) if lora else None)  # fmt: skip
    del state
    if lora and not d.sharded:  # the frozen base in the compute dtype
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
    start = 0
    resume = checkpoint.latest(out)
    if resume is not None:
        meta = checkpoint.load(resume, model=model, optimizer=optimizer, d=d, trainable_only=lora is not None)
        loader.load_state_dict(meta["data"])
        start = meta["step"]
        dist.print0(d, f"resumed from {resume} (step {start})")
    log = MetricsLog(out, enabled=d.main)
    dist.print0(d, f"{cfg.name}: DPO ({s['loss_type']}, beta {s['beta']}), "
                   f"{'LoRA r=' + str(lora.rank) if lora else 'full'}; {stats['pairs']} pairs ({stats['truncated']} "
                   f"sides cut, {stats['dropped']} dropped), {len(val_pairs)} held out; {steps} steps x "
                   f"{s['batch_size']} pairs; {d.world} process(es) on {d.device}")  # fmt: skip

    def policy_logps(batch: dict, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log pi over each row's answer tokens (2B,), and the answers' lengths (2B,)."""
        tokens = torch.from_numpy(batch["tokens"]).to(d.device)
        mask = torch.from_numpy(batch["mask"]).to(d.device).bool()
        x, y = tokens[:, :-1], torch.where(mask[:, 1:], tokens[:, 1:], -100)
        learned = y != -100

        def head(h, w):  # the output layer on answer positions only; a sum per row
            lp = token_logprobs(h[learned], w, y[learned], softcap=cfg.final_softcap)
            rows = torch.arange(y.shape[0], device=y.device)[:, None].expand_as(y)[learned]
            return torch.zeros(y.shape[0], device=y.device, dtype=lp.dtype).index_add(0, rows, lp)

        with torch.enable_grad() if grad else torch.no_grad(), dist.autocast(d, dtype):
            return model(x, head=head), learned.sum(1).float()

    def losses(batch, ref_rows: np.ndarray, grad: bool):
        """(the loss with its RPO term, chosen and rejected implicit rewards, the chosen tokens' NLL sum and count)"""
        lp, n = policy_logps(batch, grad)
        half = lp.shape[0] // 2
        nll, n_chosen = -lp[:half].sum(), n[:half].sum()
        ref = torch.from_numpy(np.concatenate([ref_rows[:, 0], ref_rows[:, 1]])).to(lp.device, torch.float32)
        if s["loss_type"] == "ipo":  # IPO on per-token means (IPO's authors, TRL)
            lp, ref = lp / n, ref / n
        loss, rc, rr = dpo_loss(lp[:half], lp[half:], ref[:half], ref[half:], beta=s["beta"],
                                loss_type=s["loss_type"], label_smoothing=s["label_smoothing"])  # fmt: skip
        if s["rpo_alpha"]:
            loss = loss + s["rpo_alpha"] * nll / n_chosen
        return loss, rc, rr, float(nll.detach()), float(n_chosen)

    def evaluate(step):
        record = {"step": step}
        if val_pairs:
            model.eval()
            tot = acc = margin = ch = rj = nll = n_chosen = 0.0
            for i in range(0, len(val_pairs), s["batch_size"]):  # every rank scores every held-out pair
                chunk = val_pairs[i : i + s["batch_size"]]
                loss, rc, rr, nl, nc = losses(preference.collate(chunk, pad), val_ref_lp[i : i + len(chunk)], False)
                tot += (float(loss) - s["rpo_alpha"] * nl / nc) * len(chunk)  # the DPO part; RPO's below, overall
                nll, n_chosen = nll + nl, n_chosen + nc
                acc += float((rc > rr).sum())
                margin += float((rc - rr).sum())
                ch, rj = ch + float(rc.sum()), rj + float(rr.sum())
            n = len(val_pairs)
            record.update(val_loss=tot / n + s["rpo_alpha"] * nll / n_chosen, val_accuracy=acc / n,
                          val_margin=margin / n, val_chosen_reward=ch / n, val_rejected_reward=rj / n,
                          val_nll=nll / n_chosen)  # fmt: skip
            model.train()
        log.log(record)
        return record

    def save(step):
        meta = {**run_meta, "data": loader.state_dict(), "settings": s}
        checkpoint.save(out, step, model=model, optimizer=optimizer, meta=meta, d=d, keep=s["keep"],
                        tokenizer=tok_path, trainable_only=lora is not None)  # fmt: skip
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
        local = loader.next_batch()
        total = correct = gap = ch = rj = nll = n_chosen = 0.0
        n_tokens = 0
        for m in range(s["grad_accum"]):
            dist.set_sync(model, m == s["grad_accum"] - 1)
            part = local[m * micro : (m + 1) * micro]
            batch = preference.collate(part, pad)
            loss, rc, rr, nl, nc = losses(batch, ref_lp[[index[id(p)] for p in part]], grad=True)
            nll, n_chosen = nll + nl, n_chosen + nc
            (loss * (len(part) * d.world / s["batch_size"])).backward()  # the global mean over pairs
            total += float(loss.detach()) * len(part)
            correct += float((rc > rr).sum())
            gap += float((rc - rr).sum())
            ch, rj = ch + float(rc.sum()), rj + float(rr.sum())
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
        dt = time.perf_counter() - t0
        tokens = dist.all_sum(d, float(n_tokens))
        record = {"step": step + 1, "loss": step_loss, "accuracy": dist.all_sum(d, correct) / n,
                  "margin": dist.all_sum(d, gap) / n, "chosen_reward": dist.all_sum(d, ch) / n,
                  "rejected_reward": dist.all_sum(d, rj) / n,
                  "nll": dist.all_sum(d, nll) / max(dist.all_sum(d, n_chosen), 1.0), "lr": lr_now, "grad_norm": grad_norm,
                  "tokens_per_s": tokens / dt, "step_s": dt, "epoch": loader.epoch,
                  "peak_memory_gib": peak_memory_gib(d.device)}  # fmt: skip
        log.log(record)
        bar.update(step + 1, step_loss, tokens / dt)
        done = step + 1 == steps
        if (step + 1) % s["eval_every"] == 0 or done:
            r = evaluate(step + 1)
            if "val_accuracy" in r:
                bar.write(f"step {step + 1}: loss {step_loss:.4f}, held-out accuracy {r['val_accuracy']:.3f}")
        interrupted = dist.all_sum(d, float(stop["now"])) > 0
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
