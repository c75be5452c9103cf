"""The settings of `opengemma data prepare`: one dataclass per stage, read from a TOML file of values (never code)
and overridden by command-line flags; the defaults are the published ones each stage's module cites.

    [read]     text_field, id_field, text_unit ("file" | "paragraph" for plain text)
    [filters]  per filter name (filters.FILTERS) its thresholds, `enabled = false` to skip one
    [source_filters.<source>.<filter>]  the same for one source only (a dictionary is not judged as web text)
    [dedup]    exact, minhash, ngram, bands, rows, seed
    [pii]      enabled, kinds
    [decontam] enabled, n, mode ("remove" | "excise"), tasks (default: every eval task whose data is installed)
    [tokenize] enabled, tokenizer (a tokenizer.model or a model name; default: the default model's), train_vocab
    [run]      workers (0: every core), shard_docs (documents per work shard)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ReadConfig:
    text_field: str = "text"
    id_field: str = "id"
    text_unit: str = "file"  # a plain-text file is one document ("paragraph": one per blank-line paragraph)


@dataclass
class DedupConfig:
    exact: bool = True
    minhash: bool = True
    ngram: int = 5  # FineWeb's MinHash: 5-gram word shingles, 14 bands x 8 rows (threshold ~0.72 Jaccard)
    bands: int = 14
    rows: int = 8
    seed: int = 1


@dataclass
class PIIConfig:
    enabled: bool = True
    kinds: list[str] | None = None  # None: every kind pii.find_sensitive knows


@dataclass
class DecontamConfig:
    enabled: bool = True
    n: int = 13  # GPT-3 (Brown et al. 2020, App. C) and Llama 2 use 13-gram overlap
    mode: str = "remove"  # "excise": GPT-3's rule, cut the n-gram and 200 characters either side
    tasks: list[str] | None = None  # None: every eval task whose data is installed


@dataclass
class TokenizeConfig:
    enabled: bool = True
    tokenizer: str | None = None  # None: the default model's tokenizer
    train_vocab: int = 0  # > 0: train a SentencePiece model of this size on the kept documents and shard with it


@dataclass
class RunConfig:
    workers: int = 0  # 0: every core this process may use
    shard_docs: int = 2000  # documents per work shard: the unit of parallel work and of resumption


@dataclass
class PipelineConfig:
    read: ReadConfig = field(default_factory=ReadConfig)
    filters: dict = field(default_factory=dict)  # filters.build_filters' table; `enabled = false` turns one off
    source_filters: dict = field(default_factory=dict)  # source name -> a filters table over the one above
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def filters_for(self, source: str) -> dict:
        """The filter table one source runs with: the global one, each filter's keys overridden by the source's."""
        out = {k: dict(v) for k, v in self.filters.items()}
        for name, values in self.source_filters.get(source, {}).items():
            out[name] = {**out.get(name, {}), **values}
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """What the outputs depend on (not how many workers made them): a rerun with other settings must not
        resume a half-finished run made with these."""
        d = self.to_dict()
        d["run"] = {"shard_docs": self.run.shard_docs}
        return json.dumps(d, sort_keys=True)


SECTIONS = {f.name: f for f in dataclasses.fields(PipelineConfig)}


def from_dict(d: dict, where: str = "config") -> PipelineConfig:
    """A PipelineConfig from a TOML-shaped dict; an unknown section or key is an error naming it and the valid ones."""
    cfg = PipelineConfig()
    for section, values in d.items():
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: [{section}] must be a table, got {values!r}")
        if section == "filters":
            cfg.filters = {k: dict(v) for k, v in values.items()}
            continue
        if section == "source_filters":
            cfg.source_filters = {src: {k: dict(v) for k, v in t.items()} for src, t in values.items()}
            continue
        sub = getattr(cfg, section)
        known = {f.name: f for f in dataclasses.fields(sub)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"{where}: unknown key {section}.{key}; known: {', '.join(known)}")
            setattr(sub, key, value)
    _validate(cfg, where)
    return cfg


def load(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    return from_dict(d, where=str(path))


def _validate(cfg: PipelineConfig, where: str) -> None:
    if cfg.read.text_unit not in ("file", "paragraph"):
        raise ValueError(f"{where}: read.text_unit must be 'file' or 'paragraph', got {cfg.read.text_unit!r}")
    if cfg.decontam.mode not in ("remove", "excise"):
        raise ValueError(f"{where}: decontam.mode must be 'remove' or 'excise', got {cfg.decontam.mode!r}")
    for name, value in [("dedup.ngram", cfg.dedup.ngram), ("dedup.bands", cfg.dedup.bands)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    if cfg.dedup.rows < 1 or cfg.decontam.n < 1 or cfg.run.shard_docs < 1 or cfg.run.workers < 0:
        raise ValueError(f"{where}: dedup.rows, decontam.n and run.shard_docs must be >= 1, run.workers >= 0")


# -- command-line flags ------------------------------------------------------------------------------------------------
STAGES = ("quality", "exact_dedup", "minhash", "pii", "decontam", "tokenize")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`opengemma data prepare`'s flags for the common settings; the rest go through --config or --set."""
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="files or directories: .txt/.md, .jsonl, .parquet (.gz/.zst)"
    )
    p.add_argument("--out", required=True, help="output directory (kept/, removed/, shards/, report.*)")
    p.add_argument("--config", help="pipeline TOML (values only; see docs/data.md)")
    p.add_argument("--disable", action="append", default=[], choices=STAGES, help="turn a stage off (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. filters.gopher_quality.min_words=30 or decontam.mode=excise (TOML values)")  # fmt: skip
    p.add_argument("--tokenizer", help="tokenizer.model file or model name (default: the default model's)")
    p.add_argument(
        "--train-tokenizer", type=int, metavar="VOCAB", help="train a tokenizer of this size on the kept text"
    )
    p.add_argument("--workers", type=int, help="processes (default: every core)")
    p.add_argument("--decontam-n", type=int, help="n-gram length of decontamination (default 13)")
    p.add_argument("--decontam-mode", choices=["remove", "excise"], help="drop a matching document or cut the match")
    p.add_argument("--decontam-task", action="append", help="decontaminate against these eval tasks only (repeatable)")
    p.add_argument("--eval-data", action="append", default=[], metavar="TASK=PATH",
                   help="decontaminate against a task whose data you bring too (repeatable)")  # fmt: skip
    p.add_argument("--text-unit", choices=["file", "paragraph"], help="plain text: a file or a paragraph per document")
    p.add_argument("--force", action="store_true", help="start over when --out holds a run with other settings")
    p.add_argument("--no-progress", action="store_true")


def from_args(args: argparse.Namespace) -> PipelineConfig:
    d: dict = {}
    if args.config:
        with open(args.config, "rb") as f:
            try:
                d = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{args.config}: not valid TOML: {e}") from None
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise ValueError(f"--set takes SECTION.KEY=VALUE, got {item!r}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word: a string
        *path, last = key.split(".")
        node = d
        for part in path:
            node = node.setdefault(part, {})
        node[last] = parsed
    cfg = from_dict(d, where=args.config or "--set")
    off = set(args.disable)
    if "quality" in off:
        cfg.filters = {name: {**cfg.filters.get(name, {}), "enabled": False} for name in _filter_names()}
    cfg.dedup.exact &= "exact_dedup" not in off
    cfg.dedup.minhash &= "minhash" not in off
    cfg.pii.enabled &= "pii" not in off
    cfg.decontam.enabled &= "decontam" not in off
    cfg.tokenize.enabled &= "tokenize" not in off
    for value, section, key in [
        (args.tokenizer, "tokenize", "tokenizer"),
        (args.train_tokenizer, "tokenize", "train_vocab"),
        (args.workers, "run", "workers"),
        (args.decontam_n, "decontam", "n"),
        (args.decontam_mode, "decontam", "mode"),
        (args.decontam_task, "decontam", "tasks"),
        (args.text_unit, "read", "text_unit"),
    ]:
        if value is not None:
            setattr(getattr(cfg, section), key, value)
    _validate(cfg, "flags")
    return cfg


def _filter_names() -> list[str]:
    from .filters import FILTERS

    return list(FILTERS)
