"""Verifiable instructions (IFEval-style): every kind's apply() gives a response its check() accepts, on answers of
several shapes; every check rejects near misses (one bullet too many, a period after the end phrase, invalid JSON,
...); the train and held-out kinds are disjoint."""

import random

import pytest

from opengemma.data.instructions import HELDOUT_KINDS, KINDS, TRAIN_KINDS, Example, follows, sentences

ANSWERS = [
    Example("How many apples does Tom have?", "Tom has 7 apples now.", "Counting Apples"),
    Example("What is 62 times 10?", "62 times 10 is 620. To check, 620 divided by 10 is 62.", "Arithmetic"),
    Example(
        "What is 25% of 1,000?",
        "25% means 25 out of every 100. 1,000 divided by 100 is 10, and that times 25 is 250. 25% of 1,000 is 250.",
        "Percentages",
    ),
    Example(
        "Sort these numbers: 3, 1, 2.",
        'The word "planet" is here. From smallest to largest, the numbers are 1, 2, 3. The smallest is 1! Is that '
        "clear? Yes.",
    ),
    Example("Which option is right?", "B"),  # a registry record's bare answer
    Example("Convert the date.", "Thursday, July 12, 1945."),
    Example("Is 3.5 bigger than 3.25?", "Yes, 3.5 is bigger than 3.25. It is 0.25 more."),
]


def test_kinds_are_many_and_the_held_out_ones_never_train():
    assert len(KINDS) >= 14 and len(HELDOUT_KINDS) >= 4
    assert not {k.name for k in TRAIN_KINDS} & {k.name for k in HELDOUT_KINDS}
    assert len(KINDS) == len(TRAIN_KINDS) + len(HELDOUT_KINDS)  # names unique


@pytest.mark.parametrize("name", list(KINDS))
def test_apply_passes_check_on_several_answers(name):
    kind, fitted = KINDS[name], 0
    for ex in ANSWERS:
        for seed in range(4):
            rng = random.Random(seed)
            params = kind.draw(rng, ex)
            if params is None:
                continue
            fitted += 1
            response = kind.apply(ex.answer, params)
            assert kind.check(response, params), (name, params, response)
            assert follows(name, response, params)
            phrase = kind.phrase(rng, params)
            assert "{" not in phrase or "{{" in phrase, phrase  # every placeholder filled
            if "n" in params:
                assert str(params["n"]) in phrase
    assert fitted >= 8, f"{name} fits almost none of the answers: the test would prove nothing"


def test_sentences_end_at_stops_not_in_decimals_or_times():
    assert sentences("It is 3.5 km at 12:30. Then? Yes! Done") == ["It is 3.5 km at 12:30.", "Then?", "Yes!", "Done"]
    assert sentences('He said "hi." Then he left.\nNext line') == ['He said "hi."', "Then he left.", "Next line"]


# (kind, params, a response that follows, near misses that do not)
NEAR_MISSES = [
    ("english_capital", {}, "THE SUM IS 42.", ["THE SUM IS 42, tom.", "42", "The sum is 42."]),
    ("english_lowercase", {}, "the sum is 42.", ["the sum is 42. Tom", "42"]),
    ("number_bullet_lists", {"n": 3}, "* a\n* b\n* c",
     ["* a\n* b\n* c\n* d", "* a\n* b", "1. a\n* b\n* c", "*a\n* b\n* c"]),
    ("numbered_list", {"n": 3}, "1. a\n2. b\n3. c",
     ["1. a\n2. b\n4. c", "1. a\n2. b\n3. c\n4. d", "1. a\n2. b\n* c", "1. a\n1. b\n2. c"]),
    ("number_paragraphs", {"n": 2}, "A.\n\n***\n\nB.",
     ["A.\n\n***\n\nB.\n\n***\n\nC.", "A.\n\n***\n\n***\n\nB.", "A.\n\n**\n\nB.", "A. B.",
      "A, separated by the markdown divider ***. B."]),
    ("end_checker", {"phrase": "Any other questions?"}, "It is 4.\n\nAny other questions?",
     ["It is 4.\n\nAny other questions?.", "It is 4. any other questions?", "Any other questions? It is 4."]),
    ("start_word", {"word": "Sure"}, "Sure! It is 4.", ["Surely it is 4.", "sure, it is 4.", "Okay. Sure!"]),
    ("quotation", {}, '"It is 4."', ['"It is 4.".', '""', "It is 4.", '"It is 4.'] ),
    ("keyword_existence", {"keyword": "helpful"}, "I hope this is Helpful.", ["That was helpfully said.", "No."]),
    ("no_comma", {}, "It is 1000 apples and 3 pears.", ["It is 1,000 apples.", "Yes, it is.", "是的，对"]),
    ("postscript", {"marker": "P.S."}, "It is 4.\n\nP.S. Ask again.",
     ["It is 4.\n\nPS: Ask again.", "P.S. Ask again.", "It is 4.\n\nP.S.", "It is 4.\n\np.s. Ask again.",
      "It is 4.\n\nP.P.S Ask again."]),
    ("title", {"title": "Four"}, "<<Four>>\n\nIt is 4.",
     ["<Four>\n\nIt is 4.", "<<>>\n\nIt is 4.", "It is 4.\n<<Four>>", "<<Four>>", "<< >>\nIt is 4."]),
    ("json_format", {"key": "answer"}, '{"answer": "It is 4."}',
     ["{'answer': 'It is 4.'}", '{"answer": "It is 4.",}', '{"reply": "It is 4."}', '["It is 4."]',
      '{"answer": ""}', 'Here: {"answer": "4"}']),
    ("max_words", {"n": 5}, "one two three four five", ["one two three four five six", "", "   "]),
    ("repeat_prompt", {"prompt": "What is 2 plus 2?"}, "What is 2 plus 2?\n\nIt is 4.",
     ["Sure. What is 2 plus 2? It is 4.", "What is 2 plus 3?\n\nIt is 5.", "What is 2 plus 2?",
      "what is 2 plus 2? It is 4.", "What is 2 plus 2? Before you answer, repeat my request exactly as written "
      "(leaving out this sentence), then answer it."]),
    ("multiple_sections", {"n": 2, "splitter": "SECTION"}, "SECTION 1\nIt is 4.\n\nSECTION 2\nYes.",
     ["SECTION 1\nIt is 4.\nSECTION 3\nYes.", "Section 1\nIt is 4.\nSection 2\nYes.",
      "SECTION 1\nIt is 4.\nSECTION 2\n", "SECTION 1\na\nSECTION 2\nb\nSECTION 3\nc",
      "It is 4. SECTION 1 a SECTION 2 b"]),
    ("highlighted_sections", {"n": 2}, "*It is 4.* And *yes*.", ["*It is 4.* And yes.", "** and *a*", "*\n* a"]),
    ("number_sentences", {"n": 2}, "It is 3.5 km. Yes.", ["It is 3.5 km. Yes. No.", "It is 3.5 km.", "It is. 3. 5."]),
]  # fmt: skip


def test_every_kind_has_near_misses():
    assert {k for k, *_ in NEAR_MISSES} == set(KINDS)


@pytest.mark.parametrize("name,params,good,bad", NEAR_MISSES, ids=[k for k, *_ in NEAR_MISSES])
def test_checks_accept_the_real_thing_and_reject_near_misses(name, params, good, bad):
    assert KINDS[name].check(good, params)
    for miss in bad:
        assert not KINDS[name].check(miss, params), (name, miss)


def test_json_accepts_a_fenced_block_as_ifeval_does():
    assert follows("json_format", '```json\n{"answer": 4}\n```', {"key": "answer"})


def test_instructions_that_need_new_content_are_not_drawn():
    """apply() never invents: a one-sentence answer cannot become two bullet points, a markdown one is left alone."""
    one = Example("Q?", "It is 4.")
    for name in ("number_bullet_lists", "numbered_list", "number_paragraphs", "multiple_sections"):
        assert KINDS[name].draw(random.Random(0), one) is None
    assert KINDS["number_sentences"].draw(random.Random(0), Example("Q?", "* a\n* b")) is None
    assert KINDS["english_capital"].draw(random.Random(0), Example("Q?", "42")) is None
    n = KINDS["max_words"].draw(random.Random(0), Example("Q?", "one two three"))["n"]
    assert n >= 3


def test_echoing_the_instruction_is_not_following():
    """A pretrained model parrots its prompt; the instruction's own example would pass the highlight check."""
    phrase = "Use markdown to highlight at least 1 part of your answer, like *this*."
    echo = f"What is 2 plus 2? {phrase}"
    assert KINDS["highlighted_sections"].check(echo, {"n": 1})
    assert not follows("highlighted_sections", echo, {"n": 1}, phrase)
    assert follows("highlighted_sections", "It is *4*.", {"n": 1}, phrase)
