"""opengemma as an lm-evaluation-harness model: a local multiple-choice task through lm_eval.simple_evaluate
gives the same per-item log-likelihoods and accuracy as the native harness on the same items."""

import json
import os

import pytest

pytestmark = pytest.mark.real_model
lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid"], 0),
    ("Water freezes at a temperature of zero degrees", ["Celsius", "Kelvin", "Newtons"], 0),
    ("The largest planet in the solar system is", ["Mercury", "Jupiter", "Mars"], 1),
    ("A week has seven", ["days", "hours", "planets"], 0),
    ("The opposite of hot is", ["blue", "cold", "loud"], 1),
    ("Two plus two equals", ["five", "three", "four"], 2),
]


def test_local_task_through_simple_evaluate_equals_native(tmp_path):
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from lm_eval.tasks import TaskManager

    import opengemma
    from opengemma.eval.harness import run_task
    from opengemma.eval.lm_eval_adapter import OpenGemmaLM
    from opengemma.eval.scorer import Scorer
    from opengemma.eval.tasks.base import MCItem, MultipleChoiceTask

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": g}) + "\n" for q, c, g in QUESTIONS))
    (tmp_path / "toy_mc.yaml").write_text(f"""task: opengemma_toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""")
    llm = opengemma.load("gemma-3-270m", progress=False)
    model = OpenGemmaLM(llm=llm, batch_size=4)
    out = lm_eval.simple_evaluate(
        model=model, tasks=["opengemma_toy_mc"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True
    )
    theirs = out["results"]["opengemma_toy_mc"]["acc,none"]
    their_lp = [[r[0][0] for r in s["resps"]] for s in out["samples"]["opengemma_toy_mc"]]

    class Toy(MultipleChoiceTask):
        name = "toy"

        def items(self):
            # lm-eval writes the choice after a " " target delimiter
            return [MCItem(q, [" " + x for x in c], g) for q, c, g in QUESTIONS]

    metrics, records = run_task(Toy(), Scorer(llm, progress=False), shots=0)
    assert metrics["acc"] == pytest.approx(theirs)
    assert [r["logprobs"] for r in records] == [pytest.approx(lp, abs=1e-4) for lp in their_lp]
    assert metrics["acc"] >= 0.5  # the model knows most of these


def test_rolling_and_generate_until():
    from lm_eval.api.instance import Instance

    import opengemma
    from opengemma.eval.lm_eval_adapter import OpenGemmaLM
    from opengemma.eval.scorer import Scorer

    llm = opengemma.load("gemma-3-270m", progress=False)
    model = OpenGemmaLM(llm=llm, max_length=16)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    (lp,) = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = [llm.model.config.bos_id] + llm.tokenizer.encode(text, bos=False)
    # every token predicted once, in windows of 16 (15 context + the predicted tokens)
    expect = Scorer(llm, max_len=16, progress=False).rolling_tokens([ids], stride=15)[0][0]
    assert lp == pytest.approx(expect) and lp < 0
    gen = model.generate_until(
        [Instance("generate_until", {}, ("The capital of France is", {"until": ["."], "max_gen_toks": 12}), 0)]
    )
    assert gen == [llm.generate("The capital of France is", max_new_tokens=12, stop=["."])]
