"""The paper's post-training chain on a task with ground truth, in one command: base -> SFT -> reward model -> RLHF,
and DPO from the same SFT model beside it, each stage scored on held-out arithmetic word problems that a program
checks (opengemma/data/arithmetic.py; the held-out problems' numbers never appear in training).

    python benchmarks/rl_pipeline.py [--model gemma-3-270m] [--out runs/pipeline]       # about 75-90 min, 2 cores
    python benchmarks/rl_pipeline.py --tiny --out /tmp/pipe                              # dry run of every stage

Stages (each a recipe run as users run it, in its own process; a stage whose output exists is skipped, so a rerun
continues where it stopped):
1. data: SFT conversations ("<working>. The answer is <n>."), RLHF prompts with their answers, held-out problems.
2. base: held-out accuracy of the pretrained model (greedy, chat format).
3. SFT: LoRA on the conversations (recipes/sft.py), merged; held-out accuracy, and pass@k of k samples.
4. pairs: for training (and held-out) problems, k answers sampled from the SFT model (temperature 1, the engine's
   rollouts); a wrong sample is the rejected side, a right sample (or the reference answer when none was right)
   the chosen one: "a correct answer preferred to a wrong one sampled from the SFT model".
5. reward model (recipes/reward.py) on the pairs; its held-out pairwise accuracy.
6. RLHF (recipes/rlhf.py) from the SFT model with the reward model's reward, the ground-truth checker as the
   held-out judge (the reward-hacking watch), KL penalty to the SFT model; held-out accuracy and final KL.
7. DPO (recipes/dpo.py) from the SFT model on the same pairs; held-out accuracy.
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


def accuracy(model_dir, problems: list[dict], max_new: int, k: int = 1, seed: int = 0) -> dict:
    """Greedy held-out accuracy (pass@1) and, with k > 1, pass@k of k samples at temperature 1."""
    import opengemma
    from opengemma.data.arithmetic import verify

    llm = opengemma.load(str(model_dir), dtype="float32", progress=False)
    greedy = sample_answers(llm, problems, 1, max_new, seed, temperature=0.0)
    right = [verify(p["prompt"], g[0], p["answer"]) for p, g in zip(problems, greedy)]
    res = {"accuracy": sum(right) / len(right), "n": len(right), "examples": [
        {"prompt": p["prompt"], "answer": p["answer"], "reply": g[0]} for p, g in list(zip(problems, greedy))[:3]]}  # fmt: skip
    if k > 1:
        samples = sample_answers(llm, problems, k, max_new, seed + 1, temperature=1.0)
        res[f"pass@{k}"] = sum(
            any(verify(p["prompt"], a, p["answer"]) for a in s) for p, s in zip(problems, samples)
        ) / len(problems)
        res["sample_accuracy"] = sum(verify(p["prompt"], a, p["answer"]) for p, s in zip(problems, samples) for a in s) / (k * len(problems))  # fmt: skip
    return res


def make_pairs(llm, problems: list[dict], k: int, max_new: int, seed: int) -> tuple[list[dict], dict]:
    from opengemma.data.arithmetic import answer_text, verify

    pairs, right_found, none_wrong = [], 0, 0
    for p, answers in zip(problems, sample_answers(llm, problems, k, max_new, seed, temperature=1.0)):
        good = [a for a in answers if verify(p["prompt"], a, p["answer"])]
        bad = [a for a in answers if not verify(p["prompt"], a, p["answer"]) and a.strip()]
        if not bad:
            none_wrong += 1
            continue
        right_found += bool(good)
        pairs.append({"prompt": p["prompt"], "chosen": good[0] if good else answer_text(p), "rejected": bad[0]})
    return pairs, {"pairs": len(pairs), "chosen_sampled": right_found, "no_wrong_sample": none_wrong}


def plot(rlhf_dir: Path, path: Path) -> None:
    from matplotlib.figure import Figure

    from opengemma.train.metrics import read_metrics

    train, evals = read_metrics(rlhf_dir / "metrics.jsonl", val_key="val_reward")
    fig = Figure(figsize=(11, 3.8), dpi=110, layout="constrained")
    a, b, c = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    a.plot(steps, [r["reward"] for r in train], label="reward model (train rollouts)")
    a.set_title("reward")
    a.set_xlabel("RLHF step")
    j = [r for r in train if "judge" in r]
    b.plot([r["step"] for r in j], [r["judge"] for r in j], "o-", label="checker, train rollouts")
    v = [r for r in evals if "val_judge" in r]
    b.plot([r["step"] for r in v], [r["val_judge"] for r in v], "s--", label="checker, held-out (greedy)")
    b.set_title("judge: fraction right")
    b.set_xlabel("RLHF step")
    b.legend(fontsize=8)
    c.plot(steps, [r["kl"] for r in train], label="KL(policy || SFT), nats per answer")
    c.set_title("KL to the SFT model")
    c.set_xlabel("RLHF step")
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", default=str(ROOT / "runs" / "pipeline"))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--tiny", action="store_true", help="dry run: a tiny random model, a few steps of each stage")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=24)
    ap.add_argument("--rm-steps", type=int, default=30)
    ap.add_argument("--rlhf-steps", type=int, default=16)
    ap.add_argument("--dpo-steps", type=int, default=30)
    ap.add_argument("--test", type=int, default=120, help="held-out problems")
    ap.add_argument("--pair-prompts", type=int, default=192, help="training problems sampled for preference pairs")
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
    res["stages"]["base"] = accuracy(model, test, max_new)
    say(f"base: held-out accuracy {res['stages']['base']['accuracy']:.3f}")

    # 3. SFT (LoRA)
    sft = out / "sft"
    if not (sft / "merged" / "config.json").exists():
        secs = recipe("sft", sft, {"model": model, "data": out / "sft.jsonl", "lora_rank": 16, "steps": args.sft_steps,
                                   "batch_size": 8, "seq_len": 256, "lr": 5e-4, "warmup": 3, "eval_every": 1000,
                                   "save_every": 1000, "samples": 0, **common}, out / "sft.log")  # fmt: skip
        res["stages"]["sft_train_s"] = secs
    res["stages"]["sft"] = accuracy(sft / "merged", test, max_new, k=4, seed=10)
    say(f"SFT: held-out accuracy {res['stages']['sft']['accuracy']:.3f}, pass@4 {res['stages']['sft']['pass@4']:.3f}")

    # 4. preference pairs sampled from the SFT model
    if not (out / "pairs.jsonl").exists():
        import opengemma

        llm = opengemma.load(str(sft / "merged"), dtype="float32", progress=False)
        pairs, stats = make_pairs(llm, problems(args.pair_prompts, seed=4), 4, max_new, seed=100)
        val_pairs, vstats = make_pairs(llm, test, 4, max_new, seed=200)
        write_jsonl(out / "pairs.jsonl", pairs)
        write_jsonl(out / "val_pairs.jsonl", val_pairs)
        (out / "pairs_stats.json").write_text(json.dumps({"train": stats, "held_out": vstats}))
        del llm
    res["stages"]["pairs"] = json.loads((out / "pairs_stats.json").read_text())
    say(f"pairs: {res['stages']['pairs']}")

    # 5. reward model
    rm = out / "rm"
    if not (rm / "model" / "config.json").exists():
        res["stages"]["rm_train_s"] = recipe("reward", rm, {"model": sft / "merged", "data": out / "pairs.jsonl",
            "val_data": out / "val_pairs.jsonl", "steps": args.rm_steps, "batch_size": 8, "seq_len": 160,
            "lr": 2e-5, "warmup": 3, "eval_every": 10, "save_every": 1000, **common}, out / "rm.log")  # fmt: skip
    from opengemma.train.metrics import read_metrics

    _, rm_evals = read_metrics(rm / "metrics.jsonl")
    res["stages"]["reward_model"] = {"held_out_pairwise_accuracy": rm_evals[-1]["val_accuracy"],
                                     "before_training": rm_evals[0]["val_accuracy"],
                                     "held_out_pairs": res["stages"]["pairs"]["held_out"]["pairs"]}  # fmt: skip
    say(
        f"reward model: held-out pairwise accuracy {rm_evals[0]['val_accuracy']:.3f} -> {rm_evals[-1]['val_accuracy']:.3f}"
    )

    # 6. RLHF from the SFT model: the reward model's reward, the checker as the judge
    rl = out / "rlhf"
    if not (rl / "merged" / "config.json").exists():
        res["stages"]["rlhf_train_s"] = recipe("rlhf", rl, {"model": sft / "merged", "prompts": out / "rl_prompts.jsonl",
            "val_prompts": out / "rl_val.jsonl", "reward_model": rm / "model",
            "judge": "opengemma.data.arithmetic:verify", "samples": 4, "prompts_per_step": 8,
            "steps": args.rlhf_steps, "max_new_tokens": max_new, "lora_rank": 16, "lr": 1e-4,
            "kl_coef": args.kl_coef, "reward_norm": "whiten", "judge_every": 2, "eval_every": 8,
            "save_every": 1000, **common}, out / "rlhf.log")  # fmt: skip
    train_m, _ = read_metrics(rl / "metrics.jsonl", val_key="val_reward")
    res["stages"]["rlhf"] = accuracy(rl / "merged", test, max_new)
    res["stages"]["rlhf"]["final_kl"] = train_m[-1]["kl"]
    res["stages"]["rlhf"]["hacking_flags"] = [r["step"] for r in train_m if r.get("hacking")]
    say(f"RLHF: held-out accuracy {res['stages']['rlhf']['accuracy']:.3f}, final KL {train_m[-1]['kl']:.3f}")

    # 7. DPO from the SFT model on the same pairs
    dp = out / "dpo"
    if not (dp / "merged" / "config.json").exists():
        res["stages"]["dpo_train_s"] = recipe("dpo", dp, {"model": sft / "merged", "data": out / "pairs.jsonl",
            "val_data": out / "val_pairs.jsonl", "steps": args.dpo_steps, "batch_size": 8, "seq_len": 160,
            "lora_rank": 16, "lr": 5e-5, "beta": 0.1, "warmup": 3, "eval_every": 10, "save_every": 1000, **common},
            out / "dpo.log")  # fmt: skip
    res["stages"]["dpo"] = accuracy(dp / "merged", test, max_new)
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
    plot(rl, results_dir / f"{name}.png")
    shutil.copy(results_dir / f"{name}.png", out / "pipeline.png")
    print("\n| model | held-out accuracy |\n|---|---:|")
    for k in ("base", "sft", "rlhf", "dpo"):
        print(f"| {k} | {st[k]['accuracy']:.3f} |")
    print(f"\nSFT pass@4 {st['sft']['pass@4']:.3f}; reward model held-out pairwise accuracy "
          f"{st['reward_model']['held_out_pairwise_accuracy']:.3f}; RLHF final KL to SFT {st['rlhf']['final_kl']:.3f} "
          f"nats/answer; hacking flags at steps {st['rlhf']['hacking_flags']}")  # fmt: skip
    print(f"targets: {res['targets']}; {res['minutes']:.1f} min; wrote {results_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
