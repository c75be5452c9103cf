"""Instruction-following evaluation: replies are scored by their kind's checker (a stand-in model that follows
some records and not others gives exactly the expected rates, plain records skipped); with a tiny random Gemma,
batched generation gives the replies one-at-a-time generation gives; the command line loads the model (an adapter
only when asked) and writes the rates and every reply."""

import json

import pytest
import torch
from helpers import tiny_model, tiny_sentencepiece

from opengemma.api import LLM
from opengemma.data.instructions import KINDS
from opengemma.engine.generate import GenerationOutput
from opengemma.eval import instructions
from opengemma.tokenizer import Tokenizer


def rec(i, kind, params, user, answer, instruction=None):
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    r = {"messages": msgs, "kind": kind, "params": params, "instruction": instruction, "source": "test"}
    return {**r, "placement": "user", "id": f"r{i}"}


RECORDS = [
    rec(0, "english_capital", {}, "the cat? answer in capital letters.", "THE CAT ANSWERS."),
    rec(1, "number_bullet_lists", {"n": 2}, "dogs? two bullets.", "* the dogs.\n* the rivers."),
    rec(2, None, {}, "hello", "hello world"),  # plain: nothing to check
    rec(
        3,
        "end_checker",
        {"phrase": "Any other questions?"},
        "code? end with a phrase.",
        "code.\n\nAny other questions?",
    ),
    rec(4, "number_sentences", {"n": 2}, "rivers? two sentences.", "the river. the model."),
    rec(5, "english_lowercase", {}, "Dogs? lowercase.", "dogs and cats."),
    rec(6, "highlighted_sections", {"n": 1}, "Cats? Highlight one part, like *this*.", "*cats*.",
        "Highlight one part, like *this*."),
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model's products are too small to share among threads: with the cores busy, OpenMP's spinning made
    these tests 60x slower (10 s instead of 0.17 s on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(tiny_sentencepiece())


@pytest.fixture(scope="module")
def llm(tok):
    return LLM(tiny_model("tiny-gemma3", std=0.05, vocab_size=400), tok)


def test_rates_come_from_the_checkers(llm, tok, monkeypatch):
    """A stand-in for the engine: it gives the reference answer for r0, r3, r5, "no." for r1 and r4, and echoes its
    prompt for r6 (which passes the highlight check on the instruction's own "*this*", but is not following)."""
    follows = {"r0", "r3", "r5"}
    by_prompt = {tuple(tok.encode_chat(r["messages"][:-1])[0]): r for r in RECORDS}

    def fake_generate(model, ids, max_new_tokens, temperature, stop_ids, compile):
        assert temperature == 0.0 and set(stop_ids) == {tok.eos_id, tok.end_of_turn_id}
        replies = [by_prompt[tuple(p)] for p in ids]
        texts = [r["messages"][-1]["content"] if r["id"] in follows else "no." for r in replies]
        texts = [r["messages"][0]["content"] if r["id"] == "r6" else t for r, t in zip(replies, texts)]
        return [GenerationOutput(tok.encode(t, bos=False), "stop") for t in texts]

    monkeypatch.setattr(instructions, "generate", fake_generate)
    result = instructions.follow_rates(llm, RECORDS, batch_size=2)
    assert result["n"] == 6 and [r["id"] for r in result["records"]] == ["r0", "r1", "r3", "r4", "r5", "r6"]
    assert result["followed"] == pytest.approx(3 / 6)
    assert KINDS["highlighted_sections"].check(result["records"][-1]["reply"], {"n": 1})  # the check alone passes
    assert result["per_kind"]["number_bullet_lists"] == {"followed": 0.0, "n": 1}
    assert result["per_kind"]["end_checker"] == {"followed": 1.0, "n": 1}
    for r in result["records"][:-1]:
        assert r["followed"] == KINDS[r["kind"]].check(r["reply"], r["params"]) == (r["id"] in follows)
    assert result["records"][0]["prompt"] == RECORDS[0]["messages"][:-1]


def test_batched_replies_equal_one_at_a_time_with_a_tiny_model(llm):
    torch.manual_seed(0)
    batched = instructions.follow_rates(llm, RECORDS, max_new_tokens=10, batch_size=4)
    single = instructions.follow_rates(llm, RECORDS, max_new_tokens=10, batch_size=1)
    assert [r["reply"] for r in batched["records"]] == [r["reply"] for r in single["records"]]
    assert all(r["reply"] for r in batched["records"])  # a random model rambles; it rarely follows
    assert batched["followed"] == single["followed"]


def test_command_line_passes_the_adapter(llm, tmp_path, monkeypatch, capsys):
    import opengemma

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    calls = []

    def fake_load(*args, **kw):
        calls.append((args, kw))
        return llm

    monkeypatch.setattr(opengemma, "load", fake_load)
    out = tmp_path / "follow.json"
    argv = ["--model", "m", "--data", str(data), "--output", str(out), "--limit", "3", "--max-new-tokens", "6"]
    assert instructions.main(argv) == 0
    assert calls[-1] == (("m",), {"dtype": None, "device": None, "adapter": None})
    result = json.loads(out.read_text())
    assert result["n"] == 3 and [r["id"] for r in result["records"]] == ["r0", "r1", "r3"]  # plain r2 skipped
    assert result["adapter"] is None and "followed" in capsys.readouterr().out
    assert instructions.main(argv + ["--adapter", "runs/sft/adapter"]) == 0
    assert calls[-1][1]["adapter"] == "runs/sft/adapter"
