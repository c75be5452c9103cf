"""CPU preference-tuning and RLHF benchmark: our reward, DPO and RLHF recipes against TRL 1.16's RewardTrainer,
DPOTrainer and RLOOTrainer (+ peft), on the same weights, the same data and the same batches, measured in the same
run (seconds per optimizer step, peak memory, and for RLHF the held-out accuracy each side reaches).

    python benchmarks/train_cpu.py --rl [--phases reward,dpo,rlhf] [--model gemma-3-270m] [--threads N]
        [--batch 8 --seq 256 --steps 3 --warmup 1 --rounds 1]                      # reward model and DPO
        [--rl-steps 20 --prompts-per-step 8 --samples 4 --max-new-tokens 64 --kl-coef 0.05 --rl-lr 2e-5]
        [--eval-problems 200] [--dpo-mode lora|full] [--rank 16] [--dtype auto|float32|bfloat16]
    python benchmarks/train_cpu.py --rl --model tiny-gemma3 --batch 2 --seq 128 --steps 1 --warmup 1 --pairs 16 \\
        --rl-steps 2 --prompts-per-step 2 --samples 2 --max-new-tokens 8 --eval-problems 8 --threads 1 \\
        --output /tmp/rl_dry.json                                                    # dry run
(`python benchmarks/rl_cpu.py ...` is the same script.)

Sides, each (phase, side, round) a fresh child process, ours and TRL alternating within a round per phase:
1. reward model. Ours: `python -m opengemma.recipes.reward --model DIR --data pairs.jsonl --steps W+S --batch-size B
   --seq-len T --lr 1e-5 --schedule constant --warmup 0 --weight-decay 0 --grad-clip 1 --val-fraction 0
   --eval-every 10^9 --save-every 10^9 --no-export` (every weight trains: the recipe has no LoRA). TRL:
   `RewardTrainer` on `AutoModelForSequenceClassification.from_pretrained(DIR, num_labels=1)` (sdpa),
   `RewardConfig(per_device_train_batch_size=B, max_length=T, center_rewards_coefficient=None, ...)`: the same
   Bradley-Terry loss, chosen and rejected in one batch of 2B rows on both.
2. DPO. Ours: `python -m opengemma.recipes.dpo ... --beta 0.1 --loss-type sigmoid [--lora-rank R --lora-alpha 2R
   --lora-targets the 7 projections]` (the reference's log-probs computed once before step 1, by design). TRL:
   `DPOTrainer` on `AutoModelForCausalLM` + `peft.LoraConfig` (same rank, alpha, dropout 0, targets; --dpo-mode
   full: none), `DPOConfig(beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True, max_length=T, ...)`: the
   reference precomputed in the trainer's constructor (LoRA: the adapters disabled), so neither side runs a
   reference forward inside a step.
3. RLHF. Ours: `python -m opengemma.recipes.rlhf --prompts prompts.jsonl --verifier opengemma.data.arithmetic:verify
   --steps N --prompts-per-step P --samples K --max-new-tokens M --temperature 1 --kl-coef C --lr LR --lora-rank R
   ...` (rollouts through opengemma's engine, REINFORCE with RLOO advantages, k1 KL folded into the reward). TRL:
   `RLOOTrainer(reward_funcs=arithmetic_reward)`, a reward function calling the same `verify` on the same records'
   `answer`, `RLOOConfig(per_device_train_batch_size=P*K, num_generations=K, max_completion_length=M,
   temperature=1, top_p=1, top_k=0, beta=C, num_iterations=1, normalize_advantages=False, ...)`: one generation
   batch of P prompts x K samples per optimizer step through `transformers.generate`, the reference = the adapters
   disabled (as ours). RLOO is TRL's peer of ours: the same leave-one-out baseline, the same k1 KL summed per answer
   and folded into the reward; its PPO ratio is 1 on-policy (num_iterations 1), so the gradient is the same.
   Accuracy: the held-out arithmetic problems (opengemma.data.arithmetic's test split, never trained on) answered
   greedily and checked with `verify`, by one evaluator for every model (a child that loads the model directory
   with opengemma and decodes with its engine, float32): the starting model once ("before"), then each side's
   model after the same N optimizer steps (ours: the recipe's merged/; TRL: the trained model, LoRA merged, saved
   after its last step and outside its timing).
Both sides of every phase: AdamW (torch's fused CPU kernel), betas (0.9, 0.95), eps 1e-8, weight decay 0, clip 1.0,
a constant learning rate without warmup, the same per phase (reward 1e-5 full; DPO 1e-5 LoRA / 1e-6 full; RLHF
--rl-lr), gradient checkpointing off (TRL defaults it on), no dropout, seed 0; bfloat16: autocast on both, a LoRA
base held in bfloat16 on both.

Why it is fair:
- Same weights: the model is exported once to a Hugging Face directory both load (sft_cpu.export_model: a real
  model's files linked, Gemma's chat template in tokenizer_config.json; a preset: a seeded random init saved by
  save_hf_dir(instruction_tuned=True)), with generation_config.json stopping at <eos> and <end_of_turn>, as
  save_hf_dir(instruction_tuned=True) writes it (TRL ends a completion at each of those ids; ours at the
  tokenizer's stop ids, the same two).
- Same data, generated here from opengemma.data.arithmetic and written once: RLHF prompts (the train split, with
  their `answer`), held-out problems (the test split), and preference pairs: chosen = answer_text(p) ("<working>.
  The answer is <n>."), rejected = the same text with a wrong final number. Synthetic pairs are acceptable for a
  speed comparison (every step does the same work whatever the pairs say); they are not a preference data set to
  judge a reward model or DPO by, so those phases report speed and memory only. Conversational records on both
  sides ({"prompt": [user turn], "chosen": [assistant turn], ...}; RLHF: the prompt as one user turn), rendered by
  Gemma's chat template on both: the TRL child checks after training that TRL's tokenization equals
  opengemma's Tokenizer.encode_chat ids on the first 50 records ("checks" in the results).
- Same batch: B pairs (2B rows) per step in the reward and DPO phases; P prompts x K samples per step in RLHF, the
  same cap M and temperature 1, no top-k / top-p on either side.
- Not the same, by design of each side: the order of the pairs / prompts (each side shuffles with its own seeded
  sampler); DPO's summed completion: ours the answer and its <end_of_turn>, TRL's also the "\\n" after it (one
  token more per side, the "checks" show it); the reward head's init (ours N(0, 1/(d+1)), transformers' N(0,
  0.02)); TRL computes the policy's log-probs twice per RLHF step (a no-grad "old" pass, then the training pass)
  and entropies, and ours once, as each does for its users; TRL's sequence-level loss is the clipped PPO form
  (ratio 1 here). RLHF rewards and accuracy are each side's own samples: they differ by chance as well as by
  method; use --eval-problems and --rl-steps large enough for the accuracy gain to mean something.
- Starting model: the accuracy comparison needs a model that already answers the chat format sometimes (RL
  sharpens what the model can sample: docs TRAINING.md). The pretrained gemma-3-270m rarely does (its greedy
  held-out accuracy is near 0, and an all-zero reward gives no gradient on either side); for the accuracy half of
  the target run with a chat SFT model, e.g. `--model runs/sft_270m/merged` or rl_pipeline's SFT model.

Timing: a step is one optimizer step as each side logs it. Ours: `step_s` of the recipe's metrics.jsonl (reward /
DPO: batch building, forward, loss, backward, clip, AdamW; RLHF: rollouts, reward, reference and policy log-probs,
loss, backward, clip, AdamW). TRL: on_step_begin -> on_step_end of a TrainerCallback (RLHF: generation, scoring,
the old / reference log-probs, forward, backward, clip, AdamW, all inside training_step) plus the data collator's
time on that step's batch. The first --warmup steps of each process are not timed; "s/step" is the median over
every timed step of every round; "speed vs TRL" = TRL's s/step / ours (above 1: ours is faster). RLHF also logs
the generation part ("rollout s": ours `rollout_s`, TRL its `_generate` call: tokenize, generate, decode).
Memory: "peak RSS" is ru_maxrss of the child at the end of its last training step (ours: the last step's
`peak_memory_gib`; TRL: read in on_step_end), loading included; "vs TRL" = ours / TRL's; "process peak" is the
child's whole-life ru_maxrss from os.wait4 (ours includes its final checkpoint save and, for RLHF, the merged
export; TRL's its merged save). Target (the issue): ours' RLHF step >= 2x TRL's speed at an equal or better
held-out accuracy gain. Writes benchmarks/results/rl_cpu.json (--output) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's opengemma, wherever the script is run from
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_cpu import (  # noqa: E402
    BETAS,
    EPS,
    GRAD_CLIP,
    NEVER,
    TARGETS,
    WEIGHT_DECAY,
    child_env,
    export_model,
    ru_maxrss_gib,
    run_process,
    tail,
)
from train_cpu import cpu_name  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PHASES = ("reward", "dpo", "rlhf")
TARGET_RL_SPEEDUP = 2.0  # the issue: ours' RLHF step >= 2x TRL's speed at an equal or better accuracy gain
VERIFIER = "opengemma.data.arithmetic:verify"


# -- the data both sides read ----------------------------------------------------------------------------------
def wrong_answer(p: dict, rng: random.Random) -> str:
    """answer_text(p) with a wrong final number."""
    from opengemma.data.arithmetic import answer_text

    wrong = p["answer"] + rng.choice([-10, -2, -1, 1, 2, 10])
    return answer_text({**p, "answer": wrong})


def write_data(tmp: Path, n_pairs: int, n_prompts: int, n_eval: int) -> dict:
    """pairs.jsonl (reward, DPO), prompts.jsonl (RLHF: train split, with answers), heldout.jsonl (test split)."""
    from opengemma.data.arithmetic import answer_text, problems

    rng = random.Random(0)
    train = problems(max(n_pairs, n_prompts), seed=0, split="train")
    held = problems(n_eval, seed=1, split="test")
    user = lambda p: [{"role": "user", "content": p["prompt"]}]
    with open(tmp / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in train[:n_pairs]:
            rec = {"prompt": user(p), "chosen": [{"role": "assistant", "content": answer_text(p)}],
                   "rejected": [{"role": "assistant", "content": wrong_answer(p, rng)}]}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
    for name, rows in (("prompts.jsonl", train[:n_prompts]), ("heldout.jsonl", held)):
        with open(tmp / name, "w", encoding="utf-8") as f:
            for p in rows:
                f.write(json.dumps({"prompt": p["prompt"], "answer": p["answer"]}) + "\n")
    return {"pairs": n_pairs, "prompts": n_prompts, "heldout": n_eval,
            "source": "opengemma.data.arithmetic (train split seed 0, test split seed 1)"}  # fmt: skip


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- the weights both sides load -------------------------------------------------------------------------------
def export(model: str, tmp: Path) -> tuple[Path, bool]:
    """sft_cpu.export_model, then generation_config.json stopping at <eos> and <end_of_turn> (as save_hf_dir(
    instruction_tuned=True) writes it; a real model's own file, linked, stops at <eos> only)."""
    from opengemma.tokenizer import Tokenizer

    src, real = export_model(model, tmp)
    tok = Tokenizer(src / "tokenizer.model")
    gen = src / "generation_config.json"
    cfg = json.loads(gen.read_text()) if gen.exists() else {}
    cfg["eos_token_id"] = list(tok.stop_ids)
    cfg.setdefault("bos_token_id", tok.bos_id)
    cfg.setdefault("pad_token_id", tok.pad_id)
    gen.unlink(missing_ok=True)  # a link to the source's file: replaced, not written through
    gen.write_text(json.dumps(cfg, indent=2))
    return src, real


# -- ours: the recipes as users run them ------------------------------------------------------------------------
def ours_command(spec: dict, out: Path) -> list[str]:
    phase = spec["phase"]
    cmd = [sys.executable, "-m", f"opengemma.recipes.{phase}", "--model", spec["source"], "--out", str(out),
           "--steps", str(spec["total_steps"]), "--lr", str(spec["lr"]), "--schedule", "constant", "--warmup", "0",
           "--weight-decay", str(WEIGHT_DECAY), "--grad-clip", str(GRAD_CLIP), "--eval-every", str(NEVER),
           "--save-every", str(NEVER), "--dtype", spec["dtype"], "--device", "cpu", "--threads", str(spec["threads"]),
           "--seed", "0"]  # fmt: skip
    if phase in ("reward", "dpo"):
        cmd += ["--data", spec["pairs"], "--batch-size", str(spec["batch"]), "--seq-len", str(spec["seq"]),
                "--val-fraction", "0", "--no-export"]  # fmt: skip
    if phase == "dpo":
        cmd += ["--beta", str(spec["beta"]), "--loss-type", "sigmoid"]
    if phase == "rlhf":
        cmd += ["--prompts", spec["prompts"], "--verifier", VERIFIER, "--val-fraction", "0",
                "--prompts-per-step", str(spec["prompts_per_step"]), "--samples", str(spec["samples"]),
                "--max-new-tokens", str(spec["max_new_tokens"]), "--temperature", "1.0",
                "--kl-coef", str(spec["kl_coef"]), "--export"]  # fmt: skip
    if spec["mode"] == "lora":
        cmd += ["--lora-rank", str(spec["rank"]), "--lora-alpha", str(spec["alpha"]),
                "--lora-targets", ",".join(spec["targets"])]  # fmt: skip
    return cmd


def run_ours(spec: dict, work: Path, timeout: float | None) -> dict:
    out = work / "run"
    cmd = ours_command(spec, out)
    log = work / "ours.log"
    t = time.perf_counter()
    rc, process_peak = run_process(cmd, child_env(spec["threads"]), log, timeout)
    wall = time.perf_counter() - t
    metrics = out / "metrics.jsonl"
    steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if "step_s" in r] if metrics.exists() else []
    if rc != 0 or len(steps) < spec["total_steps"]:
        return {"error": [f"exit {rc}"] + tail(log), "command": cmd}
    steps.sort(key=lambda r: r["step"])
    w = spec["warmup"]
    result = {
        "step_s": [r["step_s"] for r in steps[w:]],
        "losses": [r["loss"] for r in steps],
        "peak_rss_gib": steps[-1]["peak_memory_gib"],
        "process_peak_gib": process_peak,
        "first_step_s": steps[0]["step_s"],
        "wall_s": wall,
        "command": cmd,
    }
    if "tokens_per_s" in steps[0] and spec["phase"] != "rlhf":
        result["tokens"] = [r["tokens_per_s"] * r["step_s"] for r in steps[w:]]
    if spec["phase"] == "rlhf":
        result.update(
            rollout_s=[r["rollout_s"] for r in steps[w:]],
            rewards=[r["reward"] for r in steps],
            kl=[r["kl"] for r in steps],
            response_length=[r["response_length"] for r in steps],
            truncated=[r["truncated"] for r in steps],
            model_dir=str(out / "merged"),
        )
        trained = re.search(r"([\d.]+)M trained parameters", log.read_text(errors="replace"))
        result["trainable_params"] = trained and float(trained.group(1)) * 1e6  # as the recipe prints it
        if not (out / "merged" / "config.json").is_file():
            return {"error": ["no merged/ exported"] + tail(log), "command": cmd}
    return result


def run_trl(spec: dict, work: Path, timeout: float | None) -> dict:
    spec = {**spec, "role": "trl", "out": str(work / "trl_out"), "merged": str(work / "trl_merged")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    log = work / "trl.log"
    t = time.perf_counter()
    rc, process_peak = run_process(cmd, child_env(spec["threads"]), log, timeout)
    wall = time.perf_counter() - t
    line = next((ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")), None)
    if rc != 0 or line is None:
        return {"error": [f"exit {rc}"] + tail(log)}
    return {**json.loads(line[len("RESULT ") :]), "process_peak_gib": process_peak, "wall_s": wall}


def run_eval(model_dir: str, spec: dict, work: Path, timeout: float | None) -> dict:
    """Greedy held-out accuracy of a model directory, in its own process (the same evaluator for every model)."""
    espec = {"role": "eval", "model": model_dir, "tokenizer": str(Path(spec["source"]) / "tokenizer.model"),
             "heldout": spec["heldout"], "max_new_tokens": spec["max_new_tokens"],
             "threads": spec["threads"]}  # fmt: skip
    log = work / "eval.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(espec)]
    rc, _ = run_process(cmd, child_env(spec["threads"]), log, timeout)
    line = next((ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")), None)
    if rc != 0 or line is None:
        return {"error": [f"exit {rc}"] + tail(log)}
    return json.loads(line[len("RESULT ") :])


# -- the children: TRL's trainers, and the evaluator --------------------------------------------------------------
def arithmetic_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL's reward function: opengemma.data.arithmetic.verify on the record's answer, as ours' --verifier."""
    from opengemma.data.arithmetic import verify

    def text(x):
        return x[-1]["content"] if isinstance(x, list) else x

    return [verify(text(p), text(c), a) for p, c, a in zip(prompts, completions, answer)]


def trl_child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    phase, src = spec["phase"], spec["source"]
    lora, bf16 = spec["mode"] == "lora", spec["dtype"] == "bfloat16"
    # LoRA in bfloat16: the frozen base held in bfloat16, as ours holds it; full fine-tuning: fp32 master weights
    dtype = torch.bfloat16 if bf16 and lora else torch.float32
    tok = AutoTokenizer.from_pretrained(src)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0, bias="none",
                                 target_modules=list(spec["targets"]), task_type="CAUSAL_LM")  # fmt: skip
    common = dict(
        output_dir=spec["out"],
        use_cpu=True,
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=spec["total_steps"],
        optim="adamw_torch_fused",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=GRAD_CLIP,
        bf16=bf16,
        gradient_checkpointing=False,
        disable_dropout=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    rec = {"compute_s": [], "collate_s": [], "rollout_s": [], "tokens": [], "losses": [], "peaks": [], "logs": []}

    if phase == "reward":
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(
            src, num_labels=1, dtype=dtype, attn_implementation=spec["hf_attn"]
        )
        args = RewardConfig(**common, per_device_train_batch_size=spec["batch"], max_length=spec["seq"],
                            center_rewards_coefficient=None)  # fmt: skip
        base, data = RewardTrainer, read_jsonl(spec["pairs"])
    elif phase == "dpo":
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation=spec["hf_attn"])
        args = DPOConfig(**common, per_device_train_batch_size=spec["batch"], max_length=spec["seq"],
                         beta=spec["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=True,
                         precompute_ref_batch_size=spec["batch"])  # fmt: skip
        base, data = DPOTrainer, read_jsonl(spec["pairs"])
    else:
        from trl import RLOOConfig, RLOOTrainer

        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation=spec["hf_attn"])
        P, K = spec["prompts_per_step"], spec["samples"]
        args = RLOOConfig(**common, per_device_train_batch_size=P * K, num_generations=K,
                          max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
                          beta=spec["kl_coef"], num_iterations=1, normalize_advantages=False,
                          mask_truncated_completions=False)  # fmt: skip
        base = RLOOTrainer
        data = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                for r in read_jsonl(spec["prompts"])]  # fmt: skip
    dataset = datasets.Dataset.from_list(data)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            rec["compute_s"].append(time.perf_counter() - self.t)
            rec["peaks"].append(ru_maxrss_gib())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                rec["logs"].append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    class Counting(base):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if isinstance(inputs, dict) and "attention_mask" in inputs:
                rec["tokens"].append(int(inputs["attention_mask"].sum()))
            loss = super().training_step(model, inputs, num_items_in_batch)
            rec["losses"].append(float(loss))
            return loss

        def _generate(self, prompts):  # RLOO: the generation part of a step (tokenize, generate, decode)
            t = time.perf_counter()
            out = super()._generate(prompts)
            rec["rollout_s"].append(time.perf_counter() - t)
            return out

    kwargs = dict(model=model, args=args, train_dataset=dataset, processing_class=tok, callbacks=[StepTimer()])
    if phase == "rlhf":
        kwargs.update(reward_funcs=arithmetic_reward, peft_config=peft_config)
    elif phase == "dpo":
        kwargs.update(peft_config=peft_config)
    trainer = Counting(**kwargs)
    collator = trainer.data_collator

    def timed_collator(examples):
        t = time.perf_counter()
        batch = collator(examples)
        rec["collate_s"].append(time.perf_counter() - t)
        return batch

    trainer.data_collator = timed_collator  # read when train() builds its DataLoader
    setup_s = time.perf_counter() - t0
    trainer.train()
    n, w = len(rec["compute_s"]), spec["warmup"]
    # the collator's k-th batch is step k's (the loader may collate one ahead: order is kept, the sum is not lost)
    collate = (rec["collate_s"] + [0.0] * n)[:n]
    step_s = [c + d for c, d in zip(rec["compute_s"], collate)]
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    result = {
        "step_s": step_s[w:],
        "compute_s": rec["compute_s"][w:],
        "collate_s": collate[w:],
        "losses": rec["losses"],
        "peak_rss_gib": rec["peaks"][-1],
        "first_step_s": step_s[0],
        "setup_s": setup_s,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optimizer": {
            **{k: optimizer.defaults.get(k) for k in ("lr", "betas", "eps", "fused")},
            "weight_decay": sorted({g["weight_decay"] for g in optimizer.param_groups}),
            "type": type(optimizer).__name__,
        },
        "versions": {
            "trl": __import__("trl").__version__,
            "transformers": transformers.__version__,
            "peft": __import__("peft").__version__,
            "torch": torch.__version__,
        },  # fmt: skip
    }
    if rec["tokens"]:
        result["tokens"] = rec["tokens"][w:]
    if phase == "rlhf":
        train_logs = [lg for lg in rec["logs"] if "reward" in lg]
        result.update(
            rollout_s=rec["rollout_s"][w:n],
            rewards=[lg["reward"] for lg in train_logs],
            kl=[lg.get("kl", float("nan")) for lg in train_logs],
            response_length=[lg.get("completions/mean_length", float("nan")) for lg in train_logs],
            truncated=[lg.get("completions/clipped_ratio", float("nan")) for lg in train_logs],
            eos_token_ids=list(trainer.eos_token_ids),
        )
        # the trained policy for the evaluator (after the timed steps: not in the step times nor the peak RSS)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if lora:
            policy = policy.merge_and_unload()
        policy.to(torch.float32).save_pretrained(spec["merged"])
        shutil.copyfile(Path(src) / "tokenizer.model", Path(spec["merged"]) / "tokenizer.model")
        result["model_dir"] = spec["merged"]
    result["checks"] = check_tokens(phase, tok, src, trainer.train_dataset, data)
    if phase == "dpo":  # the reference's log-probs were precomputed (no reference forward inside a step)
        result["checks"]["reference_precomputed"] = "ref_chosen_logps" in trainer.train_dataset.column_names
    return result


def check_tokens(phase: str, tok, src: str, dataset, data: list[dict], limit: int = 50) -> dict:
    """TRL's token ids against opengemma's Tokenizer.encode_chat on the first `limit` records: reward, the whole
    chosen / rejected conversations; DPO, prompt + completion, and the completion's length against ours' answer
    mask; RLHF, the prompt with the generation header."""
    from opengemma.data.preference import last_answer
    from opengemma.tokenizer import Tokenizer

    ours = Tokenizer(Path(src) / "tokenizer.model")
    n = min(limit, len(data), len(dataset))
    same, extra = 0, []
    for i in range(n):
        r, t = data[i], dataset[i]
        if phase == "rlhf":
            theirs = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)
            same += list(theirs["input_ids"]) == ours.encode_chat(r["prompt"], add_generation_prompt=True)[0]
            continue
        ok = True
        for side in ("chosen", "rejected"):
            ids, mask = ours.encode_chat(r["prompt"] + r[side], add_generation_prompt=False)
            if phase == "reward":
                ok &= list(t[f"{side}_ids"]) == ids
            else:
                ok &= list(t["prompt_ids"]) + list(t[f"{side}_ids"]) == ids
                extra.append(len(t[f"{side}_ids"]) - sum(last_answer(mask)))
        same += ok
    out = {"records": n, "ids_identical": same, "dataset_rows": len(dataset), "data_rows": len(data)}
    if extra:
        out["completion_tokens_trl_minus_ours"] = sorted(set(extra))
    return out


def eval_child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from opengemma.data.arithmetic import verify
    from opengemma.rl.rollout import rollouts
    from opengemma.tokenizer import Tokenizer
    from opengemma.train.checkpoint import import_weights

    model, tok_path = import_weights(spec["model"])
    model.eval()
    tok = Tokenizer(tok_path or spec["tokenizer"])
    stop = list(tok.stop_ids)
    rows = read_jsonl(spec["heldout"])
    replies, finished = [], []
    for i in range(0, len(rows), 32):
        part = rows[i : i + 32]
        ids = [tok.encode_chat([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)[0] for r in part]
        outs = rollouts(model, ids, 1, spec["max_new_tokens"], [0] * len(ids), stop, temperature=0.0)
        replies += [tok.decode([t for t in o.tokens if t not in stop]) for o in outs]
        finished += [o.finished for o in outs]
    right = [verify(r["prompt"], reply, r["answer"]) for r, reply in zip(rows, replies)]
    return {
        "accuracy": sum(right) / len(right),
        "n": len(right),
        "finished": sum(finished) / len(finished),
        "examples": [
            {"prompt": r["prompt"], "answer": r["answer"], "reply": reply} for r, reply in list(zip(rows, replies))[:3]
        ],  # fmt: skip
    }


# -- the parent: plan, alternate, aggregate, print -------------------------------------------------------------
def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"], "runs": runs}
    steps = [t for r in ok for t in r["step_s"]]
    med = lambda key: statistics.median(r[key] for r in ok)
    out = {
        "median_step_s": statistics.median(steps),
        "best_step_s": min(steps),  # the least disturbed step: neighbours' load only ever slows one
        "step_s_per_round": [statistics.median(r["step_s"]) for r in ok],
        "peak_rss_gib": med("peak_rss_gib"),
        "process_peak_gib": med("process_peak_gib"),
        "first_step_s": med("first_step_s"),
        "first_loss": ok[0]["losses"][0],
        "last_loss": ok[0]["losses"][-1],
        "runs": runs,
    }
    if all(r.get("tokens") for r in ok):
        out["tokens_per_step"] = statistics.median(n for r in ok for n in r["tokens"])
    if all("rollout_s" in r for r in ok):
        rollout = [t for r in ok for t in r["rollout_s"]]
        out["median_rollout_s"] = statistics.median(rollout) if rollout else float("nan")
        out["mean_reward"] = statistics.fmean(x for r in ok for x in r["rewards"])
        out["mean_truncated"] = statistics.fmean(x for r in ok for x in r["truncated"])
        out["mean_response_length"] = statistics.fmean(x for r in ok for x in r["response_length"])
        accs = [r["eval"]["accuracy"] for r in ok if "accuracy" in r.get("eval", {})]
        if accs:
            out["accuracy_after"] = statistics.fmean(accs)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="train_cpu.py --rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="gemma-3-270m", help="a real model, a Hugging Face directory, or a preset")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    ap.add_argument("--batch", type=int, default=8, help="reward / DPO: preference pairs per optimizer step")
    ap.add_argument("--seq", type=int, default=256, help="reward / DPO: tokens per side at most")
    ap.add_argument("--steps", type=int, default=3, help="reward / DPO: timed steps per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first, per process (every phase)")
    ap.add_argument("--pairs", type=int, default=128, help="preference pairs generated (both sides' data set)")
    ap.add_argument("--rl-steps", type=int, default=20, help="RLHF: optimizer steps per process, warmup included")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4, help="RLHF: answers per prompt (k; TRL's num_generations)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="RLHF: answer cap (and the evaluation's)")
    ap.add_argument("--kl-coef", type=float, default=0.05, help="RLHF: beta of the KL penalty (both defaults)")
    # 2e-5: at 5e-5 both sides drifted below the SFT model in 20 steps of 32 answers (ours 0.395 -> 0.240, TRL's
    # -> 0.355); at 2e-5 ours held (0.385): docs/training.md, "Against TRL (benchmarks/rl_cpu.py)"
    ap.add_argument("--rl-lr", type=float, default=2e-5, help="RLHF learning rate (LoRA)")
    ap.add_argument("--rl-prompts", type=int, default=1024, help="RLHF training prompts generated")
    ap.add_argument("--eval-problems", type=int, default=200, help="held-out problems for the accuracy")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    ap.add_argument("--dpo-mode", default="lora", choices=["lora", "full"])
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (DPO with --dpo-mode lora, RLHF)")
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="LoRA target projections")
    ap.add_argument("--rounds", type=int, default=1, help="processes per side and phase, alternating sides")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: every core")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--child-timeout", type=float, default=None, help="seconds per process")
    ap.add_argument("--output", default=str(RESULTS / "rl_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = eval_child(spec) if spec["role"] == "eval" else trl_child(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return
    phases = list(dict.fromkeys(args.phases.split(",")))
    if bad := [p for p in phases if p not in PHASES]:
        ap.error(f"--phases: unknown {bad}; choose from {', '.join(PHASES)}")
    counts = (args.batch, args.steps, args.rounds, args.threads, args.rank, args.prompts_per_step, args.eval_problems)
    if min(counts) < 1 or args.warmup < 0 or args.seq < 16 or args.samples < 2 or args.max_new_tokens < 1:
        ap.error("--batch, --steps, --rounds, --threads, --rank, --prompts-per-step, --eval-problems must be >= 1, "
                 "--warmup >= 0, --seq >= 16, --samples >= 2, --max-new-tokens >= 1")  # fmt: skip
    if args.rl_steps <= args.warmup:
        ap.error("--rl-steps must be more than --warmup (the RLHF steps are counted with the warm-up)")
    if args.pairs < (args.warmup + args.steps) * args.batch:
        ap.error(f"--pairs must be >= (warmup + steps) x batch = {(args.warmup + args.steps) * args.batch}")
    if args.rl_prompts < args.prompts_per_step:
        ap.error("--rl-prompts must be >= --prompts-per-step")
    targets = args.targets.split(",")
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"--targets: unknown {bad}; choose from {', '.join(TARGETS)}")
    import torch

    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    alpha = args.alpha or 2.0 * args.rank

    def phase_spec(phase: str) -> dict:
        if phase == "reward":
            return dict(mode="full", lr=1e-5, total_steps=args.warmup + args.steps)
        if phase == "dpo":
            return dict(mode=args.dpo_mode, lr=1e-5 if args.dpo_mode == "lora" else 1e-6,
                        total_steps=args.warmup + args.steps)  # fmt: skip
        return dict(mode="lora", lr=args.rl_lr, total_steps=args.rl_steps)

    rows = []  # (label, phase, side), in the order each round runs them: ours and TRL alternate per phase
    for phase in phases:
        rows.append((f"{phase} opengemma", phase, "ours"))
        if not args.skip_trl:
            rows.append((f"{phase} trl", phase, "trl"))
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    before = None
    with tempfile.TemporaryDirectory(prefix="rl_cpu_") as tmp:
        tmp = Path(tmp)
        source, real = export(args.model, tmp)
        data_info = write_data(tmp, args.pairs, args.rl_prompts, args.eval_problems)
        print(f"model {args.model} -> {source}; data: {data_info}; dtype {dtype}", flush=True)
        base = dict(source=str(source), pairs=str(tmp / "pairs.jsonl"), prompts=str(tmp / "prompts.jsonl"),
                    heldout=str(tmp / "heldout.jsonl"), batch=args.batch, seq=args.seq, warmup=args.warmup,
                    threads=args.threads, dtype=dtype, rank=args.rank, alpha=alpha, targets=targets,
                    beta=args.beta, prompts_per_step=args.prompts_per_step, samples=args.samples,
                    max_new_tokens=args.max_new_tokens, kl_coef=args.kl_coef, hf_attn=args.hf_attn)  # fmt: skip
        if "rlhf" in phases:
            (tmp / "eval_before").mkdir()
            before = run_eval(str(source), base, tmp / "eval_before", args.child_timeout)
            brief = before.get("error") or f"accuracy {before['accuracy']:.3f} on {before['n']} held-out problems"
            print(f"before RLHF (the starting model, greedy): {brief}", flush=True)
        for rnd in range(args.rounds):
            for label, phase, side in rows:
                work = tmp / f"{label.replace(' ', '_')}_{rnd}"
                work.mkdir()
                spec = dict(base, phase=phase, **phase_spec(phase))
                r = (run_ours if side == "ours" else run_trl)(spec, work, args.child_timeout)
                if phase == "rlhf" and "error" not in r:
                    r["eval"] = run_eval(r["model_dir"], spec, work, args.child_timeout)
                runs[label].append(r)
                brief = r.get("error") or (
                    f"median step {statistics.median(r['step_s']):.2f} s, peak {r['peak_rss_gib']:.2f} GiB"
                    + (f", held-out accuracy {r['eval'].get('accuracy', float('nan')):.3f}" if "eval" in r else "")
                )
                print(f"round {rnd + 1}/{args.rounds} {label}: {brief}", flush=True)
    results = {label: aggregate(rs) for label, rs in runs.items()}
    report(args, dtype, real, data_info, results, before)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "dtype": dtype, "real_weights": real, "data": data_info, "cpu": cpu_name()}
    out.write_text(json.dumps({**meta, "accuracy_before": before, "results": results}, indent=2))
    print(f"wrote {out}")


def report(args, dtype: str, real: bool, data_info: dict, results: dict, before: dict | None) -> None:
    print(
        f"\n{args.model}{'' if real else ' (random init)'}, {dtype}, {args.threads} threads, {args.rounds} round(s); "
        f"reward / DPO: {args.batch} pairs per step, median of {args.steps} steps after {args.warmup} warm-up; "
        f"RLHF: {args.prompts_per_step} prompts x {args.samples} samples, <= {args.max_new_tokens} new tokens, "
        f"{args.rl_steps} steps ({args.warmup} untimed); {cpu_name()}"
    )
    print("| phase | side | s/step | speed vs TRL | best s/step | peak RSS GiB | vs TRL | process peak GiB "
          "| tokens/step | first loss | last loss |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        phase, side = label.split()
        if "error" in r:
            print(f"| {phase} | {side} | failed: {' / '.join(map(str, r['error']))} | | | | | | | | |")
            continue
        ref = results.get(f"{phase} trl") if side == "opengemma" else None
        ref = ref if ref and "error" not in ref else None
        speed = f"{ref['median_step_s'] / r['median_step_s']:.2f}x" if ref else "-"
        mem = f"{r['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x" if ref else "-"
        tokens = f"{r['tokens_per_step']:.0f}" if "tokens_per_step" in r else "-"
        print(
            f"| {phase} | {side} | {r['median_step_s']:.2f} | {speed} | {r['best_step_s']:.2f} | "
            f"{r['peak_rss_gib']:.2f} | {mem} | {r['process_peak_gib']:.2f} | {tokens} | {r['first_loss']:.4f} | "
            f"{r['last_loss']:.4f} |"
        )
        if ref:
            r["vs_trl"] = {"speed": ref["median_step_s"] / r["median_step_s"],
                           "memory_ratio": r["peak_rss_gib"] / ref["peak_rss_gib"]}  # fmt: skip
    rl = {side: results.get(f"rlhf {side}") for side in ("opengemma", "trl")}
    if any(rl.values()):
        acc0 = before.get("accuracy") if before else None
        print(f"\nRLHF on held-out arithmetic ({args.eval_problems} test-split problems, greedy, verify), "
              f"after {args.rl_steps} steps; before: " + (f"{acc0:.3f}" if acc0 is not None else "failed"))  # fmt: skip
        print("| side | s/step | rollout s/step | mean train reward | truncated | mean answer tokens | accuracy after "
              "| gain |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for side, r in rl.items():
            if not r or "error" in r:
                continue
            after = r.get("accuracy_after")
            gain = after - acc0 if after is not None and acc0 is not None else None
            r["accuracy_gain"] = gain
            fmt = lambda x: "-" if x is None else f"{x:.3f}"
            print(
                f"| {side} | {r['median_step_s']:.2f} | {r['median_rollout_s']:.2f} | {r['mean_reward']:.3f} | "
                f"{r['mean_truncated']:.2f} | {r['mean_response_length']:.1f} | {fmt(after)} | {fmt(gain)} |"
            )
        ours, trl = rl["opengemma"], rl["trl"]
        if ours and trl and "error" not in ours and "error" not in trl:
            n_ours, n_trl = (next((x.get("trainable_params") for x in r["runs"] if "error" not in x), None)
                             for r in (ours, trl))  # fmt: skip
            print(f"RLHF trained (LoRA) parameters: ours {(n_ours or 0) / 1e6:.2f}M, TRL {(n_trl or 0) / 1e6:.2f}M")
            speed = trl["median_step_s"] / ours["median_step_s"]
            g_ours, g_trl = ours.get("accuracy_gain"), trl.get("accuracy_gain")
            acc_met = g_ours is not None and g_trl is not None and g_ours >= g_trl
            ours["targets"] = {"speedup": speed, "speed_met": speed >= TARGET_RL_SPEEDUP, "gain_ours": g_ours,
                               "gain_trl": g_trl, "accuracy_met": acc_met}  # fmt: skip
            print(
                f"RLHF: ours {speed:.2f}x TRL's steps/s (target >= {TARGET_RL_SPEEDUP}x: "
                f"{'met' if speed >= TARGET_RL_SPEEDUP else 'NOT met'}); accuracy gain ours "
                f"{'-' if g_ours is None else f'{g_ours:+.3f}'} vs TRL {'-' if g_trl is None else f'{g_trl:+.3f}'} "
                f"(equal or better: {'met' if acc_met else 'NOT met'})"
            )
            if ours["mean_reward"] == 0 and trl["mean_reward"] == 0:
                ours["targets"]["no_reward_signal"] = True
                print("RLHF: no answer of either side was ever right (zero reward, zero gradient): the accuracy "
                      "comparison says nothing; start from a model that answers sometimes (a chat SFT model)")  # fmt: skip
    for label, r in results.items():
        checks = next((run.get("checks") for run in r.get("runs", []) if run.get("checks")), None)
        if checks:
            same = checks["ids_identical"] == checks["records"]
            if checks.get("dataset_rows") != checks.get("data_rows"):  # TRL dropped some (its max_length filter)
                print(f"{label} checks: TRL kept {checks['dataset_rows']} of {checks['data_rows']} records")
            extra = checks.get("completion_tokens_trl_minus_ours")
            print(
                f"{label} checks: token ids identical to ours on {checks['ids_identical']}/{checks['records']} "
                "records"
                + ("" if same else " -- MISMATCH: the sides do not read the same tokens")
                + (f"; completion tokens TRL - ours: {extra}" if extra else "")
                + ("" if checks.get("reference_precomputed", True) else " -- the reference was NOT precomputed")
            )
        ev = [run["eval"] for run in r.get("runs", []) if "eval" in run]
        if ev and "examples" in ev[0]:
            ex = ev[0]["examples"][0]
            print(f"{label} sample: {ex['prompt']!r} (answer {ex['answer']}) -> {ex['reply'][:120]!r}")
        elif ev:
            print(f"{label} evaluation failed: {ev[0].get('error')}")


if __name__ == "__main__":
    main()
