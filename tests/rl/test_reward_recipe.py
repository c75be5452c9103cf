"""The reward recipe end to end on a tiny Gemma 3: Bradley-Terry loss falls and held-out pairwise accuracy reaches 1
on a learnable preference (an answer over a refusal); model/ is the *ForSequenceClassification export that scores
as the last checkpoint does; Ctrl-C then a rerun equals the uninterrupted run; 2 gloo ranks equal 1 process; a
malformed record names its line."""

import json
import random

import numpy as np
import pytest
import torch
from helpers import INTERRUPT_AT_STEP_3, flags, run_recipe, tiny_model, tiny_sentencepiece

from opengemma.data import preference
from opengemma.recipes import reward
from opengemma.rl.reward import add_reward_head, load_reward_model, rewards
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint
from opengemma.train.metrics import read_metrics
from opengemma.weights.hf import save_hf_dir

STEPS = 48


def _pairs(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        refusal = rng.choice(["i do not know", "no idea", "ask someone else"])
        out.append({"prompt": f"what is {a} plus {b}?", "chosen": f"it is {a + b}", "rejected": refusal})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    save_hf_dir(
        tiny_model("tiny-gemma3", std=0.05, vocab_size=400), root / "base", tokenizer=Tokenizer(tiny_sentencepiece())
    )
    train = _pairs(48, 0)
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:16]))
    return root


def args(setup, out, **over):
    a = dict(model=setup / "base", data=setup / "pairs.jsonl", val_data=setup / "val.jsonl", out=out, steps=STEPS,
             batch_size=8, grad_accum=2, seq_len=32, lr=1e-2, warmup=2, schedule="constant", save_every=24,
             eval_every=24, threads=1, dtype="float32")  # fmt: skip
    return flags({**a, **over})


@pytest.fixture(scope="module")
def run(setup):
    out = setup / "run"
    threads = torch.get_num_threads()
    try:
        assert reward.main(args(setup, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_loss_falls_accuracy_rises_and_the_export_scores_as_the_checkpoint(setup, run):
    train, evals = read_metrics(run / "metrics.jsonl")
    assert len(train) == STEPS and [r["step"] for r in evals] == [0, 24, 48]
    first, last = np.mean([r["loss"] for r in train[:3]]), np.mean([r["loss"] for r in train[-3:]])
    assert last < 0.3 * first
    assert evals[0]["val_accuracy"] < 0.8 and evals[-1]["val_accuracy"] == 1.0
    assert evals[-1]["val_margin"] > evals[0]["val_margin"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    exported = load_reward_model(run / "model").eval()
    ckpt, _ = checkpoint.load_model(run / "checkpoints/step_48", swap=add_reward_head)
    tok = Tokenizer(tiny_sentencepiece())
    pairs, _ = preference.encode_pairs(preference.read_pairs(setup / "val.jsonl"), tok, 32)
    batch = preference.collate(pairs, tok.pad_id or 0)
    x, n = torch.from_numpy(batch["tokens"]), torch.from_numpy(batch["lengths"])
    with torch.no_grad():
        assert torch.equal(rewards(exported, x, n), rewards(ckpt.eval(), x, n))


def test_ctrl_c_then_resume_equals_uninterrupted(setup, run, tmp_path):
    out = tmp_path / "resumed"
    r = run_recipe("reward", args(setup, out), patch=INTERRUPT_AT_STEP_3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in checkpoint.checkpoints(out)] == ["step_3"] and not (out / "model").exists()
    r = run_recipe("reward", args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    key = lambda rs: [(x["step"], x.get("loss"), x.get("val_loss"), x.get("val_accuracy")) for x in rs]
    ref, got = read_metrics(run / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert key(got[0]) == key(ref[0]) and key(got[1]) == key(ref[1])


def test_two_gloo_ranks_equal_one_process(setup, tmp_path):
    common = dict(steps=4, eval_every=2, save_every=4, export=False, lr=1e-3)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_recipe("reward", args(setup, one, **common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_recipe("reward", args(setup, two, **common), torchrun=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    (t1, e1), (t2, e2) = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    np.testing.assert_allclose([r["loss"] for r in t2], [r["loss"] for r in t1], rtol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in e2], [r["val_loss"] for r in e1], rtol=1e-5)


def test_a_malformed_record_names_its_line(setup, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = _pairs(3, 1)
    rows[1] = {"prompt": "q", "chosen": "a"}
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert reward.main(args(setup, tmp_path / "x", data=bad)) == 2
    assert f"{bad}:2" in capsys.readouterr().err and not (tmp_path / "x").exists()
