"""Beyond one machine: our quality filters, exact and MinHash dedup, decontamination and PII redaction as datatrove
pipeline steps, so the same stages run on datatrove's Local, Slurm or Ray executors, reading and writing through
its DataFolder (a local path, a shared filesystem, s3://...). Needs `pip install opengemma[data-scale]`.

    pipelines = build_pipelines("data/raw", "s3://bucket/run", cfg, eval_texts=texts)   # cfg: a PipelineConfig
    chain(pipelines, SlurmPipelineExecutor, tasks=500, logging_dir="s3://bucket/logs", time="2:00:00",
          partition="cpu")["final"].run()                 # each stage depends on the one before

The four stages (FineWeb's MinHash layout; tasks per stage in brackets):
    signatures [tasks]   read -> OurFilter per quality filter -> filtered/<rank>.jsonl.gz -> MinHashSignatures:
                         minhash/hashes/<rank>.npy (content hashes), minhash/band_<b>/<rank>.npy, minhash/ids/
    buckets    [bands+1] MinHashBuckets: one unit per band (and one for the exact hashes) -> minhash/pairs/<unit>.npy
    clusters   [1]       MinHashClusters: union-find over all pairs -> minhash/removals/<rank>.json, cluster sizes
    final      [tasks]   filtered/<rank> -> DedupFilter -> Decontaminate -> RedactPII -> kept/<rank>.jsonl.gz
Removed documents go to removed/<stage>/<rank>.jsonl.gz with our `stage` and `reason` in their record, as
`opengemma data prepare` writes them. Global document order is (signature rank, row): each duplicate cluster
keeps its first document in that order, as dedup.py's functions do on the same sequence. Readers skip documents
with empty text (datatrove's readers do) where our own pipeline drops them with a filter's reason.

datatrove imports here at module level (our steps subclass its classes); nothing else in opengemma imports this
module, so datatrove stays an optional dependency.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np

from . import dedup, pii
from .config import PipelineConfig
from .decontam import EvalText, NGramIndex, decontaminate
from .filters import build_filters

try:
    from datatrove.io import DataFolder, DataFolderLike, get_datafolder
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.typeshelper import StatHints
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "opengemma.data.scale runs the data pipeline on datatrove, which is not installed: "
        "pip install 'opengemma[data-scale]'"
    ) from e

__all__ = ["OurFilter", "RedactPII", "Decontaminate", "MinHashSignatures", "MinHashBuckets", "MinHashClusters"]
__all__ += ["DedupFilter", "RankReader", "RecordWriter", "build_pipelines", "chain", "stage_tasks"]

_BATCH = 256  # documents per signatures batch: vectorized hashing without holding a rank's texts
_NUMBERS = re.compile(r"'[^']*'|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _folder(folder: DataFolderLike | os.PathLike) -> DataFolder:
    """datatrove's DataFolder of a path, URL, (path, fs) pair or DataFolder; a pathlib.Path too."""
    return get_datafolder(os.fspath(folder) if isinstance(folder, os.PathLike) else folder)


def _sub(folder: DataFolderLike, name: str) -> DataFolder:
    """A subfolder of a DataFolder, on the same filesystem (local, s3, ...)."""
    folder = _folder(folder)
    return DataFolder(f"{folder.path.rstrip('/')}/{name}", fs=folder.fs)


class RecordWriter(JsonlWriter):
    """A JsonlWriter of <folder>/<rank>.jsonl.gz holding records as `opengemma data prepare` writes them:
    {"id", "text", **metadata} (datatrove's default nests the metadata and adds "media")."""

    def __init__(self, folder: DataFolderLike):
        super().__init__(_folder(folder), output_filename="${rank}.jsonl.gz")

    def _default_adapter(self, document) -> dict:  # a method, not adapter=: plain pickle can carry it
        return {"id": document.id, "text": document.text, **document.metadata}


def _drop(doc, stage: str, reason: str, kind: str | None = None) -> tuple[bool, str]:
    """Mark a document removed: our stage and reason go into its metadata (what the exclusion writer saves).
    datatrove keeps a counter per reason returned, so it gets a `kind` of reason: by default ours with numbers
    and quoted words blanked ("mean word length # < #"): one counter per rule, not one per document."""
    doc.metadata["stage"], doc.metadata["reason"] = stage, reason
    return False, kind or f"{stage}: {_NUMBERS.sub('#', reason)}"


# -- filters, decontamination, PII -------------------------------------------------------------------------------------


class OurFilter(BaseFilter):
    """Any opengemma filter (filters.py's Filter or a ScoreFilter) as a datatrove filter. With batch_size > 1 a
    ScoreFilter scores a batch at once (its `reasons`), as a model wants."""

    def __init__(self, filter, exclusion_writer=None, batch_size: int = 1):
        self.name = f"opengemma {filter.name}"
        super().__init__(exclusion_writer, batch_size)
        self.our = filter

    def filter(self, doc):
        reason = self.our(doc.text)
        return True if reason is None else _drop(doc, self.our.name, reason)

    def filter_batch(self, batch):
        if not hasattr(self.our, "reasons"):
            return list(map(self.filter, batch))
        reasons = self.our.reasons([d.text for d in batch])
        return [True if r is None else _drop(d, self.our.name, r) for d, r in zip(batch, reasons)]


class Decontaminate(BaseFilter):
    """decontam.decontaminate against an NGramIndex of eval texts: a matching document goes ("remove") or loses
    the matching spans ("excise", GPT-3's rule); matches are counted per task in the stats."""

    name = "opengemma decontamination"

    def __init__(self, index: NGramIndex, mode: str = "remove", exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.index, self.mode = index, mode

    def filter(self, doc):
        new, matches = decontaminate(doc.text, self.index, mode=self.mode)
        for task in sorted({m.task for m in matches}):
            self.stat_update(f"matched_{task}")
        if new is None:
            more = f" (+{len(matches) - 1} more)" if len(matches) > 1 else ""
            first = matches[0]
            reason = f"{self.index.n}-gram overlap with {first.task} item {first.item}{more}"
            return _drop(doc, "decontamination", reason, kind=f"decontamination: {first.task}")
        doc.text = new
        return True


class RedactPII(PipelineStep):
    """pii.redact on every document (the one detector the eval side's memorization study uses too)."""

    type = "🔒 - PII"
    name = "opengemma PII redaction"

    def __init__(self, kinds: list[str] | None = None):
        super().__init__()
        self.kinds = kinds

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                doc.text, findings = pii.redact(doc.text, self.kinds)
                self.stat_update(StatHints.total)
                if findings:
                    self.stat_update("documents_redacted")
                for f in findings:
                    self.stat_update(f"redacted_{f.kind}")
            yield doc


# -- MinHash (and exact) dedup in four stages ------------------------------------------------------------------------


def _save(folder: DataFolder, path: str, arr: np.ndarray) -> None:
    with folder.open(path, "wb") as f:
        np.save(f, arr)


def _load(folder: DataFolder, path: str) -> np.ndarray:
    with folder.open(path, "rb") as f:
        return np.load(f)


class _DedupStage(PipelineStep):
    """What the three dedup stages share: their folder (minhash/), the MinHash setting, exact and/or near."""

    type = "🫂 - DEDUP"

    def __init__(self, folder: DataFolderLike, config=dedup.MinHashConfig(), exact: bool = True, near: bool = True):
        super().__init__()
        self.folder, self.config, self.exact, self.near = _folder(folder), config, exact, near


class MinHashSignatures(_DedupStage):
    """Stage 1, per rank: each document's content hash (exact dedup) and MinHash band keys (dedup.band_keys), one
    array per band so that a buckets task reads only its band. Written even for a rank with no documents: the
    buckets stage counts ranks by these files. Consumes the documents (place a writer before it)."""

    name = "opengemma MinHash signatures"

    def run(self, data, rank: int = 0, world_size: int = 1):
        ids, hashes, keys, batch = [], [], [], []

        def flush():
            texts = [d.text for d in batch]
            if self.exact:
                hashes.append(dedup.content_hashes(texts))
            if self.near:
                keys.append(dedup.band_keys(texts, self.config))
            batch.clear()

        with self.track_time():
            for doc in data or ():
                self.stat_update(StatHints.total)
                ids.append(doc.id)
                batch.append(doc)
                if len(batch) == _BATCH:
                    flush()
            if batch:
                flush()
            if self.exact:
                _save(
                    self.folder, f"hashes/{rank:05d}.npy", np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
                )
            if self.near:
                keys = np.concatenate(keys) if keys else np.zeros((0, self.config.bands), np.uint64)
                for b in range(self.config.bands):
                    _save(self.folder, f"band_{b:03d}/{rank:05d}.npy", np.ascontiguousarray(keys[:, b]))
            with self.folder.open(f"ids/{rank:05d}.json", "wt") as f:
                json.dump(ids, f)
        return
        yield  # a generator, like every step: nothing flows on


def _units(config: dedup.MinHashConfig, exact: bool, near: bool) -> list[str]:
    return (["hashes"] if exact else []) + ([f"band_{b:03d}" for b in range(config.bands)] if near else [])


class MinHashBuckets(_DedupStage):
    """Stage 2: for each unit of this task (units: "hashes" for exact dedup and one per band, split over the
    tasks), the pairs of documents sharing a key, as global (rank, row)-order indices (dedup.bucket_pairs)."""

    name = "opengemma MinHash buckets"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        for unit in _units(self.config, self.exact, self.near)[rank::world_size]:
            with self.track_time():
                files = self.folder.list_files(subdirectory=unit, glob_pattern="*.npy")
                if [f"{unit}/{r:05d}.npy" for r in range(len(files))] != files:
                    raise FileNotFoundError(
                        f"{unit}: signature files of ranks 0..{len(files) - 1} expected, found {files}"
                    )
                pairs = dedup.bucket_pairs([_load(self.folder, f)[:, None] for f in files], 0)
                _save(self.folder, f"pairs/{unit}.npy", pairs)
                self.stat_update("pairs", value=len(pairs))
        return
        yield


class MinHashClusters(_DedupStage):
    """Stage 3, one task: connected components over every unit's pairs (dedup.cluster_roots), exact first; per
    rank, the rows to remove with our stage and reason naming the survivor, and the histogram of cluster sizes."""

    name = "opengemma MinHash clusters"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError(f"the clusters stage runs as one task, not {world_size}")
        with self.track_time():
            unit = _units(self.config, self.exact, self.near)[0]
            counts = np.array([_npy_len(self.folder, f) for f in self.folder.list_files(unit, glob_pattern="*.npy")])
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            n = int(offsets[-1])
            pairs = lambda units: (_load(self.folder, f"pairs/{u}.npy") for u in units)  # noqa: E731
            exact = dedup.cluster_roots(pairs(["hashes"]), n) if self.exact else np.arange(n)
            near = dedup.cluster_roots(pairs(_units(self.config, False, True)), n) if self.near else np.arange(n)
            ids = _IdLookup(self.folder, offsets)
            for r in range(len(counts)):
                a, b = int(offsets[r]), int(offsets[r + 1])
                own = np.arange(a, b)
                drop = np.flatnonzero((exact[a:b] != own) | (near[a:b] != own))  # rows, exact dedup's reason first
                stages, reasons = [], []
                for row in drop.tolist():
                    if exact[a + row] != a + row:
                        stages.append("exact_dedup")
                        reasons.append(f"duplicate of {ids[int(exact[a + row])]}")
                    else:
                        stages.append("minhash_dedup")
                        reasons.append(f"near-duplicate of {ids[int(near[a + row])]}")
                plan = {"documents": b - a, "rows": drop.tolist(), "stages": stages, "reasons": reasons}
                with self.folder.open(f"removals/{r:05d}.json", "wt") as fh:
                    json.dump(plan, fh)
                self.stat_update("to_remove", value=len(drop))
            sizes = dedup.cluster_sizes(near) if self.near else {}
            with self.folder.open("cluster_sizes.json", "wt") as fh:
                json.dump({str(k): v for k, v in sorted(sizes.items())}, fh)
        return
        yield


def _npy_len(folder: DataFolder, path: str) -> int:
    """The length of a saved array, from its header alone (a remote file is not read whole)."""
    with folder.open(path, "rb") as f:
        fmt = np.lib.format
        header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
        return header(f)[0][0]


class _IdLookup:
    """Global index -> document id, loading a rank's ids file on first use (survivors cluster near their copies)."""

    def __init__(self, folder: DataFolder, offsets: np.ndarray):
        self.folder, self.offsets, self.cache = folder, offsets, {}

    def __getitem__(self, g: int) -> str:
        r = int(np.searchsorted(self.offsets, g, side="right") - 1)
        if r not in self.cache:
            with self.folder.open(f"ids/{r:05d}.json", "rt") as fh:
                self.cache[r] = json.load(fh)
        return self.cache[r][g - int(self.offsets[r])]


class DedupFilter(BaseFilter):
    """Stage 4: drop the rows the clusters stage listed for this rank. The documents must arrive in the order the
    signatures stage saw them (the same rank's filtered file: RankReader), which is checked by their count."""

    name = "opengemma dedup filter"

    def __init__(self, folder: DataFolderLike, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.folder = _folder(folder)

    def run(self, data, rank: int = 0, world_size: int = 1):
        with self.folder.open(f"removals/{rank:05d}.json", "rt") as fh:
            plan = json.load(fh)
        self._drops = dict(zip(plan["rows"], zip(plan["stages"], plan["reasons"])))
        self._row = -1
        yield from super().run(data, rank, world_size)
        if self._row + 1 != plan["documents"]:
            raise ValueError(f"rank {rank}: {self._row + 1} documents, the signatures stage saw {plan['documents']}")

    def filter(self, doc):
        self._row += 1
        hit = self._drops.get(self._row)
        return True if hit is None else _drop(doc, *hit, kind=hit[0])


class RankReader(JsonlReader):
    """Reads exactly <folder>/<rank>.jsonl.gz (none: no documents), so stage 4's rank r sees what stage 1's rank
    r wrote, even when some rank wrote nothing (a plain reader would hand the files out shifted)."""

    def __init__(self, folder: DataFolderLike):
        super().__init__(folder, add_file_path=False)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl.gz"
        if self.data_folder.exists(name):
            yield from self.read_files_shard([name])


# -- the pipelines --------------------------------------------------------------------------------------------------


def build_pipelines(
    inputs: DataFolderLike,
    out: DataFolderLike,
    cfg: PipelineConfig | None = None,
    *,
    eval_texts: list[EvalText] | None = None,
    reader: PipelineStep | None = None,
    glob_pattern: str = "*.jsonl*",
) -> dict[str, list[PipelineStep]]:
    """The stage pipelines, in order, {"signatures", "buckets", "clusters", "final"} (the middle two only with
    dedup on), from the same PipelineConfig as `opengemma data prepare`. `inputs`: a folder of JSONL(.gz/.zst)
    files (or pass any datatrove `reader`); `out`: where filtered/, minhash/, kept/ and removed/ go. Run them
    with chain(); each stage's task count is stage_tasks()'s."""
    cfg = cfg or PipelineConfig()
    mh = dedup.MinHashConfig(cfg.dedup.ngram, cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.seed)
    exact, near = cfg.dedup.exact, cfg.dedup.minhash
    reader = reader or JsonlReader(
        inputs, glob_pattern=glob_pattern, text_key=cfg.read.text_field, id_key=cfg.read.id_field, add_file_path=False
    )
    quality = [OurFilter(f, RecordWriter(_sub(out, f"removed/{f.name}"))) for f in build_filters(cfg.filters)]
    mhf = _sub(out, "minhash")
    first = [reader, *quality, RecordWriter(_sub(out, "filtered"))]
    final = [RankReader(_sub(out, "filtered"))]
    pipelines = {"signatures": first}
    if exact or near:
        first.append(MinHashSignatures(mhf, mh, exact, near))
        pipelines["buckets"] = [MinHashBuckets(mhf, mh, exact, near)]
        pipelines["clusters"] = [MinHashClusters(mhf, mh, exact, near)]
        final.append(DedupFilter(mhf, RecordWriter(_sub(out, "removed/dedup"))))
    if cfg.decontam.enabled and eval_texts:
        index = NGramIndex(eval_texts, n=cfg.decontam.n)
        final.append(Decontaminate(index, cfg.decontam.mode, RecordWriter(_sub(out, "removed/decontamination"))))
    if cfg.pii.enabled:
        final.append(RedactPII(cfg.pii.kinds))
    pipelines["final"] = [*final, RecordWriter(_sub(out, "kept"))]
    return pipelines


def stage_tasks(pipelines: dict, tasks: int) -> dict[str, int]:
    """Tasks per stage: `tasks` for the per-rank stages, one per bucket unit (band, and the exact hashes), one
    for the clusters."""
    b = pipelines.get("buckets", [None])[0]
    units = len(_units(b.config, b.exact, b.near)) if isinstance(b, MinHashBuckets) else 1
    return {name: {"buckets": units, "clusters": 1}.get(name, tasks) for name in pipelines}


def chain(pipelines: dict, executor_cls, *, tasks: int, logging_dir: str, per_stage=None, **kwargs) -> dict:
    """One executor per stage, each depending on the one before: {stage: executor}; run the last one ("final")
    and the chain runs (Local, Ray) or is submitted with job dependencies (Slurm). `kwargs` go to every
    executor (e.g. Slurm's time, partition), per_stage={"clusters": {"mem_per_cpu_gb": 16}} to one."""
    counts, out, prev = stage_tasks(pipelines, tasks), {}, None
    for name, steps in pipelines.items():
        kw = {**kwargs, **(per_stage or {}).get(name, {})}
        prev = out[name] = executor_cls(
            steps, tasks=counts[name], logging_dir=f"{logging_dir}/{name}", depends=prev, **kw
        )
    return out


def removal_counts(out: DataFolderLike) -> Counter:
    """{stage: documents removed} over removed/<stage>/*.jsonl.gz, for a summary after a run."""
    folder = _folder(out)
    counts = Counter()
    for f in (f for f in folder.list_files(subdirectory="removed") if f.endswith(".jsonl.gz")):
        with folder.open(f, "rt", compression="gzip") as fh:
            counts.update(json.loads(line)["stage"] for line in fh)
    return counts
