"""`opengemma data prepare`: raw text in; quality-filtered, deduplicated, decontaminated, PII-redacted documents,
token shards and a report of what each stage removed out. `tokenize` makes shards without filtering.

Stages, each sharded (a work shard is `run.shard_docs` documents of one source) and resumable (a unit of work is
done iff its record exists; every file is written with atomic_path, its record last):

    read        inputs -> work/read/<source>/<k>.jsonl.gz          main process, streamed
    quality     filters (filters.py), first failing one removes     per shard, process pool
    score       model-based quality (optional ScoreFilters)         main process (the model lives there)
    signatures  exact content hash + MinHash band keys              per shard, process pool
    buckets     one band's key collisions -> pairs                  per band, process pool
    clusters    union-find over all pairs; exact and near roots     main process
    final       dedup masks, decontamination, PII redaction         per shard, process pool
                -> kept/<source>.<k>.jsonl.gz, removed/<source>.<k>.jsonl.gz
    tokenizer   optional: train a SentencePiece model on kept text  main process
    shards      kept -> shards/<source>/<k>.bin (shards.py)         per part, process pool
    report      report.json, report.md, report.png                  main process

Global document order (source order, then shard, then row) makes every choice deterministic: the survivor of a
duplicate cluster is its first document, and a crash + rerun writes what one clean run writes. The pool uses
"spawn" (safe whatever the parent imported); workers=1 runs everything in this process.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..atomic import atomic_path
from . import dedup, pii, readers
from .config import PipelineConfig
from .decontam import EvalText, NGramIndex, decontaminate
from .filters import ScoreFilter, build_filters

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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or torn: the unit is not done


def source_names(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """One name per input (its base name without suffixes), made unique in order: "a", "a-2", ..."""
    names: list[str] = []
    for inp in inputs:
        base = Path(inp).name.split(".")[0] or "source"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


# -- the process pool --------------------------------------------------------------------------------------------------


_STATE: dict = {}  # what every unit of a stage shares (the decontamination index): sent once per worker, not per unit


def _set_state(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state)


def _map(fn: Callable, items: list, workers: int, desc: str, progress: bool, state: dict | None = None) -> list:
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


def _quality_shard(job: tuple[Path, Path, dict]) -> dict:
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


def _survivors(shard: Path) -> Iterator[dict]:
    """The documents of a shard that passed the quality filters and, if it ran, the model score."""
    mask_path = shard / "score.npy"
    mask = np.load(mask_path) if mask_path.exists() else None
    for i, rec in enumerate(read_jsonl_gz(shard / "kept.jsonl.gz")):
        if mask is None or mask[i]:
            yield rec


def _signature_shard(job: tuple[Path, dedup.MinHashConfig, bool]) -> int:
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


def _bucket_band(job: tuple[list[Path], int, Path]) -> int:
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


def _final_shard(job: dict) -> dict:
    shard, index = job["shard"], _STATE.get("index")
    roots = {k: np.load(p, mmap_mode="r") for k, p in job["roots"].items()}
    shards, offsets, off = job["shards"], np.asarray(job["offsets"]), job["offset"]
    stats = {"removed": {}, "pii": {}, "decontam": {}, "docs_out": 0, "bytes_out": 0}
    kept, removed = [], []

    def drop(rec, stage, reason, n):
        removed.append({**rec, "stage": stage, "reason": reason})
        r = stats["removed"].setdefault(stage, [0, 0])
        r[0], r[1] = r[0] + 1, r[1] + n

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


# -- the run -----------------------------------------------------------------------------------------------------------


def _read_stage(inputs, names, work: Path, cfg: PipelineConfig, progress: bool) -> dict:
    """Split every input into work shards of run.shard_docs documents (streamed)."""
    from tqdm.auto import tqdm

    done = _read_json(work / "read" / "done.json")
    if done is not None:
        return done
    shutil.rmtree(work / "read", ignore_errors=True)
    out = {"sources": {}, "errors": {}}
    kw = dict(text_field=cfg.read.text_field, id_field=cfg.read.id_field, text_unit=cfg.read.text_unit)
    for inp, name in zip(inputs, names):
        errors = readers.ReadErrors()
        shards, chunk, n_docs, n_bytes = [], [], 0, 0
        root = Path(inp) if Path(inp).is_dir() else Path(inp).parent

        def flush():
            d = work / "read" / name / f"{len(shards):05d}"
            write_jsonl_gz(d / "docs.jsonl.gz", chunk, level=1)
            shards.append(str(d.relative_to(work)))
            chunk.clear()

        bar = tqdm(desc=f"read {name}", unit="doc", disable=not progress)
        for f in readers.list_files(inp):
            for doc in readers.iter_documents(f, root=root, errors=errors, **kw):
                chunk.append({"id": doc.id, "text": doc.text, **doc.meta})
                n_docs += 1
                n_bytes += len(doc.text.encode("utf-8"))
                bar.update()
                if len(chunk) == cfg.run.shard_docs:
                    flush()
        if chunk or not shards:
            flush()
        bar.close()
        out["sources"][name] = {"input": str(inp), "shards": shards, "docs": n_docs, "bytes": n_bytes}
        out["errors"][name] = errors.as_dict()
    write_json(work / "read" / "done.json", out)
    return out


def prepare(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cfg: PipelineConfig | None = None,
    *,
    eval_texts: Iterable[EvalText] | None = None,
    tokenizer=None,
    score_filters: Sequence[ScoreFilter] = (),
    progress: bool = True,
    force: bool = False,
) -> dict:
    """Run the whole chain (module docstring) into `out`; returns the report. `eval_texts`: what decontamination
    matches against (the caller gathers them: eval/contamination.py); `tokenizer`: a Tokenizer for the shards."""
    from .report import build_report, write_report

    cfg = cfg or PipelineConfig()
    out, work = Path(out), Path(out) / "work"
    workers = cfg.run.workers or default_workers()
    names = source_names(inputs)
    index = None
    if cfg.decontam.enabled and eval_texts is not None:
        index = NGramIndex(eval_texts, n=cfg.decontam.n)
    fingerprint = {
        "config": cfg.fingerprint(),
        "inputs": [str(Path(i).resolve()) for i in inputs],
        "eval_tasks": sorted(index.tasks) if index is not None else None,
        "score_filters": [f.name for f in score_filters],
    }
    old = _read_json(work / "run.json")
    if old is not None and old != fingerprint:
        if not force:
            raise ValueError(f"{out} holds a run with other settings or inputs: pass --force to start over")
        shutil.rmtree(out)
    elif old is None and out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty and holds no opengemma data run: choose another --out or pass --force")
    write_json(work / "run.json", fingerprint)
    timings: dict[str, float] = {}

    def timed(stage, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t
        return r

    read = timed("read", _read_stage, inputs, names, work, cfg, progress)
    shards = [work / s for n in names for s in read["sources"][n]["shards"]]
    shard_source = [n for n in names for _ in read["sources"][n]["shards"]]

    jobs = [(s / "docs.jsonl.gz", s, cfg.filters) for s in shards if _read_json(s / "done.json") is None]
    timed("quality", _map, _quality_shard, jobs, workers, "quality filters", progress)

    for f in score_filters:  # the model runs here, in batches, once per shard
        for s in shards:
            if not (s / "score.npy").exists():
                texts = [r["text"] for r in read_jsonl_gz(s / "kept.jsonl.gz")]
                keep = np.array([r is None for r in timed("score", f.reasons, texts)], dtype=bool)
                with atomic_path(s / "score.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, keep)

    mh = dedup.MinHashConfig(cfg.dedup.ngram, cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.seed)
    jobs = [(s, mh, cfg.dedup.minhash) for s in shards if _read_json(s / "ids.json") is None]
    timed("signatures", _map, _signature_shard, jobs, workers, "dedup signatures", progress)
    counts = [len(json.loads((s / "ids.json").read_text())) for s in shards]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_docs = int(offsets[-1])

    roots: dict[str, Path] = {}
    cluster_stats: dict = {}
    (work / "dedup").mkdir(parents=True, exist_ok=True)
    if cfg.dedup.exact:
        roots["exact"] = work / "dedup" / "exact_roots.npy"
        if not roots["exact"].exists():
            hashes = [np.load(s / "hash.npy")[:, None] for s in shards]
            r = timed("exact_dedup", lambda: dedup.cluster_roots([dedup.bucket_pairs(hashes, 0)], n_docs))
            _save(roots["exact"], r)
    if cfg.dedup.minhash:
        roots["near"] = work / "dedup" / "near_roots.npy"
        if not roots["near"].exists():
            bands = [(i, work / "dedup" / f"band-{i:03d}.npy") for i in range(mh.bands)]
            jobs = [([s / "keys.npy" for s in shards], i, p) for i, p in bands if not p.exists()]
            timed("minhash_buckets", _map, _bucket_band, jobs, workers, "dedup buckets", progress)
            pairs = (np.load(p) for _, p in bands)
            _save(roots["near"], timed("minhash_clusters", dedup.cluster_roots, pairs, n_docs))
        cluster_stats = {str(k): v for k, v in sorted(dedup.cluster_sizes(np.load(roots["near"])).items())}

    jobs = []
    for s, src, off in zip(shards, shard_source, offsets[:-1]):
        if _read_json(s / "final.json") is None:
            jobs.append(
                {
                    "shard": s,
                    "roots": {k: str(v) for k, v in roots.items()},
                    "shards": shards,
                    "offsets": offsets.tolist(),
                    "offset": int(off),
                    "decontam_mode": cfg.decontam.mode,
                    "pii": cfg.pii.enabled,
                    "pii_kinds": cfg.pii.kinds,
                    "kept": out / "kept" / f"{src}.{s.name}.jsonl.gz",
                    "removed": out / "removed" / f"{src}.{s.name}.jsonl.gz",
                }
            )
    timed("final", _map, _final_shard, jobs, workers, "dedup, decontamination, PII", progress, {"index": index})

    manifest = None
    if cfg.tokenize.enabled:
        kept_parts = [(src, s.name, out / "kept" / f"{src}.{s.name}.jsonl.gz") for s, src in zip(shards, shard_source)]
        if cfg.tokenize.train_vocab:
            tokenizer = timed("tokenizer", _train_tokenizer, out, kept_parts, cfg.tokenize.train_vocab, progress)
        if tokenizer is None:
            raise ValueError("the shards stage needs a tokenizer (or disable it: --disable tokenize)")
        from .shards import tokenize_parts

        manifest = timed(
            "shards", tokenize_parts, kept_parts, out / "shards", tokenizer, read_kept_texts, workers=workers,
            progress=progress,
        )  # fmt: skip

    report = build_report(read, shards, shard_source, cluster_stats, manifest, timings, cfg, index)
    write_report(out, report)
    return report


def _save(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _train_tokenizer(out: Path, parts, vocab: int, progress: bool):
    from .tokenizer_train import train_tokenizer

    path = out / "tokenizer.model"
    if path.exists():
        from ..tokenizer import Tokenizer

        return Tokenizer.from_file(path)
    texts = (t for _, _, p in parts for t in read_kept_texts(p))
    return train_tokenizer(texts, path, vocab_size=vocab, progress=progress)


def tokenize(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    tokenizer,
    *,
    workers: int = 0,
    read_kw: dict | None = None,
    progress: bool = True,
) -> dict:
    """`opengemma data tokenize`: every input file becomes one part of its source's shards, unfiltered."""
    parts = []
    for inp, name in zip(inputs, source_names(inputs)):
        files = readers.list_files(inp)
        stems = [f.name.split(".")[0] for f in files]
        unique = len(set(stems)) == len(stems)
        parts += [(name, stem if unique else f"{i:05d}", f) for i, (stem, f) in enumerate(zip(stems, files))]
    from .shards import tokenize_parts

    read = partial(read_input_texts, **(read_kw or {}))
    return tokenize_parts(parts, Path(out), tokenizer, read, workers=workers or default_workers(), progress=progress)
