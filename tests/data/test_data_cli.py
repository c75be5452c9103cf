"""The data commands as a user types them: `opengemma tokenizer train`, `data prepare` (decontaminating against a
real installed eval task), `data tokenize`, `data mixture`, `data contamination`; bad settings are one-line errors."""

import gzip
import json
import random

import pytest
from test_pipeline import prose

from opengemma.cli import main
from opengemma.data.shards import TokenShards
from opengemma.eval import data as eval_data
from opengemma.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def humaneval_item():
    path = eval_data.get("humaneval", progress=False) / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return json.loads(f.readline())


def write_corpus(tmp_path, leak: str):
    rng = random.Random(3)
    docs = [{"id": f"d{i}", "text": prose(rng)} for i in range(8)]
    docs.append({"id": "leak", "text": prose(rng) + "\n" + leak + "\n" + prose(rng)})
    (tmp_path / "web.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return tmp_path / "web.jsonl"


def test_train_prepare_tokenize_mixture_contamination(tmp_path, capsys, humaneval_item):
    item = humaneval_item
    src = write_corpus(tmp_path, item["prompt"])  # a 13-gram overlap, within prose that passes the quality filters
    tok = tmp_path / "tok.model"
    assert main(["tokenizer", "train", str(src), "--out", str(tok), "--vocab-size", "700"]) == 0
    assert Tokenizer.from_file(tok).vocab_size == 700
    out = tmp_path / "prepared"
    argv = ["data", "prepare", str(src), "--out", str(out), "--tokenizer", str(tok), "--decontam-task", "humaneval"]
    assert main(argv + ["--workers", "1", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["decontamination"]["tasks_checked"] == ["humaneval"]
    assert report["decontamination"]["matches"]["humaneval"]["documents"] == 1
    assert report["totals"]["docs_out"] == 8 and TokenShards(out / "shards" / "web").n_docs == 8
    assert main(["data", "tokenize", str(src), "--out", str(tmp_path / "raw"), "--tokenizer", str(tok)]) == 0
    assert TokenShards(tmp_path / "raw" / "web").n_docs == 9  # unfiltered
    mix = tmp_path / "mix.toml"
    mix.write_text(
        'seed = 0\ntotal_tokens = 4000\n[sources]\nweb = "prepared/shards/web"\nraw = "raw/web"\n'
        '[[stages]]\nname = "main"\nfraction = 0.5\nweights = { web = 1, raw = 1 }\n'
        '[[stages]]\nname = "anneal"\nfraction = 0.5\nweights = { web = 1, raw = 0 }\n'
    )
    capsys.readouterr()
    assert main(["data", "mixture", str(mix), "--seq-len", "100"]) == 0
    assert "anneal" in capsys.readouterr().out
    leaked = tmp_path / "leaked.jsonl"  # the audit counts items mostly (70% of 8-grams) in the corpus: a whole item
    leaked.write_text(json.dumps({"text": item["prompt"] + item["canonical_solution"] + item["test"]}) + "\n")
    assert main(["data", "contamination", str(leaked), "--task", "humaneval", "-n", "8", "--output", str(tmp_path / "c.json")]) == 0  # fmt: skip
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["tasks"]["humaneval"]["items"] == 164 and c["tasks"]["humaneval"]["contaminated"] == 1


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    src = write_corpus(tmp_path, "nothing")
    bad = tmp_path / "p.toml"
    bad.write_text("[dedup]\nbandz = 3\n")
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "unknown key dedup.bandz" in capsys.readouterr().err
    assert main(["data", "prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), "--disable",
                 "decontam", "--disable", "tokenize"]) == 2  # fmt: skip
    assert "missing.jsonl" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a,b\n")
    assert main(["data", "prepare", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o2"), "--disable", "decontam",
                 "--disable", "tokenize"]) == 2  # fmt: skip
    assert "x.csv" in capsys.readouterr().err


@pytest.mark.real_model
def test_quality_model_perplexity_filter(tmp_path, gguf_path):
    src = write_corpus(tmp_path, "nothing")
    rng = random.Random(5)  # words no model expects (not repeated: a model predicts a copied phrase well)
    garbage = " ".join("".join(rng.choice("qzxvbnmkjhwp") for _ in range(rng.randint(3, 8))) for _ in range(120))
    with open(src, "a") as f:
        f.write(json.dumps({"id": "garbage", "text": garbage + "\nthe and of to with that have be"}) + "\n")
    out = tmp_path / "o"
    argv = ["data", "prepare", str(src), "--out", str(out), "--disable", "decontam", "--disable", "tokenize",
            "--disable", "quality", "--quality-model", gguf_path, "--max-perplexity", "450", "--quality-tokens", "64",
            "--no-progress", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0  # measured: the prose scores 217-298, the garbage 641 (first 64 tokens, float model)
    removed = [json.loads(line) for p in (out / "removed").glob("*.gz") for line in gzip.open(p, "rt")]
    assert [r["id"] for r in removed] == ["garbage"] and removed[0]["stage"].endswith("_perplexity")


def test_data_get_and_path_still_answer(capsys, humaneval_item):
    assert main(["data", "get", "humaneval"]) == 0 and main(["data", "path", "humaneval"]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == out[1] == str(eval_data.data_path("humaneval"))
