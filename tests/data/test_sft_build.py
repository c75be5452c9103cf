"""The SFT data builder: the same seed gives the same bytes; every instructed answer passes its check and every
conversation renders in Gemma's chat format; train, held-out and held-out-kind files share no base question, and
no held-out kind (or its phrasing) reaches train; decontamination drops planted conversations holding an eval item's
13-gram, registry records holding one (their whole file when many do) and registry files named like an eval task,
and counts them; the OpenAI evals registry is read as the wheel gives it; `opengemma data build-sft` runs end to
end without the registry download."""

import json
import zipfile

import pytest
from helpers import tiny_sentencepiece

from opengemma.cli import main
from opengemma.data import openai_evals
from opengemma.data.decontam import EvalText
from opengemma.data.instructions import HELDOUT_KINDS, KINDS, TRAIN_KINDS, follows
from opengemma.data.sft_build import build_sft, split_of
from opengemma.tokenizer import Tokenizer

FILES = ("train.jsonl", "heldout.jsonl", "heldout_kinds.jsonl", "report.json", "report.md")
LEAK = "the committee of seven astronomers agreed that the comet would return to the inner solar system in 2061"


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def record(system, user, ideal, **extra):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"input": msgs, "ideal": ideal, **extra}


def write_registry(root, files: dict[str, list[dict]]):
    """A directory laid out as `opengemma data get openai_evals` leaves it."""
    for rel, recs in files.items():
        p = root / "registry" / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    index = {"files": {rel: {"evals": [rel.split("/")[0]]} for rel in files}}
    (root / "index.json").write_text(json.dumps(index))
    return root


def small_registry(root):
    ask = lambda i, j: record("Answer with a number.", f"Registry sum {j}.{i}: {i} plus {j}?", str(i + j))
    questions = {f"t{j}/samples.jsonl": [ask(i, j) for i in range(15)] for j in range(4)}
    return write_registry(root, questions)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    kw = dict(n_train=300, n_heldout=60, evals_dir=small_registry(out / "evals"), evals_per_file=15)
    return out, build_sft(out / "a", seed=0, **kw), kw


def test_same_seed_same_bytes_other_seed_other_data(built, tmp_path):
    out, _, kw = built
    build_sft(tmp_path / "b", seed=0, **kw)
    for f in FILES:
        assert (out / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    build_sft(tmp_path / "c", seed=1, **kw)
    assert (out / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_every_answer_follows_and_renders_in_the_chat_format(built):
    out, report, _ = built
    tok = Tokenizer(tiny_sentencepiece())
    for f in FILES[:3]:
        for r in read(out / "a" / f):
            tok.encode_chat(r["messages"], add_generation_prompt=False)  # roles alternate, system first only
            assert r["messages"][-1]["role"] == "assistant"
            if r["kind"]:
                replies = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
                under = replies if r["placement"] == "system" else replies[-1:]  # a system message holds for all
                assert all(follows(r["kind"], a, r["params"], r["instruction"]) for a in under), r
                where = r["messages"][0] if r["placement"] == "system" else r["messages"][-2]  # the asking turn
                assert r["instruction"] in where["content"] and where["role"] in ("system", "user"), r
    assert report["splits"]["train"]["records"] == 300 and report["splits"]["heldout_kinds"]["records"] == 60
    placements = report["splits"]["train"]["by_placement"]
    assert {"(plain)", "user", "system", "followup"} <= set(placements)
    assert report["splits"]["train"]["two_turns"] > 0 and report["splits"]["train"]["with_system"] > 0


def test_splits_share_no_question_and_held_out_kinds_never_train(built):
    out, report, _ = built
    splits = {f: read(out / "a" / f) for f in FILES[:3]}
    keys = {f: [k for r in recs for k in r["keys"]] for f, recs in splits.items()}
    for f, ks in keys.items():
        assert len(ks) == len(set(ks)), f"{f} repeats a base question"
    assert not set(keys["train.jsonl"]) & set(keys["heldout.jsonl"])
    assert not set(keys["train.jsonl"]) & set(keys["heldout_kinds.jsonl"])
    assert not set(keys["heldout.jsonl"]) & set(keys["heldout_kinds.jsonl"])
    assert all(split_of(k) == f.removesuffix(".jsonl") for f, ks in keys.items() for k in ks)  # each key's own split
    tasks = {f: {k.split(":")[0] for k in ks} for f, ks in keys.items()}
    assert tasks["heldout.jsonl"] <= tasks["train.jsonl"]  # the held-out questions are of tasks trained on
    assert all(report["splits"][f]["by_source"]["openai_evals"] > 0 for f in report["splits"])  # registry ones too
    held = {k.name for k in HELDOUT_KINDS}
    assert {r["kind"] for r in splits["train.jsonl"]} - {None} <= {k.name for k in TRAIN_KINDS}
    assert {r["kind"] for r in splits["heldout.jsonl"]} <= {k.name for k in TRAIN_KINDS}
    assert {r["kind"] for r in splits["heldout_kinds.jsonl"]} == held
    # nor does a held-out kind's wording: the text of each phrasing before its first parameter
    stems = [p.split("{")[0] for k in HELDOUT_KINDS for p in k.phrasings if len(p.split("{")[0]) > 15]
    train_text = "\n".join(m["content"] for r in splits["train.jsonl"] for m in r["messages"])
    assert stems and not [s for s in stems if s in train_text]


def texts_of(out):
    return "\n".join(m["content"] for f in FILES[:3] for r in read(out / f) for m in r["messages"])


def test_decontamination_drops_planted_conversations_and_counts_them(tmp_path):
    """IFEval's own phrasing of english_lowercase, planted as an eval item: every conversation using it goes."""
    phrase = KINDS["english_lowercase"].phrasings[0]
    texts = [EvalText("ifeval", "3", f"Write a haiku about rust. {phrase}"), EvalText("other", "0", "nothing at all")]
    report = build_sft(tmp_path / "out", seed=0, n_train=300, n_heldout=10, eval_texts=texts)
    d = report["decontamination"]
    assert d["conversations_removed"] > 0 and d["conversations_by_task"] == {"ifeval": d["conversations_removed"]}
    assert d["conversations_by_source"] == {"generated": d["conversations_removed"]} and d["tasks"] == [
        "ifeval",
        "other",
    ]
    assert d["removed"] == d["conversations_removed"]
    assert phrase not in texts_of(tmp_path / "out")
    assert report["splits"]["train"]["by_kind"]["english_lowercase"] > 0  # in its other phrasings
    assert f"{d['removed']:,} candidates removed in all" in (tmp_path / "out" / "report.md").read_text()
    report = build_sft(tmp_path / "raw", seed=0, n_train=300, n_heldout=10, eval_texts=None)
    assert not report["decontamination"]["enabled"] and phrase in texts_of(tmp_path / "raw")


def test_decontamination_drops_planted_registry_records_and_files(tmp_path):
    leak = record("Answer with one word.", f"Finish the sentence: {LEAK} and then?", "Yes")
    clean = [record(None, f"Which is word {i} of the alphabet song?", "A") for i in range(21)]
    copied = [record(None, f"Is it true that {LEAK}?", "Yes"), record(None, "Copied question?", "B")]
    named = [record(None, "A question from a file named like a task?", "4")]
    files = {"astro/samples.jsonl": [leak, *clean], "copied/samples.jsonl": copied, "mmlu/samples.jsonl": named}
    registry = write_registry(tmp_path / "evals", files)
    texts = [EvalText("planted", "7", f"Q: {LEAK}. A: yes")]
    kw = dict(seed=0, n_train=60, n_heldout=4, evals_dir=registry, evals_per_file=30, evals_share=1.0)
    report = build_sft(tmp_path / "out", eval_texts=texts, eval_tasks=["mmlu"], **kw)
    d = report["decontamination"]
    assert d["registry_records_removed"] == 2 and d["registry_records_by_task"] == {"planted": 2}
    assert d["registry_files_overlapping"] == {"copied/samples.jsonl": {"matched": 1, "records": 2}}  # 1 of 2: all go
    assert d["registry_files_named_like_a_task"] == {"mmlu/samples.jsonl": 1}
    assert d["removed"] == 4 and d["conversations_removed"] == 0
    everything = texts_of(tmp_path / "out")
    assert "astronomers" not in everything and "Copied" not in everything and "named like a task" not in everything
    used = {r["source"].split("#")[0] for f in FILES[:3] for r in read(tmp_path / "out" / f)}
    assert "openai_evals:astro/samples.jsonl" in used and report["openai_evals"]["usable_english"] == 21
    # without eval texts, the leak goes through (so the drops above were the decontamination's)
    report = build_sft(tmp_path / "raw", eval_texts=None, **kw)
    assert report["decontamination"]["removed"] == 0 and "astronomers" in texts_of(tmp_path / "raw")


def test_registry_records_become_chat_conversations():
    few_shot = {"input": [{"role": "system", "content": "Add."}, {"role": "system", "content": "Be brief."},
                          {"role": "system", "name": "example_user", "content": "1+1"},
                          {"role": "system", "name": "example_assistant", "content": "2"},
                          {"role": "user", "content": "2+2"}], "ideal": ["4", "four"]}  # fmt: skip
    msgs, ideal = openai_evals.conversation(few_shot)
    assert ideal == "4"
    assert msgs == [{"role": "system", "content": "Add.\n\nBe brief."}, {"role": "user", "content": "1+1"},
                    {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2"}]  # fmt: skip
    only_system = {"input": [{"role": "system", "content": "Say X."}], "ideal": "X"}
    assert openai_evals.conversation(only_system) == ([{"role": "user", "content": "Say X."}], "X")
    for bad in [
        record(None, "Think step by step, then answer.", "4"),  # asked for reasoning its ideal lacks
        record(None, "What is in https://x.org/cat.png?", "cat"),
        record(None, "x" * 1600, "4"),
        record(None, "Q?", "a\nb"),
        record(None, "Q?", "a" * 200),
        {"input": [{"role": "user", "content": [{"type": "image"}]}], "ideal": "4"},
        {"input": [{"role": "user", "content": "Q?"}]},  # model graded: no ideal
    ]:
        assert not openai_evals.usable(bad) and openai_evals.conversation(bad) is None


def test_answer_files_reads_the_registry_yaml_in_either_key_order():
    yamls = {
        "a.yaml": "a:\n  id: a.dev.v0\na.dev.v0:\n  class: evals.elsuite.basic.match:Match\n  args:\n"
        "    samples_jsonl: a/samples.jsonl\n",
        "b.yaml": "b.dev.v0:\n  args:\n    samples_jsonl: b/x.jsonl\n  class: evals.elsuite.basic.includes:Includes\n",
        "c.yaml": "c.dev.v0:\n  class: evals.elsuite.modelgraded.classify:ModelBasedClassify\n  args:\n"
        "    samples_jsonl: c/samples.jsonl\n",
    }
    assert openai_evals.answer_files(yamls) == {"a/samples.jsonl": ["a.dev.v0"], "b/x.jsonl": ["b.dev.v0"]}


def test_the_wheel_is_extracted_to_usable_records_only(tmp_path):
    from opengemma.eval import data

    wheel = tmp_path / "evals-3.0.1.post1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("evals/registry/evals/a.yaml", "a.dev.v0:\n  class: evals.elsuite.basic.match:Match\n  args:\n"
                   "    samples_jsonl: a/samples.jsonl\n")  # fmt: skip
        z.writestr("evals/registry/evals/g.yaml", "g.dev.v0:\n  class: evals.elsuite.modelgraded.classify:X\n"
                   "  args:\n    samples_jsonl: g/samples.jsonl\n")  # fmt: skip
        good, bad = record(None, "Capital of France?", "Paris"), record(None, "Explain your reasoning.", "4")
        z.writestr("evals/registry/data/a/samples.jsonl", f"{json.dumps(good)}\n{json.dumps(bad)}\nnot json\n")
        z.writestr("evals/registry/data/g/samples.jsonl", json.dumps(good) + "\n")
    data._extract_openai_evals(wheel, tmp_path / "out", progress=False)
    assert [r for _, _, r in openai_evals.read(tmp_path / "out")] == [good]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["files"] == {"a/samples.jsonl": {"evals": ["a.dev.v0"], "records": 3, "kept": 1}}


def test_cli_builds_without_the_registry(tmp_path, capsys, monkeypatch):
    import opengemma.cli as cli

    planted = [EvalText("planted", "0", LEAK)]
    monkeypatch.setattr(cli, "_eval_texts", lambda tasks, data, progress: iter(planted))
    out = tmp_path / "sft"
    argv = ["data", "build-sft", "--out", str(out), "--n-train", "50", "--n-heldout", "8", "--no-evals"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["openai_evals"] == {"used": False, "missing": "--no-evals", "records": 0, "used_records": 0}
    assert report["decontamination"]["tasks"] == ["planted"]
    assert [len(read(out / f)) for f in FILES[:3]] == [50, 8, 8]
    assert "50 train, 8 held-out, 8 held-out-kind conversations" in capsys.readouterr().out
    assert main(argv[:3] + [str(tmp_path / "nd"), "--n-train", "5", "--n-heldout", "2", "--no-evals",
                            "--no-decontam"]) == 0  # fmt: skip
    assert not json.loads((tmp_path / "nd" / "report.json").read_text())["decontamination"]["enabled"]
