"""The task kinds. A task is a small file: where its items come from and how one is written as a prompt.

- MultipleChoiceTask: log-likelihood of each choice after the context; accuracy with the usual
  normalizations (raw sum, per token, per character). A list of contexts (one per choice) with a shared
  continuation is WinoGrande-style partial scoring.
- GenerateTask: generate until a stop string, extract the answer, compare (exact match; maj@k by sampling).
- CodeTask: generate programs, run the tests in the sandbox, pass@k with the unbiased estimator.
- PerplexityTask: rolling log-likelihood of documents: token perplexity, word perplexity, bits per byte.

Few-shot prompts: `description` + shots (prompt + answer each) + the item's prompt, joined by
`shot_separator`. Shots come from `fewshot_pool()` (a train/dev split) or, when a task has none, from the
evaluation items themselves, never the item being asked.
"""

from __future__ import annotations

import collections
import math
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class MCItem:
    context: str | list[str]  # the prompt; or one context per choice (partial scoring)
    choices: list[str]  # continuations, each written as it follows the context (e.g. " Paris")
    gold: int | list[int]  # index of the right choice (a list: any of them is right)
    meta: dict = field(default_factory=dict)


@dataclass
class GenItem:
    prompt: str
    answers: list[str]  # acceptable answers (after extraction and normalization)
    target: str = ""  # the worked answer written after the prompt when this item is a shot
    meta: dict = field(default_factory=dict)


@dataclass
class CodeItem:
    task_id: str
    prompt: str  # code to complete (signature + docstring)
    test: str  # test code run after the completion
    entry_point: str | None = None  # HumanEval style: `check(entry_point)` is called after `test`
    solution: str = ""  # reference solution (a shot, and a self-check of the tests)
    meta: dict = field(default_factory=dict)


@dataclass
class TextItem:
    text: str
    meta: dict = field(default_factory=dict)


def binomial_stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def mean_stderr(xs: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


class Task:
    name: str = ""
    kind: str = ""
    description: str = ""  # text before the shots (e.g. MMLU's subject line)
    shot_separator: str = "\n\n"
    default_shots: int = 0

    def items(self) -> list:
        """The evaluation items."""
        raise NotImplementedError

    def fewshot_pool(self) -> list | None:
        """Items to draw shots from (a train/dev split); None: draw from the evaluation items."""
        return None

    def prompt(self, item) -> str:
        raise NotImplementedError

    def answer_text(self, item) -> str:
        """What follows the prompt when the item is a shot."""
        raise NotImplementedError

    def description_for(self, item) -> str:
        return self.description

    def select_shots(self, items: list, index: int, k: int, rng: random.Random) -> list:
        """k shots for items[index]. Default: a random sample from the pool, never the item itself."""
        if k <= 0:
            return []
        pool = self.fewshot_pool()
        if pool is None:
            pool = items[:index] + items[index + 1 :]
        if len(pool) < k:
            raise ValueError(f"{self.name}: {k} shots asked but only {len(pool)} examples to draw from")
        return rng.sample(pool, k)

    def context(self, item, shots: Sequence) -> str:
        parts = [self.prompt(s) + self.answer_text(s) for s in shots] + [self.prompt(item)]
        return self.description_for(item) + self.shot_separator.join(parts)

    def aggregate(self, items: list, records: list[dict]) -> dict[str, Any]:
        """Extra metrics from the per-item records (e.g. BBQ's bias score)."""
        return {}


class MultipleChoiceTask(Task):
    kind = "multiple_choice"

    def prompt(self, item: MCItem) -> str:
        return item.context if isinstance(item.context, str) else item.context[self._gold(item)]

    def answer_text(self, item: MCItem) -> str:
        return item.choices[self._gold(item)]

    def context(self, item: MCItem, shots: Sequence) -> str:
        if isinstance(item.context, str):
            return super().context(item, shots)
        return self._shots_text(shots)  # partial scoring: requests() appends each choice's own context

    def _shots_text(self, shots: Sequence) -> str:
        """Partial scoring: the shots only; each choice's own context is appended to it."""
        text = self.shot_separator.join(self.prompt(s) + self.answer_text(s) for s in shots)
        return self.description + (text + self.shot_separator if text else "")

    @staticmethod
    def _gold(item: MCItem) -> int:
        return item.gold if isinstance(item.gold, int) else item.gold[0]

    def requests(self, item: MCItem, context: str) -> list[tuple[str, str]]:
        if isinstance(item.context, str):
            return [(context, c) for c in item.choices]
        if len(item.context) != len(item.choices):
            raise ValueError(f"{self.name}: {len(item.context)} contexts for {len(item.choices)} choices")
        return [(context + ctx, c) for ctx, c in zip(item.context, item.choices)]

    @staticmethod
    def score(item: MCItem, results: list[tuple[float, bool, int]]) -> dict:
        """Per-item record: the prediction under each normalization and whether it is right."""
        golds = {item.gold} if isinstance(item.gold, int) else set(item.gold)
        lp = [r[0] for r in results]
        per_tok = [r[0] / max(r[2], 1) for r in results]
        per_char = [r[0] / max(len(c), 1) for r, c in zip(results, item.choices)]
        pred = max(range(len(lp)), key=lp.__getitem__)
        rec = {
            "logprobs": lp,
            "pred": pred,
            "acc": float(pred in golds),
            "acc_norm": float(max(range(len(lp)), key=per_char.__getitem__) in golds),
            "acc_tok": float(max(range(len(lp)), key=per_tok.__getitem__) in golds),
        }
        return rec

    metrics = ("acc", "acc_norm", "acc_tok")


class GenerateTask(Task):
    kind = "generate"
    stop: Sequence[str] = ("\n\n",)
    max_new_tokens: int = 256

    def answer_text(self, item: GenItem) -> str:
        return item.target

    def extract(self, text: str) -> str | None:
        """The answer in a generation (default: its first line, stripped)."""
        line = text.strip().split("\n")[0].strip()
        return line or None

    def normalize(self, answer: str) -> str:
        """Lower case, no punctuation, no articles, single spaces (the SQuAD/TriviaQA normalization)."""
        s = answer.lower()
        s = "".join(ch for ch in s if ch not in set(string.punctuation))
        s = re.sub(r"\b(a|an|the)\b", " ", s)
        return " ".join(s.split())

    def is_correct(self, pred: str | None, item: GenItem) -> bool:
        if pred is None:
            return False
        p = self.normalize(pred)
        return any(p == self.normalize(a) for a in item.answers)

    metrics = ("exact_match",)


def majority(answers: Sequence[str | None]) -> str | None:
    """Most frequent non-empty answer; ties go to the one seen first."""
    votes = collections.Counter(a for a in answers if a is not None)
    if not votes:
        return None
    best = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == best)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), computed as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


class CodeTask(Task):
    kind = "code"
    stop: Sequence[str] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
    max_new_tokens: int = 512
    timeout: float = 10.0

    def prompt(self, item: CodeItem) -> str:
        return item.prompt

    def answer_text(self, item: CodeItem) -> str:
        return item.solution

    def program(self, item: CodeItem, completion: str) -> str:
        call = f"\ncheck({item.entry_point})\n" if item.entry_point else "\n"
        return item.prompt + completion + "\n\n" + item.test + "\n" + call

    metrics = ("pass@1",)


class PerplexityTask(Task):
    kind = "perplexity"

    def prompt(self, item: TextItem) -> str:
        return item.text

    def answer_text(self, item: TextItem) -> str:
        return ""

    metrics = ("token_perplexity", "word_perplexity", "bits_per_byte")
