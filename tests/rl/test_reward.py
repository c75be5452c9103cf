"""The reward model: the head reads each row's last real token on ragged batches; its export is what transformers'
AutoModelForSequenceClassification loads and scores identically (Gemma 1, 2, 3); it loads back exactly; a
Bradley-Terry step trains the head and the trunk."""

import json

import pytest
import torch
import transformers
from helpers import random_tokens, tiny_model

from opengemma.rl.losses import bradley_terry_loss
from opengemma.rl.reward import add_reward_head, load_reward_model, pairwise_accuracy, rewards, save_reward_model
from opengemma.weights import CheckpointError
from opengemma.weights.hf import save_hf_dir


def _ragged(cfg, lengths, T, seed=3):
    tok = random_tokens(cfg, len(lengths), T, seed=seed).clamp_min(1)  # no real token is the pad id 0
    for i, n in enumerate(lengths):
        tok[i, n:] = cfg.pad_id
    return tok, torch.tensor(lengths)


def test_the_head_reads_the_last_real_token_of_ragged_rows():
    rm = add_reward_head(tiny_model("tiny-gemma3", std=0.1)).eval()
    tok, lengths = _ragged(rm.config, [5, 12, 1, 9], 12)
    with torch.no_grad():
        batch = rewards(rm, tok, lengths)
        alone = torch.cat([rewards(rm, tok[i : i + 1, :n], lengths[i : i + 1]) for i, n in enumerate(lengths.tolist())])
        # the same rows with different padding content: nothing after a row's length matters
        noisy = tok.clone()
        for i, n in enumerate(lengths.tolist()):
            noisy[i, n:] = 7
        assert torch.allclose(batch, alone, atol=1e-5) and torch.allclose(rewards(rm, noisy, lengths), batch, atol=1e-6)
        # reading one token too early (the classic pad/eos confusion) gives other rewards
        assert not torch.allclose(rewards(rm, tok, (lengths - 1).clamp_min(1)), batch, atol=1e-3)
    with pytest.raises(ValueError, match="lengths"):
        rewards(rm, tok, torch.tensor([0, 1, 1, 1]))


@pytest.mark.parametrize("name", ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"])
def test_export_scores_the_same_in_transformers_and_loads_back(tmp_path, name):
    rm = add_reward_head(tiny_model(name, std=0.1)).eval()
    save_reward_model(rm, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and cfg["id2label"] == {"0": "LABEL_0"}
    tok, lengths = _ragged(rm.config, [7, 16, 3], 16)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager")
    with torch.no_grad():
        ours = rewards(rm, tok, lengths)
        theirs = hf.eval()(input_ids=tok, attention_mask=(tok != rm.config.pad_id).long()).logits[:, 0]
        assert (ours - theirs).abs().max() <= 1e-4, (ours, theirs)
        assert torch.equal(rewards(load_reward_model(tmp_path).eval(), tok, lengths), ours)


def test_a_causal_lm_directory_is_not_a_reward_model(tmp_path):
    save_hf_dir(tiny_model("tiny-gemma3", std=0.1), tmp_path)
    with pytest.raises(CheckpointError, match="not supported"):
        load_reward_model(tmp_path)


def test_a_bradley_terry_step_trains_head_and_trunk():
    torch.manual_seed(0)
    rm = add_reward_head(tiny_model("tiny-gemma3", std=0.1))
    chosen, lc = _ragged(rm.config, [6, 8, 5, 7], 8, seed=1)
    rejected, lr_ = _ragged(rm.config, [8, 4, 6, 6], 8, seed=2)
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    before = [p.detach().clone() for p in (rm.score.weight, rm.layers[0].attn.q_proj.weight)]
    losses = []
    for _ in range(30):
        loss = bradley_terry_loss(rewards(rm, chosen, lc), rewards(rm, rejected, lr_))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, (rm.score.weight, rm.layers[0].attn.q_proj.weight)))
    with torch.no_grad():
        assert pairwise_accuracy(rewards(rm, chosen, lc), rewards(rm, rejected, lr_)) == 1.0
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)
