"""The eval suite's texts for decontamination: every item of every task whose data is here, as data.decontam.EvalText.

    index = NGramIndex(eval_texts())                       # what `opengemma data prepare` filters against
    contamination_report(eval_texts(["mmlu"]), corpus)      # the audit

The data package never imports eval (DESIGN.md's seams), so this side turns its tasks into plain texts and
hands them in. An item's text is what a leaked copy would hold: its prompt and its answer(s), as the task's
data gives them (not our prompt formatting). Every item is listed, not just those a run samples: shots are
drawn from the whole file, so any item can appear in an eval prompt.
"""

from __future__ import annotations

from typing import Iterator

from ..data.decontam import EvalText
from .data import DataNotFoundError, data_path
from .tasks import bigbench
from .tasks.base import CodeItem, GenItem, MCItem, TextItem
from .tasks.registry import REGISTRY, get_task

# Group names whose members are registered one by one too: listing both would read and yield the items twice
_ALIASES = {"bbh": {bigbench.bbh_name(s) for s in bigbench.BBH}}


def _installed(source: str | None) -> bool:
    if source is None:
        return False
    try:
        data_path(source)
    except DataNotFoundError:
        return False
    return True


def installed_tasks() -> list[str]:
    """The registry's tasks whose data `opengemma data get` has installed, in registry order; user-data tasks
    need a path, so they are never listed here."""
    names = [n for n, spec in REGISTRY.items() if not spec.user_data and _installed(spec.source)]
    return [n for n in names if not (n in _ALIASES and _ALIASES[n] <= set(names))]


def item_text(item) -> str:
    """An item's prompt and answer(s). Multiple choice: the context and the right choice(s) only: a copy of the
    question with its answer is what teaches the item, and the distractors add n-grams that such a copy (a quiz
    page, a worked solution) often leaves out, which would dilute the report's overlap fraction. Generation: the prompt, the worked target and any answer it does not already contain. Code: the prompt,
    the reference solution (which continues the prompt) and the tests. Text: the text."""
    if isinstance(item, MCItem):
        golds = [item.gold] if isinstance(item.gold, int) else list(item.gold)
        if isinstance(item.context, list):  # partial scoring: each choice's own context, the continuation after it
            return "\n".join(item.context[g] + item.choices[g] for g in golds)
        return "\n".join([item.context, *(item.choices[g] for g in golds)])
    if isinstance(item, GenItem):
        return "\n".join([item.prompt, item.target, *(a for a in item.answers if a not in item.target)])
    if isinstance(item, CodeItem):
        return item.prompt + item.solution + "\n" + item.test
    if isinstance(item, TextItem):
        return item.text
    raise TypeError(f"no eval text for a {type(item).__name__}")


def eval_texts(
    tasks: list[str] | None = None, data: dict[str, str] | None = None, *, progress: bool = False
) -> Iterator[EvalText]:
    """EvalText(task, item id, prompt + answer(s)) for every item of `tasks` (default: installed_tasks() and every
    task `data` gives a path for). Groups expand into their tasks (hhh_alignment -> hhh_alignment_harmless, ...),
    each task once. Item ids: a CodeItem's task_id ("HumanEval/0"), otherwise the index in the task's items()."""
    data = dict(data or {})
    if tasks is None:
        tasks = installed_tasks()
        tasks += [t for t in data if t not in tasks]
    from tqdm.auto import tqdm

    seen: set[str] = set()
    for name in tqdm(tasks, desc="eval texts", unit="task", disable=not progress):
        if name in seen:
            continue
        made = get_task(name, data.get(name))
        for task in made if isinstance(made, list) else [made]:
            if task.name in seen:
                continue
            seen.add(task.name)
            for i, item in enumerate(task.items()):
                yield EvalText(task.name, item.task_id if isinstance(item, CodeItem) else str(i), item_text(item))
