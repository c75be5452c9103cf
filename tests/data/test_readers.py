"""The readers on small files written here: every format with every compression, ids kept or made from the
path and position, metadata kept, malformed records counted with their location while the good ones still
come through (or a ValueError naming file and line), truncated streams, directory walks, and streaming: the
first document of a large file arrives without the file being read into memory."""

import gzip
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from opengemma.data.readers import Document, ReadErrors, iter_documents, list_files, read_inputs

COMPRESSIONS = {"": lambda b: b, ".gz": gzip.compress, ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}
RECORDS = [
    {"id": 7, "text": "First document.", "url": "https://a.example", "lang": "en"},
    {"text": "Second, without an id.", "score": 0.5},
    {"id": "doc-3", "text": "Third.\nTwo lines.", "tags": ["x", "y"]},
]


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(COMPRESSIONS[next((c for c in (".gz", ".zst") if path.name.endswith(c)), "")](data))
    return path


def jsonl(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize("comp", COMPRESSIONS)
def test_jsonl_ids_and_meta(tmp_path, comp):
    path = write(tmp_path / f"part.jsonl{comp}", jsonl(RECORDS))
    docs = list(iter_documents(path))
    assert docs == [
        Document("7", "First document.", {"url": "https://a.example", "lang": "en"}),  # id stringified
        Document(f"part.jsonl{comp}:2", "Second, without an id.", {"score": 0.5}),  # made: name and line
        Document("doc-3", "Third.\nTwo lines.", {"tags": ["x", "y"]}),
    ]
    other = list(iter_documents(path, text_field="url", id_field="lang", errors=ReadErrors()))
    assert other[0] == Document("en", "https://a.example", {"id": 7, "text": "First document."})


def test_line_endings_and_concatenated_streams(tmp_path):
    # CRLF line ends and no final newline; zstd frames one after another (with and without a checksum,
    # streamed without a content size) and gzip members one after another read as one stream
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b'{"text": "a"}\r\n{"text": "b"}\r\n\r\n{"text": "c"}')
    assert [(d.id, d.text) for d in iter_documents(crlf)] == [
        ("crlf.jsonl:1", "a"),
        ("crlf.jsonl:2", "b"),
        ("crlf.jsonl:4", "c"),
    ]
    first, second = jsonl(RECORDS[:2]), jsonl(RECORDS[2:])
    streamed = zstandard.ZstdCompressor().compressobj()
    frames = (
        zstandard.ZstdCompressor(write_checksum=True).compress(first) + streamed.compress(second) + streamed.flush()
    )
    (tmp_path / "frames.jsonl.zst").write_bytes(frames)
    (tmp_path / "members.jsonl.gz").write_bytes(gzip.compress(first) + gzip.compress(second))
    for name in ("frames.jsonl.zst", "members.jsonl.gz"):
        errors = ReadErrors()
        assert [d.text for d in iter_documents(tmp_path / name, errors=errors)] == [r["text"] for r in RECORDS]
        assert errors.count == 0


@pytest.mark.parametrize("comp", COMPRESSIONS)
def test_plain_text_file_and_paragraph_units(tmp_path, comp):
    text = "Title line\n\nFirst paragraph,\nstill first.\n\n\n  \nSecond paragraph.\r\nIts second line.\n"
    path = write(tmp_path / "books" / f"a.txt{comp}", ("\ufeff" + text).encode())  # with a byte-order mark
    [doc] = iter_documents(path, root=tmp_path)
    assert doc == Document(f"books/a.txt{comp}", text.replace("\r\n", "\n"))
    paragraphs = list(iter_documents(path, root=tmp_path, text_unit="paragraph"))
    assert [(d.id, d.text) for d in paragraphs] == [
        (f"books/a.txt{comp}:1", "Title line"),
        (f"books/a.txt{comp}:3", "First paragraph,\nstill first."),
        (f"books/a.txt{comp}:8", "Second paragraph.\nIts second line."),
    ]
    with pytest.raises(ValueError, match="text_unit must be 'file' or 'paragraph'"):
        iter_documents(path, text_unit="line")


@pytest.mark.parametrize("comp", ["", ".gz", ".zst"])
def test_parquet_ids_meta_and_row_groups(tmp_path, comp):
    table = pa.table({"text": [f"row {i}" for i in range(2500)], "source": ["web"] * 2500})
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, row_group_size=1000)  # three row groups, read batch by batch
    path = write(tmp_path / f"t.parquet{comp}", plain.read_bytes())
    docs = list(iter_documents(path))
    assert len(docs) == 2500
    assert docs[0] == Document(f"t.parquet{comp}:0", "row 0", {"source": "web"})  # 0-based row
    assert docs[2499].id == f"t.parquet{comp}:2499"
    with_id = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": [10, 11], "text": ["a", None], "n": [1, 2]}), with_id)
    errors = ReadErrors()
    assert list(iter_documents(with_id, errors=errors)) == [Document("10", "a", {"n": 1})]
    assert errors.examples == [(str(with_id), 1, "column 'text' is null, not a string")]
    with pytest.raises(ValueError, match=r"ids.parquet:0: no column 'body'; columns: id, text, n"):
        list(iter_documents(with_id, text_field="body"))


def test_malformed_jsonl_lines_are_counted_with_their_location(tmp_path):
    lines = [
        b'{"text": "good one"}',  # 1
        b'{"text": "unterminated',  # 2 bad JSON
        b"",  # 3 blank: skipped silently
        b'["a list"]',  # 4 not an object
        b'{"body": "no text"}',  # 5 missing text
        b'{"text": 42}',  # 6 text not a string
        b'{"text": "caf\xe9"}',  # 7 Latin-1, not UTF-8
        b'{"text": "good two"}',  # 8
        b'{"text": "lone \\ud800 surrogate"}',  # 9 valid JSON, not valid Unicode
        b'{"text": "a pair \\ud83d\\ude00 is fine"}',  # 10
    ]
    path = write(tmp_path / "bad.jsonl", b"\n".join(lines) + b"\n")
    errors = ReadErrors()
    docs = list(iter_documents(path, errors=errors))
    assert [(d.id, d.text) for d in docs] == [
        ("bad.jsonl:1", "good one"),
        ("bad.jsonl:8", "good two"),
        ("bad.jsonl:10", "a pair \U0001f600 is fine"),
    ]
    assert errors.count == 6
    assert [(p, n) for p, n, _ in errors.examples] == [(str(path), n) for n in (2, 4, 5, 6, 7, 9)]
    messages = [m for _, _, m in errors.examples]
    assert messages[0].startswith("invalid JSON") and messages[1] == "expected a JSON object per line, got list"
    assert messages[2:] == ["field 'text' is missing, not a string", "field 'text' is int, not a string"] + [
        "invalid UTF-8 at byte 13",
        "field 'text' holds a lone surrogate (not valid Unicode)",
    ]
    assert errors.as_dict()["examples"][0] == {"path": str(path), "line": 2, "message": messages[0]}
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        list(iter_documents(path))  # no ReadErrors: the first malformed line is an error naming it


def test_read_errors_keeps_the_first_examples():
    errors = ReadErrors(max_examples=3)
    for i in range(10):
        errors.add("f.jsonl", i, "bad")
    assert errors.count == 10 and [n for _, n, _ in errors.examples] == [0, 1, 2]


@pytest.mark.parametrize("comp", [".gz", ".zst"])
def test_a_truncated_stream_is_one_error_where_it_broke(tmp_path, comp):
    full = write(tmp_path / f"full.jsonl{comp}", jsonl({"text": f"document {i} " + "x" * 60} for i in range(8000)))
    path = tmp_path / f"cut.jsonl{comp}"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    errors = ReadErrors()
    docs = list(iter_documents(path, errors=errors))
    assert 0 < len(docs) < 8000 and [d.text for d in docs] == [f"document {i} " + "x" * 60 for i in range(len(docs))]
    assert errors.count == 1
    (where, line, message) = errors.examples[0]
    assert (where, line) == (str(path), len(docs) + 1) and "stream broken" in message
    with pytest.raises(ValueError, match=rf"cut.jsonl{comp}:{len(docs) + 1}: .*stream broken"):
        list(iter_documents(path))
    text_path = tmp_path / f"cut.txt{comp}"
    text_path.write_bytes(path.read_bytes())
    assert list(iter_documents(text_path, errors=(text_errors := ReadErrors()))) == []  # a whole file: not kept
    assert text_errors.count == 1


def test_undecodable_text_is_counted_at_its_line(tmp_path):
    path = write(tmp_path / "latin1.txt", "one\n\ntwo caf\xe9\nthree\n\nfour\n".encode("latin-1"))
    errors = ReadErrors()
    assert list(iter_documents(path, errors=errors)) == []
    assert errors.examples == [(str(path), 3, "invalid UTF-8 at byte 12")]
    errors = ReadErrors()
    paragraphs = list(iter_documents(path, text_unit="paragraph", errors=errors))
    assert [(d.id, d.text) for d in paragraphs] == [("latin1.txt:1", "one"), ("latin1.txt:6", "four")]
    assert errors.examples == [(str(path), 3, "invalid UTF-8 at byte 7; paragraph skipped")]


def test_directories_are_walked_in_sorted_order(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ["b.txt", "a/z.jsonl", "a/b/c.md.gz", "a-b.txt", ".hidden/x.bin", "a/.DS_Store"]:
        write(corpus / name, jsonl([{"text": name}]) if name.endswith("jsonl") else name.encode())
    assert [p.relative_to(corpus).as_posix() for p in list_files(corpus)] == [
        "a/b/c.md.gz",
        "a/z.jsonl",
        "a-b.txt",
        "b.txt",
    ]
    docs = list(read_inputs([corpus / "b.txt", corpus]))
    assert [d.id for d in docs] == ["b.txt", "a/b/c.md.gz", "a/z.jsonl:1", "a-b.txt", "b.txt"]  # relative to the dir
    write(corpus / "a" / "notes.docx", b"x")
    with pytest.raises(ValueError, match=r"notes.docx: unsupported file type; supported suffixes: .txt, .txt.gz"):
        list_files(corpus)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):  # before any document of the inputs before it
        next(read_inputs([corpus / "b.txt", tmp_path / "nowhere"]))


def test_reading_streams_a_large_file(tmp_path):
    # ~16 MB of JSON Lines (plain and compressed): the first document must arrive with a small fraction of it
    # held in memory, so nothing reads the whole file first
    line = json.dumps({"text": "a line of text " * 60}).encode() + b"\n"
    data = line * (16_000_000 // len(line))
    for comp in COMPRESSIONS:
        path = write(tmp_path / f"big.jsonl{comp}", data)
        tracemalloc.start()
        try:
            docs = iter_documents(path)
            first = next(docs)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        docs.close()
        assert first.id == f"big.jsonl{comp}:1" and peak < 2_000_000, (comp, peak)
    # Parquet: a batch of one row group at a time, neither a whole table in Arrow's memory pool nor all its
    # rows as Python objects
    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " + "text " * 180 for i in range(16_000)]}), big, row_group_size=1000)
    before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        docs = iter_documents(big)
        assert next(docs).id == "big.parquet:0"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pa.total_allocated_bytes() - before < 4_000_000 and peak < 4_000_000  # the column is 14.5 MB
    docs.close()
