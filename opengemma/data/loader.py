"""Training batches from token shards: the staged mixture's rows, packed, split per rank, resumable exactly.

Rows come from `MixtureSampler` (data/mixture.py): each row is seq_len + 1 consecutive tokens of one source, the
source drawn per row by the stage's weights, documents ([bos] ... [eos]) packed back to back across row
boundaries, nothing padded or dropped. A row becomes (inputs, targets, segments): `segments` numbers the documents
inside the row (the model's document mask and per-document positions), and a target that is the first token of
the next document is ignored (-100): under document masking nothing in the previous document can predict it.

An optimizer step takes `batch_size` rows (the global batch), in `grad_accum` micro-batches; rank r of `world`
takes its contiguous slice of each micro-batch. Every rank walks the same row sequence (the sampler is cheap: it
memory-maps), so one process and N processes train on exactly the same rows, and the global count of valid
targets, which the loss divides by, is known on every rank without a collective.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mixture import Mixture, MixtureSampler, Stage, load_mixture
from .shards import MANIFEST, TokenShards, load_manifest

IGNORE = -100  # the loss's ignore_index (torch's cross_entropy default)


def open_data(data: str | os.PathLike, *, seed: int = 0) -> Mixture:
    """A mixture file (.toml), a shards root (its sources weighted by their tokens: the corpus's own proportions)
    or one source's shard directory, as a Mixture. total_tokens is whatever the file says (the recipe sets it to
    the run's budget); a plain shard directory gets `seed` as its data seed."""
    path = Path(data)
    if path.suffix == ".toml":
        return load_mixture(path)
    if (path / MANIFEST).is_file():
        sources = load_manifest(path)["sources"]
        weights = {name: float(s["n_tokens"]) for name, s in sources.items() if s["n_tokens"] > 0}
        if not weights:
            raise ValueError(f"{path}: the shards hold no tokens")
        return Mixture({n: path / n for n in weights}, [Stage("all", 1.0, weights)], total_tokens=1, seed=seed)
    if (path.parent / MANIFEST).is_file() and path.name in load_manifest(path.parent)["sources"]:
        return Mixture({path.name: path}, [Stage("all", 1.0, {path.name: 1.0})], total_tokens=1, seed=seed)
    raise FileNotFoundError(f"{path}: not a mixture .toml, a token shards root or a source's shard directory")


def holdout_docs(mixture: Mixture, *, fraction: float = 0.01, max_docs: int = 64, seed: int = 0) -> dict:
    """Per source, the ids of the documents kept out of training for validation: a seeded random `fraction`
    (at least 1, at most max_docs) of each source with 2 or more documents."""
    held = {}
    for name, path in mixture.sources.items():
        n = TokenShards(path).n_docs
        k = min(max_docs, max(1, round(fraction * n))) if n >= 2 and fraction > 0 else 0
        rng = np.random.default_rng([seed, 2, zlib.crc32(name.encode())])
        held[name] = np.sort(rng.choice(n, size=k, replace=False)) if k else np.zeros(0, np.int64)
    return held


def pack_row(tokens: np.ndarray, doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """seq_len + 1 tokens and where documents start in them -> inputs, targets, segments (seq_len,) int64."""
    starts = np.zeros(len(tokens), dtype=bool)
    starts[doc_starts] = True
    inputs, targets = tokens[:-1].astype(np.int64), tokens[1:].astype(np.int64)
    targets[starts[1:]] = IGNORE
    return inputs, targets, np.cumsum(starts[:-1]).astype(np.int64)


@dataclass
class Batch:
    """One optimizer step's rows for one rank: arrays (grad_accum, rows per rank, seq_len) int64."""

    inputs: np.ndarray
    targets: np.ndarray
    segments: np.ndarray
    n_targets: int  # valid targets over the whole global batch (every rank's rows)
    stage: str  # the mixture stage of the step's first row
    sources: dict[str, int]  # rows per source in the global batch


class PackedLoader:
    def __init__(
        self,
        mixture: Mixture,
        seq_len: int,
        *,
        batch_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world: int = 1,
        holdout: dict | None = None,
    ):
        if batch_size % (grad_accum * world):
            raise ValueError(
                f"batch_size {batch_size} (the global batch) must divide into grad_accum {grad_accum} x {world} ranks"
            )
        self.seq_len, self.batch_size, self.grad_accum, self.rank, self.world = (
            seq_len,
            batch_size,
            grad_accum,
            rank,
            world,
        )
        self.sampler = MixtureSampler(mixture, seq_len, holdout=holdout)

    def next_step(self) -> Batch:
        M, per_rank = self.grad_accum, self.batch_size // (self.grad_accum * self.world)
        shape = (M, per_rank, self.seq_len)
        inputs, targets, segments = (np.empty(shape, np.int64) for _ in range(3))
        n_targets, sources, stage = 0, {}, None
        for i in range(self.batch_size):
            sample = next(self.sampler)
            stage = stage or sample.stage
            sources[sample.source] = sources.get(sample.source, 0) + 1
            starts = np.asarray(sample.doc_starts)
            n_targets += self.seq_len - int(np.count_nonzero((starts >= 1) & (starts <= self.seq_len)))
            m, j = divmod(i, self.batch_size // M)  # micro-batch, row within it
            r, k = divmod(j, per_rank)
            if r == self.rank:
                inputs[m, k], targets[m, k], segments[m, k] = pack_row(sample.tokens, starts)
        return Batch(inputs, targets, segments, n_targets, stage, sources)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def validation_rows(
    mixture: Mixture, holdout: dict, seq_len: int, *, max_rows: int = 16
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per source, up to max_rows packed rows (inputs, targets, segments: (R, seq_len)) of its held-out documents
    laid end to end, the same rows at every evaluation."""
    rows = {}
    for name, ids in holdout.items():
        if len(ids) == 0:
            continue
        shards = TokenShards(mixture.sources[name])
        docs = [np.asarray(shards.doc(int(i))) for i in ids]
        stream = np.concatenate(docs)
        starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
        n = min(max_rows, (len(stream) - 1) // seq_len)
        packed = []
        for r in range(n):
            a = r * seq_len
            window = starts[(starts >= a) & (starts <= a + seq_len)] - a
            packed.append(pack_row(stream[a : a + seq_len + 1], window))
        if packed:
            rows[name] = tuple(np.stack(x) for x in zip(*packed))
    return rows
