"""Tests for opengemma.tokenizer: special ids, encoding and decoding, files, the chat format.

Most tests use a tiny SentencePiece model (helpers.tiny_sentencepiece) with Gemma's layout (pad 0, eos 1,
bos 2, unk 3, BPE, byte fallback, identity normalizer, user-defined turn markers). Tests marked
``real_model`` use the Gemma 3 270M GGUF's tokenizer and compare against ``transformers``; streaming is in
test_streaming.py, the tokenizer's GGUF form in tests/weights/test_gguf_tokenizer.py.
"""

from __future__ import annotations

import difflib
import inspect
import io
import os
import pickle

import pytest
import sentencepiece as spm
from helpers import TINY_TEXTS, sentencepiece_training_lines, tiny_sentencepiece

from opengemma.tokenizer import Tokenizer

# --------------------------------------------------------------------------------------------------
# The tiny Gemma-shaped model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tok() -> Tokenizer:
    return Tokenizer(tiny_sentencepiece())


CONVERSATION = [
    {"role": "user", "content": "hello world"},
    {"role": "assistant", "content": "the model answers."},
    {"role": "user", "content": "and cats?"},
]


# --------------------------------------------------------------------------------------------------
# Basics on the tiny model
# --------------------------------------------------------------------------------------------------


def test_special_ids(tiny_tok: Tokenizer) -> None:
    assert (tiny_tok.pad_id, tiny_tok.eos_id, tiny_tok.bos_id, tiny_tok.unk_id) == (0, 1, 2, 3)
    assert tiny_tok.id_to_piece(tiny_tok.start_of_turn_id) == "<start_of_turn>"
    assert tiny_tok.id_to_piece(tiny_tok.end_of_turn_id) == "<end_of_turn>"
    assert tiny_tok.stop_ids == (1, tiny_tok.end_of_turn_id)
    assert tiny_tok.vocab_size == 400
    assert tiny_tok.piece_to_id("<unk>") == 3
    assert tiny_tok.piece_to_id("no such piece") is None
    with pytest.raises(ValueError, match="out of range"):
        tiny_tok.id_to_piece(400)


def test_special_ids_absent() -> None:
    buf = io.BytesIO()  # a model without turn markers
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentencepiece_training_lines()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=350,
        byte_fallback=True,
        minloglevel=2,
    )
    tok = Tokenizer(buf.getvalue())
    assert tok.start_of_turn_id is None and tok.end_of_turn_id is None
    assert tok.stop_ids == (tok.eos_id,)
    with pytest.raises(ValueError, match="<start_of_turn>"):
        tok.render_chat(CONVERSATION)


@pytest.mark.parametrize("text", TINY_TEXTS)
def test_roundtrip(tiny_tok: Tokenizer, text: str) -> None:
    ids = tiny_tok.encode(text)
    assert ids[0] == tiny_tok.bos_id
    assert tiny_tok.decode(ids) == text


def test_encode_flags_and_batch(tiny_tok: Tokenizer) -> None:
    plain = tiny_tok.encode("hello world", bos=False)
    assert tiny_tok.encode("hello world") == [2, *plain]
    assert tiny_tok.encode("hello world", bos=False, eos=True) == [*plain, 1]
    batch = tiny_tok.encode_batch(TINY_TEXTS, eos=True)
    assert batch == [tiny_tok.encode(t, eos=True) for t in TINY_TEXTS]


def test_user_defined_recognized_control_not(tiny_tok: Tokenizer) -> None:
    # SentencePiece matches user-defined pieces in text, never control pieces...
    assert tiny_tok.encode("<start_of_turn>", bos=False) == [tiny_tok.start_of_turn_id]
    assert tiny_tok.bos_id not in tiny_tok.encode("<bos>", bos=False)
    # ...unless asked to.
    ids = tiny_tok.encode("<bos>hi<eos><pad>", bos=False, allow_special=True)
    assert ids == [2, *tiny_tok.encode("hi", bos=False), 1, 0]


def test_decode_skips_control_keeps_user_defined(tiny_tok: Tokenizer) -> None:
    sot, eot = tiny_tok.start_of_turn_id, tiny_tok.end_of_turn_id
    ids = [tiny_tok.bos_id, sot, *tiny_tok.encode("hello", bos=False), eot, tiny_tok.eos_id, tiny_tok.pad_id]
    assert tiny_tok.decode(ids) == "<start_of_turn>hello<end_of_turn>"
    with pytest.raises(ValueError, match="out of range"):
        tiny_tok.decode([5, 10**6])


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_save_from_file_roundtrip(tiny_tok: Tokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.model"
    tiny_tok.save(path)
    again = Tokenizer.from_file(path)
    assert again.model_proto_bytes == tiny_tok.model_proto_bytes
    assert [again.id_to_piece(i) for i in range(again.vocab_size)] == [
        tiny_tok.id_to_piece(i) for i in range(tiny_tok.vocab_size)
    ]
    assert again.path == str(path)
    restored = pickle.loads(pickle.dumps(tiny_tok))
    assert restored.encode(TINY_TEXTS[0]) == tiny_tok.encode(TINY_TEXTS[0])


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b""], ids=["random", "empty"])
def test_corrupt_file(tmp_path, content: bytes) -> None:
    path = tmp_path / "broken.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.model"):
        Tokenizer.from_file(path)


# --------------------------------------------------------------------------------------------------
# Chat
# --------------------------------------------------------------------------------------------------


def test_render_chat(tiny_tok: Tokenizer) -> None:
    expected = (
        "<bos><start_of_turn>user\nhello world<end_of_turn>\n"
        "<start_of_turn>model\nthe model answers.<end_of_turn>\n"
        "<start_of_turn>user\nand cats?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert tiny_tok.render_chat(CONVERSATION) == expected
    assert tiny_tok.render_chat(CONVERSATION, add_generation_prompt=False) == expected[: -len("<start_of_turn>model\n")]


def _check_encode_chat(tok: Tokenizer, messages, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
    ids, mask = tok.encode_chat(messages, add_generation_prompt=add_generation_prompt)
    rendered = tok.render_chat(messages, add_generation_prompt=add_generation_prompt)
    assert ids == tok.encode(rendered, bos=False, allow_special=True)
    assert len(mask) == len(ids) and set(mask) <= {0, 1}
    # The masked tokens are exactly each answer followed by <end_of_turn>.
    answers = [m["content"] for m in messages if m["role"] in ("assistant", "model")]
    spans, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append(ids[start:i])
            start = None
    assert spans == [[*tok.encode(a, bos=False), tok.end_of_turn_id] for a in answers]
    # What follows each masked span is the unmasked "\n".
    nl = tok.encode("\n", bos=False)
    for i in range(1, len(ids)):
        if mask[i - 1] and not mask[i]:
            assert ids[i : i + len(nl)] == nl
    return ids, mask


def test_encode_chat(tiny_tok: Tokenizer) -> None:
    ids, mask = _check_encode_chat(tiny_tok, CONVERSATION, add_generation_prompt=True)
    assert ids[0] == tiny_tok.bos_id and mask[0] == 0
    header = [tiny_tok.start_of_turn_id, *tiny_tok.encode("model\n", bos=False)]
    assert ids[-len(header) :] == header and not any(mask[-len(header) :])
    training = CONVERSATION + [{"role": "model", "content": "cats are fine 😀"}]
    _, mask = _check_encode_chat(tiny_tok, training, add_generation_prompt=False)
    assert mask[-1] == 0 and mask[-2] == 1  # <end_of_turn> learned, the "\n" after it not


def test_encode_chat_trims_content_like_the_official_template(tiny_tok: Tokenizer) -> None:
    # Gemma's chat templates apply `| trim` to each message; the system prefix is kept as written.
    messages = [{"role": "user", "content": "  hi\n"}, {"role": "model", "content": "\nanswer  "}]
    assert tiny_tok.render_chat(messages, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nanswer<end_of_turn>\n"
    )
    ids, mask = tiny_tok.encode_chat(messages, add_generation_prompt=False)
    prompt, _ = tiny_tok.encode_chat(messages[:1])
    assert ids[: len(prompt)] == prompt
    assert ids[len(prompt) :] == [
        *tiny_tok.encode("answer", bos=False),
        tiny_tok.end_of_turn_id,
        *tiny_tok.encode("\n", bos=False),
    ]
    assert sum(mask) == len(tiny_tok.encode("answer", bos=False)) + 1


def test_system_folding(tiny_tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "be brief"}, *CONVERSATION]
    text = tiny_tok.render_chat(messages)
    assert text.startswith("<bos><start_of_turn>user\nbe brief\n\nhello world<end_of_turn>\n<start_of_turn>model\n")
    assert "system" not in text
    _check_encode_chat(tiny_tok, messages, add_generation_prompt=True)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "no messages"),
        ([{"role": "model", "content": "hi"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "first message"),
        ([{"role": "system", "content": "a"}], "followed by a user"),
        ([{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}], "followed by a user"),
        ([{"role": "tool", "content": "a"}], "unknown role"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "user", "content": ["a"]}], "must be a str"),
        ([{"role": "user", "content": "a"}, {"role": "model", "content": "b"}], "end with a user"),
    ],
)
def test_invalid_chat(tiny_tok: Tokenizer, messages, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_tok.render_chat(messages)
    with pytest.raises(ValueError, match=match):
        tiny_tok.encode_chat(messages)


# --------------------------------------------------------------------------------------------------
# The real Gemma 3 tokenizer (the gguf_path and gemma fixtures are tests/conftest.py's)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path: str):
    transformers = pytest.importorskip("transformers")
    # ~16 s: transformers rebuilds BPE merges from the vocabulary.
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


@pytest.mark.real_model
def test_real_expected_ids(gemma: Tokenizer) -> None:
    assert gemma.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
    # The chat line from docs/ASSETS.md is the text without <bos>:
    assert gemma.encode("<start_of_turn>user\nHi<end_of_turn>\n", bos=False) == [105, 2364, 107, 10979, 106, 107]
    assert (gemma.bos_id, gemma.eos_id, gemma.pad_id, gemma.unk_id) == (2, 1, 0, 3)
    assert (gemma.start_of_turn_id, gemma.end_of_turn_id, gemma.stop_ids) == (105, 106, (1, 106))
    assert gemma.id_to_piece(9079) == "\u2581Paris"


REAL_TEXTS = [
    'The quick brown fox jumps over the lazy dog. It wasn\'t me, she said -- "honestly"!',
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # comment\n",
    "대한민국의 수도는 서울입니다. 한국어 토크나이저 테스트.",
    "日本の首都は東京です。ひらがなとカタカナ、漢字を混ぜた文。",
    "中华人民共和国的首都是北京。这是一个测试句子。",
    "عاصمة فرنسا هي باريس. هذا نص تجريبي باللغة العربية.",
    "भारत की राजधानी नई दिल्ली है। यह एक परीक्षण वाक्य है।",
    "Столица России — Москва. Съешь же ещё этих мягких французских булок.",
    "Emoji: 😀😂👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇰🇷🇯🇵 🏳️‍🌈 rare 🫨🪿 hieroglyph 𓀀 math 𝕏",
    "spaces:  two   three    four" + " " * 31 + "thirty-one\ttab\t\ttabs\n\n\nthree newlines\n" + "\n" * 40 + "end",
    "   leading spaces and trailing spaces   ",
    "Digits 1234567890 3.14159 1,000,000 2024-06-01 and 0x1F",
    "https://www.example.com/path/to/page?query=1&lang=en#section and mailto:someone@example.org",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<mask> [multimodal] <start_of_image><end_of_image> <unused0> <table><tr><td>x</td></tr></table>",
    "Mixed: café naïve coöperate façade — “quotes” ‘single’ … ½ ° ©",
    "\r\nWindows line endings\r\n and a lone \r carriage return",
]


def _stdlib_sources() -> list[str]:
    import json.decoder
    import textwrap

    return [inspect.getsource(m) for m in (json.decoder, textwrap)]


def _only_space_run_differences(tok: Tokenizer, ours: list[int], theirs: list[int]) -> bool:
    """True if every difference is a run of 32+ spaces split differently into the same text."""
    blocks = difflib.SequenceMatcher(a=ours, b=theirs, autojunk=False).get_opcodes()
    for op, i1, i2, j1, j2 in blocks:
        if op == "equal":
            continue
        a = "".join(tok.id_to_piece(i) for i in ours[i1:i2])
        b = "".join(tok.id_to_piece(i) for i in theirs[j1:j2])
        if a != b or "\u2581" * 32 not in a:
            return False
    return True


@pytest.mark.real_model
def test_real_matches_transformers(gemma: Tokenizer, hf_tokenizer) -> None:
    texts = REAL_TEXTS + _stdlib_sources()
    n_tokens = 0
    diverging = 0
    for text in texts:
        ours = gemma.encode(text)
        theirs = hf_tokenizer(text)["input_ids"]  # transformers adds <bos> too
        n_tokens += len(ours)
        if ours != theirs:
            # transformers' GGUF conversion rebuilds Gemma's space-run pieces ("▁▁".."▁"*31) as BPE
            # merges, not as the atomic user-defined pieces they are, so a run of 32+ spaces is split
            # differently (e.g. 16+18 instead of SentencePiece's greedy 31+3). Everything else agrees.
            assert _only_space_run_differences(gemma, ours, theirs), text[:200]
            diverging += 1
        assert gemma.decode(ours) == text
    assert n_tokens > 8_000
    assert diverging <= 2  # only the two stdlib sources have 32+ space runs


@pytest.mark.real_model
def test_real_control_piece_text(gemma: Tokenizer) -> None:
    # SentencePiece never makes control pieces from text ("<bos>" is spelled out); transformers
    # registers them as special added tokens and would give [2, 2, ...]. Opt in with allow_special.
    assert gemma.encode("<bos>x", bos=False) == [236820, 46757, 236813, 236781]
    assert gemma.encode("<bos>x", bos=False, allow_special=True) == [2, 236781]


@pytest.mark.real_model
def test_real_long_space_runs(gemma: Tokenizer) -> None:
    # SentencePiece matches user-defined pieces greedily, longest first ("▁"*31 is the longest).
    assert gemma.encode(" " * 40, bos=False) == [167, 145]
    assert [gemma.id_to_piece(i) for i in (167, 145)] == ["\u2581" * 31, "\u2581" * 9]


@pytest.mark.real_model
def test_real_chat(gemma: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Korea? 🇰🇷"},
    ]
    text = gemma.render_chat(messages)
    assert text == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n"
        "<start_of_turn>user\nAnd of Korea? 🇰🇷<end_of_turn>\n<start_of_turn>model\n"
    )
    ids, mask = _check_encode_chat(gemma, messages, add_generation_prompt=True)
    assert ids[:4] == [2, 105, 2364, 107] and ids[-3:] == [105, 4368, 107]
    answer = [i for i, m in zip(ids, mask) if m]
    assert answer == [*gemma.encode("Paris.", bos=False), 106]
    _check_encode_chat(gemma, messages + [{"role": "model", "content": "Seoul."}], add_generation_prompt=False)
    with pytest.raises(ValueError, match="alternate"):
        gemma.encode_chat(messages[1:2] + messages[1:2])


@pytest.mark.real_model
def test_real_save_roundtrip(gemma: Tokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.model"
    gemma.save(path)
    again = Tokenizer.from_file(path)
    assert again.model_proto_bytes == gemma.model_proto_bytes
    assert again.encode(REAL_TEXTS[9]) == gemma.encode(REAL_TEXTS[9])
