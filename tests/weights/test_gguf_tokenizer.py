"""The tokenizer's GGUF form (opengemma/weights/gguf_tokenizer.py): a SentencePiece model rebuilt from a file
written the way llama.cpp writes Gemma's vocabulary equals the original (pieces, types, scores, encodings),
other vocabularies are refused, and the real Gemma 3 GGUF's rebuild is byte-identical to Google's model."""

from __future__ import annotations

import hashlib
import types

import pytest
from helpers import TINY_TEXTS, tiny_sentencepiece
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from opengemma.tokenizer import Tokenizer
from opengemma.weights.gguf_tokenizer import sentencepiece_model_from_gguf

Piece = sp_pb2.ModelProto.SentencePiece


@pytest.fixture(scope="module")
def tiny_tok() -> Tokenizer:
    return Tokenizer(tiny_sentencepiece())


# --------------------------------------------------------------------------------------------------
# GGUF rebuild on a synthetic file written the way llama.cpp writes Gemma's vocabulary
# --------------------------------------------------------------------------------------------------


def _write_llamacpp_style_gguf(path, proto: sp_pb2.ModelProto, tokenizer_model: str = "llama") -> None:
    gguf = pytest.importorskip("gguf")
    tokens, scores, toktypes = [], [], []
    for p in proto.pieces:
        if p.type == Piece.NORMAL or p.type == Piece.BYTE:
            tokens.append(p.piece)
            scores.append(p.score)
            toktypes.append(int(p.type))
        else:  # llama.cpp: specials become CONTROL (user-defined "▁" spelled as spaces), score -1000
            is_spaces = set(p.piece) == {"\u2581"}
            tokens.append(p.piece.replace("\u2581", " "))
            scores.append(-1000.0)
            toktypes.append(4 if (is_spaces or p.piece.startswith("\n")) else 3)
    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    t = proto.trainer_spec
    w.add_bos_token_id(t.bos_id)
    w.add_eos_token_id(t.eos_id)
    w.add_unk_token_id(t.unk_id)
    w.add_pad_token_id(t.pad_id)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_from_gguf_synthetic(tiny_tok: Tokenizer, tmp_path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    original = tiny_tok.model_proto()
    _write_llamacpp_style_gguf(path, original)
    rebuilt_tok = Tokenizer(sentencepiece_model_from_gguf(path))
    rebuilt = rebuilt_tok.model_proto()
    assert len(rebuilt.pieces) == len(original.pieces)
    for a, b in zip(rebuilt.pieces, original.pieces):
        assert (a.piece, a.type, a.score) == (b.piece, b.type, b.score)
    for text in TINY_TEXTS:
        assert rebuilt_tok.encode(text) == tiny_tok.encode(text)
    assert (rebuilt_tok.pad_id, rebuilt_tok.eos_id, rebuilt_tok.bos_id, rebuilt_tok.unk_id) == (0, 1, 2, 3)

    # A reader object works too, and so does an old gguf whose fields lack .contents().
    reader = gguf.GGUFReader(str(path))
    assert Tokenizer(sentencepiece_model_from_gguf(reader)).model_proto_bytes == rebuilt_tok.model_proto_bytes

    class OldReader:
        fields = {k: types.SimpleNamespace(parts=f.parts, data=f.data, types=f.types) for k, f in reader.fields.items()}

    assert sentencepiece_model_from_gguf(OldReader()) == rebuilt_tok.model_proto_bytes


def test_from_gguf_rejects_other_vocabularies(tiny_tok: Tokenizer, tmp_path) -> None:
    path = tmp_path / "bpe.gguf"
    _write_llamacpp_style_gguf(path, tiny_tok.model_proto(), tokenizer_model="gpt2")
    with pytest.raises(ValueError, match="gpt2"):
        Tokenizer(sentencepiece_model_from_gguf(path))


# --------------------------------------------------------------------------------------------------
# The real Gemma 3 tokenizer (tests/conftest.py's gemma fixture)
# --------------------------------------------------------------------------------------------------

# sha256 of Google's Gemma 3 tokenizer.model (4,689,074 bytes; the one shipped with every Gemma 3
# checkpoint, e.g. in EmbeddingGemma 300M, see docs/ASSETS.md).
GEMMA3_TOKENIZER_SHA256 = "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c"


@pytest.mark.real_model
def test_real_rebuild_is_googles_tokenizer_model(gemma: Tokenizer) -> None:
    assert hashlib.sha256(gemma.model_proto_bytes).hexdigest() == GEMMA3_TOKENIZER_SHA256
    proto = gemma.model_proto()
    kinds = [p.type for p in proto.pieces]
    assert len(kinds) == gemma.vocab_size == 262144
    assert [i for i, k in enumerate(kinds) if k == Piece.CONTROL] == [0, 1, 2]
    assert [i for i, k in enumerate(kinds) if k == Piece.UNKNOWN] == [3]
    assert kinds.count(Piece.BYTE) == 256 and kinds.count(Piece.USER_DEFINED) == 6410
    assert proto.pieces[138].piece == "\u2581\u2581" and proto.pieces[138].type == Piece.USER_DEFINED
    assert gemma.piece_to_id("<mask>") == 4 and proto.pieces[4].type == Piece.USER_DEFINED
