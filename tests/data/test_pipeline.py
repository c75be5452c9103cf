"""opengemma data prepare end to end on hand-made documents: what each stage keeps and removes (and why), the
output layout, shards that decode to the kept documents, the report; a kill -9 mid-run and a rerun give what one
clean run gives; two worker processes give what one gives."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opengemma.data import config as data_config
from opengemma.data.decontam import EvalText
from opengemma.data.pipeline import prepare, read_jsonl_gz, source_names
from opengemma.data.shards import TokenShards

WORDS = (
    "river mountain garden window letter kitchen morning evening winter summer village forest market teacher "
    "student doctor farmer painter sailor soldier castle bridge harbor valley meadow candle mirror pocket "
    "blanket ladder basket engine wagon lantern compass anchor feather pebble meadow orchard cottage chimney "
    "quiet gentle bright narrow ancient sudden careful patient silent golden heavy simple proud hungry clever"
).split()
VERBS = "carried watched found opened painted followed noticed remembered repaired visited crossed borrowed".split()


def sentence(rng: random.Random) -> str:
    w = lambda: rng.choice(WORDS)
    return f"The {w()} {w()} {rng.choice(VERBS)} the {w()} of the {w()} with a {w()} {w()} and {w()}."


def prose(rng: random.Random, sentences: int = 14) -> str:
    lines = [" ".join(sentence(rng) for _ in range(2)) for _ in range(sentences // 2)]
    return "\n".join(lines)


def corpus(tmp_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Two sources: a JSONL file with planted cases, a directory of text files. -> inputs, {id: expected fate}."""
    rng = random.Random(0)
    docs, fate = [], {}
    for i in range(12):
        docs.append({"id": f"good{i}", "text": prose(rng), "url": f"http://example.org/{i}"})
        fate[f"good{i}"] = "kept"
    docs.append({"id": "copy", "text": docs[0]["text"].upper().replace(" ", "  ")})  # exact after normalization
    fate["copy"] = "exact_dedup"
    near = docs[1]["text"].split(" ")
    for j in range(0, len(near), 40):  # ~2.5% of the words changed
        near[j] = "zebra"
    docs.append({"id": "near", "text": " ".join(near)})
    fate["near"] = "minhash_dedup"
    docs.append({"id": "symbols", "text": " ".join(["#### ... ### ####"] * 40)})
    fate["symbols"] = "gopher_quality"
    docs.append({"id": "short", "text": "Too short to be a document."})
    fate["short"] = "gopher_quality"
    eval_passage = "Which gas do plants absorb from the air to make sugar by photosynthesis? Carbon dioxide"
    docs.append({"id": "leak", "text": prose(rng) + "\n" + eval_passage + " is the answer.\n" + prose(rng)})
    fate["leak"] = "decontamination"
    docs.append({"id": "pii", "text": prose(rng) + "\nWrite to jane.doe@example.com or call +44 20 7946 0958."})
    fate["pii"] = "kept"
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs) + "{not json\n")  # one malformed line, counted
    books = tmp_path / "books"
    books.mkdir()
    for i in range(3):
        (books / f"book{i}.txt").write_text(prose(rng, 30))
        fate[f"book{i}.txt"] = "kept"
    evals = [EvalText("toy_qa", "q1", eval_passage), EvalText("toy_qa", "q2", "An unrelated question about tides?")]
    return [src, books], fate, evals


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from opengemma.data.tokenizer_train import train_tokenizer

    rng = random.Random(1)
    out = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_tokenizer((prose(rng) for _ in range(200)), out, vocab_size=600, progress=False)


def small_config(**run) -> data_config.PipelineConfig:
    cfg = data_config.PipelineConfig()
    cfg.run.shard_docs = 5  # several shards per source: the sharded stages have work to split
    cfg.run.workers = run.get("workers", 1)
    return cfg


def outputs(out: Path) -> dict:
    """Everything a run leaves that a user reads, in comparable form (gzip members decompressed)."""
    got = {}
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if p.is_dir() or rel.startswith("work"):
            continue
        if p.name == "report.json":
            r = json.loads(p.read_text())
            r.pop("seconds"), r["config"]["run"].pop("workers")  # how long, and how many processes did it
            got[rel] = r
        elif p.suffix in (".png",) or p.name == "report.md":
            got[rel] = "present"  # the chart and tables carry timings
        else:
            data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            got[rel] = data.replace(str(out).encode(), b"OUT")  # records name their input file
    return got


def test_prepare_keeps_removes_and_reports(tmp_path, tokenizer):
    inputs, fate, evals = corpus(tmp_path)
    out = tmp_path / "out"
    report = prepare(inputs, out, small_config(), eval_texts=evals, tokenizer=tokenizer, progress=False)
    kept = {r["id"]: r for p in sorted((out / "kept").glob("*.jsonl.gz")) for r in read_jsonl_gz(p)}
    removed = {r["id"]: r for p in sorted((out / "removed").glob("*.jsonl.gz")) for r in read_jsonl_gz(p)}
    assert set(kept) == {i for i, f in fate.items() if f == "kept"}
    assert {i: r["stage"] for i, r in removed.items()} == {i: f for i, f in fate.items() if f != "kept"}
    assert removed["copy"]["reason"] == "duplicate of good0" and removed["near"]["reason"].endswith("good1")
    assert "toy_qa item q1" in removed["leak"]["reason"] and removed["symbols"]["reason"]
    assert "<EMAIL>" in kept["pii"]["text"] and "jane.doe" not in kept["pii"]["text"]
    assert kept["good0"]["url"] == "http://example.org/0"  # metadata travels with the document
    # the report: counts per stage and source, the malformed line with its location, decontamination per task
    assert report["totals"]["docs_in"] == len(fate) and report["totals"]["docs_out"] == len(kept)
    assert report["stages"]["gopher_quality"]["docs"] == 2 and report["stages"]["exact_dedup"]["docs"] == 1
    assert report["sources"]["web"]["read_errors"] == 1 and report["read_errors"]["web"]["examples"][0]["line"] == 19
    assert report["decontamination"]["matches"]["toy_qa"]["documents"] == 1
    assert report["pii"]["kinds"] == {"email": 1, "phone": 1}
    assert report["dedup"]["cluster_sizes"]["2"] == 2  # good0+copy, good1+near
    assert (out / "report.md").read_text().startswith("# Data preparation report")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the shards hold exactly the kept documents' tokens, [bos] + ids + [eos], in kept-file order
    for source in source_names(inputs):
        texts = [r["text"] for p in sorted((out / "kept").glob(f"{source}.*.jsonl.gz")) for r in read_jsonl_gz(p)]
        shards = TokenShards(out / "shards" / source)
        assert shards.n_docs == len(texts)
        for i, text in enumerate(texts):
            want = [tokenizer.bos_id, *tokenizer.encode(text, bos=False), tokenizer.eos_id]
            np.testing.assert_array_equal(shards.doc(i), np.array(want, dtype=np.uint32))
    assert report["totals"]["tokens"] == sum(TokenShards(out / "shards" / s).n_tokens for s in source_names(inputs))


def test_a_rerun_with_other_settings_needs_force(tmp_path, tokenizer):
    inputs, _, evals = corpus(tmp_path)
    cfg = small_config()
    cfg.tokenize.enabled = False
    prepare(inputs, tmp_path / "out", cfg, eval_texts=evals, progress=False)
    cfg.decontam.n = 8
    with pytest.raises(ValueError, match="--force"):
        prepare(inputs, tmp_path / "out", cfg, eval_texts=evals, progress=False)
    prepare(inputs, tmp_path / "out", cfg, eval_texts=evals, progress=False, force=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("not ours")
    with pytest.raises(ValueError, match="not empty"):
        prepare(inputs, tmp_path / "other", cfg, progress=False)


def test_kill_9_mid_run_then_rerun_equals_one_clean_run(tmp_path, tokenizer):
    inputs, _, evals = corpus(tmp_path)
    tok_path = tmp_path / "tok.model"
    tokenizer.save(tok_path)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    prepare(inputs, clean, small_config(), eval_texts=evals, tokenizer=tokenizer, progress=False)
    # the same run in a child process that SIGKILLs itself in the middle of the final stage's second shard (after
    # its kept file is written, before its record): the worst moment, some outputs are there and some not
    script = f"""
import os, signal
from pathlib import Path
import opengemma.data.pipeline as p
import opengemma.data.stages as stages
from opengemma.data.decontam import EvalText
from opengemma.tokenizer import Tokenizer
calls = []
real = stages.write_jsonl_gz
def write(path, records, level=3):
    n = real(path, records, level)
    if "kept" in Path(path).parts:
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return n
stages.write_jsonl_gz = write
cfg = p.PipelineConfig()
cfg.run.shard_docs, cfg.run.workers = 5, 1
evals = [EvalText(*e) for e in {[(e.task, e.item, e.text) for e in evals]!r}]
p.prepare({[str(i) for i in inputs]!r}, {str(crashed)!r}, cfg, eval_texts=evals,
          tokenizer=Tokenizer.from_file({str(tok_path)!r}), progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (crashed / "report.json").exists() and len(list((crashed / "kept").glob("*.gz"))) == 2
    prepare(inputs, crashed, small_config(), eval_texts=evals, tokenizer=tokenizer, progress=False)
    assert outputs(crashed) == outputs(clean)
    assert not [p for p in crashed.rglob("*") if ".tmp-" in p.name]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_two_worker_processes_write_what_one_writes(tmp_path, tokenizer):
    inputs, _, evals = corpus(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    prepare(inputs, one, small_config(workers=1), eval_texts=evals, tokenizer=tokenizer, progress=False)
    prepare(inputs, two, small_config(workers=2), eval_texts=evals, tokenizer=tokenizer, progress=False)
    assert outputs(one) == outputs(two)


def test_config_file_and_flags(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[filters.gopher_quality]\nmin_words = 30\n[decontam]\nmode = "excise"\n')
    parser = __import__("argparse").ArgumentParser()
    data_config.add_arguments(parser)
    args = parser.parse_args(
        [
            "in.jsonl",
            "--out",
            "o",
            "--config",
            str(toml),
            "--set",
            "dedup.bands=20",
            "--disable",
            "pii",
            "--workers",
            "3",
        ]
    )
    cfg = data_config.from_args(args)
    assert cfg.filters == {"gopher_quality": {"min_words": 30}} and cfg.decontam.mode == "excise"
    assert cfg.dedup.bands == 20 and not cfg.pii.enabled and cfg.run.workers == 3 and cfg.decontam.enabled
    toml.write_text("[dedup]\nbandz = 3\n")
    with pytest.raises(ValueError, match=r"dedup\.bandz.*known: exact"):
        data_config.load(toml)
    with pytest.raises(ValueError, match=r"unknown section \[filter\]"):
        data_config.from_dict({"filter": {}})


def zebra_score(texts: list[str]) -> list[float]:
    return [float(t.count("zebra")) for t in texts]


def test_a_model_score_filter_removes_before_dedup_and_says_why(tmp_path):
    from opengemma.data.filters import ScoreFilter

    inputs, fate, evals = corpus(tmp_path)
    cfg = small_config()
    cfg.tokenize.enabled = False
    scores = [ScoreFilter("zebra_model", zebra_score, max_score=0.5)]
    report = prepare(inputs, tmp_path / "out", cfg, eval_texts=evals, score_filters=scores, progress=False)
    removed = {r["id"]: r for p in (tmp_path / "out" / "removed").glob("*.gz") for r in read_jsonl_gz(p)}
    assert removed["near"]["stage"] == "zebra_model" and "> 0.5" in removed["near"]["reason"]
    assert report["stages"]["zebra_model"]["docs"] == 1 and "minhash_dedup" not in report["stages"]
