"""Token shards: documents tokenized into memory-mappable uint32 files with document boundaries, checksums and a
manifest; written atomically and resumable after a crash without redoing finished parts.

Layout (one directory per source; a part is one input file's documents)::

    out/manifest.json                     tokenizer (sha256 of its model, vocab size, bos/eos), dtype, per source
                                          its parts [{name, n_docs, n_tokens, sha256}] and totals; written last
    out/<source>/<part>.bin               uint32 tokens, each document as [bos] + ids + [eos], back to back
    out/<source>/<part>.idx.npy           int64 (n_docs + 1,) offsets of the documents into the .bin
    out/<source>/<part>.json              n_docs, n_tokens, both files' sha256, the tokenizer's: written after them

Every file goes through atomic_path, so a kill -9 leaves whole files or none; the .json comes last, so a part is
done iff its .json exists and agrees (tokenizer, input, file sizes) and a rerun redoes only the other parts.
uint32 because Gemma's 262,144-piece vocabulary does not fit uint16. Offsets are kept apart from the tokens
(as Megatron's .bin/.idx pairs do) so a reader finds document i without scanning.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_path
from ..tokenizer import Tokenizer

__all__ = ["tokenize_parts", "TokenShards", "load_manifest", "tokenizer_info", "MANIFEST"]

MANIFEST = "manifest.json"
DTYPE = np.dtype("<u4")  # little-endian on disk whatever the host
BATCH_CHARS = 4 << 20  # ~4 MB of text per encode_batch call: large enough to amortize, small in memory


def tokenizer_info(tokenizer: Tokenizer) -> dict:
    """What identifies a tokenizer in a manifest: shards made with another one are different data."""
    return {
        "sha256": hashlib.sha256(tokenizer.model_proto_bytes).hexdigest(),
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _input_id(path: Path) -> dict:
    """The input as a part's record names it: a changed path or size makes the part stale."""
    return {"input": str(path), "input_bytes": path.stat().st_size if path.is_file() else None}


def _part_files(src_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return src_dir / f"{name}.bin", src_dir / f"{name}.idx.npy", src_dir / f"{name}.json"


def _done(src_dir: Path, name: str, input_path: Path, tok_sha: str) -> dict | None:
    """The part's record if it is finished and still describes this input and tokenizer, else None."""
    bin_path, idx_path, json_path = _part_files(src_dir, name)
    try:
        rec = json.loads(json_path.read_text())
        ok = (
            rec["tokenizer_sha256"] == tok_sha
            and {k: rec[k] for k in ("input", "input_bytes")} == _input_id(input_path)
            and bin_path.stat().st_size == rec["n_tokens"] * DTYPE.itemsize
            and idx_path.stat().st_size == rec["idx_bytes"]
        )
    except (OSError, ValueError, KeyError, TypeError):  # missing, half-written by hand, or an older format
        return None
    return rec if ok else None


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenize_part(
    source: str,
    name: str,
    input_path: Path,
    src_dir: Path,
    tokenizer: Tokenizer,
    read: Callable[[Path], Iterable[str]],
    threads: int,
) -> dict:
    """Tokenize one part into its three files (a process pool's task: every argument pickles)."""
    bin_path, idx_path, json_path = _part_files(src_dir, name)
    for f in (bin_path, idx_path, json_path):  # a killed writer's leftovers (atomic_path's names): ours to redo
        for stale in src_dir.glob(glob.escape(f.name) + ".tmp-*"):
            stale.unlink(missing_ok=True)
    lengths: list[int] = []
    h = hashlib.sha256()
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as f:
        for batch in _batches(read(input_path)):
            docs = tokenizer.encode_batch(batch, bos=True, eos=True, num_threads=threads)
            sizes = [len(d) for d in docs]
            lengths += sizes
            data = np.fromiter(itertools.chain.from_iterable(docs), dtype=DTYPE, count=sum(sizes)).tobytes()
            f.write(data)
            h.update(data)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buf = io.BytesIO()
    np.save(buf, offsets)
    idx_bytes = buf.getvalue()
    with atomic_path(idx_path) as tmp:
        tmp.write_bytes(idx_bytes)
    rec = {
        "name": name,
        "n_docs": len(lengths),
        "n_tokens": int(offsets[-1]),
        "sha256": {"bin": h.hexdigest(), "idx": hashlib.sha256(idx_bytes).hexdigest()},
        "idx_bytes": len(idx_bytes),
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto_bytes).hexdigest(),
        **_input_id(input_path),
    }
    with atomic_path(json_path) as tmp:  # last: its presence says the part is done
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


_worker: dict = {}  # a pool process's tokenizer and reader, sent once by the initializer rather than per task


def _init_worker(tokenizer: Tokenizer, read: Callable[[Path], Iterable[str]]) -> None:
    _worker.update(tokenizer=tokenizer, read=read)


def _pool_task(source: str, name: str, path: Path, src_dir: Path) -> dict:
    # one sentencepiece thread per process: the processes are the parallelism
    return _tokenize_part(source, name, path, src_dir, _worker["tokenizer"], _worker["read"], 1)


def tokenize_parts(
    parts: list[tuple[str, str, Path]],
    out: str | os.PathLike,
    tokenizer: Tokenizer,
    read: Callable[[Path], Iterable[str]],
    *,
    workers: int = 1,
    progress: bool = True,
    mp_context=None,
) -> dict:
    """Tokenize ``parts`` ((source, part_name, input_path), in the order their documents should be read) into
    ``out``, skipping parts already done; write and return the manifest.

    ``read(path)`` yields a part's document texts; with ``workers > 1`` it runs in a process pool, so it must
    pickle (a module-level function or a functools.partial of one). ``mp_context`` picks the pool's start
    method (default: the platform's; spawn works too). Sources already in the manifest and not named here are
    kept in it; a source named here is described by exactly these parts."""
    out = Path(out)
    if tokenizer.vocab_size > 2**32:
        raise ValueError(f"vocabulary of {tokenizer.vocab_size} ids does not fit uint32 token shards")
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("token shards need a tokenizer with <bos> and <eos> (documents are [bos] + ids + [eos])")
    info = tokenizer_info(tokenizer)
    old = load_manifest(out) if (out / MANIFEST).exists() else None
    if old is not None and old["tokenizer"] != info:
        raise ValueError(
            f"{out / MANIFEST} was made with another tokenizer (sha256 {old['tokenizer']['sha256'][:12]}..., "
            f"vocab {old['tokenizer']['vocab_size']}; this one {info['sha256'][:12]}..., vocab {info['vocab_size']}): "
            "use another output directory"
        )
    seen = set()
    for source, name, _ in parts:
        if (source, name) in seen:
            raise ValueError(f"part {source}/{name} is listed twice")
        if not source or not name or "/" in source + name or source.startswith(".") or name.startswith("."):
            raise ValueError(f"bad source or part name: {source!r}, {name!r} (no '/', no leading '.')")
        seen.add((source, name))

    records: dict[tuple[str, str], dict] = {}
    todo = []
    for source, name, path in parts:
        rec = _done(out / source, name, Path(path), info["sha256"])
        if rec is not None:
            records[source, name] = rec
        else:
            todo.append((source, name, Path(path)))
    sources = dict(old["sources"]) if old else {}
    changing = {s for s, _, _ in todo} & set(sources)
    if changing:
        # The manifest lists finished sources only: the ones about to change leave it first, so a crash from here
        # on cannot leave it describing files that have since been replaced.
        sources = {k: v for k, v in sources.items() if k not in changing}
        _write_manifest(out, info, sources)
    bar = tqdm(total=len(parts), initial=len(records), desc="tokenize", unit=" parts", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for source, name, path in todo:
                records[source, name] = _tokenize_part(source, name, path, out / source, tokenizer, read, -1)
                bar.update()
        else:
            pool = ProcessPoolExecutor(
                min(workers, len(todo)), mp_context=mp_context, initializer=_init_worker, initargs=(tokenizer, read)
            )
            with pool:
                futures = {pool.submit(_pool_task, s, n, p, out / s): (s, n) for s, n, p in todo}
                for fut in as_completed(futures):
                    records[futures[fut]] = fut.result()
                    bar.update()
    finally:
        bar.close()

    for source in dict.fromkeys(s for s, _, _ in parts):  # first-seen order
        entries = [
            {k: records[s, n][k] for k in ("name", "n_docs", "n_tokens", "sha256")} for s, n, _ in parts if s == source
        ]
        sources[source] = {
            "parts": entries,
            "n_docs": sum(e["n_docs"] for e in entries),
            "n_tokens": sum(e["n_tokens"] for e in entries),
        }
    return _write_manifest(out, info, sources)


def _write_manifest(out: Path, info: dict, sources: dict) -> dict:
    manifest = {
        "tokenizer": info,
        "dtype": "uint32",
        "sources": sources,
        "n_docs": sum(s["n_docs"] for s in sources.values()),
        "n_tokens": sum(s["n_tokens"] for s in sources.values()),
    }
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no token shard manifest at {path} (tokenize first, or an unfinished run)") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if manifest.get("dtype") != "uint32" or not isinstance(manifest.get("sources"), dict):
        raise ValueError(f"{path} is not a token shard manifest (dtype uint32 and sources expected)")
    return manifest


class TokenShards:
    """One source's shards, read through memory maps (no copies): ``doc(i)`` is a view of document i, numbered
    over the source's parts in manifest order. ``TokenShards(root / source)`` or ``TokenShards(root, source)``."""

    def __init__(self, path: str | os.PathLike, source: str | None = None):
        path = Path(path)
        if source is None:
            if (path / MANIFEST).exists():
                raise ValueError(f"{path} is a shards root: name the source, TokenShards(root, source)")
            root, source = path.parent, path.name
        else:
            root = path
        self.root, self.source, self.dir = root, source, root / source
        manifest = load_manifest(root)
        if source not in manifest["sources"]:
            raise KeyError(f"source {source!r} not in {root / MANIFEST} (has: {', '.join(manifest['sources'])})")
        self.manifest = manifest
        self.parts: list[dict] = manifest["sources"][source]["parts"]
        self._tokens: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        for part in self.parts:
            bin_path, idx_path, _ = _part_files(self.dir, part["name"])
            offsets = np.load(idx_path, mmap_mode="r")
            # np.memmap refuses an empty file: an empty part reads as an empty array
            tokens = np.memmap(bin_path, dtype=DTYPE, mode="r") if part["n_tokens"] else np.zeros(0, DTYPE)
            if offsets.shape != (part["n_docs"] + 1,) or tokens.shape != (part["n_tokens"],):
                raise ValueError(f"{bin_path}: sizes disagree with {root / MANIFEST} (rerun tokenize_parts)")
            self._tokens.append(tokens)
            self._offsets.append(offsets)
        self._first_doc = np.cumsum([0] + [p["n_docs"] for p in self.parts])  # global doc id of each part's first
        self.n_docs = int(self._first_doc[-1])
        self.n_tokens = sum(p["n_tokens"] for p in self.parts)

    def __len__(self) -> int:
        return self.n_docs

    def __repr__(self) -> str:
        return f"TokenShards({str(self.dir)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens})"

    def doc(self, i: int) -> np.ndarray:
        """Document i's tokens ([bos] + ids + [eos]) as a uint32 view into its part's memory map."""
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for {self.n_docs} documents")
        i %= self.n_docs
        p = int(np.searchsorted(self._first_doc, i, side="right")) - 1
        j = i - int(self._first_doc[p])
        start, end = self._offsets[p][j], self._offsets[p][j + 1]
        return self._tokens[p][start:end]

    def lengths(self) -> np.ndarray:
        """Every document's length in tokens, int64 (n_docs,), in global order."""
        return np.concatenate([np.diff(o) for o in self._offsets]) if self.parts else np.zeros(0, np.int64)

    def tokens(self) -> list[np.ndarray]:
        """Each part's whole token array (memory maps)."""
        return list(self._tokens)

    def verify(self) -> None:
        """Recompute every file's sha256 against the manifest; raise ValueError naming the first that differs."""
        for part in self.parts:
            bin_path, idx_path, _ = _part_files(self.dir, part["name"])
            for kind, path in (("bin", bin_path), ("idx", idx_path)):
                if _sha256(path) != part["sha256"][kind]:
                    raise ValueError(f"{path}: checksum mismatch with {self.root / MANIFEST} (corrupt file)")
