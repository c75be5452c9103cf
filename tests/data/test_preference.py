"""Preference records in TRL's three shapes and RLHF prompt records: conversations, the final answer's mask, errors
that name the line, pair batches and the loader's exact resume."""

import json

import pytest
from helpers import tiny_sentencepiece

from opengemma.data import preference as P
from opengemma.data.sft import DataError
from opengemma.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(tiny_sentencepiece())


def test_the_three_shapes_give_the_same_conversations():
    u, a = {"role": "user", "content": "q"}, lambda c: {"role": "assistant", "content": c}
    strings = P.pair_messages({"prompt": "q", "chosen": "yes", "rejected": "no"}, "f:1")
    explicit = P.pair_messages({"prompt": [u], "chosen": [a("yes")], "rejected": [a("no")]}, "f:2")
    implicit = P.pair_messages({"chosen": [u, a("yes")], "rejected": [u, a("no")]}, "f:3")
    assert strings == explicit == implicit == ([u, a("yes")], [u, a("no")])


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "q", "chosen": "a"}, "needs 'chosen' and 'rejected'"),
        ({"chosen": "a", "rejected": "b"}, "string answers need a 'prompt'"),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, "must be a string or a list"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "the same conversation"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a number"),
    ],
)
def test_bad_records_name_their_line(tmp_path, record, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        P.read_pairs(path)


def test_the_mask_covers_the_final_answer_and_its_end_of_turn(tok):
    rec = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bye"}],
           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "and?"}, {"role": "assistant", "content": "no"}]}  # fmt: skip
    (pair,), stats = P.encode_pairs([rec], tok, 64)
    assert stats == {"pairs": 1, "truncated": 0, "dropped": 0}
    a, b = P.answer_span(pair.chosen_mask)
    assert tok.decode(pair.chosen[a : b - 1].tolist()) == "bye" and pair.chosen[b - 1] == tok.end_of_turn_id
    assert pair.chosen_mask.sum() == b - a  # one run: the earlier "hello" belongs to the prompt
    assert P.last_answer([0, 1, 1, 0, 0, 1, 1, 1, 0]) == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    batch = P.collate([pair, pair], pad_id=0)
    assert batch["tokens"].shape == (4, max(len(pair.chosen), len(pair.rejected)))
    assert batch["lengths"].tolist() == [len(pair.chosen)] * 2 + [len(pair.rejected)] * 2
    # cut so that no answer is left: dropped
    _, stats = P.encode_pairs([rec], tok, 8)
    assert stats["dropped"] == 1 and stats["truncated"] == 2


def test_batches_resume_exactly_and_split_over_ranks():
    items = list(range(10))
    a = P.Batches(items, 4, seed=3)
    seen = [a.next_batch() for _ in range(5)]  # 2 batches per epoch: into the third epoch
    b = P.Batches(items, 4, seed=3)
    b.load_state_dict(json.loads(json.dumps(P.Batches(items, 4, seed=3).state_dict())))
    for _ in range(3):
        b.next_batch()
    state = b.state_dict()
    c = P.Batches(items, 4, seed=3)
    c.load_state_dict(state)
    assert [c.next_batch(), c.next_batch()] == seen[3:]
    r0, r1 = P.Batches(items, 4, seed=3, rank=0, world=2), P.Batches(items, 4, seed=3, rank=1, world=2)
    first0, first1 = r0.next_batch(), r1.next_batch()
    assert sorted(first0 + first1) == sorted(seen[0]) and len(first0) == 2
    assert len({x for batch in seen[:2] for x in batch}) == 8  # an epoch: no item twice
    with pytest.raises(ValueError, match="fewer than one batch"):
        P.Batches(items[:3], 4)


def test_prompt_records(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "q", "answer": 4}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=f"{path}:2: the prompt must end with a user turn"):
        P.read_prompts(path)
    path.write_text(json.dumps({"prompt": "q", "answer": 4}) + "\n")
    (rec,) = P.read_prompts(path)
    assert rec["answer"] == 4 and P.prompt_messages(rec, "x") == [{"role": "user", "content": "q"}]
