"""The paper's post-training chain on a task with ground truth, in one command: base -> SFT -> reward model -> RLHF,
and DPO from the same SFT model beside it, each stage scored on held-out arithmetic word problems that a program
checks (opengemma/data/arithmetic.py; the held-out problems' numbers never appear in training).

    python benchmarks/rl_pipeline.py [--model gemma-3-270m] [--out runs/pipeline]       # ~110 min on 2 cores; ~90 with --no-checker-run
    python benchmarks/rl_pipeline.py --tiny --out /tmp/pipe                              # dry run of every stage

Stages (each a recipe run as users run it, in its own process; a stage whose output exists is skipped, so a rerun
continues where it stopped):
1. data: SFT conversations ("<working>. The answer is <n>."), RLHF prompts with their answers, held-out problems.
2. base: held-out accuracy of the pretrained model (greedy, chat format).
3. SFT: LoRA on the conversations (recipes/sft.py), merged; held-out accuracy, and pass@k of k samples.
4. pairs: for training (and held-out) problems, 4 answers sampled from the SFT model (temperature 1, the engine's
   rollouts); a wrong sample is the rejected side, a right sample (or the reference answer when none was right)
   the chosen one: "a correct answer preferred to a wrong one sampled from the SFT model"; up to
   --pairs-per-problem distinct wrong samples per training problem, one per held-out problem.
5. reward model (recipes/reward.py) on the pairs; its held-out pairwise accuracy, beside the SFT model's own
   likelihood ranking of the same pairs (what the reward model's trunk knows before training).
6. RLHF (recipes/rlhf.py) from the SFT model with the reward model's reward, the ground-truth checker as the
   held-out judge (the reward-hacking watch), KL penalty to the SFT model; held-out accuracy and final KL. Beside it
   (--checker-run, on by default) the same RLHF with the checker as the reward: the RL without the reward model's
   errors, which separates "the RL works" from "the reward model is good enough".
7. DPO (recipes/dpo.py) from the SFT model on the same pairs, with RPO's NLL term; held-out accuracy.
Writes benchmarks/results/pipeline.json (--results) and pipeline.png (reward, judge and KL per RLHF step), and
prints the table. Targets (issue 18): SFT above base, RLHF above SFT with the KL within its budget, the reward model
>= 90% pairwise on held-out pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
T0 = time.perf_counter()
PAIR_LEN = 160  # tokens per side of a preference pair, in every stage that reads the pairs


def say(msg: str) -> None:
    print(f"[{(time.perf_counter() - T0) / 60:5.1f} min] {msg}", flush=True)


def recipe(name: str, out: Path, settings: dict, log: Path) -> float:
    """Run opengemma.recipes.<name> with `settings` as flags; returns its wall time. Output logged to `log`."""
    flag = lambda k, v: [f"--{'' if v else 'no-'}{k}"] if isinstance(v, bool) else [f"--{k}", str(v)]
    argv = [x for k, v in settings.items() if v is not None for x in flag(k.replace("_", "-"), v)]
    cmd = [sys.executable, "-m", f"opengemma.recipes.{name}", "--out", str(out), *argv]
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode_chat([{"role": "user", "content": text}], add_generation_prompt=True)[0]


def sample_answers(llm, problems: list[dict], k: int, max_new: int, seed: int, temperature: float, batch: int = 32):
    """k answers per problem through the engine's rollouts: [[text, ...] per problem]."""
    from opengemma.rl.rollout import rollouts

    tok = llm.tokenizer
    out = []
    for i in range(0, len(problems), batch):
        part = problems[i : i + batch]
        ids = [chat_ids(tok, p["prompt"]) for p in part]
        seeds = [seed + (i + j) * k + s for j in range(len(part)) for s in range(k)]
        rs = rollouts(llm.model, ids, k, max_new, seeds, list(tok.stop_ids), temperature=temperature)
        texts = [tok.decode([t for t in r.tokens if t not in tok.stop_ids]) for r in rs]
        out += [texts[j * k : (j + 1) * k] for j in range(len(part))]
    return out


def accuracy(model_dir, problems: list[dict], max_new: int, k: int = 1, seed: int = 0) -> tuple[dict, list]:
    """Greedy held-out accuracy (pass@1) and, with k > 1, pass@k of k samples at temperature 1; and the samples."""
    import opengemma
    from opengemma.data.arithmetic import verify

    llm = opengemma.load(str(model_dir), dtype="float32", progress=False)
    greedy = sample_answers(llm, problems, 1, max_new, seed, temperature=0.0)
    right = [verify(p["prompt"], g[0], p["answer"]) for p, g in zip(problems, greedy)]
    res = {"accuracy": sum(right) / len(right), "n": len(right), "examples": [
        {"prompt": p["prompt"], "answer": p["answer"], "reply": g[0]} for p, g in list(zip(problems, greedy))[:3]]}  # fmt: skip
    samples = []
    if k > 1:
        samples = sample_answers(llm, problems, k, max_new, seed + 1, temperature=1.0)
        res[f"pass@{k}"] = sum(
            any(verify(p["prompt"], a, p["answer"]) for a in s) for p, s in zip(problems, samples)
        ) / len(problems)
        res["sample_accuracy"] = sum(verify(p["prompt"], a, p["answer"]) for p, s in zip(problems, samples) for a in s) / (k * len(problems))  # fmt: skip
    return res, samples


def make_pairs(problems: list[dict], samples: list[list[str]], per_problem: int) -> tuple[list[dict], dict]:
    """Up to `per_problem` pairs for each problem: each a distinct wrong sample (rejected) against a right sample
    (chosen), or the reference answer when no sample was right. Several comparisons per prompt, as InstructGPT
    (Ouyang et al. 2022) takes all of its K ranked answers' pairs."""
    from opengemma.data.arithmetic import answer_text, verify

    pairs, chosen_sampled, none_wrong = [], 0, 0
    for p, answers in zip(problems, samples):
        good = [a for a in answers if verify(p["prompt"], a, p["answer"])]
        bad = list(dict.fromkeys(a for a in answers if not verify(p["prompt"], a, p["answer"]) and a.strip()))
        if not bad:
            none_wrong += 1
        for i, rejected in enumerate(bad[:per_problem]):
            chosen = good[i % len(good)] if good else answer_text(p)
            chosen_sampled += bool(good)
            pairs.append({"prompt": p["prompt"], "chosen": chosen, "rejected": rejected})
    return pairs, {"pairs": len(pairs), "chosen_sampled": chosen_sampled, "problems": len(problems),
                   "no_wrong_sample": none_wrong}  # fmt: skip


def likelihood_pairwise(model_dir, pairs_path: Path, cache: Path) -> float:
    """The fraction of pairs whose chosen answer the model itself finds likelier (sum of log p over the answer,
    by DPO's exact reference scoring): what a reward model initialized from this model knows before training,
    the reference point for its pairwise accuracy. Cached in `cache`."""
    if cache.exists():
        return json.loads(cache.read_text())["accuracy"]
    import opengemma
    from opengemma.data import preference
    from opengemma.recipes.dpo import reference_logps

    llm = opengemma.load(str(model_dir), dtype="float32", progress=False)
    pairs, _ = preference.encode_pairs(
        preference.read_pairs(pairs_path), llm.tokenizer, PAIR_LEN, source=str(pairs_path)
    )
    lp = reference_logps(llm.model, pairs, progress=False)
    acc = float((lp[:, 0] > lp[:, 1]).mean())
    cache.write_text(json.dumps({"accuracy": acc, "pairs": len(pairs), "logps": lp.tolist()}))
    return acc


def plot(out: Path, path: Path) -> None:
    """Per RLHF step: the reward model's reward, the judge (the checker) on train rollouts and held-out, the KL."""
    from matplotlib.figure import Figure

    from opengemma.train.metrics import read_metrics

    fig = Figure(figsize=(12, 3.8), dpi=110, layout="constrained")
    a, b, c = fig.subplots(1, 3)
    train, evals = read_metrics(out / "rlhf" / "metrics.jsonl", val_key="val_reward")
    steps = [r["step"] for r in train]
    a.plot(steps, [r["reward"] for r in train], label="reward model (train rollouts)")
    a.set_title("reward model's reward (RLHF)")
    j = [r for r in train if "judge" in r]
    b.plot([r["step"] for r in j], [r["judge"] for r in j], "o-", label="RLHF: checker, train rollouts")
    v = [r for r in evals if "val_judge" in r]
    b.plot([r["step"] for r in v], [r["val_judge"] for r in v], "s--", label="RLHF: checker, held-out (greedy)")
    c.plot(steps, [r["kl"] for r in train], label="RLHF (reward model)")
    if (out / "rlhf_checker" / "metrics.jsonl").exists():  # the checker as reward: its reward is the fraction right
        tr, ev = read_metrics(out / "rlhf_checker" / "metrics.jsonl", val_key="val_reward")
        b.plot([r["step"] for r in tr], [r["reward"] for r in tr], alpha=0.6, label="checker as reward: train")
        b.plot([r["step"] for r in ev], [r["val_reward"] for r in ev], "^:", label="checker as reward: held-out")
        c.plot([r["step"] for r in tr], [r["kl"] for r in tr], label="RLHF (checker as reward)")
    b.set_title("judge: fraction right")
    b.legend(fontsize=7)
    c.set_title("KL(policy || SFT), nats per answer")
    c.legend(fontsize=7)
    for ax in (a, b, c):
        ax.set_xlabel("RLHF step")
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", default=str(ROOT / "runs" / "pipeline"))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--tiny", action="store_true", help="dry run: a tiny random model, a few steps of each stage")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=36)
    ap.add_argument("--rm-steps", type=int, default=96)
    ap.add_argument("--rm-lr", type=float, default=3e-5)
    ap.add_argument("--rlhf-steps", type=int, default=24)
    ap.add_argument("--rlhf-lr", type=float, default=3e-5, help="LoRA; 1e-4 drifted 3 nats from SFT in 5 steps")
    ap.add_argument("--dpo-steps", type=int, default=48)
    ap.add_argument("--dpo-lr", type=float, default=2e-5)
    ap.add_argument("--rpo-alpha", type=float, default=1.0, help="DPO's NLL term on the chosen answers (RPO)")
    ap.add_argument("--test", type=int, default=120, help="held-out problems")
    ap.add_argument("--pair-prompts", type=int, default=256, help="training problems sampled for preference pairs")
    ap.add_argument("--pairs-per-problem", type=int, default=2)
    ap.add_argument(
        "--checker-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run RLHF with the checker as the reward (the RL without a reward model's errors)",
    )
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--kl-budget", type=float, default=5.0, help="the final KL to SFT (nats per answer) judged ok")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    from opengemma.data.arithmetic import answer_text, problems

    model = args.model
    max_new = 40
    common = {"threads": args.threads or None, "dtype": "float32"}
    if args.tiny:  # a tiny random Gemma 3 with the real tokenizer's stand-in: every code path, seconds per stage
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import tiny_model, tiny_sentencepiece

        from opengemma.tokenizer import Tokenizer
        from opengemma.weights.hf import save_hf_dir

        model = str(out / "tiny_base")
        if not Path(model, "config.json").exists():
            save_hf_dir(
                tiny_model("tiny-gemma3", std=0.05, vocab_size=400), model, tokenizer=Tokenizer(tiny_sentencepiece())
            )
        args.sft_steps = args.rm_steps = args.rlhf_steps = args.dpo_steps = 4
        args.test, args.pair_prompts, max_new = 16, 16, 8
    res = {"model": model, "args": vars(args), "stages": {}}

    # 1. data
    train = problems(1500 if not args.tiny else 64, seed=1)
    test = problems(args.test, seed=2, split="test")
    sft_rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": answer_text(p)}]}
                for p in train]  # fmt: skip
    write_jsonl(out / "sft.jsonl", sft_rows)
    rl_prompts = problems(400 if not args.tiny else 32, seed=3)
    write_jsonl(out / "rl_prompts.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]} for p in rl_prompts])
    write_jsonl(out / "rl_val.jsonl", [{"prompt": p["prompt"], "answer": p["answer"]} for p in test[:32]])
    say(f"data: {len(train)} SFT problems, {len(rl_prompts)} RLHF prompts, {len(test)} held out")

    # 2. base
    res["stages"]["base"], _ = accuracy(model, test, max_new)
    say(f"base: held-out accuracy {res['stages']['base']['accuracy']:.3f}")

    # 3. SFT (LoRA)
    sft = out / "sft"
    if not (sft / "merged" / "config.json").exists():
        secs = recipe("sft", sft, {"model": model, "data": out / "sft.jsonl", "lora_rank": 16, "steps": args.sft_steps,
                                   "batch_size": 8, "seq_len": 256, "lr": 5e-4, "warmup": 3, "eval_every": 1000,
                                   "save_every": 1000, "samples": 0, **common}, out / "sft.log")  # fmt: skip
        res["stages"]["sft_train_s"] = secs
    res["stages"]["sft"], test_samples = accuracy(sft / "merged", test, max_new, k=4, seed=10)
    say(f"SFT: held-out accuracy {res['stages']['sft']['accuracy']:.3f}, pass@4 {res['stages']['sft']['pass@4']:.3f}")

    # 4. preference pairs: answers sampled from the SFT model (the held-out ones are the pass@4 samples above)
    if not (out / "pairs.jsonl").exists():
        import opengemma

        llm = opengemma.load(str(sft / "merged"), dtype="float32", progress=False)
        pair_problems = problems(args.pair_prompts, seed=4)
        samples = sample_answers(llm, pair_problems, 4, max_new, seed=100, temperature=1.0)
        del llm
        pairs, stats = make_pairs(pair_problems, samples, args.pairs_per_problem)
        val_pairs, vstats = make_pairs(test, test_samples, 1)
        write_jsonl(out / "pairs.jsonl", pairs)
        write_jsonl(out / "val_pairs.jsonl", val_pairs)
        (out / "pairs_stats.json").write_text(json.dumps({"train": stats, "held_out": vstats}))
    res["stages"]["pairs"] = json.loads((out / "pairs_stats.json").read_text())
    say(f"pairs: {res['stages']['pairs']}")

    # 5. reward model
    rm = out / "rm"
    if not (rm / "model" / "config.json").exists():
        res["stages"]["rm_train_s"] = recipe("reward", rm, {"model": sft / "merged", "data": out / "pairs.jsonl",
            "val_data": out / "val_pairs.jsonl", "steps": args.rm_steps, "batch_size": 8, "seq_len": PAIR_LEN,
            "lr": args.rm_lr, "warmup": 5, "eval_every": args.rm_steps // 4, "save_every": 1000, **common},
            out / "rm.log")  # fmt: skip
    from opengemma.train.metrics import read_metrics

    _, rm_evals = read_metrics(rm / "metrics.jsonl")
    res["stages"]["reward_model"] = {"held_out_pairwise_accuracy": rm_evals[-1]["val_accuracy"],
                                     "before_training": rm_evals[0]["val_accuracy"],
                                     "curve": [(r["step"], r["val_accuracy"]) for r in rm_evals],
                                     "held_out_pairs": res["stages"]["pairs"]["held_out"]["pairs"],
                                     # the SFT model's own likelihood ranking of the same held-out pairs
                                     "sft_likelihood_pairwise": likelihood_pairwise(
                                         sft / "merged", out / "val_pairs.jsonl", out / "sft_pair_logps.json")}  # fmt: skip
    say(
        f"reward model: held-out pairwise accuracy {rm_evals[0]['val_accuracy']:.3f} -> {rm_evals[-1]['val_accuracy']:.3f}"
        f" (the SFT model's likelihood ranks {res['stages']['reward_model']['sft_likelihood_pairwise']:.3f} right)"
    )

    # 6. RLHF from the SFT model: the reward model's reward, the checker as the judge (the reward-hacking watch);
    # 6b. the same with the checker itself as the reward: what the RL reaches when the reward is right
    rl_common = {"model": sft / "merged", "prompts": out / "rl_prompts.jsonl", "val_prompts": out / "rl_val.jsonl",
                 "samples": 4, "prompts_per_step": 8, "steps": args.rlhf_steps, "max_new_tokens": max_new,
                 "lora_rank": 16, "lr": args.rlhf_lr, "kl_coef": args.kl_coef, "judge_every": 2,
                 "eval_every": max(1, args.rlhf_steps // 3), "save_every": 1000, **common}  # fmt: skip
    runs = {"rlhf": (out / "rlhf", {"reward_model": rm / "model", "judge": "opengemma.data.arithmetic:verify",
                                    "reward_norm": "whiten"})}  # fmt: skip
    if args.checker_run:
        runs["rlhf_checker"] = (out / "rlhf_checker", {"verifier": "opengemma.data.arithmetic:verify"})
    for key, (rl, extra) in runs.items():
        if not (rl / "merged" / "config.json").exists():
            res["stages"][f"{key}_train_s"] = recipe("rlhf", rl, {**rl_common, **extra}, out / f"{key}.log")
        train_m, _ = read_metrics(rl / "metrics.jsonl", val_key="val_reward")
        res["stages"][key], _ = accuracy(rl / "merged", test, max_new)
        res["stages"][key]["final_kl"] = train_m[-1]["kl"]
        res["stages"][key]["hacking_flags"] = [r["step"] for r in train_m if r.get("hacking")]
        say(f"{key}: held-out accuracy {res['stages'][key]['accuracy']:.3f}, final KL {train_m[-1]['kl']:.3f}")

    # 7. DPO from the SFT model on the same pairs (with RPO's NLL term on the chosen answers)
    dp = out / "dpo"
    if not (dp / "merged" / "config.json").exists():
        res["stages"]["dpo_train_s"] = recipe("dpo", dp, {"model": sft / "merged", "data": out / "pairs.jsonl",
            "val_data": out / "val_pairs.jsonl", "steps": args.dpo_steps, "batch_size": 8, "seq_len": PAIR_LEN,
            "lora_rank": 16, "lr": args.dpo_lr, "beta": 0.1, "rpo_alpha": args.rpo_alpha, "warmup": 3,
            "eval_every": args.dpo_steps // 2, "save_every": 1000, **common}, out / "dpo.log")  # fmt: skip
    res["stages"]["dpo"], _ = accuracy(dp / "merged", test, max_new)
    _, dpo_evals = read_metrics(dp / "metrics.jsonl")
    res["stages"]["dpo"]["held_out_pairwise_accuracy"] = dpo_evals[-1]["val_accuracy"]
    say(f"DPO: held-out accuracy {res['stages']['dpo']['accuracy']:.3f}")

    st = res["stages"]
    res["targets"] = {
        "sft_above_base": st["sft"]["accuracy"] > st["base"]["accuracy"],
        "rlhf_above_sft": st["rlhf"]["accuracy"] > st["sft"]["accuracy"],
        "kl_within_budget": st["rlhf"]["final_kl"] <= args.kl_budget,
        "reward_model_90": st["reward_model"]["held_out_pairwise_accuracy"] >= 0.9,
    }
    res["minutes"] = (time.perf_counter() - T0) / 60
    name = "pipeline" + ("_tiny" if args.tiny else "")
    (results_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
    plot(out, results_dir / f"{name}.png")
    shutil.copy(results_dir / f"{name}.png", out / "pipeline.png")
    print("\n| model | held-out accuracy | final KL to SFT |\n|---|---:|---:|")
    for k in ("base", "sft", "rlhf", "rlhf_checker", "dpo"):
        if k in st:
            print(f"| {k} | {st[k]['accuracy']:.3f} | {st[k].get('final_kl', float('nan')):.3f} |")
    print(f"\nSFT pass@4 {st['sft']['pass@4']:.3f}; reward model held-out pairwise accuracy "
          f"{st['reward_model']['held_out_pairwise_accuracy']:.3f}; hacking flags at steps {st['rlhf']['hacking_flags']}")  # fmt: skip
    print(f"targets: {res['targets']}; {res['minutes']:.1f} min; wrote {results_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
