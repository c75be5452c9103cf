"""The DPO recipe end to end on a tiny Gemma 3: at step 0 the policy's log-probs (the training path) equal the
reference's from the engine's exact scoring (loss log 2, margin 0); the loss falls and held-out accuracy reaches 1;
Ctrl-C then a rerun equals the uninterrupted run; 2 gloo ranks equal 1 process; LoRA writes its adapter."""

import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import INTERRUPT_AT_STEP_3, flags, run_recipe, tiny_model, tiny_sentencepiece

import opengemma
from opengemma.data import preference
from opengemma.recipes import dpo
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint
from opengemma.train.metrics import read_metrics
from opengemma.weights.hf import save_hf_dir

STEPS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    save_hf_dir(
        tiny_model("tiny-gemma3", std=0.05, vocab_size=400), root / "base", tokenizer=Tokenizer(tiny_sentencepiece())
    )
    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"prompt": f"what is {a} plus {b}?", "chosen": f"it is {a + b}", "rejected": "no idea"})
    # a conversational record: the earlier answer belongs to the prompt, only the last one is scored
    rows.append({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": "what is 1 plus 1?"}, {"role": "assistant", "content": "it is 2"}],
                 "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                              {"role": "user", "content": "what is 1 plus 1?"}, {"role": "assistant", "content": "no"}]})  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::4]))
    return root


def args(setup, out, **over):
    a = dict(model=setup / "base", data=setup / "pairs.jsonl", val_data=setup / "val.jsonl", out=out, steps=STEPS,
             batch_size=8, grad_accum=2, seq_len=48, lr=3e-3, beta=0.5, warmup=2, schedule="constant",
             save_every=12, eval_every=12, threads=1, dtype="float32")  # fmt: skip
    return flags({**a, **over})


@pytest.fixture(scope="module")
def run(setup):
    out = setup / "run"
    threads = torch.get_num_threads()
    try:
        assert dpo.main(args(setup, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_step_0_is_the_reference_then_preferences_are_learned(setup, run):
    train, evals = read_metrics(run / "metrics.jsonl")
    # policy == reference at step 0: the training path's log-probs equal the engine's exact scoring
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(evals[0]["val_margin"]) < 1e-5 and abs(evals[0]["val_chosen_reward"]) < 1e-5
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert train[-1]["loss"] < 0.2 and evals[-1]["val_accuracy"] == 1.0
    assert evals[-1]["val_chosen_reward"] > 0 > evals[-1]["val_rejected_reward"]
    z = np.load(run / "ref_logps.npz")
    assert z["train"].shape == (33, 2) and (z["train"] < 0).all()  # val_data given: all 33 pairs train
    llm = opengemma.load(run / "merged")
    assert llm.instruction_tuned


def test_rpo_adds_the_chosen_answers_nll(setup, tmp_path):
    """rpo_alpha: the loss is DPO's plus alpha times the chosen answers' per-token NLL; at step 0 that NLL is the
    exact scoring's (ref_logps.npz) over the chosen tokens, counted here from the encoded pairs."""
    out = tmp_path / "rpo"
    threads = torch.get_num_threads()
    try:
        assert dpo.main(args(setup, out, steps=1, rpo_alpha=0.5, export=False)) == 0
    finally:
        torch.set_num_threads(threads)
    _, evals = read_metrics(out / "metrics.jsonl")
    tok = Tokenizer(str(setup / "base" / "tokenizer.model"))
    held, _ = preference.encode_pairs(preference.read_pairs(setup / "val.jsonl"), tok, 48)
    n_chosen = sum(b - a for a, b in (preference.answer_span(p.chosen_mask) for p in held))
    z = np.load(out / "ref_logps.npz")
    assert evals[0]["val_nll"] == pytest.approx(-z["val"][:, 0].sum() / n_chosen, rel=1e-5)
    assert evals[0]["val_loss"] == pytest.approx(math.log(2) + 0.5 * evals[0]["val_nll"], abs=1e-5)


def test_ctrl_c_then_resume_equals_uninterrupted(setup, run, tmp_path):
    out = tmp_path / "resumed"
    r = run_recipe("dpo", args(setup, out), patch=INTERRUPT_AT_STEP_3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in checkpoint.checkpoints(out)] == ["step_3"]
    r = run_recipe("dpo", args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    key = lambda rs: [(x["step"], x.get("loss"), x.get("val_loss")) for x in rs]
    got, ref = read_metrics(out / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert key(got[0]) == key(ref[0]) and key(got[1]) == key(ref[1])


def test_two_gloo_ranks_equal_one_process(setup, tmp_path):
    common = dict(steps=4, eval_every=2, save_every=4, export=False, lr=1e-3)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_recipe("dpo", args(setup, one, **common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_recipe("dpo", args(setup, two, **common), torchrun=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    (t1, e1), (t2, e2) = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    np.testing.assert_allclose([r["loss"] for r in t2], [r["loss"] for r in t1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([r["val_loss"] for r in e2], [r["val_loss"] for r in e1], rtol=1e-5, atol=1e-7)


def test_lora_and_ipo(setup, tmp_path):
    out = tmp_path / "lora"
    threads = torch.get_num_threads()
    try:
        assert dpo.main(args(setup, out, lora_rank=4, steps=6, eval_every=6, save_every=6, lr=1e-2,
                             loss_type="ipo", beta=0.1)) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    train, evals = read_metrics(out / "metrics.jsonl")
    assert evals[0]["val_loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)  # h = 0: (0 - 1/(2 tau))^2
    assert train[-1]["loss"] < train[0]["loss"]
    assert (out / "adapter/adapter_config.json").is_file()
