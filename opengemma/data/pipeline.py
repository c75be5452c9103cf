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

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import atomic_path
from . import dedup, readers
from .config import PipelineConfig
from .decontam import EvalText, NGramIndex
from .filters import ScoreFilter
from .stages import (
    bucket_band,
    default_workers,
    final_shard,
    quality_shard,
    read_input_texts,
    read_json,
    read_jsonl_gz,
    read_kept_texts,
    run_units,
    signature_shard,
    write_json,
    write_jsonl_gz,
)


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


# -- the run -----------------------------------------------------------------------------------------------------------


def _read_stage(inputs, names, work: Path, cfg: PipelineConfig, progress: bool) -> dict:
    """Split every input into work shards of run.shard_docs documents (streamed)."""
    from tqdm.auto import tqdm

    done = read_json(work / "read" / "done.json")
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
    old = read_json(work / "run.json")
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

    jobs = [
        (s / "docs.jsonl.gz", s, cfg.filters_for(src))
        for s, src in zip(shards, shard_source)
        if read_json(s / "done.json") is None
    ]
    timed("quality", run_units, quality_shard, jobs, workers, "quality filters", progress)

    if score_filters:  # the model runs here, in batches, once per shard; a row's first failing filter removes it
        for s in shards:
            if read_json(s / "score.json") is None:
                texts = [r["text"] for r in read_jsonl_gz(s / "kept.jsonl.gz")]
                verdicts: list = [None] * len(texts)
                for f in score_filters:
                    for i, reason in enumerate(timed("score", f.reasons, texts)):
                        if verdicts[i] is None and reason is not None:
                            verdicts[i] = [f.name, reason]
                write_json(s / "score.json", verdicts)

    mh = dedup.MinHashConfig(cfg.dedup.ngram, cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.seed)
    jobs = [(s, mh, cfg.dedup.minhash) for s in shards if read_json(s / "ids.json") is None]
    timed("signatures", run_units, signature_shard, jobs, workers, "dedup signatures", progress)
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
            timed("minhash_buckets", run_units, bucket_band, jobs, workers, "dedup buckets", progress)
            pairs = (np.load(p) for _, p in bands)
            _save(roots["near"], timed("minhash_clusters", dedup.cluster_roots, pairs, n_docs))
        cluster_stats = {str(k): v for k, v in sorted(dedup.cluster_sizes(np.load(roots["near"])).items())}

    jobs = []
    for s, src, off in zip(shards, shard_source, offsets[:-1]):
        if read_json(s / "final.json") is None:
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
    timed("final", run_units, final_shard, jobs, workers, "dedup, decontamination, PII", progress, {"index": index})

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
