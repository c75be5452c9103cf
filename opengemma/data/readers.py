"""Documents out of raw files: plain text, JSON Lines and Parquet, each optionally gzip- or zstd-compressed,
streamed one record at a time so that no file (let alone the corpus) is ever held in memory whole.

A malformed record (bad JSON, not an object, a missing or non-string text, undecodable UTF-8, a compressed
stream that breaks off) is counted in a ReadErrors with its file and line and skipped; without a ReadErrors it
is a ValueError naming the file and line. Ids are kept from the data or made from the file and its position,
so every document can be traced back to where it came from:

    JSONL    the `id` field (stringified), else f"{relative_path}:{line}"      (line 1-based)
    Parquet  the `id` column,               else f"{relative_path}:{row}"       (row 0-based)
    text     file unit: f"{relative_path}";  paragraph unit: f"{relative_path}:{first_line}"

Lines are split and decoded here, byte line by byte line, rather than through io.TextIOWrapper: a bad byte
then costs one line (counted), not the rest of the file, and a truncated stream is noticed where it breaks.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["Document", "ReadErrors", "SUFFIXES", "list_files", "iter_documents", "read_inputs"]

CHUNK = 1 << 16  # bytes per read: large enough that the per-call overhead vanishes, small enough to stream
FORMATS = {".txt": "text", ".md": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
SUFFIXES = tuple(f + c for f in FORMATS for c in ("", *COMPRESSIONS))  # every name ending list_files accepts


@dataclass
class Document:
    id: str
    text: str
    meta: dict = field(default_factory=dict)  # every other JSONL / Parquet field, kept as read


@dataclass
class ReadErrors:
    """Malformed records: how many, and the first `max_examples` as (path, line_or_row, message)."""

    count: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)
    max_examples: int = 100

    def add(self, path, line: int, message: str) -> None:
        self.count += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((str(path), int(line), message))

    def as_dict(self) -> dict:
        return {"count": self.count, "examples": [{"path": p, "line": n, "message": m} for p, n, m in self.examples]}


class _Broken(Exception):
    """The compressed stream ended or broke before its end marker (after what was decoded so far)."""


def _kind(path: Path) -> tuple[str, str | None]:
    """(format, compression) from the name's suffixes, or a ValueError naming the file and what is accepted."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise ValueError(f"{path}: unsupported file type; supported suffixes: {', '.join(SUFFIXES)}")
    return fmt, compression


def list_files(input: str | os.PathLike) -> list[Path]:
    """The input file itself, or every file under a directory, walked recursively in sorted order of path
    components (so the same tree always gives the same order). Hidden files and directories (".name") are
    skipped; any other file with an unsupported suffix is a ValueError naming it (better than silently
    dropping part of a corpus)."""
    root = Path(input)
    if root.is_file():
        _kind(root)
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    files.sort(key=lambda p: p.relative_to(root).parts)
    for f in files:
        _kind(f)
    return files


def _chunks(path: Path, compression: str | None) -> Iterator[bytes]:
    """The file's decompressed bytes in chunks; _Broken when a compressed stream is truncated or corrupt."""
    with open(path, "rb") as fh:
        if compression is None:
            while chunk := fh.read(CHUNK):
                yield chunk
        elif compression == "gzip":
            with gzip.GzipFile(fileobj=fh) as gz:  # concatenated members are read as one stream
                while True:
                    try:
                        chunk = gz.read(CHUNK)
                    except (EOFError, OSError, zlib.error) as e:
                        raise _Broken(f"gzip stream broken: {e}") from e
                    if not chunk:
                        return
                    yield chunk
        else:
            yield from _zstd_chunks(fh)


def _zstd_chunks(fh) -> Iterator[bytes]:
    import zstandard

    # stream_reader bounds each read's output (a decompressobj returns a whole frame at once: 1.5 kB of
    # repetitive text can hold 16 MB), but it ends a truncated frame silently, so the frames are then walked
    reader = zstandard.ZstdDecompressor().stream_reader(fh, read_size=CHUNK, read_across_frames=True)
    try:
        while chunk := reader.read(CHUNK):
            yield chunk
    except zstandard.ZstdError as e:
        raise _Broken(f"zstd stream broken: {e}") from e
    if not _zstd_whole(fh):
        raise _Broken("zstd stream broken: the file ends inside a frame (truncated)")


def _zstd_whole(fh) -> bool:
    """Whether every zstd frame in the file ends whole, from the frame and block headers alone (RFC 8878:
    a block header is 3 bytes, bit 0 "last block", bits 1-2 the type, 1 = RLE holding one byte, then the
    size; a frame may end in a 4-byte checksum; skippable frames carry their own size)."""
    import zstandard

    size, pos = os.fstat(fh.fileno()).st_size, 0
    while pos < size:
        fh.seek(pos)
        head = fh.read(18)  # the longest frame header
        if int.from_bytes(head[:4], "little") & 0xFFFFFFF0 == 0x184D2A50:  # skippable: magic, size, content
            pos += 8 + int.from_bytes(head[4:8], "little")
            continue
        try:
            pos += zstandard.frame_header_size(head)
            checksum = zstandard.get_frame_parameters(head).has_checksum
        except zstandard.ZstdError:
            return False
        last = False
        while not last:
            if pos + 3 > size:
                return False
            fh.seek(pos)
            block = int.from_bytes(fh.read(3), "little")
            last = bool(block & 1)
            pos += 3 + (1 if (block >> 1) & 3 == 1 else block >> 3)
        pos += 4 * checksum
    return pos == size


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Byte lines without their b"\\n" (and b"\\r"), the last one even when the file lacks a final newline."""
    tail: list[bytes] = []  # pieces of a line that spans chunks (a list: no quadratic re-concatenation)
    for chunk in chunks:
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            tail.append(chunk)
            continue
        parts[0] = b"".join((*tail, parts[0]))
        tail = [parts.pop()]
        for line in parts:
            yield line[:-1] if line.endswith(b"\r") else line
    if last := b"".join(tail):
        yield last[:-1] if last.endswith(b"\r") else last


def _decode(raw: bytes, first: bool) -> str:
    return raw.decode("utf-8-sig" if first else "utf-8")  # a byte-order mark is tolerated at the file's start


def _fail(errors: ReadErrors | None, path, line: int, message: str) -> None:
    if errors is None:
        raise ValueError(f"{path}:{line}: {message}")
    errors.add(path, line, message)


_MISSING = object()


def _what(value) -> str:
    return "missing" if value is _MISSING else "null" if value is None else type(value).__name__


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def _jsonl(path, rel, compression, text_field, id_field, errors) -> Iterator[Document]:
    lineno = 0
    try:
        for lineno, raw in enumerate(_lines(_chunks(path, compression)), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(_decode(raw, lineno == 1))
            except UnicodeDecodeError as e:
                _fail(errors, path, lineno, f"invalid UTF-8 at byte {e.start}")
                continue
            except json.JSONDecodeError as e:
                _fail(errors, path, lineno, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(record, dict):
                _fail(errors, path, lineno, f"expected a JSON object per line, got {type(record).__name__}")
                continue
            text = record.pop(text_field, _MISSING)
            if not isinstance(text, str):
                _fail(errors, path, lineno, f"field {text_field!r} is {_what(text)}, not a string")
                continue
            if b"\\ud" in raw.lower() and not _encodable(text):  # JSON may escape a lone surrogate
                _fail(errors, path, lineno, f"field {text_field!r} holds a lone surrogate (not valid Unicode)")
                continue
            doc_id = record.pop(id_field, None)
            yield Document(f"{rel}:{lineno}" if doc_id is None else str(doc_id), text, record)
    except _Broken as e:
        _fail(errors, path, lineno + 1, str(e))


def _text_file(path, rel, compression, errors) -> Iterator[Document]:
    chunks = []
    try:
        for chunk in _chunks(path, compression):
            chunks.append(chunk)
    except _Broken as e:
        _fail(errors, path, b"".join(chunks).count(b"\n") + 1, str(e))
        return
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        _fail(errors, path, data.count(b"\n", 0, e.start) + 1, f"invalid UTF-8 at byte {e.start}")
        return
    if text.strip():
        yield Document(rel, text.replace("\r\n", "\n"))


def _paragraphs(path, rel, compression, errors) -> Iterator[Document]:
    """Blank-line-separated paragraphs, streamed; a paragraph with an undecodable line is counted and skipped."""
    lines: list[str] = []
    first, bad, lineno = 0, False, 0
    try:
        for lineno, raw in enumerate(_lines(_chunks(path, compression)), 1):
            if raw.strip():
                if not lines:
                    first = lineno
                try:
                    lines.append(_decode(raw, lineno == 1))
                except UnicodeDecodeError as e:
                    if not bad:
                        _fail(errors, path, lineno, f"invalid UTF-8 at byte {e.start}; paragraph skipped")
                    bad = True
                continue
            if lines and not bad:
                yield Document(f"{rel}:{first}", "\n".join(lines))
            lines, bad = [], False
    except _Broken as e:
        _fail(errors, path, lineno + 1, str(e))
        return
    if lines and not bad:
        yield Document(f"{rel}:{first}", "\n".join(lines))


def _parquet(path, rel, compression, text_field, id_field, errors) -> Iterator[Document]:
    import pyarrow.parquet as pq

    with tempfile.TemporaryFile() if compression else open(path, "rb") as fh:
        if compression:  # Parquet needs seeks (its footer comes last): decompress to disk, not to memory
            try:
                for chunk in _chunks(path, compression):
                    fh.write(chunk)
            except _Broken as e:
                _fail(errors, path, 0, str(e))
                return
            fh.seek(0)
        try:
            pf = pq.ParquetFile(fh)
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            _fail(errors, path, 0, f"not a readable Parquet file: {e}")
            return
        names = pf.schema_arrow.names
        if text_field not in names:
            _fail(errors, path, 0, f"no column {text_field!r}; columns: {', '.join(names)}")
            return
        rows = (r for batch in pf.iter_batches(batch_size=1024) for r in batch.to_pylist())  # a slice at a time
        for row, record in enumerate(rows):
            text = record.pop(text_field)
            if isinstance(text, bytes):  # a binary column holding UTF-8
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as e:
                    _fail(errors, path, row, f"invalid UTF-8 at byte {e.start}")
                    continue
            if not isinstance(text, str):
                _fail(errors, path, row, f"column {text_field!r} is {_what(text)}, not a string")
                continue
            doc_id = record.pop(id_field, None)
            yield Document(f"{rel}:{row}" if doc_id is None else str(doc_id), text, record)


def iter_documents(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    text_field: str = "text",
    id_field: str = "id",
    text_unit: str = "file",
    errors: ReadErrors | None = None,
) -> Iterator[Document]:
    """The documents of one file, lazily. `root`: made ids use the path relative to it (else the file name).
    `text_unit` ("file" or "paragraph") applies to plain text files. `errors`: where malformed records are
    counted; None raises ValueError at the first one."""
    path = Path(path)
    if text_unit not in ("file", "paragraph"):
        raise ValueError(f"text_unit must be 'file' or 'paragraph', not {text_unit!r}")
    fmt, compression = _kind(path)
    rel = _relative(path, Path(root) if root is not None else None)
    if fmt == "jsonl":
        return _jsonl(path, rel, compression, text_field, id_field, errors)
    if fmt == "parquet":
        return _parquet(path, rel, compression, text_field, id_field, errors)
    if text_unit == "paragraph":
        return _paragraphs(path, rel, compression, errors)
    return _text_file(path, rel, compression, errors)


def read_inputs(inputs: list[str | os.PathLike], **kw) -> Iterator[Document]:
    """Every document of every input (a file or a directory), inputs in the order given, each listed by
    list_files; a directory's files get ids relative to that directory. Keywords go to iter_documents."""
    listed = [(Path(i), list_files(i)) for i in inputs]  # every input checked before the first document
    for item, files in listed:
        root = item if item.is_dir() else None
        for path in files:
            yield from iter_documents(path, root=root, **kw)
