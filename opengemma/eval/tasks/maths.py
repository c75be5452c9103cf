"""Maths benchmarks read from their released files: GSM8K (a number after a worked solution) and MATH (a
LaTeX expression in \\boxed{}), each answer compared after a normalization written for it."""

from __future__ import annotations

import json
import re
import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .base import GenerateTask, GenItem
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
            raise FormatError(
                f"gsm8k: {file} record {n}: answer {str(r['answer'])[:40]!r} lacks the final "
                f"'#### <number>' ({GSM8K_FMT})"
            )
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
        return GenItem(
            prompt=f"Question: {r['question']}\nAnswer:",
            answers=[r["answer"]],
            target=f" {chain} The answer is {r['answer']}.",
        )

    def prompt(self, item: GenItem) -> str:
        return item.prompt

    def extract(self, text: str) -> str | None:
        """The number after the first 'The answer is' (or '####'); else the last number in the text."""
        m = re.search(r"answer is\s*:?\s*(" + _NUMBER + ")", text, re.IGNORECASE) or re.search(
            r"####\s*(" + _NUMBER + ")", text
        )
        if m:
            return number_text(m.group(1))
        nums = re.findall(_NUMBER, text)
        return number_text(nums[-1]) if nums else None

    def normalize(self, answer: str) -> str:
        return number_text(answer) or answer.strip()


# -- MATH --------------------------------------------------------------------------------------------------
MATH_FMT = (
    "MATH: the released tree <split>/<type>/<n>.json of {problem, level, type, solution with "
    "\\boxed{answer}}, or JSON lines with those fields"
)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (braces matched), or of '\\boxed 5'."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)  # past '\boxed' / '\fbox'
    if text.startswith(" ", j):  # '\boxed 5': up to the end of the math
        return re.split(r"[$\s]", text[j + 1 :].lstrip(), maxsplit=1)[0] or None
    if not text.startswith("{", j):
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1 : k]
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
    for a, b in (
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\\\", "\\"),
        ("tfrac", "frac"),
        ("dfrac", "frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
    ):
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
    return dict(
        problem=r["problem"],
        solution=r["solution"],
        answer=answer,
        level=r.get("level"),
        type=r.get("type", r.get("subject")),
    )


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
        return GenItem(
            prompt=f"Problem:\n{r['problem']}\n\nSolution:",
            answers=[r["answer"]],
            target=" " + r["solution"],
            meta={"level": r["level"], "type": r["type"]},
        )

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
