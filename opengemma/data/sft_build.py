"""`opengemma data build-sft`: the instruction-tuning conversations, built here from generated questions and the
OpenAI evals registry, with verifiable instructions (instructions.py) attached to a share of them.

    report = build_sft("sft", seed=0, eval_texts=texts, evals_dir=data_path("openai_evals"))

writes, byte for byte the same for a seed:
- train.jsonl          {"messages", "kind", "params", "instruction", "source", "placement", "id", "keys"} per line
                       (instruction: the words as given; keys: the base questions' content keys); kind null: a plain
                       conversation (one or two turns, some with a system message) that just answers
- heldout.jsonl        unseen questions with instructions of the TRAIN kinds (instruction following on new content)
- heldout_kinds.jsonl  unseen questions with instructions of the HELDOUT kinds (never trained on: generalization)
- report.json, report.md   counts per source, kind and placement, and what decontamination removed

An instruction is placed in the last user turn ("user"), in a system message that holds for every turn ("system",
kinds whose parameters do not depend on the answer), or asked of the previous answer ("followup": "Now rewrite your
answer. ..."). Every assistant turn under an instruction is asserted to pass its check. The three files share no
base question: a hash of each question's content key (not its wording) puts it in one split (split_of).
Decontamination (decontam.py's 13-grams, GPT-3's rule): a registry file named like an eval task goes, so does a
registry record holding an eval item's 13-gram (and its whole file when 5% of the file's records do), and any
conversation that still holds one is dropped and another drawn.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_path
from . import openai_evals
from .decontam import EvalText, NGramIndex, decontaminate
from .instructions import HELDOUT_KINDS, TRAIN_KINDS, Example, Kind, follows
from .sft_tasks import generate

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant who answers clearly and briefly.",
                  "You are a concise assistant.", "Answer the user's questions accurately.")  # fmt: skip
FOLLOWUPS = ("Now rewrite your answer.", "Please rewrite your previous answer.", "Can you give me that answer again?")
# train: plain conversations (single, with a system message, two turns), then instructions by placement
TRAIN_MIX = {"plain": 0.20, "plain_system": 0.07, "plain_multi": 0.08, "user": 0.45, "system": 0.10, "followup": 0.10}
HELDOUT_MIX = {"user": 0.70, "system": 0.15, "followup": 0.15}
OVERLAP_SHARE = 0.05  # a registry file goes whole when this share of its records holds an eval 13-gram


@dataclass(frozen=True)
class Base:
    messages: tuple  # the prompt turns ({"role", "content"} dicts), ending with a user turn
    answer: str
    source: str  # "generated:<task>" or "openai_evals:<file>#<record>"
    key: str  # the content's identity: no two splits share one
    topic: str = ""

    @property
    def example(self) -> Example:
        return Example(self.messages[-1]["content"], self.answer, self.topic)

    @property
    def simple(self) -> bool:  # one user turn: may take a system message or join a two-turn conversation
        return len(self.messages) == 1


SPLIT_BUCKETS = {"heldout_kinds": range(0, 2), "heldout": range(2, 4), "train": range(4, 20)}  # of 20: 10/10/80%


def split_of(key: str) -> str:
    """The split a base question belongs to, by a hash of its content key: every task (the small ones too, such as
    25 temperatures) lands in each split in proportion, and no question can reach two splits."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 20
    return next(name for name, r in SPLIT_BUCKETS.items() if bucket in r)


class _Draw:
    """Base questions of the split being made, each given out once: the registry's (a seeded few per file) with
    probability `share` while any fits, else generated ones."""

    def __init__(self, rng: random.Random, pool: list[Base], share: float):
        self.rng, self.pool, self.share, self.used = rng, pool, share, set()
        self.split = "train"
        self.taken: list[str] = []  # the keys given out for the record being made

    def __call__(self, fits=lambda b: True) -> Base:
        if self.pool and self.rng.random() < self.share:
            for i, b in enumerate(self.pool):
                if split_of(b.key) == self.split and fits(b):
                    self.used.add(self.pool.pop(i).key)
                    self.taken.append(b.key)
                    return b
        for _ in range(20_000):
            task, q, a, topic, key = generate(self.rng)
            b = Base(({"role": "user", "content": q},), a, f"generated:{task}", key, topic)
            if key not in self.used and split_of(key) == self.split and fits(b):
                self.used.add(key)
                self.taken.append(key)
                return b
        raise RuntimeError("the generated tasks ran out of new questions: ask for fewer records")


def _bump(d: dict, key: str, by: int = 1) -> None:
    d[key] = d.get(key, 0) + by


def _evals_pool(evals_dir, rng, per_file: int, tasks: set[str], index, ev: dict, decon: dict) -> list[Base]:
    """A seeded sample of `per_file` usable English records per registry file. Decontamination comes first, over
    every record: a file named like an eval task goes, a record holding an eval 13-gram goes, and a file where
    OVERLAP_SHARE of the records hold one goes whole (copied in part from a benchmark: its other records may be
    paraphrases of more items)."""
    names = openai_evals.eval_names(evals_dir)
    by_file: dict[str, list[Base]] = {}
    hits: dict[str, int] = {}
    norm = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    tasks_n = {norm(t) for t in tasks}
    for rel, i, rec in openai_evals.read(evals_dir):
        parts = [rel.split("/")[0], rel.rsplit("/", 1)[-1].removesuffix(".jsonl"), *names.get(rel, [])]
        if tasks_n & {norm(p) for p in parts}:
            _bump(decon["registry_files_named_like_a_task"], rel)
            continue
        conv = openai_evals.conversation(rec)
        ev["records"] += 1
        text = "\n".join(m["content"] for m in conv[0]) + "\n" + conv[1] if conv else ""
        if conv is None or not openai_evals.english_like(text):
            continue
        by_file.setdefault(rel, [])
        if index is not None and (matches := index.matches(text)):
            _bump(hits, rel)
            for t in sorted({m.task for m in matches}):
                _bump(decon["registry_records_by_task"], t)
            continue
        key = "openai_evals:" + hashlib.sha1(json.dumps(rec["input"], sort_keys=True).encode()).hexdigest()[:16]
        by_file[rel].append(Base(tuple(conv[0]), conv[1], f"openai_evals:{rel}#{i}", key))
    for rel, k in hits.items():
        if k >= OVERLAP_SHARE * (k + len(by_file[rel])):
            decon["registry_files_overlapping"][rel] = {"matched": k, "records": k + len(by_file.pop(rel))}
    decon["registry_records_removed"] = sum(hits.values())
    pool, seen = [], set()
    for rel in sorted(by_file):
        for b in rng.sample(by_file[rel], min(per_file, len(by_file[rel]))):
            if b.key not in seen:  # a prompt may recur within and across files
                seen.add(b.key)
                pool.append(b)
    rng.shuffle(pool)
    ev.update(files=len(by_file), usable_english=sum(map(len, by_file.values())), pool=len(pool))
    return pool


def _attach(rng: random.Random, question: str, phrase: str, kind: Kind) -> str:
    """The request with the instruction after it (on the same line or the next), or before it (except for
    repeat_prompt, whose phrasing refers to the request before it)."""
    r = rng.random()
    if r < 0.6:
        return f"{question} {phrase}"
    return f"{phrase}\n\n{question}" if r > 0.85 and kind.name != "repeat_prompt" else f"{question}\n\n{phrase}"


def _record(rng: random.Random, draw: _Draw, kind: Kind | None, placement: str) -> dict:
    """One conversation: plain ("plain", "plain_system", "plain_multi") or with `kind` placed as `placement`."""
    msg = lambda role, content: {"role": role, "content": content}
    if kind is None:
        b = draw(lambda b: b.simple) if placement != "plain" else draw()
        msgs = list(b.messages)
        if placement == "plain_system":
            msgs.insert(0, msg("system", rng.choice(SYSTEM_PROMPTS)))
        if placement == "plain_multi":
            first = b
            b = draw(lambda b: b.simple)
            msgs = [*first.messages, msg("assistant", first.answer), *b.messages]
        rec = {"messages": [*msgs, msg("assistant", b.answer)], "kind": None, "params": {}, "instruction": None}
        return {**rec, "source": b.source}
    fits = lambda b: kind.draw(random.Random(0), b.example) is not None
    b = draw(fits if placement == "user" else lambda b: b.simple and fits(b))
    params = kind.draw(rng, b.example)
    phrase = kind.phrase(rng, params)
    if placement == "user":
        msgs = [*b.messages[:-1], msg("user", _attach(rng, b.messages[-1]["content"], phrase, kind))]
        if b.simple and rng.random() < 0.2:  # an earlier, plain exchange before it
            a = draw(lambda b: b.simple)
            msgs = [*a.messages, msg("assistant", a.answer), *msgs]
        turns = [b]
    elif placement == "followup":
        msgs = [*b.messages, msg("assistant", b.answer), msg("user", f"{rng.choice(FOLLOWUPS)} {phrase}")]
        turns = [b]
    else:  # system: the instruction holds for every turn
        msgs = [msg("system", f"{rng.choice(SYSTEM_PROMPTS)} {phrase}" if rng.random() < 0.5 else phrase)]
        turns = [b, draw(lambda b: b.simple and fits(b))] if rng.random() < 0.3 else [b]
    for t in turns:
        out = kind.apply(t.answer, params)
        assert follows(kind.name, out, params, phrase), (kind.name, params, out)
        if placement == "system":
            msgs += [*t.messages, msg("assistant", out)]
    if placement == "system":
        msgs.pop()
    rec = {"messages": [*msgs, msg("assistant", out)], "kind": kind.name, "params": params, "instruction": phrase}
    return {**rec, "source": turns[-1].source}


def _split(name, n, rng, draw, kinds, mix, index, decon: dict) -> list[dict]:
    """n records; instructed ones cycle through `kinds` (balanced), placements drawn from `mix`."""
    out, k, tries = [], 0, 0
    draw.split = name
    while len(out) < n:
        tries += 1
        if tries > 10 * n + 100:
            raise RuntimeError(f"decontamination removed {decon['conversations_removed']:,} candidates: too many")
        placement = rng.choices(list(mix), weights=list(mix.values()))[0]
        kind = None
        if not placement.startswith("plain"):
            kind = kinds[k % len(kinds)]
            if placement == "system" and not kind.system or placement == "followup" and not kind.followup:
                placement = "user"
        draw.taken = []
        rec = _record(rng, draw, kind, placement)
        if index is not None:
            text = "\n".join(m["content"] for m in rec["messages"])
            kept, matches = decontaminate(text, index)
            if kept is None:
                decon["conversations_removed"] += 1
                for t in sorted({m.task for m in matches}):
                    _bump(decon["conversations_by_task"], t)
                _bump(decon["conversations_by_source"], rec["source"].split(":")[0])
                continue
        k += kind is not None
        out.append(
            {**rec, "placement": placement if kind else None, "id": f"{name}-{len(out):05d}", "keys": draw.taken}
        )
    return out


def build_sft(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_heldout: int = 300,
    n_heldout_kinds: int | None = None,
    eval_texts: Iterable[EvalText] | None = None,
    eval_tasks: Iterable[str] = (),
    evals_dir: str | Path | None = None,
    evals_missing: str | None = None,
    evals_per_file: int = 4,
    evals_share: float = 0.25,
    progress: bool = False,
) -> dict:
    """Write train.jsonl, heldout.jsonl, heldout_kinds.jsonl, report.json and report.md to out_dir; return the report.
    eval_texts: the eval suite's items to decontaminate against (None: no decontamination); eval_tasks: task names
    a registry file may not carry (the names in eval_texts count too); evals_dir: `opengemma data get openai_evals`'s
    directory (None: generated questions only, evals_missing saying why)."""
    say = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    rng = random.Random(f"sft:{seed}")
    decon = {"enabled": eval_texts is not None, "conversations_removed": 0, "conversations_by_task": {},
             "conversations_by_source": {}, "registry_records_removed": 0, "registry_records_by_task": {},
             "registry_files_named_like_a_task": {}, "registry_files_overlapping": {}}  # fmt: skip
    index = None
    if eval_texts is not None:
        texts = list(eval_texts)
        index = NGramIndex(texts, n=13)
        eval_tasks = {*eval_tasks, *index.tasks}
        decon.update(n=13, eval_items=len(texts), tasks=sorted(index.tasks), short_items=sum(index.short.values()))
        say(f"decontaminating against {len(texts):,} eval items of {len(index.tasks)} tasks")
    ev = {"used": evals_dir is not None, "missing": evals_missing, "records": 0}
    pool = _evals_pool(evals_dir, rng, evals_per_file, set(eval_tasks), index, ev, decon) if evals_dir else []
    draw = _Draw(rng, pool, evals_share)
    splits = {
        "heldout_kinds": _split("heldout_kinds", n_heldout if n_heldout_kinds is None else n_heldout_kinds, rng,
                                draw, HELDOUT_KINDS, HELDOUT_MIX, index, decon),
        "heldout": _split("heldout", n_heldout, rng, draw, TRAIN_KINDS, HELDOUT_MIX, index, decon),
        "train": _split("train", n_train, rng, draw, TRAIN_KINDS, TRAIN_MIX, index, decon),
    }  # fmt: skip
    ev["used_records"] = sum(r["source"].startswith("openai_evals") for s in splits.values() for r in s)
    overlapping = sum(f["records"] - f["matched"] for f in decon["registry_files_overlapping"].values())
    decon["removed"] = (decon["conversations_removed"] + decon["registry_records_removed"] + overlapping
                        + sum(decon["registry_files_named_like_a_task"].values()))  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kinds = {"train": [k.name for k in TRAIN_KINDS], "heldout": [k.name for k in HELDOUT_KINDS]}
    report = {"seed": seed, "kinds": kinds, "openai_evals": ev, "decontamination": decon, "splits": {}}
    for name, records in splits.items():
        with atomic_path(out / f"{name}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        report["splits"][name] = _counts(records)
        say(f"wrote {out / name}.jsonl: {len(records):,} conversations")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report))
    return report


def _counts(records: list[dict]) -> dict:
    chars = [sum(len(m["content"]) for m in r["messages"]) for r in records]
    return {
        "records": len(records),
        "by_source": dict(Counter(r["source"].split(":")[0] for r in records)),
        "by_task": dict(Counter(r["source"].split(":")[1] for r in records if r["source"].startswith("generated"))),
        "by_kind": dict(Counter(r["kind"] or "(plain)" for r in records)),
        "by_placement": dict(Counter(r["placement"] or "(plain)" for r in records)),
        "two_turns": sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in records),
        "with_system": sum(r["messages"][0]["role"] == "system" for r in records),
        "mean_chars": round(sum(chars) / max(len(chars), 1), 1),
        "max_chars": max(chars, default=0),
    }


def markdown(report: dict) -> str:
    """report.md: the splits per source, kind and placement, and what decontamination removed."""
    s, ev, d = report["splits"], report["openai_evals"], report["decontamination"]
    lines = ["# SFT data", "", "| | " + " | ".join(s) + " |", "|---|" + "---:|" * len(s)]
    rows = [("conversations", lambda c: c["records"]), ("two turns", lambda c: c["two_turns"]),
            ("with a system message", lambda c: c["with_system"]),
            ("mean characters", lambda c: c["mean_chars"])]  # fmt: skip
    for group in ("by_source", "by_placement", "by_kind"):
        keys = sorted({k for c in s.values() for k in c[group]})
        rows += [(f"{group[3:]}: {k}", lambda c, g=group, k=k: c[g].get(k, 0)) for k in keys]
    lines += [f"| {label} | " + " | ".join(str(f(c)) for c in s.values()) + " |" for label, f in rows]
    lines += ["", "## OpenAI evals registry", ""]
    if ev["used"]:
        lines.append(f"{ev['records']:,} usable records read; {ev['usable_english']:,} English ones in {ev['files']} "
                     f"files after decontamination; {ev['pool']:,} sampled, {ev['used_records']:,} used.")  # fmt: skip
    else:
        lines.append(f"Not used: {ev['missing'] or 'no evals_dir given'}. Generated questions only.")
    lines += ["", "## Decontamination", ""]
    if d["enabled"]:
        lines += [f"Against the {d['eval_items']:,} items of {len(d['tasks'])} eval tasks ({', '.join(d['tasks'])}), "
                  f"13-grams: {d['removed']:,} candidates removed in all.", "",
                  f"- conversations holding an eval 13-gram: {d['conversations_removed']:,} "
                  f"{d['conversations_by_task'] or ''}",
                  f"- registry records holding one: {d['registry_records_removed']:,} "
                  f"{d['registry_records_by_task'] or ''}",
                  f"- registry files dropped whole (>= {OVERLAP_SHARE:.0%} of records overlapping): "
                  f"{d['registry_files_overlapping'] or 'none'}"]  # fmt: skip
    else:
        lines.append("Not run (no eval texts given).")
    if d["registry_files_named_like_a_task"]:
        lines.append(f"- registry files named like an eval task: {d['registry_files_named_like_a_task']}")
    return "\n".join(lines) + "\n"
