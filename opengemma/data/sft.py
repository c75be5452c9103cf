"""Supervised fine-tuning data: conversations in JSONL -> Gemma's chat format with a loss mask -> packed rows.

Records, one JSON object per line, in the shapes TRL and most instruction datasets use:
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}     (any number of turns)
    {"prompt": "...", "completion": "..."}                                              (one exchange)
    {"prompt": [messages...], "completion": [messages...]}                              (conversational form)
Other fields are kept with the record (a verifier's or an evaluation's) and ignored here. A malformed line is an
error naming the file and line. Each conversation is rendered by `Tokenizer.encode_chat` (the system turn folded
into the first user turn, as Gemma's template does) and its mask says what is learned: the model's turns and their
closing `<end_of_turn>` (so the model learns to stop), never the user's words, the headers or `<bos>`.

Packing: conversations are short next to a row (a few hundred tokens against 1-2k), so rows hold several, each
its own document (`segments`: the model's document mask and positions restart per conversation, as pretraining's
packed rows), which changes no conversation's loss (tests/model/test_packing.py) and wastes few tokens on padding.
Each epoch shuffles the conversations (seeded) and places each into the first row with room (first fit), rows
in the order they were opened; the tail of a row is padding (ignored targets). A conversation longer than a row is
cut to the row (counted; dropped if nothing learnable is left). The loader's position (epoch, row) is its state:
resume is exact. Rows of a step are split over micro-batches and ranks exactly as data/loader.py does.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .loader import IGNORE, Batch


class DataError(ValueError):
    """A malformed SFT record; the message names the file and line."""


def record_messages(record: dict, where: str) -> list[dict]:
    """The conversation of one record as a list of {"role", "content"} messages, or DataError."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "prompt" in record and "completion" in record:
        p, c = record["prompt"], record["completion"]
        if isinstance(p, str) and isinstance(c, str):
            messages = [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
        elif isinstance(p, list) and isinstance(c, list):
            messages = p + c
        else:
            raise DataError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists")
    else:
        raise DataError(f"{where}: a record needs 'messages', or 'prompt' and 'completion' (keys: {sorted(record)})")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with string 'role' and 'content', got {m!r:.80}")
    if not any(m["role"] in ("assistant", "model") for m in messages):
        raise DataError(f"{where}: no assistant turn: nothing to learn")
    return messages


def read_jsonl(path: str | Path, check=None) -> list[dict]:
    """Every record of a JSONL file (blank lines skipped), each checked by `check(record, "file:line")` (default:
    record_messages, a conversation); errors name the line."""
    check = check or record_messages
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            check(record, f"{path}:{n}")
            record["_line"] = n
            records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


@dataclass
class Example:
    ids: np.ndarray  # (L,) int64, <bos> first
    mask: np.ndarray  # (L,) int8: 1 where the token is learned (model turns and their <end_of_turn>)


def encode(records: list[dict], tokenizer, seq_len: int, source: str = "data") -> tuple[list[Example], dict]:
    """Chat-format ids and masks; conversations longer than seq_len + 1 tokens are cut (they occupy seq_len input
    positions). Returns the examples and counts (examples, truncated, dropped, learned tokens)."""
    out, truncated, dropped = [], 0, 0
    for r in records:
        where = f"{source}:{r.get('_line', '?')}"
        try:
            ids, mask = tokenizer.encode_chat(record_messages(r, where), add_generation_prompt=False)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        if len(ids) > seq_len + 1:
            ids, mask, truncated = ids[: seq_len + 1], mask[: seq_len + 1], truncated + 1
        if sum(mask[1:]) == 0:
            dropped += 1
            continue
        out.append(Example(np.asarray(ids, np.int64), np.asarray(mask, np.int8)))
    stats = {
        "examples": len(out),
        "truncated": truncated,
        "dropped": dropped,
        "learned_tokens": int(sum(int(e.mask[1:].sum()) for e in out)),
        "tokens": int(sum(len(e.ids) for e in out)),
    }
    return out, stats


def split_holdout(records: list[dict], fraction: float, max_items: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded `fraction` of the records (at least 1 when there are 2+, at most max_items)."""
    n = len(records)
    k = min(max_items, max(1, round(fraction * n))) if n >= 2 and fraction > 0 else 0
    held = set(np.random.default_rng([seed, 3]).choice(n, size=k, replace=False).tolist()) if k else set()
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def pack(lengths: list[int], order: np.ndarray, seq_len: int) -> list[list[int]]:
    """First-fit packing: each example (in `order`; its length = input positions it takes) goes into the first row
    with room. Rows as lists of example indices, in the order they were opened."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order.tolist():
        need = lengths[i]
        for r, free in enumerate(room):
            if free >= need:
                rows[r].append(i)
                room[r] -= need
                break
        else:
            rows.append([i])
            room.append(seq_len - need)
    return rows


def make_row(examples: list[Example], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples laid end to end -> inputs, targets, segments (seq_len,): the targets of an example are its next
    tokens where they are learned, else IGNORE; the padding tail is its own segment with ignored targets."""
    inputs = np.full(seq_len, pad_id, np.int64)
    targets = np.full(seq_len, IGNORE, np.int64)
    segments = np.zeros(seq_len, np.int64)
    at = 0
    for doc, e in enumerate(examples):
        n = len(e.ids) - 1
        inputs[at : at + n] = e.ids[:-1]
        targets[at : at + n] = np.where(e.mask[1:] == 1, e.ids[1:], IGNORE)
        segments[at : at + n] = doc
        at += n
    segments[at:] = len(examples)
    return inputs, targets, segments


class SFTLoader:
    """Packed rows of conversations, epoch after epoch (reshuffled each), as global batches split per rank."""

    def __init__(
        self,
        examples: list[Example],
        seq_len: int,
        *,
        batch_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        pad_id: int = 0,
    ):
        if batch_size % (grad_accum * world):
            raise ValueError(
                f"batch_size {batch_size} (the global batch) must divide into grad_accum {grad_accum} x {world} ranks"
            )
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.seq_len, self.pad_id, self.seed = examples, seq_len, pad_id, seed
        self.batch_size, self.grad_accum, self.rank, self.world = batch_size, grad_accum, rank, world
        self.lengths = [len(e.ids) - 1 for e in examples]
        self.epoch, self.row = 0, 0
        self._rows_epoch, self._rows = None, None

    def rows_of(self, epoch: int) -> list[list[int]]:
        if self._rows_epoch != epoch:
            order = np.random.default_rng([self.seed, 4, epoch]).permutation(len(self.examples))
            self._rows, self._rows_epoch = pack(self.lengths, order, self.seq_len), epoch
        return self._rows

    @property
    def rows_per_epoch(self) -> int:
        return len(self.rows_of(0))

    def next_step(self) -> Batch:
        M, per_rank = self.grad_accum, self.batch_size // (self.grad_accum * self.world)
        shape = (M, per_rank, self.seq_len)
        inputs = np.full(shape, self.pad_id, np.int64)
        targets, segments = np.full(shape, IGNORE, np.int64), np.zeros(shape, np.int64)
        n_targets = 0
        for i in range(self.batch_size):
            rows = self.rows_of(self.epoch)
            x, y, seg = make_row([self.examples[j] for j in rows[self.row]], self.seq_len, self.pad_id)
            n_targets += int((y != IGNORE).sum())
            m, j = divmod(i, self.batch_size // M)  # micro-batch, row within it
            r, k = divmod(j, per_rank)
            if r == self.rank:
                inputs[m, k], targets[m, k], segments[m, k] = x, y, seg
            self.row += 1
            if self.row == len(rows):
                self.epoch, self.row = self.epoch + 1, 0
        return Batch(inputs, targets, segments, n_targets, f"epoch {self.epoch}", {})

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "row": self.row, "n_examples": len(self.examples), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n_examples") != len(self.examples) or state.get("seed") != self.seed:
            raise ValueError(
                f"the checkpoint's data ({state.get('n_examples')} examples, seed {state.get('seed')}) is not this "
                f"run's ({len(self.examples)} examples, seed {self.seed}): resume with the same data and seed"
            )
        self.epoch, self.row = state["epoch"], state["row"]


def validation_rows(examples: list[Example], seq_len: int, pad_id: int = 0) -> tuple[np.ndarray, ...]:
    """Held-out conversations packed once (in order, first fit): inputs, targets, segments (R, seq_len)."""
    rows = pack([len(e.ids) - 1 for e in examples], np.arange(len(examples)), seq_len)
    made = [make_row([examples[j] for j in r], seq_len, pad_id) for r in rows]
    return tuple(np.stack(a) for a in zip(*made))


def prompt_of(record: dict) -> list[dict]:
    """A record's conversation up to (not including) its last assistant turn: what a sample generation answers."""
    messages = record_messages(record, "record")
    last = max(i for i, m in enumerate(messages) if m["role"] in ("assistant", "model"))
    return messages[:last]


def data_fingerprint(path: str | Path) -> str:
    """crc32 of a data file's bytes: a resumed run checks it trains on the same data."""
    return f"{zlib.crc32(Path(path).read_bytes()):08x}"
