"""The eval suite's texts for decontamination: the installed tasks, each once, with their real item counts; each
item's text holds its prompt and right answer (hand-checked on real items and on one of each item kind); a task
whose data the user brings comes in through `data`."""

import collections
import json
from pathlib import Path

import pytest

from opengemma.data.decontam import NGramIndex, decontaminate
from opengemma.eval import contamination, data
from opengemma.eval.contamination import eval_texts, installed_tasks, item_text
from opengemma.eval.tasks.base import CodeItem, GenItem, MCItem, TextItem


@pytest.fixture(scope="module", autouse=True)
def installed():
    for source in ("mmlu", "humaneval"):  # as tests/eval/test_data.py gets them
        data.get(source, progress=False)


@pytest.fixture(scope="module")
def bigbench_fixture(tmp_path_factory):
    """BIG-bench from tests/eval/fixtures/bigbench (bigbench 1.0.0 has left PyPI), into a cache of its own."""
    dest = tmp_path_factory.mktemp("cache") / "bigbench"
    own = data.data_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "data_dir", lambda source: dest if source == "bigbench" else own(source))
        data.get("bigbench", from_path=Path(__file__).parent / "fixtures" / "bigbench", progress=False)
        yield dest


def test_installed_tasks_list_each_task_once(bigbench_fixture):
    names = installed_tasks()
    assert {"mmlu", "humaneval", "bbq", "social_iqa", "truthful_qa", "winowhy", "hhh_alignment"} <= set(names)
    assert "bbh_navigate" in names and "bbh" not in names  # the group: its 24 tasks are listed one by one
    assert len([n for n in names if n.startswith("bbh_")]) == 24
    assert not {"gsm8k", "hellaswag", "mbpp"} & set(names)  # user-data tasks need a path


def test_mmlu_and_humaneval_texts_hold_prompt_and_answer():
    from opengemma.eval.tasks.humaneval import HumanEval
    from opengemma.eval.tasks.mmlu import MMLU

    texts = list(eval_texts(["humaneval", "mmlu"]))
    assert collections.Counter(t.task for t in texts) == {"humaneval": 164, "mmlu": 14042}
    he = [t for t in texts if t.task == "humaneval"]
    assert he[0].item == "HumanEval/0" and he[0].text.startswith("from typing import List\n\n\ndef has_close_elements(")
    assert "for idx, elem in enumerate(numbers):" in he[0].text and "def check(candidate):" in he[0].text
    mm = [t for t in texts if t.task == "mmlu"]
    assert mm[0].item == "0" and mm[0].text == (
        "For which of these two scenarios does the main character (who uses I/me/my) do something clearly morally "
        "wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | I slammed on my breaks to "
        "miss the ball as it came in to the road. Scenario 2 | I taught my children to play the xylophone.\n"
        "Not wrong, Not wrong"
    )
    items = MMLU().items()
    assert all(t.text == it.context + "\n" + it.choices[it.gold] for t, it in zip(mm, items))
    assert all(t.text.startswith(it.prompt + it.solution) for t, it in zip(he, HumanEval().items()))


@pytest.mark.slow
def test_every_installed_task_once_with_its_counts():
    """The real data: BIG-bench installed with `opengemma data get bigbench --from BIG-bench/` first."""
    data.data_path("bigbench")  # fails (never skips) with how to install it
    texts = list(eval_texts())
    counts = collections.Counter(t.task for t in texts)
    assert {k: counts[k] for k in ("mmlu", "humaneval", "bbq", "social_iqa", "truthful_qa")} == {
        "mmlu": 14042,
        "humaneval": 164,
        "bbq": 16076,
        "social_iqa": 1954,
        "truthful_qa": 299,
    }
    assert {f"hhh_alignment_{s}" for s in ("harmless", "helpful", "honest", "other")} <= set(counts)
    assert len({(t.task, t.item) for t in texts}) == len(texts)  # no task twice, no item twice
    # a group and one of its members, asked for together: the member once
    both = collections.Counter(t.task for t in eval_texts(["bbh_navigate", "bbh"]))
    assert len(both) == 24 and both["bbh_navigate"] == counts["bbh_navigate"] == 1000


def test_one_text_per_item_kind():
    mc = MCItem("Q: The capital of France?\nA:", [" Lyon", " Paris", " Nice"], 1)
    assert item_text(mc) == "Q: The capital of France?\nA:\n Paris"
    assert item_text(MCItem("Pick both:", ["a", "b", "c"], [0, 2])) == "Pick both:\na\nc"
    partial = MCItem(["The trophy fits in the suitcase", "The trophy fits in the box"], [" because it is small."], 1)
    partial.choices = [" because it is big.", " because it is small."]
    assert item_text(partial) == "The trophy fits in the box because it is small."
    gen = GenItem("Question: 2 + 2?\nAnswer:", ["4", "four"], target=" 2 + 2 = 4. The answer is 4.")
    assert item_text(gen) == "Question: 2 + 2?\nAnswer:\n 2 + 2 = 4. The answer is 4.\nfour"
    code = CodeItem("t/0", "def f(x):\n", "assert f(1) == 2", solution="    return x + 1\n")
    assert item_text(code) == "def f(x):\n    return x + 1\n\nassert f(1) == 2"
    assert item_text(TextItem("A document.")) == "A document."
    with pytest.raises(TypeError, match="no eval text for a dict"):
        item_text({})


def _gsm8k(tmp_path):
    rows = [
        {
            "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
            "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 in all.\n#### 72",
        },
        {"question": "A robe takes 2 bolts of blue fiber and half that much white fiber.", "answer": "2+1=3\n#### 3"},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_user_supplied_task_through_data(tmp_path, monkeypatch):
    path = _gsm8k(tmp_path)
    texts = list(eval_texts(["gsm8k"], data={"gsm8k": path}))
    assert [(t.task, t.item) for t in texts] == [("gsm8k", "0"), ("gsm8k", "1")]
    assert texts[0].text == (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.\n"
        "Answer:\n Natalia sold 48/2 = 24 clips in May. She sold 48+24 = 72 in all. The answer is 72."
    )
    # by default: the installed tasks and every task `data` names
    monkeypatch.setattr(contamination, "installed_tasks", lambda: ["humaneval"])
    assert collections.Counter(t.task for t in eval_texts(data={"gsm8k": path})) == {"humaneval": 164, "gsm8k": 2}
    with pytest.raises(ValueError, match="reads data you supply"):
        list(eval_texts(["gsm8k"]))
    # and a leaked copy of it is caught by the data side
    index = NGramIndex(texts)
    leaked = "Homework help! " + texts[0].text.replace("\n", " ") + " Thanks in advance."
    assert decontaminate(leaked, index)[0] is None
