"""The OpenAI evals registry (PyPI `evals` 3.0.1.post1) as short-answer chat data: which of its JSONL files hold
exact answers, which records are usable for SFT, and each record as a conversation for Gemma's chat format.

    files = answer_files(yaml_texts)            # {samples path: [eval names]}: Match, Includes, FuzzyMatch
    usable(record)                              # a short ideal answer, a short text-only prompt
    messages, ideal = conversation(record)      # roles normalized: system first (or none), then user/assistant

The registry's records are {"input": [chat messages], "ideal": answer or [answers]}. Only the evals graded by
comparing the reply with `ideal` (evals.elsuite.basic: Match, Includes, FuzzyMatch) are kept: a model-graded
eval's ideal is a hint for a grader, and the other eval classes run their own protocols. A record needs a short
ideal (one line, <= 120 characters), a prompt of <= 1500 characters of text (no image or file references), and no
request to show reasoning: its ideal is the final answer alone, and training a model to skip the reasoning it was
asked for would teach it to ignore instructions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

ANSWER_CLASSES = ("Match", "Includes", "FuzzyMatch")
MAX_IDEAL, MAX_PROMPT = 120, 1500
_MEDIA = re.compile(r"data:image|https?://\S+\.(?:png|jpe?g|gif|webp|svg|pdf|mp3|wav)\b", re.IGNORECASE)
_REASONING = re.compile(
    r"step[- ]by[- ]step|explain your (?:reasoning|answer)|show your work|reasoning first|your reasoning|"
    r"chain of thought|think (?:it )?through",
    re.IGNORECASE,
)


def answer_files(yaml_texts: dict[str, str]) -> dict[str, list[str]]:
    """{samples_jsonl path: [eval names]} of the evals whose class is one of ANSWER_CLASSES, read from the registry's
    YAML files ({file name: text}). The files are flat mappings of eval name -> {class, args: {samples_jsonl}}, in
    either key order, so a line scan per top-level block reads them without a YAML parser."""
    out: dict[str, list[str]] = {}
    for name in sorted(yaml_texts):
        for block in re.split(r"(?m)^(?=[^\s#])", yaml_texts[name]):
            cls = re.search(r"(?m)^\s+class:\s*['\"]?([\w.:]+)", block)
            path = re.search(r"(?m)^\s+samples_jsonl:\s*['\"]?([^\s'\"]+)", block)
            if cls and path and cls.group(1).rsplit(":", 1)[-1] in ANSWER_CLASSES:
                evals = out.setdefault(path.group(1), [])
                evals.append(block.split(":", 1)[0].strip())
    return out


def ideal(record: dict) -> str | None:
    """The record's answer: its ideal, or the first of a list of them."""
    x = record.get("ideal")
    if isinstance(x, list):
        x = x[0] if x and all(isinstance(i, str) for i in x) else None
    return x.strip() if isinstance(x, str) else None


def usable(record: dict) -> bool:
    answer, msgs = ideal(record), record.get("input")
    if not answer or "\n" in answer or len(answer) > MAX_IDEAL or not isinstance(msgs, list) or not msgs:
        return False
    roles = ("system", "user", "assistant")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in roles for m in msgs):
        return False
    text = "\n".join(m["content"] for m in msgs)
    return len(text) <= MAX_PROMPT and not _MEDIA.search(text) and not _REASONING.search(text)


def english_like(text: str, share: float = 0.98) -> bool:
    """Mostly ASCII: the registry holds many languages, and the verifiable instructions (capital letters, word
    counts, sentences) are English conventions."""
    return sum(c.isascii() for c in text) >= share * len(text)


def conversation(record: dict) -> tuple[list[dict], str] | None:
    """(messages ending with a user turn, the ideal answer), or None. Few-shot turns (system messages named
    example_user / example_assistant) become user and assistant turns; leading system messages merge into one;
    a later system message is said by the user; consecutive turns of one role merge (Gemma's format alternates)."""
    if not usable(record):
        return None
    turns: list[list[str]] = []
    for m in record["input"]:
        role = {"example_user": "user", "example_assistant": "assistant"}.get(m.get("name"), m["role"])
        if role == "system" and turns and turns[-1][0] != "system":
            role = "user"
        content = m["content"].strip()
        if not content:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + content
        else:
            turns.append([role, content])
    if turns and turns[0][0] == "system" and (len(turns) == 1 or turns[1][0] != "user"):
        turns[0][0] = "user"  # a prompt given only as a system message (or one followed by an answer) is a request
    if not turns or turns[-1][0] != "user" or turns[int(turns[0][0] == "system")][0] != "user":
        return None
    return [{"role": r, "content": c} for r, c in turns], ideal(record)


def read(evals_dir: str | Path) -> Iterator[tuple[str, int, dict]]:
    """(path relative to registry/data, record index, record) of every record under evals_dir/registry/data, files in
    sorted order; unreadable lines are skipped."""
    root = Path(evals_dir) / "registry" / "data"
    for path in sorted(root.rglob("*.jsonl")):
        rel = path.relative_to(root).as_posix()
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rel, i, rec


def eval_names(evals_dir: str | Path) -> dict[str, list[str]]:
    """{file: [eval names]} from the index `opengemma data get openai_evals` writes ({} without one)."""
    index = Path(evals_dir) / "index.json"
    if not index.exists():
        return {}
    return {f: info.get("evals", []) for f, info in json.loads(index.read_text())["files"].items()}
