"""Preference pairs in JSONL -> Gemma's chat format, for the reward model and DPO; prompts for RLHF.

Records, in the shapes TRL's preference trainers take:
    {"prompt": "...", "chosen": "...", "rejected": "..."}                       strings: one user turn, one answer
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}        conversational, explicit prompt
    {"chosen": [messages], "rejected": [messages]}                              implicit prompt: the shared turns
                                                                                before the last assistant turn
An optional numeric "margin" (TRL's RewardTrainer) is kept. A malformed line is an error naming the file and line.
Both sides are rendered by `Tokenizer.encode_chat` over the whole conversation (so the reward model reads the
answer after its prompt, in the chat format the policy writes) with the mask of the final answer's tokens and its
`<end_of_turn>` (what DPO's sequence log-probabilities sum over; earlier assistant turns belong to the prompt).

RLHF prompts: {"prompt": "..."} or {"messages": [...]} (the conversation so far, ending with a user turn), any
other fields kept for the verifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sft import DataError, read_jsonl, record_messages, split_holdout


def _side(record: dict, key: str, where: str) -> list[dict]:
    v = record[key]
    if isinstance(v, str):
        return [{"role": "assistant", "content": v}]
    if isinstance(v, list):
        return v
    raise DataError(f"{where}: '{key}' must be a string or a list of messages, got {type(v).__name__}")


def pair_messages(record: dict, where: str) -> tuple[list[dict], list[dict]]:
    """(chosen conversation, rejected conversation) of one record, each checked as a conversation, or DataError."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise DataError(f"{where}: a preference record needs 'chosen' and 'rejected' (keys: {sorted(record)})")
    chosen, rejected = _side(record, "chosen", where), _side(record, "rejected", where)
    if "prompt" in record:
        p = record["prompt"]
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else p
        if not isinstance(prompt, list):
            raise DataError(f"{where}: 'prompt' must be a string or a list of messages")
        chosen, rejected = prompt + chosen, prompt + rejected
    elif isinstance(record["chosen"], str):
        raise DataError(f"{where}: string answers need a 'prompt'")
    if "margin" in record and not isinstance(record["margin"], (int, float)):
        raise DataError(f"{where}: 'margin' must be a number")
    out = (record_messages({"messages": chosen}, where), record_messages({"messages": rejected}, where))
    if out[0] == out[1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same conversation")
    return out


def read_pairs(path) -> list[dict]:
    """Every record of a preference JSONL file, checked; errors name the line."""
    return read_jsonl(path, check=pair_messages)


@dataclass
class Pair:
    chosen: np.ndarray  # (Lc,) int64 ids, <bos> first
    rejected: np.ndarray  # (Lr,)
    chosen_mask: np.ndarray  # (Lc,) int8: 1 on the answer's tokens and its <end_of_turn>
    rejected_mask: np.ndarray
    margin: float = 0.0


def encode_pairs(records: list[dict], tokenizer, seq_len: int, source: str = "data") -> tuple[list[Pair], dict]:
    """Ids and answer masks of both sides, each cut to seq_len tokens (counted); a pair whose either side has no
    answer token left is dropped (counted)."""
    out, truncated, dropped = [], 0, 0
    for r in records:
        where = f"{source}:{r.get('_line', '?')}"
        sides = []
        for messages in pair_messages(r, where):
            try:
                ids, mask = tokenizer.encode_chat(messages, add_generation_prompt=False)
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
            mask = last_answer(mask)
            if len(ids) > seq_len:
                ids, mask, truncated = ids[:seq_len], mask[:seq_len], truncated + 1
            sides.append((np.asarray(ids, np.int64), np.asarray(mask, np.int8)))
        if any(m.sum() == 0 for _, m in sides):
            dropped += 1
            continue
        (c, cm), (rj, rm) = sides
        out.append(Pair(c, rj, cm, rm, float(r.get("margin", 0.0))))
    return out, {"pairs": len(out), "truncated": truncated, "dropped": dropped}


def last_answer(mask: list[int]) -> list[int]:
    """The mask of the last contiguous run of learned tokens only (the final answer and its <end_of_turn>)."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return [0] * start + mask[start:end] + [0] * (len(mask) - end)


def answer_span(mask: np.ndarray) -> tuple[int, int]:
    """(first, end) positions of a side's answer tokens."""
    idx = np.flatnonzero(mask)
    return int(idx[0]), int(idx[-1]) + 1


def collate(pairs: list[Pair], pad_id: int) -> dict[str, np.ndarray]:
    """A batch of B pairs as 2B right-padded rows, the chosen sides first: tokens (2B, T), lengths (2B,),
    mask (2B, T) (answer tokens), margin (B,)."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    masks = [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs]
    T = max(len(s) for s in seqs)
    tokens = np.full((len(seqs), T), pad_id, np.int64)
    mask = np.zeros((len(seqs), T), np.int8)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        tokens[i, : len(s)], mask[i, : len(m)] = s, m
    return {
        "tokens": tokens,
        "lengths": np.array([len(s) for s in seqs], np.int64),
        "mask": mask,
        "margin": np.array([p.margin for p in pairs], np.float32),
    }


class Batches:
    """Batches of items (pairs, prompts) for a run: a seeded shuffle per epoch; its position (epoch, index) is its
    state, so a resumed run continues exactly. Ranks take interleaved slices of each global batch."""

    def __init__(self, pairs: list, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must divide among {world} ranks")
        if len(pairs) < batch_size:
            raise ValueError(f"{len(pairs)} items are fewer than one batch of {batch_size}")
        self.pairs, self.batch_size, self.seed, self.rank, self.world = pairs, batch_size, seed, rank, world
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.pairs) // self.batch_size

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def next_batch(self) -> list:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order(self.epoch)[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return [self.pairs[i] for i in order[self.rank :: self.world]]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def prompt_messages(record: dict, where: str) -> list[dict]:
    """An RLHF prompt record's conversation (ending with a user turn), or DataError."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("prompt"), str):
        messages = [{"role": "user", "content": record["prompt"]}]
    elif isinstance(record.get("messages"), list) and record["messages"]:
        messages = record["messages"]
    else:
        raise DataError(f"{where}: a prompt record needs 'prompt' (a string) or 'messages' (keys: {sorted(record)})")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with string 'role' and 'content', got {m!r:.80}")
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user turn (the model answers it)")
    return messages


def read_prompts(path) -> list[dict]:
    """Every record of an RLHF prompt file, checked; errors name the line."""
    return read_jsonl(path, check=prompt_messages)


def read_sets(read, data, val_data, val_fraction: float, val_max: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training, held-out) records of a recipe: `read` (read_pairs or read_prompts) of `data`, and of `val_data`
    when given, else a seeded split of data's (data/sft.py's split_holdout). Bad records fail here, naming the line,
    before any model is loaded."""
    records = read(data)
    held = read(val_data) if val_data else []
    if not held:
        records, held = split_holdout(records, val_fraction, val_max, seed)
    return records, held
