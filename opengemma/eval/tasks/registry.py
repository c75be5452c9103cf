"""Task names -> factories. A factory takes the task's data path (None: the installed/cached data) and
returns one Task, or a list of Tasks for a group (e.g. MMLU's 57 subjects are one task with subject metadata).

    @register("gsm8k", user_data=True, help="GSM8K test.jsonl (question, answer with '#### n')")
    def gsm8k(path): return GSM8K(path)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class TaskSpec:
    name: str
    factory: Callable
    user_data: bool  # the user brings the data file (not obtainable with `opengemma data get`)
    source: str | None  # `opengemma data get` source it reads (mmlu, humaneval, bigbench), if any
    help: str


REGISTRY: dict[str, TaskSpec] = {}


def register(name: str, *, user_data: bool = False, source: str | None = None, help: str = ""):
    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        REGISTRY[name] = TaskSpec(name, fn, user_data, source, help)
        return fn
    return deco


def _load_all() -> None:
    # importing the task modules fills the registry
    from . import bigbench, formats, humaneval, mmlu  # noqa: F401


def get_task(name: str, path: str | None = None):
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    if spec.user_data and path is None:
        raise ValueError(f"task {name!r} reads data you supply: pass --data {name}=PATH ({spec.help})")
    return spec.factory(path)


def task_names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)
