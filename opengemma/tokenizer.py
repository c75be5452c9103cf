"""Gemma's SentencePiece tokenizer and its chat format.

The model works on ids only; text <-> ids lives here:

* ``Tokenizer`` wraps ``sentencepiece.SentencePieceProcessor`` (a ``tokenizer.model`` file, or the
  same model rebuilt from a GGUF file's metadata: ``Tokenizer(weights.gguf_tokenizer.
  sentencepiece_model_from_gguf(path))``).
* ``render_chat`` / ``encode_chat`` write Gemma's dialogue format, the latter with a loss mask.

Streaming (ids -> text deltas) is in streaming.py.

Gemma's format has no system role::

    <bos><start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n{answer}<end_of_turn>\n

Note that SentencePiece always recognizes user-defined pieces such as ``<start_of_turn>`` inside
ordinary text (Gemma's own tokenizer does the same), while the control pieces ``<bos>``, ``<eos>``
and ``<pad>`` are never produced from text unless ``encode(..., allow_special=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

__all__ = ["Tokenizer", "Message"]

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant" | "model", "content": str}


class Tokenizer:
    """A SentencePiece tokenizer with Gemma's special ids and chat format.

    ``Tokenizer(model)`` takes the serialized ``ModelProto`` bytes or a path to a ``tokenizer.model``.
    """

    def __init__(self, model: bytes | bytearray | str | os.PathLike[str], *, name: str | None = None):
        if isinstance(model, (bytes, bytearray)):
            data, self.path = bytes(model), None
            where = name or "<tokenizer model bytes>"
        else:
            self.path = os.fspath(model)
            where = self.path
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise FileNotFoundError(f"tokenizer model not found: {self.path}") from None
        self._init(data, where)

    def _init(self, data: bytes, where: str) -> None:
        try:
            sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as e:  # sentencepiece reports parse errors as RuntimeError("INTERNAL: ...")
            raise ValueError(f"not a valid SentencePiece model: {where} ({str(e).strip()})") from None
        # An empty message parses fine and yields an empty model: refuse it too.
        if sp.get_piece_size() == 0:
            raise ValueError(f"not a valid SentencePiece model (no pieces): {where}")
        self._sp = sp
        self._data = data
        self._byte_value: dict[int, int] | None = None  # id -> byte, built on first use

        def opt(i: int) -> int | None:  # sentencepiece says -1 for "no such id"
            return i if i >= 0 else None

        self.bos_id: int | None = opt(sp.bos_id())
        self.eos_id: int | None = opt(sp.eos_id())
        self.pad_id: int | None = opt(sp.pad_id())
        self.unk_id: int | None = opt(sp.unk_id())
        self.start_of_turn_id: int | None = self.piece_to_id("<start_of_turn>")
        self.end_of_turn_id: int | None = self.piece_to_id("<end_of_turn>")
        # Generation ends at <eos> (pretrained models) or <end_of_turn> (instruction-tuned models).
        self.stop_ids: tuple[int, ...] = tuple(i for i in (self.eos_id, self.end_of_turn_id) if i is not None)

    # --- construction / serialization ---------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        return cls(path)

    @property
    def model_proto_bytes(self) -> bytes:
        """The serialized ``ModelProto``: exactly the bytes of a ``tokenizer.model`` file."""
        return self._data

    def model_proto(self) -> sp_pb2.ModelProto:
        """A freshly parsed copy of the ``ModelProto`` (pieces, scores, types, specs)."""
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(self._data)
        return proto

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a ``tokenizer.model`` file."""
        with open(path, "wb") as f:
            f.write(self._data)

    def __getstate__(self) -> dict[str, Any]:  # SentencePieceProcessor itself does not pickle
        return {"data": self._data, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._init(state["data"], self.path or "<tokenizer model bytes>")

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path!r})"

    # --- vocabulary ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def id_to_piece(self, id: int) -> str:
        self._check_id(id)
        return self._sp.id_to_piece(id)

    def piece_to_id(self, piece: str) -> int | None:
        """The id of ``piece``, or None if it is not in the vocabulary."""
        i = self._sp.piece_to_id(piece)
        # sentencepiece maps unknown pieces to unk_id; tell those apart from "<unk>" itself.
        return i if self._sp.id_to_piece(i) == piece else None

    def is_control(self, id: int) -> bool:
        return self._sp.is_control(id)

    def is_byte(self, id: int) -> bool:
        return self._sp.is_byte(id)

    def _check_id(self, id: int) -> None:
        if not 0 <= id < self.vocab_size:
            raise ValueError(f"token id {id} out of range [0, {self.vocab_size})")

    # --- encode / decode ---------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = True, eos: bool = False, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``, with ``<bos>`` first by default (Gemma needs it, see PITFALLS 5).

        ``allow_special=True`` also turns the text of control pieces (``<bos>``, ``<eos>``,
        ``<pad>``) into their ids, e.g. to re-tokenize the output of ``render_chat``.
        """
        if allow_special:
            ids = self._encode_with_control(text)
        else:
            ids = self._sp.encode(text)
        return self._wrap(ids, bos, eos)

    def encode_batch(
        self, texts: Sequence[str], bos: bool = True, eos: bool = False, *, num_threads: int = -1
    ) -> list[list[int]]:
        """``encode`` over many texts; sentencepiece spreads the work over threads."""
        batch = self._sp.encode(list(texts), num_threads=num_threads)
        return [self._wrap(ids, bos, eos) for ids in batch]

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos:
            if self.bos_id is None:
                raise ValueError("this tokenizer has no <bos> piece")
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise ValueError("this tokenizer has no <eos> piece")
            ids = [*ids, self.eos_id]
        return ids

    def _encode_with_control(self, text: str) -> list[int]:
        control_ids = (self.bos_id, self.eos_id, self.pad_id)
        controls = {self._sp.id_to_piece(i): i for i in control_ids if i is not None}
        ids: list[int] = []
        # re.split with a capturing group alternates plain text and control-piece matches.
        for k, part in enumerate(re.split("(" + "|".join(map(re.escape, controls)) + ")", text)):
            ids += [controls[part]] if k % 2 else self._sp.encode(part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``. Control pieces (bos/eos/pad) vanish; user-defined ones such as
        ``<start_of_turn>`` keep their text; byte pieces are joined back into UTF-8."""
        ids = [int(i) for i in ids]  # also accepts numpy / torch integers
        if ids:
            self._check_id(min(ids))
            self._check_id(max(ids))
        return self._sp.decode(ids)

    def byte_value(self, id: int) -> int | None:
        """The byte value of a byte-fallback piece ``<0xAB>``, else None."""
        if self._byte_value is None:
            sp = self._sp
            self._byte_value = {i: int(sp.id_to_piece(i)[3:5], 16) for i in range(self.vocab_size) if sp.is_byte(i)}
        return self._byte_value.get(id)

    # --- chat ----------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The conversation in Gemma's dialogue format, starting with ``<bos>``."""
        turns = _chat_turns(messages, add_generation_prompt)
        sot, eot = self._turn_pieces()
        text = self._sp.id_to_piece(self._require(self.bos_id, "<bos>"))
        for role, content in turns:
            text += f"{sot}{role}\n{content}{eot}\n"
        if add_generation_prompt:
            text += f"{sot}model\n"
        return text

    def encode_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> tuple[list[int], list[int]]:
        """Ids of ``render_chat(messages)`` and a loss mask of the same length.

        The mask is 1 on the tokens of model answers and their closing ``<end_of_turn>``, 0 on
        everything else (``<bos>``, user turns, the ``<start_of_turn>model\\n`` headers, and the
        ``\\n`` after each ``<end_of_turn>``).

        Special ids are inserted directly and the text between them is encoded segment by segment,
        which equals ``encode(render_chat(messages), bos=False, allow_special=True)``: contents are
        trimmed (as Gemma's templates do), so no content starts with a newline that could merge with
        the header's "\\n".
        """
        turns = _chat_turns(messages, add_generation_prompt)
        sot = self._require(self.start_of_turn_id, "<start_of_turn>")
        eot = self._require(self.end_of_turn_id, "<end_of_turn>")
        newline = self._sp.encode("\n")
        ids = [self._require(self.bos_id, "<bos>")]
        mask = [0]
        for role, content in turns:
            header = [sot, *self._sp.encode(f"{role}\n")]
            body = [*self._sp.encode(content), eot]
            ids += header + body + newline
            learn = 1 if role == "model" else 0
            mask += [0] * len(header) + [learn] * len(body) + [0] * len(newline)
        if add_generation_prompt:
            header = [sot, *self._sp.encode("model\n")]
            ids += header
            mask += [0] * len(header)
        return ids, mask

    def _turn_pieces(self) -> tuple[str, str]:
        sot = self._require(self.start_of_turn_id, "<start_of_turn>")
        eot = self._require(self.end_of_turn_id, "<end_of_turn>")
        return self._sp.id_to_piece(sot), self._sp.id_to_piece(eot)

    @staticmethod
    def _require(id: int | None, piece: str) -> int:
        if id is None:
            raise ValueError(f"this tokenizer has no {piece} piece, which the chat format needs")
        return id


def _chat_turns(messages: Sequence[Message], add_generation_prompt: bool) -> list[tuple[str, str]]:
    """Validate messages and return (role, content) turns with role "user" or "model".

    Gemma has no system role: like Gemma 3's official chat template, a leading system message
    is folded into the first user turn as ``system + "\\n\\n" + user``.
    """
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
        role, content = m["role"], m["content"]
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a str, got {type(content).__name__}")
        if role == "assistant":
            role = "model"
        if role not in ("system", "user", "model"):
            raise ValueError(f"message {i}: unknown role {role!r} (expected system, user, assistant or model)")
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message is only allowed as the first message")
        # Gemma's official templates trim user/model content (`| trim`), not the system prefix.
        turns.append((role, content if role == "system" else content.strip()))
    if not turns:
        raise ValueError("no messages")
    if turns[0][0] == "system":
        if len(turns) < 2 or turns[1][0] != "user":
            raise ValueError("a system message must be followed by a user message (it is folded into it)")
        turns = [("user", turns[0][1] + "\n\n" + turns[1][1]), *turns[2:]]
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "model"
        if role != expected:
            raise ValueError(
                f"roles must alternate user/model starting with user (after folding a system message); "
                f"turn {i} is {role!r}, expected {expected!r}"
            )
    if add_generation_prompt and turns[-1][0] != "user":
        raise ValueError("add_generation_prompt=True needs the conversation to end with a user message")
    return turns
