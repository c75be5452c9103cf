"""Benchmarks whose data the user brings, read from the files they are released as.

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
(metrics, records). The readers live in formats_mc.py, formats_gen.py and formats_bias.py (file handling
in formats_io.py); importing this module registers them.
"""

from .formats_bias import (CrowSPairs, LexiconToxicity, RealToxicityPrompts, ToxicityScorer, Winogender,
                           load_toxicity_scorer, read_crows_pairs, read_winogender)
from .formats_gen import (GSM8K, MATH, MBPP, NaturalQuestions, TriviaQA, last_boxed, normalize_math,
                          number_text, read_gsm8k, read_math, read_mbpp)
from .formats_io import FormatError
from .formats_mc import (ARC, PIQA, BoolQ, CommonsenseQA, HellaSwag, OpenBookQA, WinoGrande,
                         hellaswag_clean, read_boolq, read_hellaswag, read_piqa, read_winogrande)

__all__ = ["ARC", "BoolQ", "CommonsenseQA", "CrowSPairs", "FormatError", "GSM8K", "HellaSwag", "LexiconToxicity",
           "MATH", "MBPP", "NaturalQuestions", "OpenBookQA", "PIQA", "RealToxicityPrompts", "ToxicityScorer",
           "TriviaQA", "WinoGrande", "Winogender", "hellaswag_clean", "last_boxed", "load_toxicity_scorer",
           "normalize_math", "number_text", "read_boolq", "read_crows_pairs", "read_gsm8k", "read_hellaswag",
           "read_math", "read_mbpp", "read_piqa", "read_winogender", "read_winogrande"]
