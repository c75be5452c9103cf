"""HumanEval (Chen et al. 2021): 164 Python functions to complete from their signature and docstring,
checked by the problem's unit tests in the sandbox. pass@1 greedy; pass@k from n samples (unbiased).

Data: `opengemma data get humaneval` (or a HumanEval.jsonl[.gz] with task_id, prompt, entry_point,
canonical_solution, test). The prompt is the code itself, 0-shot, as in the paper.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .base import CodeItem, CodeTask


def read_humaneval(path: Path) -> list[CodeItem]:
    opener = gzip.open if path.suffix == ".gz" else open
    items = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                items.append(
                    CodeItem(
                        task_id=r["task_id"],
                        prompt=r["prompt"],
                        test=r["test"],
                        entry_point=r["entry_point"],
                        solution=r.get("canonical_solution", ""),
                    )
                )
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{n}: not a HumanEval row (task_id, prompt, entry_point, test): {e}") from None
    return items


class HumanEval(CodeTask):
    name = "humaneval"
    default_shots = 0
    # stop where the function body ends: a new top-level statement
    stop = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", '\n"""', "\n```")
    max_new_tokens = 512

    def __init__(self, path: str | Path | None = None):
        if path is None:
            from ..data import data_path

            path = data_path("humaneval") / "HumanEval.jsonl.gz"
        self.path = Path(path)

    def items(self) -> list[CodeItem]:
        return read_humaneval(self.path)


def humaneval(path):
    return HumanEval(path)
