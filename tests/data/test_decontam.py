"""Decontamination: planted passages of real MMLU and HumanEval items are found and removed or excised, near
misses (every 5th word changed, a 12-word overlap) are kept; GPT-3's excision rule at its edges (short pieces
dropped, too many pieces drop the document); the PaLM-style report's fractions on a hand-made eval set and
corpus; hashes that are the same in every process."""

import os
import pickle
import random
import subprocess
import sys

import pytest

from opengemma.data.decontam import (
    PIECE_SEPARATOR,
    EvalText,
    NGramIndex,
    contamination_report,
    decontaminate,
    ngram_hashes,
    words,
)
from opengemma.eval import data

# Clean prose, written for these tests: shares no 13 words in a row with any benchmark item
BEFORE = (
    "The allotment behind the station has been worked by the same three families since the war. Each spring "
    "they turn the beds by hand, lay down manure from the riding stables up the lane, and argue about whether "
    "the broad beans should go in before or after the first full moon of March. Nobody has ever settled it. "
    "The rhubarb, at least, looks after itself, and the old pear tree by the shed still gives more fruit than "
    "anyone can eat, so most of it ends up stewed, bottled or handed over the fence to whoever walks past. "
)
AFTER = (
    " In the autumn the children come down after school to gather conkers under the chestnuts along the "
    "railway fence, and the committee holds its annual show in the church hall, where the longest runner bean "
    "and the heaviest marrow win a rosette and a small tin of biscuits. The judging is taken very seriously. "
    "Afterwards there is tea from an urn that is older than most of the members, and someone always brings a "
    "cake made with the last of the blackberries picked from the hedge behind the compost heaps."
)


@pytest.fixture(scope="module")
def real():
    """All of MMLU (question and right answer) and HumanEval (prompt, solution, tests), from the installed files."""
    from opengemma.eval.tasks.humaneval import HumanEval
    from opengemma.eval.tasks.mmlu import MMLU

    data.get("mmlu", progress=False)
    data.get("humaneval", progress=False)
    mmlu, humaneval = MMLU().items(), HumanEval().items()
    texts = [EvalText("mmlu", str(i), it.context + "\n" + it.choices[it.gold]) for i, it in enumerate(mmlu)]
    texts += [EvalText("humaneval", it.task_id, it.prompt + it.solution + "\n" + it.test) for it in humaneval]
    return mmlu, humaneval, NGramIndex(texts, n=13)


def _question(mmlu) -> str:
    item = mmlu[1369]  # an astronomy question no other MMLU item shares 13 words with
    assert item.context.startswith("From laboratory measurements we know that a particular spectral line")
    return item.context + " " + item.choices[item.gold]  # "... What can we conclude? The star is moving toward us."


def _planted(passage: str) -> tuple[str, int, int]:
    return BEFORE + passage + AFTER, len(BEFORE), len(BEFORE) + len(passage)


# -- words and hashes -----------------------------------------------------------------------------------------
def test_words_are_gpt3_grams_with_offsets():
    text = "Hello, World!  It's 3.14 -- the “end”..."
    got, start, end = words(text)
    assert got == ["hello", "world", "its", "314", "the", "end"]  # "--" is punctuation only: no word
    assert start.tolist() == [0, 7, 15, 20, 28, 32]
    assert end.tolist() == [6, 13, 19, 24, 31, 40]
    assert words("")[0] == [] and words(" -- ... ")[0] == []


def test_ngram_hashes_ignore_case_punctuation_and_spacing():
    h, start, end = ngram_hashes("The cat sat. THE CAT, sat!", 3)
    assert len(h) == 4 and h[0] == h[3] != h[1]  # "the cat sat" twice; "cat sat the" differs
    assert (start.tolist(), end.tolist()) == ([0, 4, 8, 13], [12, 16, 21, 26])
    assert ngram_hashes("the\n\ncat   sat", 3)[0][0] == h[0]
    assert ngram_hashes("sat cat the", 3)[0][0] != h[0]  # order matters
    assert len(ngram_hashes("one two", 3)[0]) == 0


def test_no_collisions_among_the_distinct_ngrams_of_mmlu(real):
    mmlu, _, _ = real
    grams, hashes = set(), set()
    for it in mmlu[:1500]:
        w = words(it.context)[0]
        grams.update(tuple(w[i : i + 8]) for i in range(len(w) - 7))
        hashes.update(ngram_hashes(it.context, 8)[0].tolist())
    assert len(grams) > 20_000 and len(hashes) == len(grams)


def test_hashes_are_the_same_in_every_process():
    text = "Deterministic across processes, whatever PYTHONHASHSEED says: the index is built once, matched anywhere."
    code = (
        "import sys; from opengemma.data.decontam import ngram_hashes; print(ngram_hashes(sys.argv[1], 5)[0].tolist())"
    )
    here = ngram_hashes(text, 5)[0].tolist()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, env=env, check=True)
        assert eval(out.stdout) == here


# -- planted passages of real items -----------------------------------------------------------------------------
def test_planted_mmlu_question_is_removed_or_excised(real):
    mmlu, _, index = real
    doc, s, e = _planted(_question(mmlu))
    text, found = decontaminate(doc, index)
    assert text is None and {(m.task, m.item) for m in found} == {("mmlu", "1369")}
    assert found[0].start == s and found[-1].end == e  # every 13-gram of the passage matched
    text, found = decontaminate(doc, index, mode="excise")
    assert text == doc[: s - 200] + PIECE_SEPARATOR + doc[e + 200 :]  # the rest survives, minus the window
    assert len(doc[: s - 200]) >= 200 and len(doc[e + 200 :]) >= 200


def test_planted_humaneval_prompt_is_found(real):
    _, humaneval, index = real
    item = humaneval[12]
    assert item.task_id == "HumanEval/12" and "def longest(strings" in item.prompt
    doc = "A question from my interview, any ideas?\n\n" + item.prompt + "\nI tried sorting but it fails." + AFTER
    text, found = decontaminate(doc, index)
    assert text is None and {(m.task, m.item) for m in found} == {("humaneval", "HumanEval/12")}
    assert decontaminate(BEFORE + AFTER, index) == (BEFORE + AFTER, [])


def test_near_misses_are_kept(real):
    mmlu, _, index = real
    passage = _question(mmlu).split()
    # every 5th word changed: any 13 words in a row hold two changed ones
    changed = " ".join("zzyzx" if i % 5 == 4 else w for i, w in enumerate(passage))
    doc = _planted(changed)[0]
    assert decontaminate(doc, index, mode="excise") == (doc, [])
    # 12 words of the question in a row are not enough; 13 are
    twelve, thirteen = _planted(" ".join(passage[10:22]))[0], _planted(" ".join(passage[10:23]))[0]
    assert decontaminate(twelve, index) == (twelve, [])
    assert len(decontaminate(thirteen, index)[1]) == 1


# -- GPT-3's excision rule at its edges, on a hand-made index ---------------------------------------------------
SECRET = "the quick violet heron folded seven paper lanterns beside the silent canal at dawn every winter"  # 16 words


@pytest.fixture(scope="module")
def secret_index():
    return NGramIndex([EvalText("toy", "0", SECRET)], n=13)


def test_pieces_under_200_chars_are_dropped(secret_index):
    doc = "a" * 99 + " " + "b" * 200 + " " + SECRET + " " + "c" * 448 + " " + "d" * 250  # 301 chars, SECRET, 700
    s, e = 301, 301 + len(SECRET)
    text, found = decontaminate(doc, secret_index, mode="excise")
    assert len(found) == 4 and (found[0].start, found[-1].end) == (s, e)  # 16 words: four 13-grams
    assert text == doc[e + 200 :] and len(text) == 500  # the 101 characters left before it are under 200: dropped
    assert decontaminate(doc, secret_index, mode="excise", min_piece=101)[0] == doc[:101] + PIECE_SEPARATOR + text
    assert decontaminate(SECRET, secret_index, mode="excise")[0] is None  # nothing left at all


@pytest.mark.parametrize("copies, kept", [(9, True), (10, False)])
def test_more_than_max_splits_pieces_drop_the_document(secret_index, copies, kept):
    filler = "x" * 700
    doc = filler + "".join(f" {SECRET} {filler}" for _ in range(copies))  # copies + 1 pieces
    text, found = decontaminate(doc, secret_index, mode="excise")
    assert len(found) == 4 * copies
    if kept:  # the ends keep 700 + 1 space - 200; the middle pieces 700 + 2 spaces - 2 * 200
        assert text == PIECE_SEPARATOR.join(["x" * 501] + ["x" * 302] * (copies - 1) + ["x" * 501])
    else:
        assert text is None
    assert decontaminate(doc, secret_index, mode="excise", max_splits=copies + 1)[0] is not None


def test_an_ngram_is_attributed_once_per_task_to_its_first_item():
    shared = "one two three four five six seven eight nine ten eleven twelve thirteen"
    index = NGramIndex(
        [
            EvalText("a", "x", "zero " + shared),
            EvalText("b", "y", shared + " fourteen"),
            EvalText("a", "z", shared),
            EvalText("a", "short", "only four words here"),
        ],
        n=13,
    )
    assert index.tasks == ["a", "b"] and index.counts == {"a": 3, "b": 1} and index.short == {"a": 1, "b": 0}
    found = index.matches("so " + shared + " so")
    assert [(m.task, m.item, m.start, m.end) for m in found] == [("a", "x", 3, 74), ("b", "y", 3, 74)]
    copy = pickle.loads(pickle.dumps(index))  # what is shipped to worker processes
    assert copy.matches("so " + shared + " so") == found and "_filter" not in copy.__getstate__()
    assert NGramIndex([], n=13).matches(shared) == []


# -- the PaLM-style report --------------------------------------------------------------------------------------
def _items() -> list[EvalText]:
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(500)]
    return [EvalText("toy", str(i), " ".join(rng.choices(vocab, k=30))) for i in range(10)]


def test_report_counts_items_with_70_percent_of_their_8grams_in_the_corpus():
    items = _items() + [EvalText("tiny", "0", "five words are too few")]
    partial = items[5].text.split()[:20]  # 13 of its 23 8-grams: 0.565, under 0.7
    corpus = (
        d
        for d in [
            BEFORE + items[1].text + AFTER,
            items[4].text,
            "nothing here " + BEFORE,
            AFTER + " " + items[8].text.upper() + "!",
            BEFORE + " ".join(partial),
        ]
    )
    report = contamination_report(items, corpus, n=8, threshold=0.7)
    toy = report["tasks"]["toy"]
    assert (toy["items"], toy["contaminated"], toy["fraction"], toy["too_short"]) == (10, 3, 0.3, 0)
    assert [(x["item"], x["overlap"]) for x in toy["examples"]] == [("1", 1.0), ("4", 1.0), ("8", 1.0)]
    assert toy["examples"][0]["text"] == items[1].text
    assert report["tasks"]["tiny"] == {"items": 1, "too_short": 1, "contaminated": 0, "fraction": 0.0, "examples": []}
    assert report["total"] == {"items": 11, "contaminated": 3, "fraction": 3 / 11} and report["documents"] == 5
    # below the threshold the partial copy counts, with its hand-counted overlap
    low = contamination_report(items, [BEFORE + " ".join(partial)], n=8, threshold=0.5, examples=1)
    assert low["tasks"]["toy"]["examples"] == [{"item": "5", "overlap": 13 / 23, "text": items[5].text}]
    # an item's n-grams count once each: "a b ... l a b ... l" has 17 8-grams but 12 distinct ones, and a copy
    # of "a ... l" holds 5 of them (5/12 = 0.42, not 10/17 = 0.59)
    twice = EvalText("rep", "0", " ".join("abcdefghijkl" * 2))
    rep = contamination_report([twice], [" ".join("abcdefghijkl")], n=8, threshold=0.4)
    assert rep["tasks"]["rep"]["examples"][0]["overlap"] == 5 / 12
    assert contamination_report(items, [], n=8)["total"]["contaminated"] == 0


def test_ngrams_of_numbers_only_are_not_evidence():
    numbers = " ".join(str(i) for i in range(1, 30))
    index = NGramIndex([EvalText("t", "1", f"assert f(x) == [{numbers}]")], n=13)
    assert index.matches(f"a table: {numbers}") == []  # shares 13-grams of numbers only
    assert index.matches("we assert f(x) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")  # a 13-gram with words matches
