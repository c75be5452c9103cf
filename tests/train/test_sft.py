"""Supervised fine-tuning: the loss mask at token level, records and their errors, packing and the loader's exact
resume, and the recipe end to end on a tiny Gemma 3 (loss falls on a memorizable set; the output layout; merged ==
base + adapter; resume == uninterrupted; torchrun with 2 gloo ranks == one process)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INTERRUPT_AT_STEP_3, run_recipe, tiny_model, tiny_sentencepiece

import opengemma
from opengemma.data import sft as sft_data
from opengemma.data.loader import IGNORE
from opengemma.recipes import sft
from opengemma.tokenizer import Tokenizer
from opengemma.train import checkpoint
from opengemma.train.metrics import read_metrics
from opengemma.weights.hf import CHAT_TEMPLATE, save_hf_dir

STEPS = 80


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(tiny_sentencepiece())


def test_loss_mask_at_token_level_on_a_multi_turn_conversation(tok):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "the cat answers"},
        {"role": "user", "content": "a question about dogs"},
        {"role": "assistant", "content": "rivers and dogs"},
    ]
    (ex,), stats = sft_data.encode([{"messages": messages}], tok, seq_len=64)
    assert stats["truncated"] == 0 and stats["examples"] == 1
    x, y, seg = sft_data.make_row([ex], 64, tok.pad_id)
    n = len(ex.ids) - 1
    assert (x[:n] == ex.ids[:-1]).all() and (x[n:] == tok.pad_id).all()
    learned = [int(t) for t in y if t != IGNORE]
    eot = tok.end_of_turn_id
    # exactly the two answers, each with its closing <end_of_turn>; nothing of the user, system, headers or <bos>
    assert learned == tok.encode("the cat answers", bos=False) + [eot] + tok.encode("rivers and dogs", bos=False) + [
        eot
    ]
    # and each learned target sits right after its input position: y[t] == ids[t + 1]
    pos = np.flatnonzero(y != IGNORE)
    assert (y[pos] == ex.ids[pos + 1]).all()
    assert (seg[:n] == 0).all() and (seg[n:] == 1).all()  # the padding tail is its own document


def test_records_shapes_and_errors_name_the_line(tmp_path, tok):
    good = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "hi", "completion": "hello"},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]},
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in good) + "\n")
    recs = sft_data.read_jsonl(p)
    ids = [sft_data.encode([r], tok, 64)[0][0].ids.tolist() for r in recs]
    assert ids[0] == ids[1] == ids[2]
    for bad, msg in [
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
        ('{"text": "x"}', "needs 'messages'"),
        ("{not json", "not valid JSON"),
        ('{"prompt": "a", "completion": ["b"]}', "both be strings"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', "message 0"),
    ]:
        p.write_text(json.dumps(good[0]) + "\n" + bad + "\n")
        with pytest.raises(sft_data.DataError, match=rf"d.jsonl:2: .*{msg}"):
            sft_data.read_jsonl(p)
    p.write_text('{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}\n')
    with pytest.raises(sft_data.DataError, match="d.jsonl:1: .*alternate"):
        sft_data.encode(sft_data.read_jsonl(p), tok, 64, source=str(p))


def _examples(tok, n=30, seed=0):
    rng = np.random.default_rng(seed)
    words = "the model answers a question about cats dogs and rivers".split()
    recs = [
        {
            "prompt": " ".join(rng.choice(words, rng.integers(1, 8))),
            "completion": " ".join(rng.choice(words, rng.integers(1, 12))),
        }
        for _ in range(n)
    ]
    return sft_data.encode(recs, tok, 32)[0]


def test_packing_places_every_example_once_and_resume_is_exact(tok):
    ex = _examples(tok)
    loader = sft_data.SFTLoader(ex, 32, batch_size=4, grad_accum=2, seed=1)
    rows = loader.rows_of(0)
    assert sorted(i for r in rows for i in r) == list(range(len(ex)))  # each example once per epoch
    assert all(sum(len(ex[i].ids) - 1 for i in r) <= 32 for r in rows)
    assert loader.rows_of(1) != rows  # reshuffled per epoch
    n = -(-len(rows) // 4) + 1  # steps that cross an epoch boundary
    first = [loader.next_step() for _ in range(n)]
    assert loader.epoch == 1
    state = loader.state_dict()
    later = [loader.next_step() for _ in range(3)]
    again = sft_data.SFTLoader(ex, 32, batch_size=4, grad_accum=2, seed=1)
    again.load_state_dict(json.loads(json.dumps(state)))
    for a, b in zip(later, [again.next_step() for _ in range(3)]):
        assert (
            np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets) and a.n_targets == b.n_targets
        )
    assert first[0].n_targets == int((first[0].targets != IGNORE).sum())
    # two ranks take the two halves of each micro-batch, with the global count
    ranks = [
        sft_data.SFTLoader(ex, 32, batch_size=4, grad_accum=2, seed=1, rank=r, world=2).next_step() for r in (0, 1)
    ]
    assert np.array_equal(np.concatenate([ranks[0].inputs, ranks[1].inputs], axis=1), first[0].inputs)
    assert ranks[0].n_targets == ranks[1].n_targets == first[0].n_targets
    with pytest.raises(ValueError, match="same data and seed"):
        sft_data.SFTLoader(ex[:-1], 32, batch_size=4, seed=1).load_state_dict(state)


def test_chat_template_renders_as_the_tokenizer_does(tok):
    import jinja2  # torch depends on it

    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Name three colors. "},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "More?"},
    ]
    for messages in (convo, convo[1:]):
        ours = tok.render_chat(messages, add_generation_prompt=True)
        theirs = template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True)
        assert theirs == ours


# -- the recipe end to end -------------------------------------------------------------------------------------
FACTS = [
    (f"what is the word number {i}", w) for i, w in enumerate("cats dogs rivers model python code hello world".split())
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Gemma 3 base (HF layout, the tiny tokenizer) and a memorizable set of conversations."""
    root = tmp_path_factory.mktemp("sft")
    model = tiny_model("tiny-gemma3", std=0.05, vocab_size=400)
    with torch.no_grad():  # a wide output layer: frozen, it bounds how confident any adapter can make the logits
        model.embed.weight.normal_(0, 0.5)
    save_hf_dir(model, root / "base", tokenizer=Tokenizer(tiny_sentencepiece()))
    data = root / "chat.jsonl"
    recs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"the answer is {a}"}]}
            for q, a in FACTS for _ in range(4)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    val = root / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in recs[::4]))
    return root


def args(setup, out, **over):
    a = dict(model=setup / "base", data=setup / "chat.jsonl", val_data=setup / "val.jsonl", out=out, steps=STEPS,
             batch_size=4, seq_len=48, grad_accum=2, lr=1e-2, warmup=2, save_every=32, eval_every=20, keep=2,
             threads=1, lora_rank=4, samples=2, sample_tokens=8, dtype="float32")  # fmt: skip
    a.update(over)
    return [x for k, v in a.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def curve(out):
    train, val = read_metrics(Path(out) / "metrics.jsonl")
    return [r["loss"] for r in train], [r["val_loss"] for r in val]


@pytest.fixture(scope="module")
def lora_run(setup):
    out = setup / "lora"
    threads = torch.get_num_threads()
    try:
        assert sft.main(args(setup, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_lora_run_learns_and_writes_its_layout(setup, lora_run):
    losses, val = curve(lora_run)
    assert len(losses) == STEPS and len(val) == 5  # step 0, then every eval_every
    assert losses[-1] < 0.05 * losses[0] and val[-1] < 0.05 * val[0]  # memorized
    assert [p.name for p in checkpoint.checkpoints(lora_run)] == ["step_64", "step_80"]
    ckpt = lora_run / "checkpoints/step_80"
    assert json.loads((ckpt / "meta.json").read_text())["lora"]["rank"] == 4
    assert (lora_run / "adapter/adapter_config.json").is_file() and (lora_run / "merged/config.json").is_file()
    assert (lora_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    _, records = read_metrics(lora_run / "metrics.jsonl")
    assert records[-1]["samples"] and "reply" in records[-1]["samples"][0]
    # the checkpoint holds the adapters (and their AdamW state) only, not the frozen base
    from torch.distributed.checkpoint import FileSystemReader

    keys = [k for k in FileSystemReader(ckpt).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert keys and all(".lora_" in k for k in keys)


def test_merged_equals_base_plus_adapter_and_is_a_chat_model(setup, lora_run):
    merged = opengemma.load(lora_run / "merged")
    adapted = opengemma.load(setup / "base", adapter=lora_run / "adapter")
    base = opengemma.load(setup / "base")
    assert merged.instruction_tuned and adapted.instruction_tuned and not base.instruction_tuned
    ids, _ = merged.tokenizer.encode_chat([{"role": "user", "content": FACTS[2][0]}])
    x = torch.tensor([ids])
    with torch.no_grad():
        a, b, c = merged.model(x), adapted.model(x), base.model(x)
    assert (a - b).abs().max() < 1e-4 and (a - c).abs().max() > 1e-2
    reply = merged.chat([{"role": "user", "content": FACTS[2][0]}], max_new_tokens=8)
    assert reply == f"the answer is {FACTS[2][1]}"  # memorized, and it stopped at <end_of_turn>


def run(argv, *, patch="", torchrun=False):
    return run_recipe("sft", argv, patch=patch, torchrun=torchrun)


def test_ctrl_c_then_resume_equals_uninterrupted(setup, lora_run, tmp_path):
    out = tmp_path / "resumed"
    r = run(args(setup, out), patch=INTERRUPT_AT_STEP_3)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in checkpoint.checkpoints(out)] == ["step_3"] and not (out / "merged").exists()
    r = run(args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    (ref_loss, ref_val), (loss, val) = curve(lora_run), curve(out)
    assert loss == ref_loss and val == ref_val


def test_full_fine_tuning_under_two_gloo_ranks_equals_one_process(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = dict(lora_rank=0, steps=4, eval_every=2, save_every=4, samples=0, lr=1e-3)
    r1 = run(args(setup, one, **common))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run(args(setup, two, **common), torchrun=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    (l1, v1), (l2, v2) = curve(one), curve(two)
    assert l1[-1] < l1[0]
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    a, b = opengemma.load(one / "merged").model.state_dict(), opengemma.load(two / "merged").model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_lora_under_two_gloo_ranks_equals_one_process(setup, lora_run, tmp_path):
    out = tmp_path / "fsdp"
    r = run(args(setup, out, samples=0, steps=12, eval_every=6), torchrun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path / "one"
    assert run(args(setup, ref, samples=0, steps=12, eval_every=6)).returncode == 0
    (l1, v1), (l2, v2) = curve(ref), curve(out)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    assert l1[-1] < l1[0]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_run_learns(setup, tmp_path, mode):
    out = tmp_path / "qlora"
    threads = torch.get_num_threads()
    try:
        assert sft.main(args(setup, out, quantize=mode, samples=0, dtype="bfloat16")) == 0
    finally:
        torch.set_num_threads(threads)
    losses, _ = curve(out)
    assert losses[-1] < 0.05 * losses[0]
    # the adapter was trained on the int8 base; merged into the float base it stays close to the int8 + adapter model
    q = opengemma.load(setup / "base", adapter=out / "adapter", quantize=mode, group_size=32)
    assert q.instruction_tuned
    assert q.chat([{"role": "user", "content": FACTS[1][0]}], max_new_tokens=8) == f"the answer is {FACTS[1][1]}"


def test_finetune_command_runs_the_recipe_and_the_output_serves_the_commands(setup, tmp_path):
    out = tmp_path / "cli"
    from opengemma.cli import main

    argv = ["finetune", "--model", str(setup / "base"), "--data", str(setup / "chat.jsonl"), "--lora-rank", "2",
            "--steps", "2", "--batch-size", "2", "--seq-len", "48", "--out", str(out), "--", "--samples", "0",
            "--threads", "1", "--dtype", "float32"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "adapter/adapter_model.safetensors").is_file() and (out / "merged/model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")[0]] == [1, 2]
    assert json.loads((out / "adapter/adapter_config.json").read_text())["r"] == 2
    # the model commands take the adapter
    from opengemma.cli import build_parser

    args = build_parser().parse_args(
        ["generate", "hi", "--model", str(setup / "base"), "--adapter", str(out / "adapter")]
    )
    assert args.adapter == str(out / "adapter")
    assert main(["finetune", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) != 0
