"""Arithmetic word problems generated with their answers: the ground-truth task of the RLHF pipeline
(benchmarks/rl_pipeline.py), where a program knows whether an answer is right.

    problems(n, seed, split="train")     -> [{"prompt": ..., "answer": 42, "working": "17 + 25 = 42"}]
    verify(prompt, completion, answer)   -> 1.0 when the completion's final number is the answer, else 0.0
    `--verifier opengemma.data.arithmetic:verify` in recipes/rlhf.py (the records' `answer` field is passed in)

Problems: two-digit addition and subtraction in a sentence (someone has some objects, gains or loses some), some
with a second step. Splits never share an (operands, operation) triple: the held-out numbers are never trained on
(a triple's split is a hash of it). The answer format taught by SFT is "<working>. The answer is <n>."; `verify`
reads the last integer of the completion, so any format ending with the number counts (and an answer that states
several numbers is judged by its last one, the conventional final-answer rule of GSM8K-style graders).
"""

from __future__ import annotations

import random
import re
import zlib

from .sft_tasks import NAMES, OBJECTS

_NUMBER = re.compile(r"-?\d+")


def _split_of(key: tuple) -> str:
    return "test" if zlib.crc32(repr(key).encode()) % 5 == 0 else "train"  # a fifth of the triples held out


def problem(rng: random.Random) -> dict:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        text = f"{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now?"
        answer, working, key = a + b, f"{a} + {b} = {a + b}", (a, b, "+")
    else:
        a, b = max(a, b), min(a, b)
        text = f"{name} has {a} {obj} and gives away {b}. How many {obj} does {name} have left?"
        answer, working, key = a - b, f"{a} - {b} = {a - b}", (a, b, "-")
    if rng.random() < 0.3:  # a second step
        c = rng.randint(2, 9)
        text = text[: text.rindex(".") + 1] + f" Then {name} finds {c} more. How many {obj} are there in the end?"
        working += f", {answer} + {c} = {answer + c}"
        answer += c
        key = key + (c,)
    return {"prompt": text, "answer": answer, "working": working, "key": repr(key)}


def problems(n: int, seed: int, split: str = "train") -> list[dict]:
    """n distinct problems of one split ("train" or "test"), deterministic for a seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        p = problem(rng)
        if p["key"] in seen or _split_of(p["key"]) != split:
            continue
        seen.add(p["key"])
        out.append(p)
    return out


def answer_text(p: dict) -> str:
    return f"{p['working']}. The answer is {p['answer']}."


def final_number(text: str) -> int | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


def verify(prompt: str, completion: str, answer: int | str = None, **fields) -> float:
    """1.0 when the completion's last integer equals `answer`, else 0.0."""
    if answer is None:
        raise ValueError("verify needs the record's `answer`")
    return float(final_number(completion) == int(answer))
