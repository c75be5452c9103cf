"""Gemma's SentencePiece tokenizer <-> a GGUF file's tokenizer.ggml.* metadata, both directions: the model
proto rebuilt byte for byte from a file llama.cpp's converter wrote (sentencepiece_model_from_gguf), and the
metadata written for a tokenizer (add_tokenizer, used by gguf.save_gguf). Bytes in, bytes out: the
tokenizer itself is opengemma.tokenizer.Tokenizer(these bytes)."""

from __future__ import annotations

import os
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

_Piece = sp_pb2.ModelProto.SentencePiece
_CONTROL_PIECE_NAMES = ("pad", "eos", "bos")

# llama.cpp's token types (gguf.TokenType) happen to share SentencePiece's numbering.
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = range(1, 7)


def _gguf_name(reader: Any) -> str:
    if isinstance(reader, (str, os.PathLike)):
        return os.fspath(reader)
    return "GGUF reader"


def _gguf_value(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    if hasattr(field, "contents"):  # gguf >= 0.11
        return field.contents()
    # Older gguf: scalars and arrays live in field.parts, indexed by field.data.
    vals = [field.parts[i] for i in field.data]
    if field.types[-1] == 8:  # GGUFValueType.STRING
        vals = [bytes(v).decode("utf-8") for v in vals]
    else:
        vals = [v.tolist()[0] for v in vals]
    return vals if field.types[0] == 9 else vals[0]  # 9: GGUFValueType.ARRAY


def sentencepiece_model_from_gguf(reader: Any) -> bytes:
    """Serialized SentencePiece ``ModelProto`` rebuilt from a GGUF file's tokenizer metadata.

    For Gemma 3 the result is byte-identical to Google's ``tokenizer.model`` (tests check its
    sha256). llama.cpp's converter keeps pieces, order and the scores of normal pieces, but
    rewrites the special pieces, which this undoes:

    * user-defined pieces had "\u2581" replaced by " " ("\u2581\u2581" came out as two spaces);
      SentencePiece matches them after escaping whitespace to "\u2581", so put it back;
    * every added token flagged special was typed CONTROL (``<start_of_turn>``, ``<mask>``,
      ``<unusedN>``, ...). SentencePiece never matches control pieces in text, so
      ``<start_of_turn>`` typed by a user or a chat template would be spelled out character by
      character. Only pad, eos and bos are control pieces in Gemma; ``<unk>`` is the unknown piece;
    * their scores became -1000; Google's file has 0 for every non-normal piece (BPE never uses
      the scores of non-normal pieces, but identical bytes are easy to check).
    """
    if isinstance(reader, (str, os.PathLike)):
        import gguf  # lazy: only needed here

        reader = gguf.GGUFReader(reader)
    where = _gguf_name(reader)
    model = _gguf_value(reader, "tokenizer.ggml.model")
    if model != "llama":  # llama.cpp's name for SentencePiece vocabularies
        raise ValueError(f"{where}: tokenizer.ggml.model is {model!r}, not a SentencePiece ('llama') vocabulary")
    tokens = _gguf_value(reader, "tokenizer.ggml.tokens")
    scores = _gguf_value(reader, "tokenizer.ggml.scores")
    token_types = _gguf_value(reader, "tokenizer.ggml.token_type")
    arrays = (tokens, scores, token_types)
    if any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError(f"{where}: missing or inconsistent tokenizer.ggml.tokens/scores/token_type")

    special = {
        name: _gguf_value(reader, f"tokenizer.ggml.{key}_token_id")
        for name, key in (("pad", "padding"), ("eos", "eos"), ("bos", "bos"), ("unk", "unknown"))
    }
    if special["unk"] is None:
        special["unk"] = next((i for i, t in enumerate(token_types) if t == _GGUF_UNKNOWN), None)
    control_ids = {special[n] for n in _CONTROL_PIECE_NAMES} - {None}

    proto = sp_pb2.ModelProto()
    for i, (piece, score, gguf_type) in enumerate(zip(tokens, scores, token_types)):
        p = proto.pieces.add()
        if gguf_type == _GGUF_NORMAL and i not in control_ids and i != special["unk"]:
            p.piece, p.score = piece, float(score)  # type left unset: NORMAL is the default
            continue
        p.score = 0.0
        if i in control_ids:
            p.piece, p.type = piece, _Piece.CONTROL
        elif i == special["unk"] or gguf_type == _GGUF_UNKNOWN:
            p.piece, p.type = piece, _Piece.UNKNOWN
        elif gguf_type == _GGUF_BYTE:
            p.piece, p.type = piece, _Piece.BYTE
        elif gguf_type == _GGUF_UNUSED:
            p.piece, p.type = piece, _Piece.UNUSED
        else:  # CONTROL or USER_DEFINED in the GGUF: Gemma's remaining specials are user-defined
            p.piece, p.type = piece.replace(" ", "\u2581"), _Piece.USER_DEFINED

    t = proto.trainer_spec
    t.model_type = sp_pb2.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    # Training-only fields, set as in Google's Gemma 3 file so the bytes match; encoding ignores them.
    t.input_format = "tsv"
    t.split_by_unicode_script = True
    t.split_by_whitespace = False
    t.split_by_number = True
    t.split_digits = True
    # These two change encoding: runs of spaces become pieces, unknown characters become bytes.
    t.allow_whitespace_only_pieces = True
    t.byte_fallback = True
    t.unk_id = special["unk"] if special["unk"] is not None else -1
    t.bos_id = special["bos"] if special["bos"] is not None else -1
    t.eos_id = special["eos"] if special["eos"] is not None else -1
    t.pad_id = special["pad"] if special["pad"] is not None else -1
    # sentencepiece finds the special ids by these piece names. Google's file names bos and eos
    # (the defaults are "<s>", "</s>"); pad and unk are named only if not "<pad>", "<unk>".
    for name in ("bos", "eos", "pad", "unk"):
        i = special[name]
        attr = f"{name}_piece"
        if i is not None and (name in ("bos", "eos") or proto.pieces[i].piece != getattr(t, attr)):
            setattr(t, attr, proto.pieces[i].piece)
    t.seed_sentencepieces_file = ""

    n = proto.normalizer_spec
    n.name = "identity"
    n.precompiled_charsmap = b""
    n.add_dummy_prefix = bool(_gguf_value(reader, "tokenizer.ggml.add_space_prefix", False))
    n.remove_extra_whitespaces = False  # escape_whitespaces keeps its default, True
    # Google's file also sets NormalizerSpec field 7 (false), a field open-source sentencepiece
    # does not know and ignores; add it as an unknown field only so the bytes match.
    n.MergeFromString(b"\x38\x00")
    return proto.SerializeToString()


def add_tokenizer(w, model_proto: bytes, bos_id: int, eos_id: int, pad_id: int) -> None:
    """Write a SentencePiece model (its serialized ModelProto) as a GGUFWriter's tokenizer metadata, as
    llama.cpp's converter does for Gemma; sentencepiece_model_from_gguf reads it back to the same bytes."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([int(p.type) for p in proto.pieces])  # same numbering as llama.cpp's token types
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.add_unk_token_id(proto.trainer_spec.unk_id)
    w.add_pad_token_id(pad_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
