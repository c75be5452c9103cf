"""Multiple-choice benchmarks read from their released files: HellaSwag, ARC, PIQA, BoolQ, WinoGrande,
CommonsenseQA, OpenBookQA. Prompts follow lm-evaluation-harness (the numbers papers compare against);
a choice is written as it follows the context, with its leading space."""

from __future__ import annotations

import re
from pathlib import Path

from .base import MCItem, MultipleChoiceTask
from .files import FileTask, FormatError, choice_index, find_file, read_json_records, require, train_file


def _gold_of(value, n: int, where: str) -> int:
    """An integer label (int or numeric string, as HF exports write them) in range(n)."""
    try:
        g = int(value)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: label {value!r} is not an integer (an unlabeled test split?)") from None
    if not 0 <= g < n:
        raise FormatError(f"{where}: label {g} out of range for {n} choices")
    return g


# -- HellaSwag ---------------------------------------------------------------------------------------------
HELLASWAG_FMT = "HellaSwag JSON lines with activity_label, ctx_a, ctx_b, endings, label (hellaswag_val.jsonl)"


def hellaswag_clean(text: str) -> str:
    """lm-eval's preprocessing: the WikiHow half of HellaSwag carries markup such as '[header]', '[title]',
    '[step]'; ' [title]' ends a sentence, other brackets go. (Strip first, then remove, as lm-eval does.)"""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path) -> list[dict]:
    f = find_file(path, ["hellaswag_val.jsonl", "validation.jsonl", "val.jsonl"], "hellaswag", HELLASWAG_FMT)
    recs = read_json_records(f, "hellaswag", HELLASWAG_FMT)
    require(recs, ["activity_label", "ctx_a", "ctx_b", "endings", "label"], f, "hellaswag", HELLASWAG_FMT)
    out = []
    for n, r in enumerate(recs, 1):
        out.append(
            dict(
                ind=r.get("ind"),
                activity_label=r["activity_label"],
                ctx_a=r["ctx_a"],
                ctx_b=r["ctx_b"],
                endings=list(r["endings"]),
                label=_gold_of(r["label"], len(r["endings"]), f"{f} record {n}"),
            )
        )
    return out


class HellaSwag(FileTask, MultipleChoiceTask):
    name = "hellaswag"

    def __init__(self, path):
        self._items = [self.item(r) for r in read_hellaswag(path)]

    @staticmethod
    def item(r: dict) -> MCItem:
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        return MCItem(
            context=hellaswag_clean(r["activity_label"] + ": " + ctx),
            choices=[" " + hellaswag_clean(e) for e in r["endings"]],
            gold=r["label"],
            meta={"ind": r["ind"]},
        )


# -- questions with labelled choices: ARC, CommonsenseQA, OpenBookQA ----------------------------------------
def read_choice_questions(file: Path, dataset: str, fmt: str) -> list[dict]:
    """The AI2 layout {id, question: {stem, choices: [{text, label}]}, answerKey} (ARC, OpenBookQA,
    CommonsenseQA releases) or the Hugging Face one {id, question | question_stem, choices: {text: [...],
    label: [...]}, answerKey}. Returns id, question, choices, labels, gold and the extras (concept, fact1)."""
    recs = read_json_records(file, dataset, fmt)
    require(recs, ["question|question_stem", "answerKey"], file, dataset, fmt)
    out = []
    for n, r in enumerate(recs, 1):
        where = f"{dataset}: {file} record {n}"
        q = r.get("question", r.get("question_stem"))
        if isinstance(q, dict):  # AI2 release
            if "stem" not in q or "choices" not in q:
                raise FormatError(f"{where}: question lacks stem/choices (expected {fmt})")
            stem, texts, labels = q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
            concept = q.get("question_concept")
        else:  # Hugging Face export
            ch = r.get("choices")
            if not isinstance(ch, dict) or "text" not in ch or "label" not in ch:
                raise FormatError(f"{where}: choices should be {{text: [...], label: [...]}} (expected {fmt})")
            stem, texts, labels, concept = q, list(ch["text"]), list(ch["label"]), r.get("question_concept")
        if not str(r["answerKey"]).strip():
            raise FormatError(f"{where}: empty answerKey (an unlabeled test split?)")
        out.append(
            dict(
                id=r.get("id"),
                question=stem,
                choices=texts,
                labels=labels,
                gold=choice_index(labels, r["answerKey"], where),
                concept=concept,
                fact1=r.get("fact1"),
            )
        )
    return out


ARC_FMT = "ARC JSON lines {id, question: {stem, choices: [{text, label}]}, answerKey} (ARC-Easy-Test.jsonl)"


class ARC(FileTask, MultipleChoiceTask):
    """ARC-Easy / ARC-Challenge: 'Question: ...\\nAnswer:' scored on each choice's text (lm-eval)."""

    def __init__(self, path, subset: str):
        assert subset in ("Easy", "Challenge")
        self.name = f"arc_{subset.lower()}"
        other = "Challenge" if subset == "Easy" else "Easy"
        if Path(path).is_file() and f"ARC-{other}" in Path(path).name:
            raise FormatError(f"{self.name}: {path} is an ARC-{other} file")
        names = [f"ARC-{subset}-Test.jsonl", f"ARC-{subset}/ARC-{subset}-Test.jsonl", "test.jsonl"]
        f = find_file(path, names, self.name, ARC_FMT)
        self._items = [self.item(r) for r in read_choice_questions(f, self.name, ARC_FMT)]
        train = train_file(path, [f"ARC-{subset}-Train.jsonl", f"ARC-{subset}/ARC-{subset}-Train.jsonl", "train.jsonl"])
        self._pool = [self.item(r) for r in read_choice_questions(train, self.name, ARC_FMT)] if train else None

    @staticmethod
    def item(r: dict) -> MCItem:
        return MCItem(
            context=f"Question: {r['question']}\nAnswer:",
            choices=[" " + c for c in r["choices"]],
            gold=r["gold"],
            meta={"id": r["id"]},
        )


CSQA_FMT = (
    "CommonsenseQA JSON lines {id, question: {question_concept, stem, choices: [{label, text}]}, "
    "answerKey A-E} (dev_rand_split.jsonl)"
)


class CommonsenseQA(FileTask, MultipleChoiceTask):
    """lm-eval's prompt: the question with lettered choices, scored on ' A' .. ' E'. Seven shots is the
    setting of the Llama and Gemma papers; they come from train_rand_split.jsonl when beside the file."""

    name = "commonsense_qa"
    default_shots = 7

    def __init__(self, path):
        f = find_file(path, ["dev_rand_split.jsonl", "validation.jsonl", "dev.jsonl"], self.name, CSQA_FMT)
        self._items = [self.item(r) for r in read_choice_questions(f, self.name, CSQA_FMT)]
        train = train_file(path, ["train_rand_split.jsonl", "train.jsonl"])
        self._pool = [self.item(r) for r in read_choice_questions(train, self.name, CSQA_FMT)] if train else None

    @staticmethod
    def item(r: dict) -> MCItem:
        lines = [f"Question: {r['question'].strip()}"]
        lines += [f"{lab}. {txt}" for lab, txt in zip(r["labels"], r["choices"])]
        return MCItem(
            context="\n".join(lines) + "\nAnswer:",
            choices=[" " + lab for lab in r["labels"]],
            gold=r["gold"],
            meta={"id": r["id"], "concept": r["concept"]},
        )

    metrics = ("acc",)  # one-letter answers: the normalizations say nothing more


OBQA_FMT = (
    "OpenBookQA JSON lines {id, question: {stem, choices: [{text, label}]}, answerKey[, fact1]} "
    "(Main/test.jsonl or Additional/test_complete.jsonl)"
)


class OpenBookQA(FileTask, MultipleChoiceTask):
    """lm-eval's prompt: the bare stem (it is a sentence to complete), then each choice."""

    name = "openbookqa"

    def __init__(self, path):
        names = ["test.jsonl", "Main/test.jsonl", "test_complete.jsonl", "Additional/test_complete.jsonl"]
        f = find_file(path, names, self.name, OBQA_FMT)
        self._items = [self.item(r) for r in read_choice_questions(f, self.name, OBQA_FMT)]
        train = train_file(path, ["train.jsonl", "Main/train.jsonl"])
        self._pool = [self.item(r) for r in read_choice_questions(train, self.name, OBQA_FMT)] if train else None

    @staticmethod
    def item(r: dict) -> MCItem:
        return MCItem(
            context=r["question"],
            choices=[" " + c for c in r["choices"]],
            gold=r["gold"],
            meta={"id": r["id"], "fact1": r["fact1"]},
        )


# -- PIQA --------------------------------------------------------------------------------------------------
PIQA_FMT = "PIQA JSON lines {goal, sol1, sol2} with labels 0/1 one per line in <name>-labels.lst (valid.jsonl)"


def read_piqa(path) -> list[dict]:
    f = find_file(path, ["valid.jsonl", "dev.jsonl", "validation.jsonl"], "piqa", PIQA_FMT)
    recs = read_json_records(f, "piqa", PIQA_FMT)
    require(recs, ["goal", "sol1", "sol2"], f, "piqa", PIQA_FMT)
    if all("label" in r for r in recs):  # Hugging Face export: the label inline
        labels = [r["label"] for r in recs]
    else:
        lst = f.with_name(f.stem + "-labels.lst")
        if not lst.is_file():
            raise FormatError(f"piqa: {f} has no labels: expected {lst.name} beside it ({PIQA_FMT})")
        labels = [x.strip() for x in lst.read_text().splitlines() if x.strip()]
        if len(labels) != len(recs):
            raise FormatError(f"piqa: {lst} has {len(labels)} labels for {len(recs)} questions in {f}")
    return [
        dict(goal=r["goal"], sol1=r["sol1"], sol2=r["sol2"], label=_gold_of(y, 2, f"piqa: {f} record {n}"))
        for n, (r, y) in enumerate(zip(recs, labels), 1)
    ]


class PIQA(FileTask, MultipleChoiceTask):
    name = "piqa"

    def __init__(self, path):
        self._items = [
            MCItem(
                context=f"Question: {r['goal']}\nAnswer:", choices=[" " + r["sol1"], " " + r["sol2"]], gold=r["label"]
            )
            for r in read_piqa(path)
        ]


# -- BoolQ -------------------------------------------------------------------------------------------------
BOOLQ_FMT = "BoolQ JSON lines {question, passage, answer: true/false} (dev.jsonl; or SuperGLUE/HF with label)"


def read_boolq(path) -> list[dict]:
    f = find_file(path, ["dev.jsonl", "val.jsonl", "validation.jsonl"], "boolq", BOOLQ_FMT)
    recs = read_json_records(f, "boolq", BOOLQ_FMT)
    require(recs, ["question", "passage", "answer|label"], f, "boolq", BOOLQ_FMT)
    out = []
    for n, r in enumerate(recs, 1):
        y = r["answer"] if "answer" in r else r["label"]
        if y not in (True, False, 0, 1):  # (True == 1: bools and 0/1 both pass)
            raise FormatError(f"boolq: {f} record {n}: answer/label {y!r} is not true/false or 0/1")
        out.append(dict(question=r["question"], passage=r["passage"], answer=bool(y), title=r.get("title")))
    return out


class BoolQ(FileTask, MultipleChoiceTask):
    name = "boolq"

    def __init__(self, path):
        self._items = [
            MCItem(
                context=f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
                choices=[" no", " yes"],
                gold=int(r["answer"]),
            )
            for r in read_boolq(path)
        ]

    metrics = ("acc",)


# -- WinoGrande --------------------------------------------------------------------------------------------
WINOGRANDE_FMT = "WinoGrande JSON lines {qID, sentence with one '_', option1, option2, answer '1'/'2'} (dev.jsonl)"


def read_winogrande(path) -> list[dict]:
    f = find_file(path, ["dev.jsonl", "validation.jsonl"], "winogrande", WINOGRANDE_FMT)
    recs = read_json_records(f, "winogrande", WINOGRANDE_FMT)
    require(recs, ["sentence", "option1", "option2"], f, "winogrande", WINOGRANDE_FMT)
    lst = f.with_name(f.stem + "-labels.lst")
    labels = [x.strip() for x in lst.read_text().splitlines() if x.strip()] if lst.is_file() else None
    out = []
    for n, r in enumerate(recs, 1):
        where = f"winogrande: {f} record {n}"
        ans = str(r.get("answer", "")).strip() or (labels[n - 1] if labels and n <= len(labels) else "")
        if ans not in ("1", "2"):
            raise FormatError(f"{where}: answer {ans!r} is not '1' or '2' (an unlabeled test split?)")
        if r["sentence"].count("_") != 1:
            raise FormatError(f"{where}: the sentence should have exactly one '_' blank")
        out.append(
            dict(id=r.get("qID"), sentence=r["sentence"], options=[r["option1"], r["option2"]], gold=int(ans) - 1)
        )
    return out


class WinoGrande(FileTask, MultipleChoiceTask):
    """Partial scoring (Trinh & Le 2018, as GPT-3 and lm-eval do): each option fills the blank in its own
    context, and the model scores the same rest of the sentence after each."""

    name = "winogrande"

    def __init__(self, path):
        self._items = [self.item(r) for r in read_winogrande(path)]

    @staticmethod
    def item(r: dict) -> MCItem:
        s = r["sentence"]
        i = s.index("_")
        rest = " " + s[i + 1 :].strip()
        return MCItem(
            context=[s[:i] + o for o in r["options"]], choices=[rest, rest], gold=r["gold"], meta={"id": r["id"]}
        )

    metrics = ("acc",)  # the continuation is shared: the normalizations equal acc


# -- ARC's two sets are one class, so each gets a factory (the other classes are their own factories) ----
def arc_easy(path, **options):
    return ARC(path, "Easy", **options)


def arc_challenge(path, **options):
    return ARC(path, "Challenge", **options)
