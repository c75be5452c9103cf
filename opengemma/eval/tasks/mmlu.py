"""MMLU (Hendrycks et al. 2021): 57 subjects, 4-choice questions, scored by the answer letter.

Data: the 14,042-question test split from `opengemma data get mmlu` (or a jsonl with the same fields:
question, answer_a..answer_d, correct_answer, topic). There is no dev split, so k-shot examples are k
other questions of the same subject: one fixed set per subject (a seeded draw), where a question that is
itself a shot gets the next drawn question instead. A fixed set makes every prompt of a subject share its
prefix, which the scorer computes once per batch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .base import MCItem, MultipleChoiceTask

LETTERS = "ABCD"


def read_mmlu(path: Path) -> list[MCItem]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if r["correct_answer"] == "answer":  # the file's two header rows
                    continue
                items.append(
                    MCItem(
                        context=r["question"].strip(),
                        choices=[str(r[f"answer_{x}"]).strip() for x in "abcd"],
                        gold=LETTERS.index(r["correct_answer"].strip()),
                        meta={"subject": r["topic"].strip().replace(" ", "_"), "line": n},
                    )
                )
            except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as e:
                raise ValueError(
                    f"{path}:{n}: not an MMLU row (question, answer_a..d, correct_answer A-D, topic): {e}"
                ) from None
    return items


class MMLU(MultipleChoiceTask):
    name = "mmlu"
    default_shots = 5
    shot_separator = "\n\n"

    def __init__(self, path: str | Path | None = None):
        if path is None:
            from ..data import data_path

            path = data_path("mmlu") / "mmlu.jsonl"
        self.path = Path(path)
        self._items = None
        self._shot_order: dict[str, list[int]] = {}

    def items(self) -> list[MCItem]:
        if self._items is None:
            self._items = read_mmlu(self.path)
        return self._items

    def description_for(self, item: MCItem) -> str:
        subject = item.meta["subject"].replace("_", " ")
        return f"The following are multiple choice questions (with answers) about {subject}.\n\n"

    def prompt(self, item: MCItem) -> str:
        lines = [item.context] + [f"{x}. {c}" for x, c in zip(LETTERS, item.choices)]
        return "\n".join(lines) + "\nAnswer:"

    def answer_text(self, item: MCItem) -> str:
        return " " + LETTERS[item.gold]

    def requests(self, item: MCItem, context: str) -> list[tuple[str, str]]:
        return [(context, " " + x) for x in LETTERS]  # the letters: all read at one position

    @staticmethod
    def score(item: MCItem, results):
        rec = MultipleChoiceTask.score(MCItem(item.context, list(LETTERS), item.gold), results)
        rec["subject"] = item.meta["subject"]
        return rec

    metrics = ("acc",)  # one token per letter: the normalizations coincide

    def select_shots(self, items, index, k, rng: random.Random):
        if k <= 0:
            return []
        subject = items[index].meta["subject"]
        if subject not in self._shot_order:
            same = [i for i, it in enumerate(items) if it.meta["subject"] == subject]
            random.Random(f"mmlu-{subject}-{rng.random()}").shuffle(same)
            self._shot_order[subject] = same
        order = self._shot_order[subject]
        shots = [i for i in order if i != index][:k]
        if len(shots) < k:
            raise ValueError(f"mmlu/{subject}: {k} shots asked but the subject has {len(order)} questions")
        return [items[i] for i in shots]

    def aggregate(self, items, records) -> dict:
        by = {}
        for r in records:
            by.setdefault(r["subject"], []).append(r["acc"])
        per_subject = {s: sum(v) / len(v) for s, v in sorted(by.items())}
        return {"acc_macro": sum(per_subject.values()) / len(per_subject), "subjects": per_subject}


def mmlu(path):
    return MMLU(path)
