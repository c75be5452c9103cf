"""opengemma/data/shards.py: shards hold exactly [bos] + encode(text) + [eos] per document with the right offsets;
a process pool (fork or spawn) writes the same bytes as one process; a rerun redoes exactly the unfinished parts,
also after a real kill -9; verify() names a corrupt file. A tiny tokenizer trained here (~0.2 s) keeps it fast."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from opengemma.data.shards import TokenShards, load_manifest, tokenize_parts
from opengemma.data.tokenizer_train import train_tokenizer
from opengemma.tokenizer import Tokenizer

WORDS = "alpha beta gamma delta river stone light over under 42 1999 naïve café 東京 😀".split()


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(rng.randint(1, 4))]
        docs.append("\n".join(lines) + rng.choice(["", "\n", "  "]))
    return docs


def read_jsonl(path: Path):
    """The parts' reader: one JSON object per line, its "text" (module level, so a spawned worker imports it)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def crashing_read(path: Path):
    raise RuntimeError("crash")


def write_part(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(
        make_docs(400, 99), tmp_path_factory.mktemp("tok") / "t.model", vocab_size=560, progress=False
    )


@pytest.fixture
def corpus(tmp_path) -> tuple[list[tuple[str, str, Path]], dict[str, list[str]]]:
    """Two sources, four parts (one of them empty, one with an empty document) -> (parts, documents per source)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    spec = [("books", "p0", make_docs(30, 0)), ("books", "p1", [""] + make_docs(20, 1)), ("web", "p0", [])]
    spec.append(("web", "p1", make_docs(25, 2)))
    parts, docs = [], {}
    for source, name, texts in spec:
        parts.append((source, name, write_part(inputs / f"{source}-{name}.jsonl", texts)))
        docs.setdefault(source, []).extend(texts)
    return parts, docs


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_hold_each_documents_tokens(tok, corpus, tmp_path):
    parts, docs = corpus
    manifest = tokenize_parts(parts, tmp_path / "out", tok, read_jsonl, progress=False)
    for source, texts in docs.items():
        shards = TokenShards(tmp_path / "out" / source)
        assert shards.n_docs == len(texts)
        expected = [[tok.bos_id, *tok.encode(t, bos=False), tok.eos_id] for t in texts]
        assert [shards.doc(i).tolist() for i in range(shards.n_docs)] == expected
        assert shards.doc(0).dtype == np.uint32 and shards.n_tokens == sum(map(len, expected))
        assert shards.lengths().tolist() == [len(e) for e in expected]
        assert manifest["sources"][source]["n_tokens"] == shards.n_tokens
    assert TokenShards(tmp_path / "out", "web").doc(-1).tolist() == TokenShards(tmp_path / "out/web").doc(24).tolist()
    assert manifest == load_manifest(tmp_path / "out")
    sha = hashlib.sha256(Path(tok.path).read_bytes()).hexdigest()  # the model file's own bytes
    assert manifest["tokenizer"] == {"sha256": sha, "vocab_size": 560, "bos_id": 2, "eos_id": 1}
    assert manifest["dtype"] == "uint32" and manifest["n_docs"] == 30 + 21 + 0 + 25
    assert [p["name"] for p in manifest["sources"]["books"]["parts"]] == ["p0", "p1"]


def test_file_formats_hand_worked(tok, tmp_path):
    """Two empty documents and "a": the .bin, .idx.npy and .json spelled out."""
    a = tok.encode("a", bos=False)
    tokenize_parts(
        [("s", "x", write_part(tmp_path / "x.jsonl", ["", "a", ""]))], tmp_path / "o", tok, read_jsonl, progress=False
    )
    d = tmp_path / "o" / "s"
    assert np.fromfile(d / "x.bin", dtype="<u4").tolist() == [2, 1, 2, *a, 1, 2, 1]
    assert np.load(d / "x.idx.npy").tolist() == [0, 2, 4 + len(a), 6 + len(a)]
    rec = json.loads((d / "x.json").read_text())
    assert (rec["n_docs"], rec["n_tokens"]) == (3, 6 + len(a))
    assert rec["sha256"] == {
        k: hashlib.sha256((d / f).read_bytes()).hexdigest() for k, f in (("bin", "x.bin"), ("idx", "x.idx.npy"))
    }
    assert sorted(p.name for p in d.iterdir()) == ["x.bin", "x.idx.npy", "x.json"]


def test_process_pool_equals_one_process(tok, corpus, tmp_path):
    parts, _ = corpus
    tokenize_parts(parts, tmp_path / "one", tok, read_jsonl, progress=False)
    tokenize_parts(parts, tmp_path / "fork", tok, read_jsonl, workers=2, progress=False)
    spawn = multiprocessing.get_context("spawn")
    tokenize_parts(parts, tmp_path / "spawn", tok, read_jsonl, workers=2, progress=False, mp_context=spawn)
    one = files(tmp_path / "one")
    assert len(one) == 4 * 3 + 1 and one == files(tmp_path / "fork") == files(tmp_path / "spawn")


def test_sources_added_in_two_calls_equal_one_call(tok, corpus, tmp_path):
    """A manifest keeps the sources an earlier call made: tokenizing source by source ends where one call does."""
    parts, _ = corpus
    tokenize_parts(parts, tmp_path / "once", tok, read_jsonl, progress=False)
    tokenize_parts([p for p in parts if p[0] == "books"], tmp_path / "twice", tok, read_jsonl, progress=False)
    tokenize_parts([p for p in parts if p[0] == "web"], tmp_path / "twice", tok, read_jsonl, progress=False)
    assert files(tmp_path / "twice") == files(tmp_path / "once")


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_ino, st.st_mtime_ns  # atomic_path renames a new file in: a rewrite changes the inode


def test_rerun_redoes_only_unfinished_parts(tok, corpus, tmp_path):
    parts, _ = corpus
    out = tmp_path / "out"
    tokenize_parts(parts, out, tok, read_jsonl, progress=False)
    clean = files(out)
    before = {p: _stamp(p) for p in out.rglob("*") if p.is_file()}
    (out / "books/p1.json").unlink()  # crashed before its record
    (out / "web/p1.json").write_text('{"n_docs": 3')  # a corrupt record
    (out / "books/p0.bin").write_bytes((out / "books/p0.bin").read_bytes()[:-4])  # truncated tokens, record intact
    (out / "manifest.json").unlink()
    time.sleep(0.01)
    tokenize_parts(parts, out, tok, read_jsonl, progress=False)
    assert files(out) == clean
    redone = {str(p.relative_to(out)) for p, s in before.items() if _stamp(p) != s}
    assert redone == {
        f"{s}/{n}.{e}" for s, n in (("books", "p0"), ("books", "p1"), ("web", "p1")) for e in ("bin", "idx.npy", "json")
    } | {"manifest.json"}
    # a changed input (here: the empty part gains a document) makes that part stale, and only that one; while
    # it is redone its source is out of the manifest, so a crash then leaves no stale description of it
    before = {p: _stamp(p) for p in out.rglob("*") if p.is_file()}
    write_part(parts[2][2], ["one more"])
    with pytest.raises(RuntimeError, match="crash"):
        tokenize_parts(parts, out, tok, crashing_read, progress=False)
    assert list(load_manifest(out)["sources"]) == ["books"]
    tokenize_parts(parts, out, tok, read_jsonl, progress=False)
    redone = {str(p.relative_to(out)) for p, s in before.items() if _stamp(p) != s}
    assert redone == {"web/p0.bin", "web/p0.idx.npy", "web/p0.json", "manifest.json"}
    assert TokenShards(out / "web").n_docs == 26 and TokenShards(out / "web").doc(0).tolist() == [
        2,
        *tok.encode("one more", bos=False),
        1,
    ]


KILLED_RUN = """
import json, sys, time
from pathlib import Path
from opengemma.data import shards
from opengemma.tokenizer import Tokenizer
shards.BATCH_CHARS = 200  # write the .bin in many batches, so the kill finds one half-written
parts = [tuple(p[:2]) + (Path(p[2]),) for p in json.loads(sys.argv[1])]

def read(path):
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            if path == parts[-1][2] and k == 10:
                Path(sys.argv[3]).touch()  # tell the test we are mid-part, then wait to be killed
                time.sleep(60)
            yield json.loads(line)["text"]

shards.tokenize_parts(parts, Path(sys.argv[2]), Tokenizer(sys.argv[4]), read, progress=False)
"""


def test_kill9_then_rerun_equals_clean_run(tok, corpus, tmp_path):
    parts, _ = corpus
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    tokenize_parts(parts, clean, tok, read_jsonl, progress=False)
    model = tmp_path / "t.model"
    tok.save(model)
    marker = tmp_path / "mid-part"
    args = [json.dumps([(s, n, str(p)) for s, n, p in parts]), str(crashed), str(marker), str(model)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *args], env=env)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before the kill"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    # killed in web/p1 with its tokens half-written: the three parts before it are done, nothing else is
    leftovers = [str(p.relative_to(crashed)) for p in crashed.rglob("*.tmp-*")]
    assert [x.split(".tmp-")[0] for x in leftovers] == ["web/p1.bin"]
    done = {str(p.relative_to(crashed)) for p in crashed.rglob("*.json")}
    assert done == {"books/p0.json", "books/p1.json", "web/p0.json"}  # and no manifest
    before = {p: _stamp(p) for p in crashed.rglob("*") if p.is_file() and ".tmp-" not in p.name}
    tokenize_parts(parts, crashed, tok, read_jsonl, progress=False)
    assert files(crashed) == files(clean)  # leftovers gone, every file byte-identical
    assert all(_stamp(p) == s for p, s in before.items() if str(p.relative_to(crashed)) in done)


def test_verify_names_a_flipped_byte(tok, corpus, tmp_path):
    parts, _ = corpus
    tokenize_parts(parts, tmp_path / "out", tok, read_jsonl, progress=False)
    shards = TokenShards(tmp_path / "out" / "books")
    shards.verify()
    for name in ("p1.bin", "p0.idx.npy"):
        path = tmp_path / "out" / "books" / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2 + 1] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=rf"{name}: checksum mismatch"):
            shards.verify()
        data[len(data) // 2 + 1] ^= 0x01
        path.write_bytes(bytes(data))
    shards.verify()


def test_errors_are_clear(tok, corpus, tmp_path):
    parts, _ = corpus
    tokenize_parts(parts[:1], tmp_path / "out", tok, read_jsonl, progress=False)
    proto = tok.model_proto()
    proto.pieces[-1].score += 1.0
    other = Tokenizer(proto.SerializeToString())
    with pytest.raises(ValueError, match="another tokenizer"):
        tokenize_parts(parts, tmp_path / "out", other, read_jsonl, progress=False)
    # killed before its manifest: the part records still tell the tokenizers apart, so the part is redone
    (tmp_path / "out" / "manifest.json").unlink()
    before = _stamp(tmp_path / "out/books/p0.json")
    tokenize_parts(parts[:1], tmp_path / "out", other, read_jsonl, progress=False)
    assert _stamp(tmp_path / "out/books/p0.json") != before
    assert load_manifest(tmp_path / "out")["tokenizer"]["sha256"] == hashlib.sha256(other.model_proto_bytes).hexdigest()

    class Huge:
        vocab_size, bos_id, eos_id, model_proto_bytes = 2**32 + 1, 2, 1, b""

    with pytest.raises(ValueError, match="does not fit uint32"):
        tokenize_parts(parts, tmp_path / "huge", Huge(), read_jsonl, progress=False)
    with pytest.raises(ValueError, match="listed twice"):
        tokenize_parts(parts + parts[:1], tmp_path / "dup", tok, read_jsonl, progress=False)
    with pytest.raises(KeyError, match="web"):
        TokenShards(tmp_path / "out", "web")
    with pytest.raises(FileNotFoundError, match="no token shard manifest"):
        TokenShards(tmp_path / "nowhere" / "books")
