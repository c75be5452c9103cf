"""Generation benchmarks read from their released files: TriviaQA and Natural Questions (open), answered in
a few words; MBPP, answered with a program the sandbox runs. Each extracts an answer from free text and
compares it after a normalization written for it (the maths benchmarks are in maths.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .base import CodeItem, CodeTask, GenerateTask, GenItem
from .files import FileTask, FormatError, find_file, read_json_records, require, train_file


# -- open-domain QA: TriviaQA, Natural Questions -----------------------------------------------------------
class OpenQA(FileTask, GenerateTask):
    """'Q: ...?\\nA:' with 5 shots (the Llama and Gemma setting), greedy up to the end of the line; right
    when the answer equals any alias after the SQuAD normalization (case, punctuation, articles)."""

    description = "Answer these questions:\n"
    shot_separator = "\n"
    default_shots = 5
    stop = ("\n",)
    max_new_tokens = 32
    _train: Path | None = None

    @staticmethod
    def item(question: str, answers: list[str], target: str) -> GenItem:
        q = question.strip().rstrip("?").strip()
        return GenItem(prompt=f"Q: {q}?\nA:", answers=answers, target=" " + target)

    def prompt(self, item: GenItem) -> str:
        return item.prompt

    def fewshot_pool(self) -> list | None:
        if self._pool is None and self._train is not None:  # read only when shots are asked (large files)
            self._pool = self.read(self._train)
        return self._pool


TRIVIAQA_FMT = (
    'TriviaQA JSON {"Data": [{Question, Answer: {Value, Aliases, NormalizedAliases}}]} '
    "(unfiltered-web-dev.json, rc/qa/*-dev.json) or HF JSON lines {question, answer: {value, aliases}}"
)


class TriviaQA(OpenQA):
    name = "triviaqa"

    def __init__(self, path):
        names = [
            "unfiltered-web-dev.json",
            "wikipedia-dev.json",
            "web-dev.json",
            "qa/wikipedia-dev.json",
            "validation.jsonl",
            "dev.jsonl",
        ]
        self._items = self.read(find_file(path, names, self.name, TRIVIAQA_FMT))
        self._train = train_file(
            path,
            [
                "unfiltered-web-train.json",
                "wikipedia-train.json",
                "web-train.json",
                "qa/wikipedia-train.json",
                "train.jsonl",
            ],
        )

    def read(self, file: Path) -> list[GenItem]:
        if file.suffix == ".json":
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise FormatError(f"triviaqa: {file} is not JSON ({TRIVIAQA_FMT}): {e}") from None
            if not isinstance(data, dict) or "Data" not in data:
                raise FormatError(f"triviaqa: {file} has no 'Data' list ({TRIVIAQA_FMT})")
            recs, q, a, keys = data["Data"], "Question", "Answer", ("Value", "Aliases", "NormalizedAliases")
        else:
            recs, q, a, keys = (
                read_json_records(file, self.name, TRIVIAQA_FMT),
                "question",
                "answer",
                ("value", "aliases", "normalized_aliases"),
            )
        require(recs, [q, a], file, self.name, TRIVIAQA_FMT)
        items = []
        for n, r in enumerate(recs, 1):
            ans = r[a]
            if not isinstance(ans, dict) or keys[0] not in ans:
                raise FormatError(
                    f"triviaqa: {file} record {n}: {a} should be an object with {keys[0]} ({TRIVIAQA_FMT})"
                )
            aliases = [ans[keys[0]], *ans.get(keys[1], []), *ans.get(keys[2], [])]
            items.append(self.item(r[q], list(dict.fromkeys(aliases)), ans[keys[0]]))
            items[-1].meta["id"] = r.get("QuestionId", r.get("question_id"))
        return items


NQ_FMT = "Natural Questions open JSON lines {question, answer: [strings]} (NQ-open.dev.jsonl)"


class NaturalQuestions(OpenQA):
    name = "nq_open"

    def __init__(self, path):
        names = ["NQ-open.dev.jsonl", "nq-open.dev.jsonl", "validation.jsonl", "dev.jsonl"]
        self._items = self.read(find_file(path, names, self.name, NQ_FMT))
        self._train = train_file(path, ["NQ-open.train.jsonl", "nq-open.train.jsonl", "train.jsonl"])

    def read(self, file: Path) -> list[GenItem]:
        recs = read_json_records(file, self.name, NQ_FMT)
        require(recs, ["question", "answer"], file, self.name, NQ_FMT)
        for n, r in enumerate(recs, 1):
            if not isinstance(r["answer"], list) or not r["answer"]:
                raise FormatError(f"nq_open: {file} record {n}: answer should be a non-empty list ({NQ_FMT})")
        return [self.item(r["question"], list(r["answer"]), r["answer"][0]) for r in recs]


# -- MBPP --------------------------------------------------------------------------------------------------
MBPP_FMT = "MBPP JSON lines {task_id, text, code, test_list, test_setup_code, challenge_test_list} (mbpp.jsonl)"

# The paper's (Austin et al. 2021) prompt examples, task_ids 2-4, as released; used when the file lacks them
# (a test-split file), as lm-eval does.
MBPP_SHOTS = [
    dict(
        task_id=2,
        text="Write a function to find the similar elements from the given two tuple lists.",
        code="def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
        "  return (res) ",
        test_list=[
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
    ),
    dict(
        task_id=3,
        text="Write a python function to identify non-prime numbers.",
        code="import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
        "        if n % i == 0:\n            result = True\n    return result",
        test_list=[
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
    ),
    dict(
        task_id=4,
        text="Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        code="import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, nums)\n"
        "  return largest_nums",
        test_list=[
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]",
        ],
    ),
]


def read_mbpp(path) -> list[dict]:
    f = find_file(path, ["mbpp.jsonl", "test.jsonl", "sanitized-mbpp.json"], "mbpp", MBPP_FMT)
    recs = read_json_records(f, "mbpp", MBPP_FMT)
    require(recs, ["task_id", "text|prompt", "code", "test_list"], f, "mbpp", MBPP_FMT)
    return [
        dict(
            task_id=int(r["task_id"]),
            text=r.get("text", r.get("prompt")),
            code=r["code"].replace("\r\n", "\n"),  # the release has Windows line ends
            test_list=list(r["test_list"]),
            test_setup_code=r.get("test_setup_code") or "\n".join(r.get("test_imports", [])),
            challenge_test_list=list(r.get("challenge_test_list") or []),
        )
        for r in recs
    ]


class MBPP(FileTask, CodeTask):
    """The paper's prompt: the task, its three asserts, then the code between [BEGIN] and [DONE]; 3 shots
    (task_ids 2-4). Evaluated on the paper's test range, task_ids 11-510, when the file holds it (the full
    mbpp.jsonl), else on every item but the shots. The program is setup code + completion + the asserts."""

    name = "mbpp"
    default_shots = 3
    stop = ("[DONE]",)
    max_new_tokens = 512

    def __init__(self, path):
        recs = read_mbpp(path)
        test = [r for r in recs if 11 <= r["task_id"] <= 510]
        shot_ids = {s["task_id"] for s in MBPP_SHOTS}
        self._items = [self.item(r) for r in (test or [r for r in recs if r["task_id"] not in shot_ids])]
        by_id = {r["task_id"]: r for r in recs}
        self._pool = [self.item(by_id.get(s["task_id"], s)) for s in MBPP_SHOTS]

    @staticmethod
    def item(r: dict) -> CodeItem:
        tests = "\n".join(r["test_list"])
        prompt = (
            f"You are an expert Python programmer, and here is your task: {r['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
        )
        return CodeItem(
            task_id=f"mbpp/{r['task_id']}",
            prompt=prompt,
            test=tests,
            solution=r["code"],
            meta={"setup": r.get("test_setup_code", ""), "challenge_tests": r.get("challenge_test_list", [])},
        )

    def select_shots(self, items, index, k, rng):
        if k > len(self._pool):
            raise ValueError(f"mbpp: the paper's prompt has {len(self._pool)} examples, {k} asked")
        return self._pool[:k]  # the paper's fixed examples, in order

    def answer_text(self, item: CodeItem) -> str:
        return item.solution + "\n[DONE]"

    def program(self, item: CodeItem, completion: str) -> str:
        setup = item.meta.get("setup", "")
        return (setup + "\n" if setup else "") + completion + "\n\n" + item.test + "\n"
