"""Streaming text out of token ids (opengemma/streaming.py's IncrementalDecoder): deltas concatenate to the
decoded text, a multi-byte character comes out whole once its last byte arrived, invalid and unfinished
byte sequences; on the tiny SentencePiece model (helpers.tiny_sentencepiece) and the real Gemma 3 tokenizer."""

from __future__ import annotations

import pytest
from helpers import TINY_TEXTS, tiny_sentencepiece

from opengemma.streaming import IncrementalDecoder
from opengemma.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_tok() -> Tokenizer:
    return Tokenizer(tiny_sentencepiece())


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    dec = IncrementalDecoder(tok)
    deltas = [dec.step(ids[: i + 1]) for i in range(len(ids))]
    return deltas + [dec.flush()]


@pytest.mark.parametrize("text", TINY_TEXTS)
def test_incremental_decoder_concat(tiny_tok: Tokenizer, text: str) -> None:
    ids = tiny_tok.encode(text)
    deltas = _stream(tiny_tok, ids)
    assert "".join(deltas) == tiny_tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_incremental_decoder_emoji_whole(tiny_tok: Tokenizer) -> None:
    ids = tiny_tok.encode("cats 😀!", bos=False)
    assert sum(tiny_tok.is_byte(i) for i in ids) == 4  # the emoji is 4 byte pieces in the tiny model
    deltas = _stream(tiny_tok, ids)
    assert "😀" in deltas  # emitted in one piece, once its last byte arrived
    assert "".join(deltas) == "cats 😀!"


def test_incremental_decoder_invalid_and_unfinished_bytes(tiny_tok: Tokenizer) -> None:
    byte = {int(tiny_tok.id_to_piece(i)[3:5], 16): i for i in range(tiny_tok.vocab_size) if tiny_tok.is_byte(i)}
    a = tiny_tok.encode("a", bos=False)
    # A stray continuation byte, then an unfinished 4-byte sequence cut off by ordinary text,
    # then an unfinished one at the very end (only flush emits it).
    ids = [byte[0x80], *a, byte[0xF0], byte[0x9F], *a, byte[0xE2], byte[0x82]]
    dec = IncrementalDecoder(tiny_tok)
    deltas = [dec.push([i]) for i in ids]
    assert deltas[-2:] == ["", ""]
    deltas.append(dec.flush())
    assert "".join(deltas) == tiny_tok.decode(ids)
    with pytest.raises(ValueError, match="growing"):
        dec.step(ids[:2])


# --------------------------------------------------------------------------------------------------
# The real Gemma 3 tokenizer (tests/conftest.py's gemma fixture)
# --------------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_real_incremental_decoder(gemma: Tokenizer) -> None:
    text = "Shaking face 🫨, goose 🪿, 한국 and 😀."
    ids = gemma.encode(text)
    assert sum(gemma.is_byte(i) for i in ids) == 8  # 🫨 and 🪿 are byte-fallback pieces
    deltas = _stream(gemma, ids)
    assert "".join(deltas) == gemma.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "🫨" in deltas and "🪿" in deltas
