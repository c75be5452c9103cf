"""Staged data mixtures (a TOML file of values) and the deterministic, resumable sampler the pretraining loader
draws sequences from.

A mixture names token-shard sources and stages; each stage lasts a fraction of the training tokens and weights
the sources (Gemma's reports: the last stage up-weights the high-quality ones)::

    seed = 0
    total_tokens = 10_000_000
    [sources]                      # relative paths resolve against the TOML file's folder
    shakespeare = "prepared/shards/shakespeare"
    [[stages]]
    name = "main"
    fraction = 0.8
    weights = { shakespeare = 0.3, gcide = 0.7 }

Sampling, step k (the k-th sequence; the training budget is spent after ceil(total_tokens / seq_len) steps):
- its stage is the one whose token range [start, end) holds k * seq_len;
- its source is drawn with probability = the stage's weight, from a counter-based generator (SplitMix64 of
  (seed, k)): any step's draw is a pure function, so resuming needs no generator state;
- each source is an endless stream of its documents, epoch after epoch, each epoch a permutation seeded by
  (seed, source, epoch), cut into consecutive, non-overlapping windows of seq_len + 1 tokens (inputs and their
  next-token targets). A source's cursor (epoch, position) is all the state it has. Every draw is seq_len + 1
  tokens, so token proportions equal draw proportions.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .shards import TokenShards, load_manifest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "Stage",
    "Mixture",
    "MixtureError",
    "Sample",
    "MixtureSampler",
    "load_mixture",
    "parse_mixture",
    "draws",
    "schedule_report",
]

FRACTION_TOLERANCE = 1e-6


class MixtureError(ValueError):
    """A mixture file that does not validate; the message starts with the offending key."""


@dataclass
class Stage:
    name: str
    fraction: float
    weights: dict[str, float]  # normalized here to sum to 1

    def __post_init__(self):
        total = sum(self.weights.values())
        if not total > 0 or any(w < 0 for w in self.weights.values()):
            raise MixtureError(f"stage {self.name!r}: weights must be >= 0 with a positive sum, got {self.weights}")
        self.weights = {k: w / total for k, w in self.weights.items()}


@dataclass
class Mixture:
    sources: dict[str, Path]
    stages: list[Stage]
    total_tokens: int
    seed: int = 0

    def stage_ends(self) -> np.ndarray:
        """Each stage's end in training tokens (int64): rounded once, the last is exactly total_tokens."""
        ends = np.rint(np.cumsum([s.fraction for s in self.stages]) * self.total_tokens).astype(np.int64)
        ends[-1] = self.total_tokens
        return ends

    def weight_matrix(self) -> np.ndarray:
        """(n_stages, n_sources) float64: stage weights over the sources in their file order."""
        return np.array([[s.weights.get(name, 0.0) for name in self.sources] for s in self.stages])


# --- the file ------------------------------------------------------------------------------------------------


def _number(value, key: str, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise MixtureError(f"{key}: must be {'an integer' if integer else 'a number'}, got {value!r}")
    return value


def _keys(table, allowed: set[str], key: str) -> None:
    if not isinstance(table, dict):
        raise MixtureError(f"{key}: must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        where = f"{key}." if key else ""
        raise MixtureError(f"{where}{unknown[0]}: unknown key (expected one of: {', '.join(sorted(allowed))})")


def parse_mixture(d: dict, base: str | os.PathLike) -> Mixture:
    """Validate a parsed mixture file; relative source paths resolve against ``base``. Errors name the key."""
    _keys(d, {"seed", "total_tokens", "sources", "stages"}, "")
    for k in ("total_tokens", "sources", "stages"):
        if k not in d:
            raise MixtureError(f"{k}: missing")
    seed = _number(d.get("seed", 0), "seed", integer=True)
    if not 0 <= seed < 2**64:
        raise MixtureError(f"seed: must be in [0, 2**64), got {seed}")
    total = _number(d["total_tokens"], "total_tokens", integer=True)
    if total <= 0:
        raise MixtureError(f"total_tokens: must be positive, got {total}")
    if not isinstance(d["sources"], dict) or not d["sources"]:
        raise MixtureError("sources: must be a non-empty table of name = path")
    sources = {}
    for name, path in d["sources"].items():
        if not isinstance(path, str) or not path:
            raise MixtureError(f"sources.{name}: must be a path string, got {path!r}")
        p = Path(path).expanduser()
        sources[name] = p if p.is_absolute() else Path(base) / p
    if not isinstance(d["stages"], list) or not d["stages"]:
        raise MixtureError("stages: must be a non-empty array of tables ([[stages]])")
    stages, names = [], set()
    for i, s in enumerate(d["stages"]):
        key = f"stages[{i}]"
        _keys(s, {"name", "fraction", "weights"}, key)
        for k in ("name", "fraction", "weights"):
            if k not in s:
                raise MixtureError(f"{key}.{k}: missing")
        name = s["name"]
        if not isinstance(name, str) or not name or name in names:
            raise MixtureError(f"{key}.name: must be a unique non-empty string, got {name!r}")
        names.add(name)
        fraction = _number(s["fraction"], f"{key}.fraction")
        if not 0 < fraction <= 1:
            raise MixtureError(f"{key}.fraction: must be in (0, 1], got {fraction}")
        if not isinstance(s["weights"], dict):
            raise MixtureError(f"{key}.weights: must be a table of source = weight")
        weights = {}
        for src, w in s["weights"].items():
            if src not in sources:
                raise MixtureError(f"{key}.weights.{src}: unknown source (sources: {', '.join(sources)})")
            weights[src] = _number(w, f"{key}.weights.{src}")
            if w < 0:
                raise MixtureError(f"{key}.weights.{src}: must be >= 0, got {w}")
        if not sum(weights.values()) > 0:
            raise MixtureError(f"{key}.weights: need at least one positive weight")
        stages.append(Stage(name, float(fraction), weights))
    total_fraction = sum(s.fraction for s in stages)
    if abs(total_fraction - 1) > FRACTION_TOLERANCE:
        raise MixtureError(f"stages: the fractions sum to {total_fraction:g}, they must sum to 1")
    return Mixture(sources, stages, total, seed)


def load_mixture(path: str | os.PathLike) -> Mixture:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
        return parse_mixture(d, path.parent)
    except tomllib.TOMLDecodeError as e:
        raise MixtureError(f"{path}: not valid TOML ({e})") from None
    except MixtureError as e:
        raise MixtureError(f"{path}: {e}") from None


# --- the draws: pure functions of (mixture, seq_len, step) ---------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea & Flood, OOPSLA 2014), on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, steps: np.ndarray) -> np.ndarray:
    """U[0, 1) per step: the SplitMix64 stream of a seed-derived start, indexed by the step (counter-based)."""
    with np.errstate(over="ignore"):
        start = _splitmix64(np.array([seed], dtype=np.uint64))
        z = start + (np.asarray(steps, dtype=np.uint64) + np.uint64(1)) * _GAMMA
        return (_splitmix64(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draws(mixture: Mixture, seq_len: int, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stage index, source index) of each step, vectorized; past the budget the last stage continues."""
    steps = np.asarray(steps, dtype=np.int64)
    stage = np.minimum(np.searchsorted(mixture.stage_ends(), steps * seq_len, side="right"), len(mixture.stages) - 1)
    cum = np.cumsum(mixture.weight_matrix(), axis=1)  # (n_stages, n_sources)
    u = uniforms(mixture.seed, steps) * cum[stage, -1]
    # the first source whose cumulative weight exceeds u: a zero-weight source has an empty interval, never drawn
    source = (cum[stage] <= u[:, None]).sum(axis=1)
    return stage, np.minimum(source, len(mixture.sources) - 1)


def n_steps(mixture: Mixture, seq_len: int) -> int:
    return -(-mixture.total_tokens // seq_len)


# --- the sampler ---------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    step: int
    stage: str
    source: str
    tokens: np.ndarray  # uint32 (seq_len + 1,): inputs tokens[:-1], targets tokens[1:]
    doc_starts: np.ndarray = field(repr=False)  # int64 positions in tokens where a document ([bos] ...) begins


class _Stream:
    """One source as an endless stream of documents, each epoch a seeded permutation of them."""

    def __init__(self, name: str, shards: TokenShards, seed: int, docs: np.ndarray | None = None):
        self.name, self.shards, self.seed = name, shards, seed
        lengths = shards.lengths()
        self.docs = np.arange(len(lengths)) if docs is None else np.asarray(docs, dtype=np.int64)  # the ones drawn
        self.lengths = lengths[self.docs]
        self.epoch_tokens = int(self.lengths.sum())
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch e's document order and the offsets of its documents in the epoch's token stream."""
        if e not in self._cache:
            # crc32: a stable per-source key (Python's hash() of a str changes between runs)
            rng = np.random.default_rng([self.seed, 1, zlib.crc32(self.name.encode()), e])
            perm = rng.permutation(len(self.lengths))
            offsets = np.concatenate([[0], np.cumsum(self.lengths[perm])])
            self._cache = {k: v for k, v in self._cache.items() if k == e - 1}  # at most the previous epoch
            self._cache[e] = perm, offsets
        return self._cache[e]

    def window(self, epoch: int, pos: int, n: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The n tokens from cursor (epoch, pos), where documents start in them, and the cursor after them."""
        pieces, starts, filled = [], [], 0
        while filled < n:
            if pos >= self.epoch_tokens:  # at an epoch's end (or past it: a state from bigger shards)
                epoch, pos = epoch + 1, 0
            perm, offsets = self.epoch(epoch)
            take = min(n - filled, self.epoch_tokens - pos)
            first = int(np.searchsorted(offsets, pos, side="right")) - 1  # the document holding pos
            stop = int(np.searchsorted(offsets, pos + take, side="left"))  # documents starting before the end
            for j in range(first, stop):
                a, b = max(pos, offsets[j]) - offsets[j], min(pos + take, offsets[j + 1]) - offsets[j]
                pieces.append(self.shards.doc(int(self.docs[perm[j]]))[a:b])
            begin = offsets[first:stop]
            starts.append(begin[begin >= pos] - pos + filled)
            filled, pos = filled + take, pos + take
        tokens = np.concatenate(pieces).view(np.ndarray)  # a fresh array (windows cross documents), not a memmap
        return tokens, np.concatenate(starts).astype(np.int64), epoch, pos


class MixtureSampler:
    """Iterate Samples of seq_len + 1 tokens, step 0 to the budget's end; ``state_dict`` / ``load_state_dict``
    resume at the exact step. ``shards`` (source name -> TokenShards) defaults to opening the mixture's paths.
    ``holdout`` (source name -> document ids) are never drawn: a validation set (see ``holdout_docs``)."""

    def __init__(
        self,
        mixture: Mixture,
        seq_len: int,
        *,
        shards: dict[str, TokenShards] | None = None,
        holdout: dict[str, np.ndarray] | None = None,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.mixture, self.seq_len = mixture, seq_len
        self.names = list(mixture.sources)
        used = mixture.weight_matrix().max(axis=0) > 0  # a source no stage weights is never opened
        shards = dict(shards or {})
        self.streams: dict[str, _Stream] = {}
        for name, is_used in zip(self.names, used):
            if not is_used:
                continue
            s = shards[name] if name in shards else TokenShards(mixture.sources[name])
            held = (holdout or {}).get(name)
            docs = None if held is None or len(held) == 0 else np.setdiff1d(np.arange(s.n_docs), held)
            stream = _Stream(name, s, mixture.seed, docs)
            if stream.epoch_tokens == 0:
                raise ValueError(f"source {name!r} ({mixture.sources[name]}) has no tokens but a positive weight")
            self.streams[name] = stream
        self.n_steps = n_steps(mixture, seq_len)
        self.step = 0
        self.cursors = {name: (0, 0) for name in self.streams}
        self.counts = np.zeros((len(mixture.stages), len(self.names)), dtype=np.int64)  # draws per stage, source

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        if self.step >= self.n_steps:
            raise StopIteration
        stage, source = (int(a[0]) for a in draws(self.mixture, self.seq_len, np.array([self.step])))
        name = self.names[source]
        epoch, pos = self.cursors[name]
        tokens, starts, epoch, pos = self.streams[name].window(epoch, pos, self.seq_len + 1)
        self.cursors[name] = (epoch, pos)
        self.counts[stage, source] += 1
        sample = Sample(self.step, self.mixture.stages[stage].name, name, tokens, starts)
        self.step += 1
        return sample

    def state_dict(self) -> dict:
        """Small and JSON-serializable: the step, each source's cursor, the draw counts (for realized())."""
        return {
            "step": self.step,
            "seq_len": self.seq_len,
            "seed": self.mixture.seed,
            "cursors": {name: list(c) for name, c in self.cursors.items()},
            "draws": {
                st.name: dict(zip(self.names, map(int, row))) for st, row in zip(self.mixture.stages, self.counts)
            },
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seq_len", self.seq_len), ("seed", self.mixture.seed)):
            if state[key] != mine:
                raise ValueError(f"state {key} is {state[key]}, this sampler's is {mine}")
        if set(state["cursors"]) != set(self.cursors):
            raise ValueError(
                f"state has cursors for {sorted(state['cursors'])}, this mixture uses {sorted(self.cursors)}"
            )
        stage_names = [s.name for s in self.mixture.stages]
        if list(state["draws"]) != stage_names:
            raise ValueError(f"state has stages {list(state['draws'])}, this mixture {stage_names}")
        self.step = int(state["step"])
        self.cursors = {name: (int(e), int(p)) for name, (e, p) in state["cursors"].items()}
        self.counts = np.array([[state["draws"][st].get(n, 0) for n in self.names] for st in stage_names], np.int64)

    def realized(self) -> dict:
        """Per stage, the tokens drawn per source and their proportion next to the weight; epochs per source."""
        stages = _stage_table(self.mixture, self.counts, self.seq_len)
        epochs = {name: e + p / self.streams[name].epoch_tokens for name, (e, p) in self.cursors.items()}
        return {"steps": self.step, "stages": stages, "epochs": epochs}


def _stage_table(mixture: Mixture, counts: np.ndarray, seq_len: int) -> dict:
    names = list(mixture.sources)
    out = {}
    for stage, row in zip(mixture.stages, counts):
        n = int(row.sum())
        out[stage.name] = {
            "steps": n,
            "tokens": {name: int(c) * (seq_len + 1) for name, c in zip(names, row)},
            "proportion": {name: (int(c) / n if n else 0.0) for name, c in zip(names, row)},
            "weight": {name: stage.weights.get(name, 0.0) for name in names},
        }
    return out


def _source_tokens(path: Path) -> int | None:
    """A source's tokens per epoch from its shards' manifest, or None where it is not tokenized yet."""
    try:
        return int(load_manifest(path.parent)["sources"][path.name]["n_tokens"])
    except (OSError, ValueError, KeyError):
        return None


def schedule_report(mixture: Mixture, seq_len: int, steps: int | None = None, chunk: int = 1 << 20) -> dict:
    """What the sampler will draw over ``steps`` steps (default: the budget), from the draws alone (no token is
    read): per stage its steps and the tokens per source against the weights; per source the tokens drawn and,
    where its manifest exists, the epochs that is."""
    steps = n_steps(mixture, seq_len) if steps is None else steps
    n_src = len(mixture.sources)
    counts = np.zeros((len(mixture.stages), n_src), dtype=np.int64)
    first = [None] * len(mixture.stages)
    for lo in range(0, steps, chunk):  # bounded memory for long schedules
        stage, source = draws(mixture, seq_len, np.arange(lo, min(lo + chunk, steps)))
        counts += np.bincount(stage * n_src + source, minlength=counts.size).reshape(counts.shape)
        for i in np.unique(stage):
            first[i] = first[i] if first[i] is not None else lo + int(np.argmax(stage == i))
    stages = _stage_table(mixture, counts, seq_len)
    for st, f in zip(stages.values(), first):
        st["first_step"] = f
    sources = {}
    for name, total in zip(mixture.sources, counts.sum(axis=0)):
        epoch_tokens = _source_tokens(mixture.sources[name])
        drawn = int(total) * (seq_len + 1)
        sources[name] = {"tokens": drawn, "epochs": drawn / epoch_tokens if epoch_tokens else None}
    return {"seq_len": seq_len, "steps": steps, "tokens_per_step": seq_len + 1, "stages": stages, "sources": sources}
