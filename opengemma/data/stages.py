"""The bodies of `opengemma data prepare`'s sharded stages (pipeline.py runs them, in this process or a pool) and
the small files they leave: gzip'd JSON lines written deterministically, JSON records written last.

Every function here is top level and takes one picklable job, so a "spawn" pool can run it; what all units of a
stage share (the decontamination index) is sent once per worker through the pool's initializer (_STATE)."""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..atomic import atomic_path
from . import dedup, pii, readers
from .decontam import decontaminate
from .filters import build_filters

# -- small files -------------------------------------------------------------------------------------------------------


def write_jsonl_gz(path: Path, records: Iterable[dict], level: int = 3) -> int:
    """Atomically write records as gzip'd JSON lines (mtime 0: the same records give the same bytes). -> count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz:
            w = io.TextIOWrapper(gz, encoding="utf-8")
            for r in records:
                w.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
            w.flush()
            w.detach()
    return n


def read_jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or torn: the unit is not done


# -- the process pool --------------------------------------------------------------------------------------------------


_STATE: dict = {}  # what every unit of a stage shares (the decontamination index): sent once per worker, not per unit


def _set_state(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state)


def run_units(fn: Callable, items: list, workers: int, desc: str, progress: bool, state: dict | None = None) -> list:
    """fn over items, in order; in this process when workers <= 1 or there is one item."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="unit", disable=not progress or not items)
    out = []
    if workers <= 1 or len(items) <= 1:
        _set_state(state or {})
        for it in items:
            out.append(fn(it))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(workers, len(items)), mp_context=ctx, initializer=_set_state, initargs=(state or {},)
        ) as pool:
            for r in pool.map(fn, items):
                out.append(r)
                bar.update()
    bar.close()
    return out


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


# -- stage bodies (top-level functions: they run in worker processes) --------------------------------------------------


def quality_shard(job: tuple[Path, Path, dict]) -> dict:
    src, dst, filter_cfg = job
    filters = build_filters(filter_cfg)
    kept, removed = [], []
    stats = {"docs_in": 0, "bytes_in": 0, "removed": {}}
    for rec in read_jsonl_gz(src):
        n = len(rec["text"].encode("utf-8"))
        stats["docs_in"] += 1
        stats["bytes_in"] += n
        for f in filters:
            reason = f(rec["text"])
            if reason is not None:
                removed.append({**rec, "stage": f.name, "reason": reason})
                r = stats["removed"].setdefault(f.name, [0, 0])
                r[0], r[1] = r[0] + 1, r[1] + n
                break
        else:
            kept.append(rec)
    write_jsonl_gz(dst / "kept.jsonl.gz", kept, level=1)
    write_jsonl_gz(dst / "removed.jsonl.gz", removed, level=1)
    stats["docs_out"] = len(kept)
    write_json(dst / "done.json", stats)
    return stats


def _scored(shard: Path) -> Iterator[tuple[dict, list | None]]:
    """(document, [stage, reason] if the model score removed it else None) for each quality survivor."""
    verdicts = read_json(shard / "score.json") if (shard / "score.json").exists() else None
    for i, rec in enumerate(read_jsonl_gz(shard / "kept.jsonl.gz")):
        yield rec, verdicts[i] if verdicts is not None else None


def _survivors(shard: Path) -> Iterator[dict]:
    """The documents of a shard that passed the quality filters and, if it ran, the model score."""
    return (rec for rec, verdict in _scored(shard) if verdict is None)


def signature_shard(job: tuple[Path, dedup.MinHashConfig, bool]) -> int:
    shard, mh, want_keys = job
    docs = list(_survivors(shard))
    texts = [d["text"] for d in docs]
    with atomic_path(shard / "hash.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, dedup.content_hashes(texts))
    if want_keys:
        keys = dedup.band_keys(texts, mh) if texts else np.zeros((0, mh.bands), np.uint64)
        with atomic_path(shard / "keys.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, keys)
    write_json(shard / "ids.json", [d["id"] for d in docs])  # last: the record that the shard is done
    return len(docs)


def bucket_band(job: tuple[list[Path], int, Path]) -> int:
    files, band, dst = job
    keys = [np.load(f, mmap_mode="r") for f in files]
    pairs = dedup.bucket_pairs(keys, band)
    with atomic_path(dst) as tmp, open(tmp, "wb") as f:
        np.save(f, pairs)
    return len(pairs)


_ID_CACHE: dict[Path, list[str]] = {}


def _doc_id(shards: list[Path], offsets: np.ndarray, g: int) -> str:
    s = int(np.searchsorted(offsets, g, side="right") - 1)
    if shards[s] not in _ID_CACHE:
        _ID_CACHE.clear()  # one shard at a time is enough: roots are mostly near their members
        _ID_CACHE[shards[s]] = json.loads((shards[s] / "ids.json").read_text())
    return _ID_CACHE[shards[s]][g - int(offsets[s])]


def final_shard(job: dict) -> dict:
    shard, index = job["shard"], _STATE.get("index")
    roots = {k: np.load(p, mmap_mode="r") for k, p in job["roots"].items()}
    shards, offsets, off = job["shards"], np.asarray(job["offsets"]), job["offset"]
    stats = {"removed": {}, "pii": {}, "decontam": {}, "docs_out": 0, "bytes_out": 0}
    kept, removed = [], []

    def drop(rec, stage, reason, n):
        removed.append({**rec, "stage": stage, "reason": reason})
        r = stats["removed"].setdefault(stage, [0, 0])
        r[0], r[1] = r[0] + 1, r[1] + n

    for rec, verdict in _scored(shard):
        if verdict is not None:
            drop(rec, verdict[0], verdict[1], len(rec["text"].encode("utf-8")))
    for row, rec in enumerate(_survivors(shard)):
        g, text = off + row, rec["text"]
        n = len(text.encode("utf-8"))
        if "exact" in roots and roots["exact"][g] != g:
            drop(rec, "exact_dedup", f"duplicate of {_doc_id(shards, offsets, int(roots['exact'][g]))}", n)
            continue
        if "near" in roots and roots["near"][g] != g:
            drop(rec, "minhash_dedup", f"near-duplicate of {_doc_id(shards, offsets, int(roots['near'][g]))}", n)
            continue
        if index is not None:
            new, matches = decontaminate(text, index, mode=job["decontam_mode"])
            for task in sorted({m.task for m in matches}):
                t = stats["decontam"].setdefault(task, {"documents": 0, "examples": []})
                t["documents"] += 1
                if len(t["examples"]) < 3:
                    m = next(m for m in matches if m.task == task)
                    t["examples"].append({"id": rec["id"], "item": m.item, "text": text[m.start : m.end][:300]})
            if new is None:
                first = matches[0]
                more = f" (+{len(matches) - 1} more)" if len(matches) > 1 else ""
                drop(rec, "decontamination", f"{index.n}-gram overlap with {first.task} item {first.item}{more}", n)
                continue
            if new != text:
                stats["removed"].setdefault("decontamination_excised_bytes", [0, 0])[1] += n - len(new.encode())
            text = new
        if job["pii"]:
            text, findings = pii.redact(text, job["pii_kinds"])
            for f in findings:
                stats["pii"][f.kind] = stats["pii"].get(f.kind, 0) + 1
            stats["pii_documents"] = stats.get("pii_documents", 0) + bool(findings)
        kept.append({**rec, "text": text})
        stats["docs_out"] += 1
        stats["bytes_out"] += len(text.encode("utf-8"))
    write_jsonl_gz(job["kept"], kept)
    write_jsonl_gz(job["removed"], [*read_jsonl_gz(shard / "removed.jsonl.gz"), *removed])
    write_json(shard / "final.json", stats)
    return stats


def read_kept_texts(path: Path) -> Iterator[str]:
    """The texts of a kept/*.jsonl.gz file (what the shards stage tokenizes)."""
    for rec in read_jsonl_gz(path):
        yield rec["text"]


def read_input_texts(path: Path, **read_kw) -> Iterator[str]:
    for doc in readers.iter_documents(path, errors=readers.ReadErrors(), **read_kw):
        yield doc.text
