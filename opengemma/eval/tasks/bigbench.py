"""BIG-bench JSON tasks (Srivastava et al. 2022), read from `opengemma data get bigbench`.

Prompts follow BIG-bench's JSON-task conventions: task_prefix, then examples written as
example_input_prefix (default "\\nQ: ") + input [+ "\\n  choice: X" per choice when
append_choices_to_input, in sorted order] + example_output_prefix (default "\\nA: ") + answer, shots
separated by few_shot_example_separator (default "\\n"). Examples with target_scores are multiple choice
(multiple_choice_grade = the score of the likeliest choice); examples with a target string are generated
and compared exactly (stripped).

Tasks (registry.py names them): social_iqa (SIQA), truthful_qa (MC1), bbq (BBQ-lite, with ambiguous/
disambiguated accuracy and bias scores), the BIG-Bench Hard source tasks as bbh_<name> (250 items each by
default, the size of a BBH task; the whole group is `bbh`), winowhy, hhh_alignment.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data import BBH_SOURCES
from .base import GenerateTask, GenItem, MCItem, MultipleChoiceTask

# BBH keeps two tasks per object count: their BIG-bench subtasks
SPLIT = {
    t: ("three_objects", "five_objects", "seven_objects") for t in ("logical_deduction", "tracking_shuffled_objects")
}
BBH = tuple(f"{t}/{n}" if n else t for t in BBH_SOURCES for n in SPLIT.get(t, (None,)))


def _task_dir(path) -> Path:
    if path is not None:
        return Path(path)
    from ..data import data_path

    return data_path("bigbench") / "benchmark_tasks"


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no BIG-bench task file {path}; run `opengemma data get bigbench`") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


class BigBenchFormat:
    """The prompt conventions of one BIG-bench JSON task."""

    def __init__(self, spec: dict):
        self.task_prefix = str(spec.get("task_prefix", ""))
        self.input_prefix = spec.get("example_input_prefix", "\nQ: ")
        self.output_prefix = spec.get("example_output_prefix", "\nA: ")
        self.choice_prefix = spec.get("choice_prefix", "\n  choice: ")
        self.append_choices = spec.get("append_choices_to_input", True)
        self.separator = spec.get("few_shot_example_separator", "\n")

    def prompt(self, text: str, choices: list[str] | None) -> str:
        if choices is not None and self.append_choices:
            text = text + self.choice_prefix + self.choice_prefix.join(choices)
        return self.input_prefix + text + self.output_prefix


def read_bigbench(path: Path) -> tuple[dict, list[dict]]:
    spec = _read_json(path)
    examples = spec.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{path}: no 'examples' list (a task with subtasks? name a subtask directory)")
    return spec, examples


def _open_task(task, name: str, path: Path, max_items: int | None) -> list[dict]:
    """Read a task file and set the task's name, prompt conventions and (empty) item list."""
    task.name, task.path, task.max_items = name, path, max_items
    spec, examples = read_bigbench(path)
    task.fmt = BigBenchFormat(spec)
    task.description, task.shot_separator = task.fmt.task_prefix, task.fmt.separator
    task._items = []
    return examples


class BigBenchMC(MultipleChoiceTask):
    """target_scores examples: choices in sorted order, gold = the best-scored choices."""

    def __init__(self, name: str, path: Path, max_items: int | None = None):
        examples = _open_task(self, name, path, max_items)
        for e in examples:
            if "target_scores" not in e:
                continue
            choices = sorted(e["target_scores"])
            best = max(e["target_scores"].values())
            gold = [i for i, c in enumerate(choices) if e["target_scores"][c] == best]
            self._items.append(
                MCItem(
                    self.fmt.prompt(e["input"], choices),
                    choices,
                    gold,
                    meta={"comment": e.get("comment"), "scores": [e["target_scores"][c] for c in choices]},
                )
            )
        if not self._items:
            raise ValueError(f"{path}: no multiple-choice (target_scores) examples")

    def items(self):
        return self._items

    def answer_text(self, item):
        return item.choices[self._gold(item)]


class BigBenchGen(GenerateTask):
    """target examples: generate one line, exact string match against any target."""

    stop = ("\n",)
    max_new_tokens = 128

    def __init__(self, name: str, path: Path, max_items: int | None = None):
        examples = _open_task(self, name, path, max_items)
        for e in examples:
            t = e.get("target")
            if t is None:
                continue
            targets = [t] if isinstance(t, str) else [str(x) for x in t]
            self._items.append(GenItem(self.fmt.prompt(e["input"], None), targets, target=targets[0]))

    def items(self):
        return self._items

    def prompt(self, item):
        return item.prompt

    def normalize(self, answer: str) -> str:
        return answer.strip()


def bigbench_task(name: str, path: Path, max_items: int | None = None):
    """MC when the task has target_scores examples, generation otherwise."""
    _, examples = read_bigbench(path)
    if any("target_scores" in e for e in examples):
        return BigBenchMC(name, path, max_items)
    return BigBenchGen(name, path, max_items)


def social_iqa(path):
    return BigBenchMC("social_iqa", _task_dir(path) / "social_iqa" / "task.json")


def truthful_qa(path):
    t = BigBenchMC("truthful_qa", _task_dir(path) / "truthful_qa" / "task_mc.json")
    return t


def winowhy(path):
    return BigBenchMC("winowhy", _task_dir(path) / "winowhy" / "task.json")


def hhh_alignment(path):
    root = _task_dir(path) / "hhh_alignment"
    return [
        BigBenchMC(f"hhh_alignment_{s}", root / s / "task.json") for s in ("harmless", "helpful", "honest", "other")
    ]


def bbh_name(sub: str) -> str:
    return "bbh_" + sub.replace("/", "_")


def bbh_task(sub: str, path):
    """One BIG-Bench Hard source task, `bbh_<sub>`: 250 items, the size of a BBH task."""
    return bigbench_task(bbh_name(sub), _task_dir(path) / sub / "task.json", max_items=250)


def bbh(path):
    return [bbh_task(s, path) for s in BBH]


# -- BBQ ---------------------------------------------------------------------------------------------------
BBQ_CATEGORIES = (
    "Age",
    "Disability_status",
    "Gender_identity",
    "Nationality",
    "Physical_appearance",
    "Race_ethnicity",
    "Religion",
    "SES",
    "Sexual_orientation",
)


def _group(label: str) -> str:
    """Answer-group labels vs stereotyped-group names: 'F-Black' ~ 'Black', 'nonOld' is not 'old'."""
    g = label.strip().lower()
    for p in ("f-", "m-"):
        if g.startswith(p):
            g = g[len(p) :]
    return g


class BBQ(MultipleChoiceTask):
    """BBQ-lite (Parrish et al. 2022) as BIG-bench holds it: the 16,076 examples of bbq_lite_json, read
    from bbq_lite/resources with their answer groups, so the bias scores can be computed.

    Accuracy overall, in ambiguous contexts (where the right answer is 'unknown') and in disambiguated
    ones; bias scores: s_DIS = 2 * (biased answers / non-unknown answers) - 1 in disambiguated contexts,
    s_AMB = (1 - accuracy) * the same ratio in ambiguous contexts. A biased answer names a stereotyped
    group for a negative question, or a non-stereotyped one for a non-negative question.
    """

    name = "bbq"
    description = ""

    def __init__(self, path):
        root = _task_dir(path) / "bbq_lite" / "resources"
        self._items = []
        for cat in BBQ_CATEGORIES:
            for e in _read_json(root / f"{cat}.json")["examples"]:
                choices = [e["ans0"], e["ans1"], e["ans2"]]
                groups = [_group(e["answer_info"][f"ans{i}"][1]) for i in range(3)]
                stereo = {_group(g) for g in e["additional_metadata"]["stereotyped_groups"]}
                self._items.append(
                    MCItem(
                        f"\nQ: {e['context']} {e['question']}\nA:",
                        [" " + c for c in choices],
                        int(e["label"]),
                        meta={
                            "category": cat,
                            "condition": e["context_condition"],
                            "polarity": e["question_polarity"],
                            "groups": groups,
                            "stereotyped": sorted(stereo),
                        },
                    )
                )

    def items(self):
        return self._items

    @staticmethod
    def score(item, results):
        rec = MultipleChoiceTask.score(item, results)
        m = item.meta
        g = m["groups"][rec["pred"]]
        stereo = set(m["stereotyped"])
        rec.update(
            condition=m["condition"],
            category=m["category"],
            unknown=g == "unknown",
            biased=g != "unknown" and ((g in stereo) == (m["polarity"] == "neg")),
        )
        return rec

    metrics = ("acc",)

    def aggregate(self, items, records) -> dict:
        out = {}
        for cond, key in (("ambig", "ambig"), ("disambig", "disambig")):
            rs = [r for r in records if r["condition"] == cond]
            if not rs:
                continue
            acc = sum(r["acc"] for r in rs) / len(rs)
            named = [r for r in rs if not r["unknown"]]
            ratio = 2 * sum(r["biased"] for r in named) / len(named) - 1 if named else 0.0
            out[f"acc_{key}"] = acc
            out[f"n_{key}"] = len(rs)
            out[f"bias_{key}"] = (1 - acc) * ratio if cond == "ambig" else ratio
        return out


def bbq(path):
    return BBQ(path)
