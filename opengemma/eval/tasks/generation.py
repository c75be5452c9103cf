"""Generation benchmarks read from their released files: GSM8K, MATH, TriviaQA, Natural Questions (open),
MBPP. Each extracts an answer from free text and compares it after a normalization written for it."""

from __future__ import annotations

import json
import re
import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .base import CodeItem, CodeTask, GenerateTask, GenItem
from .files import FileTask, FormatError, find_file, find_optional, read_json_records, require, train_file


# -- GSM8K -------------------------------------------------------------------------------------------------
GSM8K_FMT = "GSM8K JSON lines {question, answer: worked solution ending '#### <number>'} (test.jsonl)"

# a number as written in a solution: -$1,234.50 (the $ and the commas are dropped by number_text)
_NUMBER = r"-?\$?\s?-?\d[\d,]*(?:\.\d+)?"


def number_text(s: str) -> str | None:
    """Canonical text of a number: no $, commas or trailing zeros; '1,234.50' -> '1234.5', '7.0' -> '7'."""
    s = s.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def read_gsm8k(file: Path) -> list[dict]:
    recs = read_json_records(file, "gsm8k", GSM8K_FMT)
    require(recs, ["question", "answer"], file, "gsm8k", GSM8K_FMT)
    out = []
    for n, r in enumerate(recs, 1):
        if not isinstance(r["answer"], str) or "####" not in r["answer"]:
            raise FormatError(f"gsm8k: {file} record {n}: answer {str(r['answer'])[:40]!r} lacks the final "
                              f"'#### <number>' ({GSM8K_FMT})")
        solution, final = r["answer"].rsplit("####", 1)
        number = number_text(final.strip())
        if number is None:
            raise FormatError(f"gsm8k: {file} record {n}: '#### {final.strip()}' is not a number")
        out.append(dict(question=r["question"], solution=solution.strip(), answer=number))
    return out


class GSM8K(FileTask, GenerateTask):
    """8-shot chain of thought (Wei et al. 2022 style): each shot's worked solution from the data, its
    calculator annotations '<<48/2=24>>' removed, on one line, ending 'The answer is N.'. samples > 1 is
    maj@k: the harness samples k chains at `temperature` and votes on the extracted numbers."""

    name = "gsm8k"
    default_shots = 8
    stop = ("\n\n", "Question:")
    max_new_tokens = 256

    def __init__(self, path, samples: int = 1, temperature: float = 0.7):
        self.samples, self.temperature = int(samples), float(temperature)
        f = find_file(path, ["test.jsonl"], self.name, GSM8K_FMT)
        self._items = [self.item(r) for r in read_gsm8k(f)]
        train = train_file(path, ["train.jsonl"])
        self._pool = [self.item(r) for r in read_gsm8k(train)] if train else None

    @staticmethod
    def item(r: dict) -> GenItem:
        steps = re.sub(r"<<[^<>]*>>", "", r["solution"])
        chain = " ".join(line.strip() for line in steps.splitlines() if line.strip())
        return GenItem(prompt=f"Question: {r['question']}\nAnswer:", answers=[r["answer"]],
                       target=f" {chain} The answer is {r['answer']}.")

    def prompt(self, item: GenItem) -> str:
        return item.prompt

    def extract(self, text: str) -> str | None:
        """The number after the first 'The answer is' (or '####'); else the last number in the text."""
        m = re.search(r"answer is\s*:?\s*(" + _NUMBER + ")", text, re.IGNORECASE) or \
            re.search(r"####\s*(" + _NUMBER + ")", text)
        if m:
            return number_text(m.group(1))
        nums = re.findall(_NUMBER, text)
        return number_text(nums[-1]) if nums else None

    def normalize(self, answer: str) -> str:
        return number_text(answer) or answer.strip()


# -- MATH --------------------------------------------------------------------------------------------------
MATH_FMT = ("MATH: the released tree <split>/<type>/<n>.json of {problem, level, type, solution with "
            "\\boxed{answer}}, or JSON lines with those fields")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (braces matched), or of '\\boxed 5'."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)  # past '\boxed' / '\fbox'
    if text.startswith(" ", j):  # '\boxed 5': up to the end of the math
        return re.split(r"[$\s]", text[j + 1:].lstrip(), maxsplit=1)[0] or None
    if not text.startswith("{", j):
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k]
    return None  # unbalanced: a generation cut off inside the box


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} and \\frac{1}2 likewise (one-character arguments)."""
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", s)


def normalize_math(s: str) -> str:
    """A LaTeX answer in one canonical spelling, after Hendrycks et al.'s is_equiv (MATH, 2021): no $,
    \\left/\\right, spacing commands or degree signs; units written as '\\text{ cm}' after a value dropped;
    dfrac/tfrac -> frac; braces added to \\frac12 and \\sqrt3; 'x = 5' -> '5'; integer a/b -> \\frac{a}{b};
    and, beyond Hendrycks, numbers canonical ('1,000' -> '1000', '0.50' -> '0.5', '3.0' -> '3'), so
    that '0.50', '0.5', '1/2' and '\\frac12' all become '\\frac{1}{2}'. Idempotent."""
    s = s.strip().replace("\n", "")
    for a, b in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\\\", "\\"), ("tfrac", "frac"),
                 ("dfrac", "frac"), ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""),
                 ("\\$", ""), ("$", ""), ("\\%", ""), ("%", "")):
        s = s.replace(a, b)
    # a unit after a value: '12\text{ cm}', '5 \mbox{ inches}^2'
    s = re.sub(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z ]*\}(\^\{?\d\}?)?$", "", s)
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)  # '\text{(A)}' -> '(A)'
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:  # 'x = 5', 'k=3'
        s = parts[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s.replace(" ", "")).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    return s


def _math_record(r: dict, where: str) -> dict | None:
    answer = r.get("answer") or last_boxed(r["solution"])  # MATH-500 style files carry the answer
    if answer is None:
        warnings.warn(f"math: {where}: no \\boxed answer in the solution; item skipped")
        return None
    return dict(problem=r["problem"], solution=r["solution"], answer=answer, level=r.get("level"),
                type=r.get("type", r.get("subject")))


def read_math(path) -> list[dict]:
    """A directory of <type>/<n>.json problems (a split of the release), or one JSON lines file."""
    p = Path(path)
    if p.is_file():
        recs = read_json_records(p, "math", MATH_FMT)
        require(recs, ["problem", "solution"], p, "math", MATH_FMT)
        found = [_math_record(r, f"{p} record {n}") for n, r in enumerate(recs, 1)]
    elif p.is_dir():
        files = sorted(p.rglob("*.json"), key=lambda f: (f.parent.name, int(f.stem) if f.stem.isdigit() else 0, f.stem))
        if not files:
            raise FormatError(f"math: no <type>/<n>.json files under {p} ({MATH_FMT})")
        found = []
        for f in files:
            try:
                r = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise FormatError(f"math: {f} is not JSON ({MATH_FMT}): {e}") from None
            if not isinstance(r, dict) or "problem" not in r or "solution" not in r:
                raise FormatError(f"math: {f} lacks problem/solution ({MATH_FMT})")
            found.append(_math_record(r, str(f)))
    else:
        raise FormatError(f"math: {p} does not exist ({MATH_FMT})")
    return [r for r in found if r is not None]


class MATH(FileTask, GenerateTask):
    """Minerva's prompt ('Problem:\\n...\\n\\nSolution:'), 4 shots from the train split when the release's
    root is given (else from the other test problems); the answer is the last \\boxed{} of the generation,
    compared after normalize_math."""

    name = "math"
    default_shots = 4
    stop = ("Problem:",)
    max_new_tokens = 512

    def __init__(self, path, samples: int = 1, temperature: float = 0.7):
        self.samples, self.temperature = int(samples), float(temperature)
        p = Path(path)
        if p.is_dir() and (p / "test").is_dir():  # the release's root: test/ evaluated, train/ for shots
            self._items = [self.item(r) for r in read_math(p / "test")]
            self._pool = [self.item(r) for r in read_math(p / "train")] if (p / "train").is_dir() else None
        else:  # one split's tree, a directory holding test.jsonl, or one file
            self._items = [self.item(r) for r in read_math(find_optional(p, ["test.jsonl"]) or p)]

    @staticmethod
    def item(r: dict) -> GenItem:
        return GenItem(prompt=f"Problem:\n{r['problem']}\n\nSolution:", answers=[r["answer"]],
                       target=" " + r["solution"], meta={"level": r["level"], "type": r["type"]})

    def prompt(self, item: GenItem) -> str:
        return item.prompt

    def extract(self, text: str) -> str | None:
        ans = last_boxed(text)
        if ans is None:  # Minerva's own ending
            m = re.search(r"final answer is\s*(.+?)\.?\s*(?:I hope|$)", text, re.IGNORECASE | re.MULTILINE)
            ans = m.group(1) if m else None
        return normalize_math(ans) if ans else None

    def normalize(self, answer: str) -> str:
        return normalize_math(answer)


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


TRIVIAQA_FMT = ('TriviaQA JSON {"Data": [{Question, Answer: {Value, Aliases, NormalizedAliases}}]} '
                "(unfiltered-web-dev.json, rc/qa/*-dev.json) or HF JSON lines {question, answer: {value, aliases}}")


class TriviaQA(OpenQA):
    name = "triviaqa"

    def __init__(self, path):
        names = ["unfiltered-web-dev.json", "wikipedia-dev.json", "web-dev.json", "qa/wikipedia-dev.json",
                 "validation.jsonl", "dev.jsonl"]
        self._items = self.read(find_file(path, names, self.name, TRIVIAQA_FMT))
        self._train = train_file(path, ["unfiltered-web-train.json", "wikipedia-train.json", "web-train.json",
                                        "qa/wikipedia-train.json", "train.jsonl"])

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
            recs, q, a, keys = read_json_records(file, self.name, TRIVIAQA_FMT), "question", "answer", \
                ("value", "aliases", "normalized_aliases")
        require(recs, [q, a], file, self.name, TRIVIAQA_FMT)
        items = []
        for n, r in enumerate(recs, 1):
            ans = r[a]
            if not isinstance(ans, dict) or keys[0] not in ans:
                raise FormatError(f"triviaqa: {file} record {n}: {a} should be an object with {keys[0]} "
                                  f"({TRIVIAQA_FMT})")
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
    dict(task_id=2, text="Write a function to find the similar elements from the given two tuple lists.",
         code="def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
              "  return (res) ",
         test_list=["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]),
    dict(task_id=3, text="Write a python function to identify non-prime numbers.",
         code="import math\ndef is_not_prime(n):\n    result = False\n    for i in range(2,int(math.sqrt(n)) + 1):\n"
              "        if n % i == 0:\n            result = True\n    return result",
         test_list=["assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
                    "assert is_not_prime(35) == True"]),
    dict(task_id=4, text="Write a function to find the largest integers from a given list of numbers using heap "
                         "queue algorithm.",
         code="import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, nums)\n"
              "  return largest_nums",
         test_list=["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
                    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"]),
]


def read_mbpp(path) -> list[dict]:
    f = find_file(path, ["mbpp.jsonl", "test.jsonl", "sanitized-mbpp.json"], "mbpp", MBPP_FMT)
    recs = read_json_records(f, "mbpp", MBPP_FMT)
    require(recs, ["task_id", "text|prompt", "code", "test_list"], f, "mbpp", MBPP_FMT)
    return [dict(task_id=int(r["task_id"]), text=r.get("text", r.get("prompt")),
                 code=r["code"].replace("\r\n", "\n"),  # the release has Windows line ends
                 test_list=list(r["test_list"]),
                 test_setup_code=r.get("test_setup_code") or "\n".join(r.get("test_imports", [])),
                 challenge_test_list=list(r.get("challenge_test_list") or [])) for r in recs]


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
        prompt = (f"You are an expert Python programmer, and here is your task: {r['text']} "
                  f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")
        return CodeItem(task_id=f"mbpp/{r['task_id']}", prompt=prompt, test=tests, solution=r["code"],
                        meta={"setup": r.get("test_setup_code", ""),
                              "challenge_tests": r.get("challenge_test_list", [])})

    def select_shots(self, items, index, k, rng):
        if k > len(self._pool):
            raise ValueError(f"mbpp: the paper's prompt has {len(self._pool)} examples, {k} asked")
        return self._pool[:k]  # the paper's fixed examples, in order

    def answer_text(self, item: CodeItem) -> str:
        return item.solution + "\n[DONE]"

    def program(self, item: CodeItem, completion: str) -> str:
        setup = item.meta.get("setup", "")
        return (setup + "\n" if setup else "") + completion + "\n\n" + item.test + "\n"
