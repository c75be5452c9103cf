"""The RLHF recipe end to end on a tiny Gemma 3 with a toy verifier: the reward rises, the KL to the reference
grows from 0, every metric the interface names is logged, merged/ loads; Ctrl-C then a rerun equals the
uninterrupted run; the hacking watch flags a reward that rises while the judge falls; bad settings fail clearly."""

import json

import numpy as np
import pytest
import torch
from helpers import INTERRUPT_AT_STEP_3, flags, run_recipe, tiny_model, tiny_sentencepiece

import opengemma
from opengemma.recipes import rlhf
from opengemma.rl.judge import hacking
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint
from opengemma.train.metrics import read_metrics
from opengemma.weights.hf import save_hf_dir

STEPS = 30
VERIFIER = "tests.rl.toy_verifier:vowels"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf")
    save_hf_dir(
        tiny_model("tiny-gemma3", std=0.05, vocab_size=400), root / "base", tokenizer=Tokenizer(tiny_sentencepiece())
    )
    words = ["tell me", "say", "write", "give me", "answer"]
    recs = [{"prompt": f"{w} something {i}", "target": "a"} for i, w in enumerate(words * 4)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def args(setup, out, **over):
    a = dict(model=setup / "base", prompts=setup / "prompts.jsonl", verifier=VERIFIER, judge=VERIFIER, out=out,
             steps=STEPS, prompts_per_step=4, samples=4, max_new_tokens=8, lr=1e-2, kl_coef=0.05, eval_every=15,
             judge_every=5, save_every=15, threads=1, dtype="float32", val_fraction=0.2)  # fmt: skip
    return flags({**a, **over})


@pytest.fixture(scope="module")
def run(setup):
    out = setup / "run"
    threads = torch.get_num_threads()
    try:
        assert rlhf.main(args(setup, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_reward_rises_kl_grows_and_the_metrics_and_outputs_are_there(setup, run):
    train, evals = read_metrics(run / "metrics.jsonl", val_key="val_reward")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)) and [r["step"] for r in evals] == [0, 15, 30]
    for key in ("step", "reward", "kl", "response_length", "entropy", "kl_k3", "truncated", "beta"):
        assert all(key in r for r in train), key
    rewards = [r["reward"] for r in train]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.1, rewards
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollouts come from the reference itself
    assert train[-1]["kl"] > 0.05 and train[-1]["kl_k3"] > 0
    assert [r["step"] for r in train if "judge" in r] == [5, 10, 15, 20, 25, 30]
    assert evals[-1]["val_reward"] > evals[0]["val_reward"]
    assert (run / "rl.png").read_bytes()[:4] == b"\x89PNG"
    llm = opengemma.load(run / "merged")
    assert llm.instruction_tuned
    assert isinstance(llm.chat([{"role": "user", "content": "say something"}], max_new_tokens=4), str)


def test_ctrl_c_then_resume_equals_uninterrupted(setup, run, tmp_path):
    out = tmp_path / "resumed"
    short = dict(steps=8, eval_every=4, save_every=4, judge_every=2)
    ref = tmp_path / "ref"
    r = run_recipe("rlhf", args(setup, ref, **short))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_recipe("rlhf", args(setup, out, **short), patch=INTERRUPT_AT_STEP_3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in checkpoint.checkpoints(out)] == ["step_3"] and not (out / "merged").exists()
    r = run_recipe("rlhf", args(setup, out, **short))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    key = lambda rs: [(x["step"], x["reward"], x["kl"], x["loss"], x.get("judge")) for x in rs]
    assert key(read_metrics(out / "metrics.jsonl")[0]) == key(read_metrics(ref / "metrics.jsonl")[0])


def test_lora_policy_with_a_reference_from_disabled_adapters(setup, tmp_path):
    out = tmp_path / "lora"
    threads = torch.get_num_threads()
    try:
        assert rlhf.main(args(setup, out, lora_rank=4, steps=6, eval_every=6, save_every=6, lr=3e-2)) == 0
    finally:
        torch.set_num_threads(threads)
    train, _ = read_metrics(out / "metrics.jsonl", val_key="val_reward")
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-5) and train[-1]["kl"] > 0
    assert (out / "adapter/adapter_config.json").is_file() and (out / "merged/config.json").is_file()


def test_the_watch_flags_reward_up_judge_down():
    rising_reward_falling_judge = [(0.1, 0.8), (0.2, 0.8), (0.3, 0.7), (0.5, 0.6), (0.6, 0.5), (0.7, 0.4)]
    assert hacking(rising_reward_falling_judge, window=3, tolerance=0.05)
    both_rise = [(0.1, 0.1), (0.2, 0.2), (0.3, 0.3), (0.4, 0.4), (0.5, 0.5), (0.6, 0.6)]
    assert not hacking(both_rise, window=3, tolerance=0.05)
    assert not hacking(rising_reward_falling_judge[:5], window=3, tolerance=0.05)  # too few judged steps


def test_bad_settings_and_records_fail_clearly(setup, tmp_path, capsys):
    with pytest.raises(SystemExit, match="one reward"):
        rlhf.main(args(setup, tmp_path / "a", reward_model=setup / "base"))
    with pytest.raises(SystemExit, match="samples must be >= 2"):
        rlhf.main(args(setup, tmp_path / "b", samples=1))
    with pytest.raises(ValueError, match="package.module:function"):
        rlhf.main(args(setup, tmp_path / "c", verifier="nocolon"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    assert rlhf.main(args(setup, tmp_path / "d", prompts=bad)) == 2
    assert f"{bad}:2" in capsys.readouterr().err


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_two_gloo_ranks_equal_one_process(setup, tmp_path, lora):
    """Under torchrun the policy is sharded (FSDP2) and each rank answers half the prompts on its whole copy, synced
    after every step: the same answers, rewards, KLs and held-out scores as one process."""
    common = dict(steps=3, eval_every=3, judge_every=1, save_every=3, export=False, lora_rank=lora, lr=3e-2 if lora else 1e-2,
                  reward_norm="whiten")  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_recipe("rlhf", args(setup, one, **common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_recipe("rlhf", args(setup, two, **common), torchrun=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    (t1, e1), (t2, e2) = (read_metrics(o / "metrics.jsonl", val_key="val_reward") for o in (one, two))
    assert t1[-1]["kl"] > 1e-3  # the policy moved, and the copies followed it: later steps sample from it
    for key in ("reward", "reward_std", "response_length", "truncated", "no_signal_groups", "judge"):
        assert [r[key] for r in t2] == [r[key] for r in t1], key
    for key in ("loss", "kl", "kl_k3", "entropy", "shaped_reward", "beta"):
        np.testing.assert_allclose([r[key] for r in t2], [r[key] for r in t1], rtol=1e-4, atol=1e-6, err_msg=key)
    assert [(r["val_reward"], r["val_judge"]) for r in e2] == [(r["val_reward"], r["val_judge"]) for r in e1]
