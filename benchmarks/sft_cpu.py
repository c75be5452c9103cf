"""CPU supervised fine-tuning benchmark: our SFT recipe against TRL's SFTTrainer + peft, on the same weights, the
same conversations and the same settings, measured in the same run (tokens/s and peak memory per optimizer step).

    python benchmarks/train_cpu.py --sft [--batch 4 --seq 512] [--steps 3 --warmup 1 --rounds 1] [--threads N]
                                         [--modes lora,full,qlora-int8,qlora-int4 | --full --qlora] [--rank 16]
                                         [--dtype auto|float32|bfloat16] [--data chat.jsonl] [--model gemma-3-270m]
    python benchmarks/train_cpu.py --sft --model tiny-gemma3 --batch 1 --seq 128 --steps 1 --warmup 1 \\
        --threads 1 --conversations 64 --output /tmp/sft_dry.json                                  # dry run
(`python benchmarks/sft_cpu.py ...` is the same script.)

Sides, each (side, mode, round) a fresh child process, sides alternating within a round (ours, TRL, ours, ...):
- ours: the recipe as users run it, `python -m opengemma.recipes.sft --model DIR --data F --steps W+S --batch-size
  B --seq-len T --lora-rank R --lora-alpha A --lora-targets ... --lr LR --schedule constant --warmup 0
  --weight-decay 0 --grad-clip 1 --samples 0 --eval-every 10^9 --save-every 10^9 --no-export --val-fraction 0`
  (full fine-tuning: no --lora-rank; QLoRA: --quantize int8|int4). Per step its metrics.jsonl gives `step_s`
  (batch building, forward, loss, backward, clip, AdamW step), the non-padding input tokens and `peak_memory_gib`.
- TRL: `trl.SFTTrainer` (TRL 1.16, transformers 5.x) on `AutoModelForCausalLM.from_pretrained(DIR)` (sdpa) with
  `peft.LoraConfig(r=R, lora_alpha=A, lora_dropout=0, target_modules=the same projections)` (none: full
  fine-tuning), `SFTConfig(use_cpu=True, per_device_train_batch_size=B, max_length=T, packing=True (TRL's default
  "bfd" strategy: best-fit packing, padding-free batches, document-masked attention through position_ids),
  assistant_only_loss=True, learning_rate=LR, lr_scheduler_type="constant", optim="adamw_torch_fused", the same
  betas / eps / weight decay / clip, max_steps=W+S, gradient_checkpointing=False (TRL defaults it to True; --ac
  turns checkpointing on for both sides), bf16 only with --dtype bfloat16, save_strategy="no", report_to="none",
  logging_steps=1, dataloader_num_workers=0)`. A step's time is on_step_begin -> on_step_end of a TrainerCallback
  (forward, loss, backward, clip, AdamW step) plus the data collator's time on that step's batch (ours' step_s
  includes building its batch); its tokens are counted on the batch training_step receives (attention_mask, or
  the non-pad ids of the padding-free row), its learned tokens as labels[..., 1:] != -100.

Why it is fair:
- Same weights: the model is exported once to a Hugging Face directory (a real model: its converted float32
  directory, linked, with Gemma's chat template written into tokenizer_config.json, as save_hf_dir(
  instruction_tuned=True) writes it; a preset: a random init with the real tokenizer's vocabulary) that both load.
- Same conversations: one JSONL of `messages` (--data; by default runs/sft_data/train.jsonl when present, else,
  or with --data generated, a deterministic generator of simple Q/A conversations; --conversations N keeps the
  first N), both sides reading the same file; packed into rows of T tokens, B rows per optimizer step, on both.
- Same loss: on the model's answers and their <end_of_turn> only, every answer of a multi-turn conversation. TRL
  gets it from assistant_only_loss with Gemma's template carrying {% generation %} markers around exactly those
  tokens (a variant that renders byte-identically to weights/hf.py CHAT_TEMPLATE; TRL 1.16 patches only the
  templates it knows byte for byte and raises on ours, and its own gemma3_training.jinja would also learn the
  "\\n" after <end_of_turn>, which ours does not). The TRL child checks it after training: the ids and
  assistant masks TRL's tokenization gets equal opengemma's Tokenizer.encode_chat ids and loss mask on the first
  200 conversations, and the labels of its first collated batch (-100 outside the answers) equal our masks
  document by document ("checks" in the results; a mismatch is printed as one).
- Same optimizer: AdamW, fused on both sides (torch's fused CPU kernel), betas (0.9, 0.95), eps 1e-8, weight decay
  0, gradient clip 1.0, the same constant learning rate (2e-4 LoRA / QLoRA, 2e-5 full); LoRA: same rank, alpha
  (2 x rank), dropout 0, targets (all 7 projections) and PEFT's init on both sides.
- Same compute dtype: --dtype auto = bfloat16 where the CPU computes it natively (oneDNN reports AVX-512 BF16 /
  AMX), else float32 (AVX2-only CPUs emulate bf16, ~10x slower). bfloat16: autocast on both; with LoRA the frozen
  base is held in bfloat16 on both (ours does so; TRL's model is loaded with dtype=bfloat16), adapters in fp32.
- Not the same, by design of each side: the rows (ours: shuffled first-fit packing, a row's tail padded; TRL:
  best-fit decreasing, rows concatenated into one padding-free sequence) and so the batches and losses; tokens/s
  divides each side's own non-padding tokens by its own step time. TRL's padding-free row attends over B x T
  positions under a block-diagonal mask (sdpa on CPU has no varlen kernel); that is TRL's packing as users get it
  on a CPU. TRL also computes entropy and token accuracy each step, as it does for its users.

Timing: the first --warmup steps of each process are not timed; tokens/s is the median over every timed step of
every round of (non-padding tokens of the step / step time). Memory: "peak RSS" is ru_maxrss of the child at the
end of its last training step (ours: the last step's peak_memory_gib; TRL: read in on_step_end), which includes
loading (the targets are judged on it); "process peak" is the child's whole-life ru_maxrss from os.wait4 (ours'
includes its final checkpoint save, as users run it; TRL saves nothing). Both are high-water marks of the resident
set, file-backed weight pages included. Targets: ours >= 1.5x TRL's tokens/s at <= 0.5x its peak RSS, per mode.
QLoRA rows (ours only): bitsandbytes' 8/4-bit layers are CUDA-first and their CPU path is not a fair peer, so they
have no TRL row. Writes benchmarks/results/sft_cpu.json (--output) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's opengemma, wherever the script is run from
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cpu import TARGET_MEMORY, TARGET_SPEEDUP, cpu_name  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT / "runs" / "sft_data" / "train.jsonl"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODES = ("lora", "full", "qlora-int8", "qlora-int4")
BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.95), 1e-8, 0.0, 1.0  # train.optim.build_optimizer's betas / eps
NEVER = 10**9  # --eval-every / --save-every: no evaluation or checkpoint inside the run


def training_template() -> str:
    """weights/hf.py's CHAT_TEMPLATE with {% generation %} around what ours learns: each model answer and its
    <end_of_turn>, not the header before it nor the "\\n" after it. It renders the same text."""
    from opengemma.weights.hf import CHAT_TEMPLATE

    turn = (
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
        " + '<end_of_turn>\\n' }}"
    )
    if CHAT_TEMPLATE.count(turn) != 1:
        raise RuntimeError("weights/hf.py CHAT_TEMPLATE changed: update sft_cpu.training_template")
    model_turn = (
        "{% if role == 'model' %}{{ '<start_of_turn>model\\n' + (first_user_prefix if loop.first else '') }}"
        "{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}" + turn + "{% endif %}"
    )
    return CHAT_TEMPLATE.replace(turn, model_turn)


# -- the data both sides read --------------------------------------------------------------------------------
def generated_conversations(n: int = 600, seed: int = 0) -> list[list[dict]]:
    """Simple, deterministic Q/A conversations (arithmetic, capitals, word tasks; some with a system turn, some
    with two exchanges), for hosts without runs/sft_data."""
    rng = random.Random(seed)
    capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"),
                ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("India", "New Delhi"),
                ("Spain", "Madrid"), ("Ghana", "Accra"), ("Vietnam", "Hanoi")]  # fmt: skip
    words = ["apple", "river", "window", "garden", "planet", "candle", "bridge", "forest", "silver", "market"]
    systems = ["You are a helpful assistant.", "Answer briefly.", "Please respond using only uppercase letters."]

    def exchange() -> tuple[str, str]:
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randrange(2, 500), rng.randrange(2, 500)
            return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        if kind == 1:
            a, b = rng.randrange(2, 40), rng.randrange(2, 40)
            return (
                f"Can you work out {a} times {b}?",
                f"{a} times {b} is {a * b}. To check, {a * b} divided by {b} is {a}.",
            )
        if kind == 2:
            country, city = rng.choice(capitals)
            return f"What is the capital of {country}?", f"The capital of {country} is {city}."
        chosen = rng.sample(words, rng.randrange(3, 7))
        return (
            f"Sort these words alphabetically: {', '.join(chosen)}.",
            f"In alphabetical order: {', '.join(sorted(chosen))}. The first is {min(chosen)}.",
        )

    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(systems)}] if rng.random() < 0.3 else []
        for _ in range(2 if rng.random() < 0.25 else 1):
            q, a = exchange()
            if messages and messages[0]["content"].startswith("Please respond using only uppercase"):
                a = a.upper()
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append(messages)
    return out


def write_data(path: str | None, limit: int, dst: Path) -> dict:
    """The conversations both sides train on, as one JSONL of {"messages": [...]} (roles user/assistant/system),
    from `path` (messages or prompt/completion records, checked as the recipe checks them) or generated."""
    if path:
        from opengemma.data.sft import read_jsonl, record_messages

        records = read_jsonl(path)
        convs = [record_messages(r, f"{path}:{r['_line']}") for r in records]
        source = str(path)
    else:
        convs, source = generated_conversations(), "generated (sft_cpu.generated_conversations)"
    if limit:
        convs = convs[:limit]
    with open(dst, "w", encoding="utf-8") as f:
        for messages in convs:
            norm = [
                {"role": "assistant" if m["role"] == "model" else m["role"], "content": m["content"]} for m in messages
            ]
            f.write(json.dumps({"messages": norm}) + "\n")
    multi = sum(sum(m["role"] in ("assistant", "model") for m in c) > 1 for c in convs)
    return {"source": source, "conversations": len(convs), "multi_turn": multi}


# -- the weights both sides load -----------------------------------------------------------------------------
def export_model(model: str, tmp: Path) -> tuple[Path, bool]:
    """(a Hugging Face directory with tokenizer.model and Gemma's chat template, whether it holds real weights).
    A real model or a Hugging Face directory: its files linked (the same bytes), tokenizer_config.json written
    with the chat template. A preset: a seeded random init (matrices N(0, 0.02)) widened to the default real
    model's tokenizer (its vocabulary and special ids), saved by save_hf_dir(instruction_tuned=True)."""
    from opengemma.config import PRESETS, REAL_MODELS, GemmaConfig
    from opengemma.tokenizer import Tokenizer
    from opengemma.weights.hf import CHAT_TEMPLATE, save_hf_dir, save_tokenizer_files
    from opengemma.weights.store import resolve_source

    dst = tmp / "model"
    if model in PRESETS and model not in REAL_MODELS:
        import torch

        from opengemma.model import Gemma

        tok = Tokenizer(resolve_source(REAL_MODELS[0], progress=False)[0] / "tokenizer.model")
        cfg = GemmaConfig.from_name(model)
        cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size, max_seq_len=max(cfg.max_seq_len, 32768))
        torch.manual_seed(0)
        m = Gemma(cfg)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02) if p.dim() >= 2 else p.normal_(0, 0.1)
        return save_hf_dir(m, dst, tokenizer=tok, instruction_tuned=True), False
    src, _ = resolve_source(model, progress=False)
    if not (src / "tokenizer.model").is_file():
        sys.exit(f"sft_cpu: {src} has no tokenizer.model (both sides need it)")
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                (dst / f.name).symlink_to(f.resolve())
            except OSError:
                shutil.copyfile(f, dst / f.name)
    save_tokenizer_files((src / "tokenizer.model").read_bytes(), dst, chat_template=CHAT_TEMPLATE)
    return dst, True


# -- running a child and measuring its peak --------------------------------------------------------------------
def run_process(cmd: list[str], env: dict, log: Path, timeout: float | None) -> tuple[int | str, float]:
    """(exit code or "timeout", the child's peak resident set in GiB from os.wait4: its own ru_maxrss)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    start, timed_out = time.monotonic(), False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout and time.monotonic() - start > timeout:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            timed_out = True
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return ("timeout" if timed_out else proc.returncode), usage.ru_maxrss / 2**20  # KiB on Linux -> GiB


def tail(log: Path, n: int = 6) -> list[str]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    return lines[-n:] or ["failed, no output"]


def child_env(threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def run_ours(spec: dict, work: Path, timeout: float | None) -> dict:
    out = work / "run"
    cmd = [sys.executable, "-m", "opengemma.recipes.sft", "--model", spec["source"], "--data", spec["data"],
           "--out", str(out), "--steps", str(spec["warmup"] + spec["steps"]), "--batch-size", str(spec["batch"]),
           "--seq-len", str(spec["seq"]), "--lr", str(spec["lr"]), "--schedule", "constant", "--warmup", "0",
           "--weight-decay", str(WEIGHT_DECAY), "--grad-clip", str(GRAD_CLIP), "--samples", "0",
           "--eval-every", str(NEVER), "--save-every", str(NEVER), "--no-export", "--val-fraction", "0",
           "--dtype", spec["dtype"], "--device", "cpu", "--threads", str(spec["threads"]), "--seed", "0"]  # fmt: skip
    if spec["mode"] != "full":
        cmd += ["--lora-rank", str(spec["rank"]), "--lora-alpha", str(spec["alpha"]), "--lora-dropout", "0",
                "--lora-targets", ",".join(spec["targets"])]  # fmt: skip
    if spec["mode"].startswith("qlora-"):
        cmd += ["--quantize", spec["mode"].removeprefix("qlora-")]
    if spec["ac"]:
        cmd += ["--activation-checkpointing"]
    log = work / "ours.log"
    t = time.perf_counter()
    rc, process_peak = run_process(cmd, child_env(spec["threads"]), log, timeout)
    wall = time.perf_counter() - t
    metrics = out / "metrics.jsonl"
    steps = [r for r in map(json.loads, metrics.read_text().splitlines()) if "step_s" in r] if metrics.exists() else []
    if rc != 0 or len(steps) < spec["warmup"] + spec["steps"]:
        return {"error": [f"exit {rc}"] + tail(log), "command": cmd}
    steps.sort(key=lambda r: r["step"])
    trained = re.search(r"([\d.]+)M trained parameters", log.read_text(errors="replace"))
    tokens = [b["tokens"] - a for a, b in zip([0] + [r["tokens"] for r in steps], steps)]
    w = spec["warmup"]
    return {
        "step_s": [r["step_s"] for r in steps[w:]],
        "tokens": tokens[w:],
        "learned": [r["learned_tokens"] for r in steps[w:]],
        "losses": [r["loss"] for r in steps],
        "peak_rss_gib": steps[-1]["peak_memory_gib"],
        "process_peak_gib": process_peak,
        "first_step_s": steps[0]["step_s"],
        "trainable_params": trained and float(trained.group(1)) * 1e6,  # as the recipe prints it, in millions
        "wall_s": wall,
        "command": cmd,
    }


def run_trl(spec: dict, work: Path, timeout: float | None) -> dict:
    spec = {**spec, "out": str(work / "trl_out")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    log = work / "trl.log"
    t = time.perf_counter()
    rc, process_peak = run_process(cmd, child_env(spec["threads"]), log, timeout)
    wall = time.perf_counter() - t
    line = next((ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")), None)
    if rc != 0 or line is None:
        return {"error": [f"exit {rc}"] + tail(log)}
    return {**json.loads(line[len("RESULT ") :]), "process_peak_gib": process_peak, "wall_s": wall}


# -- the TRL child --------------------------------------------------------------------------------------------
def ru_maxrss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def trl_child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    import datasets
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    src, lora, bf16 = spec["source"], spec["mode"] == "lora", spec["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = training_template()  # renders as the directory's template; marks what ours learns
    # LoRA in bfloat16: the frozen base held in bfloat16, as ours holds it; full fine-tuning: fp32 master weights
    dtype = torch.bfloat16 if bf16 and lora else torch.float32
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation=spec["hf_attn"])
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0, bias="none",
                                 target_modules=list(spec["targets"]), task_type="CAUSAL_LM")  # fmt: skip
    with open(spec["data"], encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for line in f if line.strip()]
    dataset = datasets.Dataset.from_list([{"messages": m} for m in conversations])
    args = SFTConfig(
        output_dir=spec["out"],
        use_cpu=True,
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        max_length=spec["seq"],
        packing=True,
        assistant_only_loss=True,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=spec["warmup"] + spec["steps"],
        optim="adamw_torch_fused",
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        adam_epsilon=EPS,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=GRAD_CLIP,
        bf16=bf16,
        gradient_checkpointing=spec["ac"],
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    rec = {"step_s": [], "compute_s": [], "collate_s": [], "tokens": [], "learned": [], "losses": [], "peaks": []}
    rec["shapes"], first = [], {}
    pad = tok.pad_token_id

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            rec["compute_s"].append(time.perf_counter() - self.t)
            rec["peaks"].append(ru_maxrss_gib())

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            n = inputs["attention_mask"].sum() if "attention_mask" in inputs else (ids != pad).sum()
            rec["tokens"].append(int(n))
            rec["learned"].append(int((inputs["labels"][..., 1:] != -100).sum()))
            rec["shapes"].append(list(ids.shape))
            if not first:
                keys = [k for k in ("input_ids", "labels", "position_ids") if k in inputs]
                first.update({k: inputs[k].detach().clone() for k in keys})
            loss = super().training_step(model, inputs, num_items_in_batch)
            rec["losses"].append(float(loss))
            return loss

    trainer = CountingSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                                 peft_config=peft_config, callbacks=[StepTimer()])  # fmt: skip
    collator = trainer.data_collator

    def timed_collator(examples):
        t = time.perf_counter()
        batch = collator(examples)
        rec["collate_s"].append(time.perf_counter() - t)
        return batch

    trainer.data_collator = timed_collator  # read when train() builds its DataLoader
    setup_s = time.perf_counter() - t0
    trainer.train()
    n = len(rec["compute_s"])
    # the collator's k-th batch is step k's (the loader may collate one ahead: order is kept, the sum is not lost)
    rec["step_s"] = [c + d for c, d in zip(rec["compute_s"], rec["collate_s"][:n])]
    w = spec["warmup"]
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper, or torch's
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {
        "step_s": rec["step_s"][w:],
        "compute_s": rec["compute_s"][w:],
        "collate_s": rec["collate_s"][w:n],
        "tokens": rec["tokens"][w:],
        "learned": rec["learned"][w:],
        "shapes": rec["shapes"],
        "losses": rec["losses"],
        "peak_rss_gib": rec["peaks"][-1],
        "first_step_s": rec["step_s"][0],
        "setup_s": setup_s,
        "trainable_params": trainable,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "optimizer": {
            **{k: optimizer.defaults.get(k) for k in ("lr", "betas", "eps", "fused")},
            "weight_decay": sorted({g["weight_decay"] for g in optimizer.param_groups}),  # per group, not defaults
            "type": type(optimizer).__name__,
        },
        "versions": {
            "trl": __import__("trl").__version__,
            "transformers": transformers.__version__,
            "peft": __import__("peft").__version__,
            "torch": torch.__version__,
        },  # fmt: skip
    }
    result["checks"] = check_masks(tok, src, conversations, first, spec["seq"])  # after training: not in its peak
    return result


def check_masks(tok, src: str, conversations: list[list[dict]], first: dict, seq: int, limit: int = 200) -> dict:
    """TRL's tokens and learned positions against ours: (1) per conversation, the ids and assistant mask TRL's
    tokenization gets from the chat template vs opengemma's Tokenizer.encode_chat; (2) the first collated batch:
    each packed document's labels (-100 = not learned) vs our mask of the same conversation."""
    from opengemma.tokenizer import Tokenizer

    ours = Tokenizer(Path(src) / "tokenizer.model")
    encoded = [ours.encode_chat(m, add_generation_prompt=False) for m in conversations]
    same_ids = same_mask = 0
    for m, (ids, mask) in zip(conversations[:limit], encoded):
        out = tok.apply_chat_template(m, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        same_ids += list(out["input_ids"]) == ids
        same_mask += list(out["input_ids"]) == ids and list(out["assistant_masks"]) == mask
    template = {
        "conversations": min(limit, len(conversations)),
        "ids_identical": same_ids,
        "masks_identical": same_mask,
    }

    by_ids, pad = {tuple(ids): mask for ids, mask in encoded}, tok.pad_token_id
    ids_all, labels_all = first["input_ids"], first["labels"]
    pos_all = first.get("position_ids")
    docs, matched, unmatched, learned_total, sample = 0, 0, [], 0, None
    for r in range(ids_all.shape[0]):
        ids, labels = ids_all[r].tolist(), labels_all[r].tolist()
        starts = [0] if pos_all is None else [i for i, p in enumerate(pos_all[r].tolist()) if p == 0]
        for a, b in zip(starts, starts[1:] + [len(ids)]):
            doc, lab = ids[a:b], labels[a:b]
            if all(t == pad for t in doc):  # a padded tail
                continue
            docs += 1
            learned = [int(x != -100) for x in lab]
            learned_total += sum(learned)
            mask = by_ids.get(tuple(doc))
            if mask is None and len(doc) >= seq:  # cut to the row: compare with the conversation it starts
                mask = next((m for k, m in by_ids.items() if k[: len(doc)] == tuple(doc)), None)
            ok = mask is not None and learned == list(mask[: len(doc)])
            matched += ok
            if not ok and len(unmatched) < 3:
                unmatched.append(tok.decode(doc)[:200])
            if sample is None:
                spans, cur = [], []
                for t, keep in zip(doc + [pad], learned + [0]):  # runs of learned tokens
                    if keep:
                        cur.append(t)
                    elif cur:
                        spans.append(tok.decode(cur))
                        cur = []
                sample = {"text": tok.decode(doc)[:400], "learned_spans": spans}
    return {
        "template": template,
        "first_batch": {
            "documents": docs,
            "labels_match_ours": matched,
            "learned_tokens": learned_total,
            "unmatched": unmatched,
            "sample": sample,
        },  # fmt: skip
    }


# -- the parent: plan, alternate, aggregate, print -------------------------------------------------------------
def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"], "runs": runs}
    rates = [n / s for r in ok for n, s in zip(r["tokens"], r["step_s"])]
    med = lambda key: statistics.median(r[key] for r in ok)
    return {
        "tok_s": statistics.median(rates),
        "best_tok_s": max(rates),  # the least disturbed step: neighbours' load only ever slows one
        "median_step_s": statistics.median(t for r in ok for t in r["step_s"]),
        "tokens_per_step": statistics.median(n for r in ok for n in r["tokens"]),
        "learned_per_step": statistics.median(n for r in ok for n in r["learned"]),
        "peak_rss_gib": med("peak_rss_gib"),
        "process_peak_gib": med("process_peak_gib"),
        "first_step_s": med("first_step_s"),
        "first_loss": ok[0]["losses"][0],
        "last_loss": ok[0]["losses"][-1],
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="train_cpu.py --sft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="gemma-3-270m", help="a real model, a Hugging Face directory, or a preset")
    ap.add_argument(
        "--data", default=None, help=f"JSONL conversations, or 'generated' (default: {DEFAULT_DATA} if present)"
    )
    ap.add_argument("--conversations", type=int, default=0, help="use the first N conversations (0: all)")
    ap.add_argument("--batch", type=int, default=4, help="packed rows per optimizer step")
    ap.add_argument("--seq", type=int, default=512, help="tokens per row (max_length)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first, per process")
    ap.add_argument("--rounds", type=int, default=1, help="processes per side and mode, alternating sides")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: every core")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--modes", default="lora", help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--full", action="store_true", help="also full fine-tuning (both sides)")
    ap.add_argument("--qlora", action="store_true", help="also ours with int8 and int4 bases (no TRL peer)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="LoRA target projections")
    ap.add_argument("--lr", type=float, default=None, help="default 2e-4 with LoRA, 2e-5 full")
    ap.add_argument("--ac", action="store_true", help="activation checkpointing on both sides")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--child-timeout", type=float, default=None, help="seconds per process")
    ap.add_argument("--output", default=str(RESULTS / "sft_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(trl_child(json.loads(args.child))), flush=True)
        return
    modes = list(
        dict.fromkeys(args.modes.split(",") + ["full"] * args.full + ["qlora-int8", "qlora-int4"] * args.qlora)
    )
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if min(args.batch, args.steps, args.rounds, args.threads, args.rank) < 1 or args.seq < 8 or args.warmup < 0:
        ap.error("--batch, --steps, --rounds, --threads, --rank must be >= 1, --seq >= 8, --warmup >= 0")
    targets = args.targets.split(",")
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"--targets: unknown {bad}; choose from {', '.join(TARGETS)}")
    data = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else "generated")
    data = None if data == "generated" else data
    import torch

    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    alpha = args.alpha or 2.0 * args.rank

    rows = []  # (label, mode, side), in the order each round runs them: ours and TRL alternate per mode
    for mode in modes:
        rows.append((f"opengemma {mode}", mode, "ours"))
        if mode in ("lora", "full") and not args.skip_trl:
            rows.append((f"trl {mode}", mode, "trl"))
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    with tempfile.TemporaryDirectory(prefix="sft_cpu_") as tmp:
        tmp = Path(tmp)
        source, real = export_model(args.model, tmp)
        data_info = write_data(data, args.conversations, tmp / "data.jsonl")
        print(f"model {args.model} -> {source}; data: {data_info}; dtype {dtype}", flush=True)
        for rnd in range(args.rounds):
            for label, mode, side in rows:
                work = tmp / f"{label.replace(' ', '_')}_{rnd}"
                work.mkdir()
                spec = dict(
                    mode=mode, source=str(source), data=str(tmp / "data.jsonl"), batch=args.batch, seq=args.seq,
                    steps=args.steps, warmup=args.warmup, threads=args.threads, dtype=dtype, rank=args.rank,
                    alpha=alpha, targets=targets, lr=args.lr or (2e-5 if mode == "full" else 2e-4), ac=args.ac,
                    hf_attn=args.hf_attn,
                )  # fmt: skip
                r = (run_ours if side == "ours" else run_trl)(spec, work, args.child_timeout)
                runs[label].append(r)
                brief = r.get("error") or (
                    f"median step {statistics.median(r['step_s']):.2f} s, "
                    f"{statistics.median(r['tokens']):.0f} tokens/step, peak {r['peak_rss_gib']:.2f} GiB"
                )
                print(f"round {rnd + 1}/{args.rounds} {label}: {brief}", flush=True)
    results = {label: aggregate(rs) for label, rs in runs.items()}
    report(args, dtype, real, data_info, results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "dtype": dtype, "real_weights": real, "data": data_info, "cpu": cpu_name()}
    out.write_text(json.dumps({**meta, "results": results}, indent=2))
    print(f"wrote {out}")


def report(args, dtype: str, real: bool, data_info: dict, results: dict) -> None:
    print(
        f"\n{args.model}{'' if real else ' (random init)'} SFT, {args.batch} rows x {args.seq} tokens per step, "
        f"{dtype}, {args.threads} threads, median of {args.steps} steps x {args.rounds} rounds after {args.warmup} "
        f"warm-up; {data_info['conversations']} conversations ({data_info['source']}); {cpu_name()}"
    )
    print(
        "| mode | side | tok/s | vs TRL | best step tok/s | peak RSS GiB | vs TRL | process peak GiB | tokens/step "
        "| learned/step | first loss | last loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        side, mode = label.split()
        if "error" in r:
            print(f"| {mode} | {side} | failed: {' / '.join(r['error'])} | | | | | | | | | |")
            continue
        ref = results.get(f"trl {mode}") if side == "opengemma" else None
        ref = ref if ref and "error" not in ref else None
        ratio = lambda key: f"{r[key] / ref[key]:.2f}x" if ref else "-"
        print(
            f"| {mode} | {side} | {r['tok_s']:.0f} | {ratio('tok_s')} | {r['best_tok_s']:.0f} | "
            f"{r['peak_rss_gib']:.2f} | {ratio('peak_rss_gib')} | {r['process_peak_gib']:.2f} | "
            f"{r['tokens_per_step']:.0f} | {r['learned_per_step']:.0f} | {r['first_loss']:.4f} | {r['last_loss']:.4f} |"
        )
        if ref:
            speed, mem = r["tok_s"] / ref["tok_s"], r["peak_rss_gib"] / ref["peak_rss_gib"]
            r["targets"] = {"speedup": speed, "memory_ratio": mem, "speed_met": speed >= TARGET_SPEEDUP,
                            "memory_met": mem <= TARGET_MEMORY}  # fmt: skip
    for label, r in results.items():
        if "targets" in r:
            t = r["targets"]
            print(
                f"{label}: tokens/s {t['speedup']:.2f}x TRL's (target >= {TARGET_SPEEDUP}x: "
                f"{'met' if t['speed_met'] else 'NOT met'}), peak RSS {t['memory_ratio']:.2f}x "
                f"(target <= {TARGET_MEMORY}x: {'met' if t['memory_met'] else 'NOT met'})"
            )
        elif label.startswith("opengemma qlora"):
            print(f"{label}: no TRL peer (bitsandbytes' CPU path is not a fair one)")
        checks = next((run.get("checks") for run in r.get("runs", []) if run.get("checks")), None)
        if checks:
            t, b = checks["template"], checks["first_batch"]
            same = t["masks_identical"] == t["conversations"] and b["labels_match_ours"] == b["documents"]
            print(
                f"{label} checks: ids identical to ours on {t['ids_identical']}/{t['conversations']} conversations, "
                f"loss masks on {t['masks_identical']}/{t['conversations']}; first batch labels match ours on "
                f"{b['labels_match_ours']}/{b['documents']} documents"
                + ("" if same else f" -- MISMATCH: TRL does not learn what ours learns ({b['unmatched']})")
            )


if __name__ == "__main__":
    main()
