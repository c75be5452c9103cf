"""RLHF as the Gemma paper describes it: REINFORCE with a KL penalty towards the initially tuned (SFT) model.

    python -m opengemma.recipes.rlhf --model runs/sft/merged --prompts prompts.jsonl --reward-model runs/rm/model \\
        --samples 4 --steps 100 --kl-coef 0.05 --out runs/rlhf
    python -m opengemma.recipes.rlhf --model M --prompts P.jsonl --verifier mypkg.checks:exact --samples 8 ...

Each step (rl/losses.py has the formulas):
1. `prompts_per_step` prompts (`prompt` or `messages` records; other fields go to the verifier), each answered
   `samples` times by the current policy through opengemma's engine (rl/rollout.py: prefill once, fork the cache,
   per-row seeds drawn from (seed, step, prompt, sample), stop at <end_of_turn>), temperature 1.
2. A reward per answer: the reward model's score (`reward_model`, a *ForSequenceClassification directory) or a
   program's (`verifier package.module:function`, called as function(prompt, completion, **fields) -> float).
   Optionally whitened over the step (`reward_norm whiten`); answers cut at max_new_tokens can get a fixed reward
   (`unfinished_reward`).
3. The policy's and the frozen reference's log-probabilities of every answer token (the reference: the starting
   model; with LoRA, the same weights with the adapters off); per-token KL k1 = log pi - log ref.
4. R = r - beta * sum_t k1 (Ziegler et al. 2019), RLOO advantages over each prompt's samples, and the REINFORCE loss
   -1/N sum_i A_i sum_t log pi(t): one AdamW step (on-policy: no importance ratio, no clipping).
   beta is `kl_coef`, fixed, or adapted towards `kl_target` nats per answer (Ziegler et al.'s controller).
Logged per step: reward, kl (k1 summed per answer; kl_k3 too), response_length, entropy (the mean of -log pi over
the sampled tokens: an unbiased estimate of the policy's per-token entropy at temperature 1), the fraction of answers
cut at max_new_tokens and of prompts whose samples all got one reward (no signal), beta, timings.

Reward-hacking watch: every `judge_every` steps a held-out judge (`judge` mod:fn, e.g. the ground-truth checker, or
`judge_model`, a second reward model) scores the same rollouts; when over the last `watch_window` judged steps the
trained reward rose while the judge fell by more than `watch_tolerance`, the step is flagged (`hacking` in the
metrics, a warning; `stop_on_hacking` ends the run there). Every `eval_every` steps the held-out prompts are answered
greedily and scored by the judge (or the reward): `val_judge`, `val_reward`.

The run directory: metrics.jsonl, loss.png and rl.png (reward, judge, KL per step), samples at each eval,
checkpoints/step_N/ (model or adapters, AdamW, prompt order, beta), and at the end merged/ (and adapter/ for LoRA
runs), which `opengemma.load`, `chat`, `serve` and `eval` read. Rerunning resumes exactly; Ctrl-C saves and exits.

Under torchrun the policy is sharded with FSDP2 (train/dist.py) and each rank answers its share of the step's prompts
(whole prompt groups, so RLOO stays per rank) on a whole copy of the policy (dist.replica: decoding a token at a
time through FSDP would gather every layer per token), whose trained weights are gathered from the shards after each
optimizer step (dist.copy_trained: the adapters only, with LoRA), as RL systems with a separate inference engine do.
Rewards are whitened and metrics computed over every rank's answers; seeds follow the prompt's place in the step,
so 2 ranks draw the same answers as 1 process (tests/rl/test_rlhf.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from opengemma.data import preference
from opengemma.data.sft import DataError
from opengemma.lora import LoRAConfig, adapters_disabled, apply_lora
from opengemma.rl import losses as L
from opengemma.rl.judge import hacking, load_callable
from opengemma.rl.reward import load_reward_model, rewards
from opengemma.rl.rollout import rollouts
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint, dist
from opengemma.train.loss import token_logprobs
from opengemma.train.metrics import MetricsLog, Progress, peak_memory_gib, plot_loss, plot_rl, read_metrics
from opengemma.train.optim import build_optimizer, lr_at, set_lr
from opengemma.train.settings import lora_settings, optim_settings, run_recipe, run_settings

SETTINGS = {
    "model": ("gemma-3-270m", str, "the starting policy (the SFT model): a name, a HF directory, a checkpoint"),
    "prompts": (None, str, "prompts, JSONL (prompt or messages; other fields go to the verifier)"),
    "val_prompts": (None, str, "held-out prompts (default: a seeded val_fraction of prompts)"),
    "val_fraction": (0.1, float, "held out of prompts when there is no val_prompts"),
    "val_max": (64, int, "at most this many held-out prompts"),
    "reward_model": (None, str, "a reward model directory (recipes/reward.py's model/, or transformers')"),
    "verifier": (None, str, "package.module:function(prompt, completion, **fields) -> float, instead of a model"),
    "judge": (None, str, "held-out judge, package.module:function like the verifier (the reward-hacking watch)"),
    "judge_model": (None, str, "held-out judge: a second reward model directory"),
    "out": ("runs/rlhf", str, "the run directory"),
    "steps": (100, int, "optimizer steps"),
    "prompts_per_step": (8, int, "prompts per step"),
    "samples": (4, int, "answers per prompt (k of RLOO, >= 2)"),
    "max_new_tokens": (128, int, "answer length cap"),
    "temperature": (1.0, float, "sampling temperature (1: the policy itself, as the policy gradient assumes)"),
    "grad_accum": (1, int, "micro-batches the step's answers are split into for the backward"),
    **optim_settings(
        None,
        "learning rate (default 1e-6, TRL's; 1e-5 with LoRA, whose rates run ~10x full ones)",
        schedule="constant",
        warmup=0,
    ),
    "kl_coef": (0.05, float, "beta: the KL penalty's weight (TRL's RLOO default 0.05)"),
    "kl_target": (None, float, "adapt beta towards this KL per answer, nats (Ziegler et al. 2019); none: fixed"),
    "kl_horizon": (10000, int, "the adaptive controller's horizon, in answers (Ziegler et al.'s 10,000)"),
    "reward_norm": ("none", str, "none | whiten: rewards standardized over each step before the KL penalty"),
    "unfinished_reward": (None, float, "the reward of an answer cut at max_new_tokens (none: scored as is)"),
    **lora_settings(),
    "judge_every": (5, int, "steps between judge scores of the step's rollouts"),
    "watch_window": (3, int, "judged steps compared against the ones before them"),
    "watch_tolerance": (0.05, float, "the judge's drop that, with the reward rising, flags hacking"),
    "stop_on_hacking": (False, bool, "end the run (saved) at a flagged step"),
    **run_settings(
        save_every=50,
        eval_every=10,
        seed_help="prompt order, rollouts, held-out split, adapter init",
        blocks=False,
        export_help="write merged/ (and adapter/) at the end",
    ),
    "compile": (False, bool, "compile the rollouts' decode step (follows in-place updates; worth it on GPU)"),
}


def main(argv=None) -> int:
    return run_recipe(train, SETTINGS, argv, __doc__, "rlhf", input_errors=(DataError, FileNotFoundError))


def row_seed(seed: int, step: int, prompt: int, sample: int) -> int:
    return int(np.random.SeedSequence([seed, step, prompt, sample]).generate_state(1)[0])


def train(s: dict, stop: dict) -> int:
    if not s["prompts"]:
        sys.exit("rlhf: `prompts` (a JSONL file) is required")
    if bool(s["reward_model"]) == bool(s["verifier"]):
        sys.exit("rlhf: give one reward: --reward-model DIR or --verifier module:function")
    if s["samples"] < 2:
        sys.exit("rlhf: samples must be >= 2 (RLOO baselines each answer by the others)")
    if s["reward_norm"] not in ("none", "whiten"):
        sys.exit(f"rlhf: reward_norm must be none or whiten, got {s['reward_norm']!r}")
    d = dist.init(s["device"])
    if s["prompts_per_step"] % d.world:
        sys.exit(f"rlhf: prompts_per_step {s['prompts_per_step']} must divide among {d.world} ranks")
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    dtype = dist.compute_dtype(s["dtype"], d.device)
    out = Path(s["out"])
    verifier = load_callable(s["verifier"], "verifier") if s["verifier"] else None
    judge_fn = load_callable(s["judge"], "judge") if s["judge"] else None
    records, held = preference.read_sets(preference.read_prompts, s["prompts"], s["val_prompts"], s["val_fraction"],
                                         s["val_max"], s["seed"])  # fmt: skip
    lora = None
    if s["lora_rank"]:
        alpha = s["lora_alpha"] or 2.0 * s["lora_rank"]
        lora = LoRAConfig(rank=s["lora_rank"], alpha=alpha, targets=s["lora_targets"])
    lr = s["lr"] or (1e-5 if lora else 1e-6)
    schedule = dict(lr=lr, steps=s["steps"], warmup=min(s["warmup"], s["steps"]), schedule=s["schedule"],
                    min_ratio=s["min_lr_ratio"])  # fmt: skip
    lr_at(0, **schedule)

    base, tok_path = checkpoint.import_weights(s["model"])
    if tok_path is None:
        sys.exit(f"rlhf: {s['model']} has no tokenizer.model")
    tokenizer, cfg = Tokenizer(tok_path), base.config
    state = base.state_dict()
    ref = None
    if not lora:  # the frozen reference: a copy of the starting weights in the compute dtype
        ref = checkpoint.import_weights(s["model"])[0].to(device=d.device, dtype=dtype).eval().requires_grad_(False)
    del base
    swap = (lambda m: apply_lora(m, lora)) if lora else None
    model = dist.build(cfg, d, state=state, seed=s["seed"], dtype=dtype, swap=swap)
    actor = model  # the rollouts' decoder: the policy itself in one process
    if d.sharded:  # under FSDP a whole copy per rank, whose trained weights follow the policy's after each step
        actor = dist.replica(cfg, state if lora else {k: v.clone() for k, v in state.items()}, s["seed"], swap)
        actor = actor.to(d.device).eval()
    del state
    if lora:  # the decoder's frozen base in the compute dtype (the shards get theirs from FSDP's policy)
        for p in actor.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
    if actor is not model:
        actor.requires_grad_(False)
    reward_model = _reward_model(s["reward_model"], d.device, dtype)
    judge_model = _reward_model(s["judge_model"], d.device, dtype)
    optimizer = build_optimizer(model, lr=lr, weight_decay=s["weight_decay"])
    P, K = s["prompts_per_step"], s["samples"]
    P_local = P // d.world  # rank r answers prompts r, r + world, ... of each step's P (preference.Batches)
    loader = preference.Batches(records, P, seed=s["seed"], rank=d.rank, world=d.world)
    kl_ctl = L.AdaptiveKL(s["kl_coef"], s["kl_target"], s["kl_horizon"])
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
        kl_ctl.load_state_dict(meta["kl"])
        start = meta["step"]
        dist.print0(d, f"resumed from {resume} (step {start})")
    if actor is not model:
        dist.copy_trained(model, actor)
    log = MetricsLog(out, enabled=d.main)
    stop_ids = list(tokenizer.stop_ids)
    newline = tokenizer.encode("\n", bos=False)
    dist.print0(d, f"{cfg.name}: RLHF, {'LoRA r=' + str(lora.rank) if lora else 'full'}, "
                   f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M "
                   f"trained parameters; {len(records)} prompts ({len(held)} held out), {P} x {K} answers per step, "
                   f"reward from {s['verifier'] or s['reward_model']}; {s['steps']} steps, {d.world} process(es) on "
                   f"{d.device}")  # fmt: skip

    def prompt_of(rec):
        return preference.prompt_messages(rec, "prompt")

    def text_fields(rec):
        return {k: v for k, v in rec.items() if k not in ("prompt", "messages", "_line")}

    def completion_text(tokens):
        return tokenizer.decode([t for t in tokens if t not in stop_ids])

    def score(recs, prompt_ids, outs, fn, rm) -> torch.Tensor:
        """A reward per rollout: fn(prompt, completion, **fields) or the reward model on prompt + answer (+ the
        '\\n' after <end_of_turn> when it finished: the encode_chat form the reward model was trained on)."""
        if fn is not None:
            vals = []
            for r in outs:
                rec = recs[r.prompt]
                vals.append(float(fn(prompt_of(rec)[-1]["content"], completion_text(r.tokens), **text_fields(rec))))
            return torch.tensor(vals)
        rows = [prompt_ids[r.prompt] + r.tokens + (newline if r.finished else []) for r in outs]
        vals = []
        with torch.no_grad():
            for i in range(0, len(rows), 16):
                chunk = rows[i : i + 16]
                x = torch.full((len(chunk), max(map(len, chunk))), cfg.pad_id, dtype=torch.long)
                for j, row in enumerate(chunk):
                    x[j, : len(row)] = torch.tensor(row)
                n = torch.tensor([len(row) for row in chunk])
                vals.append(rewards(rm, x.to(d.device), n.to(d.device)).cpu())
        return torch.cat(vals)

    def logprob_rows(m, prompt_ids, outs, rows: slice | None = None, grad: bool = False):
        """(n, T) log pi of each answer token (0 elsewhere) and the answer mask, rows right-padded."""
        outs = outs if rows is None else outs[rows]
        seqs = [prompt_ids[r.prompt] + r.tokens for r in outs]
        T = max(map(len, seqs)) - 1
        x = torch.full((len(seqs), T), cfg.pad_id, dtype=torch.long)
        y = torch.full((len(seqs), T), -100, dtype=torch.long)
        for i, (seq, r) in enumerate(zip(seqs, outs)):
            x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
            n = len(r.tokens)  # targets: the answer tokens, predicted from position len(prompt) - 1 on
            y[i, len(seq) - 1 - n : len(seq) - 1] = torch.tensor(r.tokens)
        x, y = x.to(d.device), y.to(d.device)
        learned = y != -100

        def head(h, w):  # the output layer only on answer positions
            out = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
            return out.masked_scatter(learned, token_logprobs(h[learned], w, y[learned], softcap=cfg.final_softcap))

        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, dist.autocast(d, dtype):
            return m(x, head=head), learned.float()

    def ref_logprobs(prompt_ids, outs):
        if lora:
            with adapters_disabled(model):
                return logprob_rows(model, prompt_ids, outs)[0]
        return logprob_rows(ref, prompt_ids, outs)[0]

    def evaluate(step):
        """Greedy answers to the held-out prompts (split among the ranks), scored by the judge (and the reward)."""
        record = {"step": step}
        if held:
            part = held[d.rank :: d.world]
            ids = [tokenizer.encode_chat(prompt_of(r), add_generation_prompt=True)[0] for r in part]
            outs = []
            if part:
                actor.eval()
                outs = rollouts(actor, ids, 1, s["max_new_tokens"], [0] * len(ids), stop_ids, temperature=0.0)
                model.train()
            total = lambda v: dist.all_sum(d, float(v)) / len(held)  # noqa: E731
            record["val_reward"] = total(score(part, ids, outs, verifier, reward_model).sum() if part else 0)
            if judge_fn is not None or judge_model is not None:
                record["val_judge"] = total(score(part, ids, outs, judge_fn, judge_model).sum() if part else 0)
            record["val_response_length"] = total(sum(len(o.tokens) for o in outs))
            record["samples"] = [{"prompt": prompt_of(r)[-1]["content"], "reply": completion_text(o.tokens)}
                                 for r, o in list(zip(part, outs))[:3]]  # fmt: skip
        log.log(record)
        return record

    def save(step):
        meta = {**run_meta, "data": loader.state_dict(), "kl": kl_ctl.state_dict(), "settings": s}
        checkpoint.save(out, step, model=model, optimizer=optimizer, meta=meta, d=d, keep=s["keep"],
                        tokenizer=tok_path, trainable_only=lora is not None)  # fmt: skip
        if d.main:
            plot_loss(out)
            plot_rl(out)

    if start == 0:
        evaluate(0)
    bar = Progress(s["steps"], initial=start, enabled=d.main)
    metrics_file = out / "metrics.jsonl"
    judged = [(r["reward"], r["judge"]) for r in read_metrics(metrics_file)[0] if "judge" in r] if start else []
    model.train()
    n, n_local = P * K, P_local * K
    mine = slice(d.rank * n_local, (d.rank + 1) * n_local)  # this rank's rows in the step's gathered rows
    for step in range(start, s["steps"]):
        t0 = time.perf_counter()
        lr_now = lr_at(step, **schedule)
        set_lr(optimizer, lr_now)
        recs = loader.next_batch()
        prompt_ids = [tokenizer.encode_chat(prompt_of(r), add_generation_prompt=True)[0] for r in recs]
        # seeds by the prompt's place in the whole step: the same samples on any number of ranks
        seeds = [row_seed(s["seed"], step, d.rank + i * d.world, j) for i in range(P_local) for j in range(K)]
        actor.eval()
        outs = rollouts(actor, prompt_ids, K, s["max_new_tokens"], seeds, stop_ids, s["temperature"],
                        compile=s["compile"])  # fmt: skip
        model.train()
        t_roll = time.perf_counter() - t0
        raw_local = score(recs, prompt_ids, outs, verifier, reward_model)  # (P_local*K,)
        raw = dist.all_cat(d, raw_local)  # (P*K,): each rank's whole prompt groups, rank after rank
        r = raw_local.clone()
        finished = dist.all_cat(d, torch.tensor([o.finished for o in outs]))
        if s["unfinished_reward"] is not None:
            r[~finished[mine]] = s["unfinished_reward"]
        if s["reward_norm"] == "whiten":  # over the whole step's rewards
            r = L.whiten(dist.all_cat(d, r))[mine]
        ref_lp = ref_logprobs(prompt_ids, outs).cpu()
        accum = s["grad_accum"]
        if accum == 1:
            logp, mask = logprob_rows(model, prompt_ids, outs, grad=True)
            lp_now = logp.detach().cpu()
        else:
            lp_now, mask = logprob_rows(model, prompt_ids, outs)
            lp_now = lp_now.cpu()
        mask_cpu = mask.cpu()
        k1 = L.kl_k1(lp_now, ref_lp) * mask_cpu
        beta = kl_ctl.beta
        shaped, kl_seq = L.kl_penalized_rewards(r, k1, mask_cpu, beta)
        adv = L.rloo_advantages(shaped.view(P_local, K)).view(-1)  # a prompt's K answers are on one rank
        if accum == 1:
            loss = L.reinforce_loss(logp, mask, adv.to(logp.device))
            loss.backward()  # FSDP averages the ranks' gradients: the mean over all P*K answers
            loss_value = float(loss.detach())
        else:
            loss_value = 0.0
            size = math.ceil(n_local / accum)
            for m0 in range(0, n_local, size):
                rows = slice(m0, min(n_local, m0 + size))
                dist.set_sync(model, rows.stop == n_local)
                lp, mk = logprob_rows(model, prompt_ids, outs, rows, grad=True)
                part = L.reinforce_loss(lp, mk, adv[rows].to(lp.device)) * (mk.shape[0] / n_local)
                part.backward()
                loss_value += float(part.detach())
        grad_norm = dist.clip_grad_norm(model, s["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if actor is not model:
            dist.copy_trained(model, actor)  # the next rollouts sample from the updated policy
        # the step's metrics over every rank's answers
        kl_all = dist.all_cat(d, kl_seq)
        kl_mean = float(kl_all.mean())
        kl_ctl.update(kl_mean, n)
        lengths = dist.all_cat(d, torch.tensor([len(o.tokens) for o in outs], dtype=torch.float32))
        k3 = dist.all_cat(d, (L.kl_k3(lp_now, ref_lp) * mask_cpu).sum(-1))
        entropy = dist.all_sum(d, float(-(lp_now * mask_cpu).sum())) / max(dist.all_sum(d, float(mask_cpu.sum())), 1)
        groups = raw.view(P, K)
        dt = time.perf_counter() - t0
        record = {"step": step + 1, "loss": dist.all_sum(d, loss_value) / d.world, "reward": float(raw.mean()),
                  "reward_std": float(raw.std()), "shaped_reward": dist.all_sum(d, float(shaped.sum())) / n,
                  "kl": kl_mean, "kl_k3": float(k3.mean()), "response_length": float(lengths.mean()),
                  "entropy": entropy, "truncated": float((~finished).float().mean()),
                  "no_signal_groups": float((groups.max(1).values == groups.min(1).values).float().mean()),
                  "beta": beta, "lr": lr_now, "grad_norm": grad_norm, "step_s": dt, "rollout_s": t_roll,
                  "tokens_per_s": float(lengths.sum()) / dt, "peak_memory_gib": peak_memory_gib(d.device)}  # fmt: skip
        if record["truncated"] > 0.5 and d.main:
            warnings.warn(f"step {step + 1}: {record['truncated']:.0%} of the answers were cut at max_new_tokens "
                          "(their rewards may carry no signal: raise max_new_tokens or set unfinished_reward)")  # fmt: skip
        hacked = False
        if (step + 1) % s["judge_every"] == 0 and (judge_fn is not None or judge_model is not None):
            record["judge"] = float(dist.all_cat(d, score(recs, prompt_ids, outs, judge_fn, judge_model)).mean())
            judged.append((record["reward"], record["judge"]))
            hacked = hacking(judged, s["watch_window"], s["watch_tolerance"])  # the same on every rank
            record["hacking"] = hacked
            if hacked:
                bar.write(f"step {step + 1}: reward-hacking watch: the reward rose while the judge fell "
                          f"(last {s['watch_window']} judged steps against the ones before)")  # fmt: skip
        log.log(record)
        bar.update(step + 1, record["reward"], record["tokens_per_s"])
        done = step + 1 == s["steps"]
        if (step + 1) % s["eval_every"] == 0 or done:
            v = evaluate(step + 1)
            bar.write(f"step {step + 1}: reward {record['reward']:.3f}, kl {kl_mean:.3f}"
                      + (f", held-out judge {v['val_judge']:.3f}" if "val_judge" in v else ""))  # fmt: skip
        interrupted = dist.all_sum(d, float(stop["now"])) > 0  # every rank agrees, or a collective would hang
        halt = interrupted or (hacked and s["stop_on_hacking"])
        if (step + 1) % s["save_every"] == 0 or done or halt:
            save(step + 1)
        if halt:
            why = "reward hacking flagged" if not interrupted else "interrupted"
            dist.print0(d, f"\n{why}: saved {out / 'checkpoints' / f'step_{step + 1}'}")
            break
    bar.close()
    dist.shutdown(d)
    if d.main:
        plot_loss(out)
        plot_rl(out)
        if not stop["now"] and s["export"]:
            checkpoint.export_tuned(checkpoint.latest(out), out, lora is not None)
    return 0


def _reward_model(path, device, dtype):
    if not path:
        return None
    return load_reward_model(path, dtype=dtype, device=device).eval().requires_grad_(False)


if __name__ == "__main__":
    sys.exit(main())
