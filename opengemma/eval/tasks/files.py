"""Reading the files that benchmarks are released as: find the file in a directory, parse JSON lines /
JSON / TSV / CSV, and fail with an error that names the expected format when a file is not that dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence


class FormatError(ValueError):
    """A data file is missing, malformed, or not the dataset it was given as."""


class FileTask:
    """A Task mixin: items read once from the user's file; shots from the train split beside it, if any."""

    _items: list
    _pool: list | None = None

    def items(self) -> list:
        return self._items

    def fewshot_pool(self) -> list | None:
        return self._pool


def find_file(path, names: Sequence[str], dataset: str, fmt: str) -> Path:
    """`path` itself when it is a file, else the first of `names` (glob patterns, in order) inside it."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FormatError(f"{dataset}: {p} does not exist (expected {fmt})")
    hit = find_optional(p, names)
    if hit is None:
        raise FormatError(f"{dataset}: no data file in {p}; looked for {', '.join(names)} ({fmt})")
    return hit


def find_optional(directory, names: Sequence[str]) -> Path | None:
    d = Path(directory)
    if not d.is_dir():
        return None
    for n in names:
        hits = sorted(d.glob(n))
        if hits:
            return hits[0]
    return None


def train_file(path, names: Sequence[str]) -> Path | None:
    """A train split beside the evaluation file, only when the user gave a directory: a lone file means
    'these items only', and shots then come from the other evaluation items."""
    return find_optional(path, names) if Path(path).is_dir() else None


def read_json_records(path: Path, dataset: str, fmt: str) -> list[dict]:
    """JSON lines, or one JSON array of objects (some Hugging Face exports)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            recs = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{dataset}: {path} is not valid JSON ({fmt}): {e}") from None
    else:
        recs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FormatError(f"{dataset}: {path}:{n} is not a JSON line ({fmt}): {e}") from None
    if not recs:
        raise FormatError(f"{dataset}: {path} holds no records ({fmt})")
    for n, r in enumerate(recs, 1):
        if not isinstance(r, dict):
            raise FormatError(f"{dataset}: {path} record {n} is not a JSON object ({fmt})")
    return recs


def require(recs: list[dict], fields: Sequence[str], path, dataset: str, fmt: str) -> None:
    """Every record has `fields` (one of 'a|b' is enough); else name the first record that does not."""
    for n, r in enumerate(recs, 1):
        missing = [f for f in fields if not any(alt in r for alt in f.split("|"))]
        if missing:
            raise FormatError(
                f"{dataset}: {path} record {n} lacks {', '.join(missing)}; "
                f"has {', '.join(sorted(r)) or 'nothing'} (expected {fmt})"
            )


def read_table(path: Path, dataset: str, fmt: str, fields: Sequence[str], delimiter: str = ",") -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in fields if c not in header]
        if missing:
            raise FormatError(
                f"{dataset}: {path} lacks column(s) {', '.join(missing)}; header is {header} (expected {fmt})"
            )
        rows = list(reader)
    if not rows:
        raise FormatError(f"{dataset}: {path} holds no rows ({fmt})")
    return rows


def choice_index(labels: list[str], key, where: str) -> int:
    """Index of an answer key among choice labels ('A'..'E' or '1'..'5'; keys are sometimes padded)."""
    key = str(key).strip()
    if key not in labels:
        raise FormatError(f"{where}: answer key {key!r} is not one of the choice labels {labels}")
    return labels.index(key)
