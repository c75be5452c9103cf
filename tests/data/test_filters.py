"""The quality filters on hand-made documents: each keeps a paragraph of ordinary English prose and drops a
document built to break exactly one rule, with the reason's value worked out by hand in the comment beside
it; the rule's looser threshold keeps that document (so no other rule objects to it); build_filters' config
and errors; ScoreFilter's bounds; every filter survives pickling (they run in a process pool)."""

import pickle
import random
from itertools import product

import pytest

from opengemma.data.filters import (
    FILTERS,
    C4BadWords,
    FineWebQuality,
    GopherQuality,
    GopherRepetition,
    ScoreFilter,
    _covered_chars,
    build_filters,
    first_reason,
)

PROSE = (  # 121 words, 528 word characters, 659 characters, 7 non-blank lines, 2 paragraphs
    "The history of the lighthouse is closely tied to the history of trade by sea. Long before electric lamps,\n"
    "keepers had to climb narrow stairs every evening to light the oil lamps and wind the clockwork that turned\n"
    "the great lens. A good keeper kept a careful log of the weather, of the ships that passed, and of the\n"
    "supplies that arrived with the monthly boat.\n"
    "\n"
    "Most of the old towers that still stand along the coast were built of stone quarried nearby, and many of\n"
    "them have been restored by volunteers who want to preserve them for the next generation. Visitors can\n"
    "often climb to the gallery at the top, where the view across the water is worth every step."
)
PROSE_LINES = [line for line in PROSE.splitlines() if line]
SENTENCES = [s.strip() + "." for s in PROSE.replace("\n", " ").split(".") if s.strip()]  # 5 sentences


def filler(n: int, length: int = 5) -> list[str]:
    """n distinct lowercase words of `length` letters (alternating consonants and vowels)."""
    sets = ["bdfgklmnprstvz" if i % 2 == 0 else "aeiou" for i in range(length)]
    return ["".join(w) for _, w in zip(range(n), product(*sets))]


def interleave(fill: list[str], phrase: str, k: int) -> str:
    """`phrase` k times, each occurrence after its own run of filler words (so its contexts never repeat)."""
    step, out = len(fill) // k, []
    for i in range(k):
        out += fill[i * step : (i + 1) * step] + phrase.split()
    return " ".join(out + fill[k * step :])


def test_prose_is_kept_by_every_filter():
    assert [f(PROSE) for f in build_filters()] == [None] * len(FILTERS)
    assert first_reason(build_filters(), PROSE) is None
    assert first_reason(build_filters(), "Too short.") == ("gopher_quality", "2 words < 50")


# -- Gopher quality ----------------------------------------------------------------------------------------------
NO_STOP_WORDS = (  # 52 words; of the eight stop words only "the"
    "Lighthouses stand on rocky coasts where storms arrive without warning. Keepers climbed narrow stairs "
    "each evening, lit oil lamps, wound brass clockwork, polished heavy lenses, wrote careful notes about "
    "wind, rain, fog, passing ships, broken buoys, missing boats. Supplies came monthly by boat: flour, "
    "lamp oil, candles, letters, newspapers, seeds, tools, medicine, tobacco, plus sometimes the visitors."
)
GQ_CASES = {  # text, its reason, the looser setting that keeps it
    "few words": (" ".join(PROSE.split()[:40]), "40 words < 50", {"min_words": 40}),
    # 13 words of 29 letters (so 2.23), five times
    "short words": (
        " ".join(["So I go to the sea and we see a cat on it."] * 5),
        "mean word length 2.23 < 3",
        {"min_mean_word_length": 2},
    ),
    "long words": (  # 6 words of 68 letters: 11.3
        " ".join(["The internationalization of telecommunications and electroencephalography."] * 9),
        "mean word length 11.3 > 10",
        {"max_mean_word_length": 12},
    ),
    "hashes": (PROSE + "\n" + " ".join("#" * 13), "hash-to-word ratio 0.107 > 0.1", {"max_symbol_word_ratio": 0.2}),
    # 8 "..." and 7 "…", mid-line: 15 / (121 + 16) words
    "ellipses": (
        PROSE + "\n" + "so... " * 8 + "so… " * 7 + "end.",
        "ellipsis-to-word ratio 0.109 > 0.1",
        {"max_symbol_word_ratio": 0.2},
    ),
    "bullets": (  # every line, with several bullet marks and an indented one
        "\n".join(b + s for b, s in zip(["- ", "• ", "* ", "  - ", "• "], SENTENCES)),
        "bullet line fraction 1 > 0.9",
        {"max_bullet_lines_ratio": 1.0},
    ),
    "ellipsis lines": (  # 2 of the 5 lines end in "..."
        "\n".join(s[:-1] + "..." if i % 2 else s for i, s in enumerate(SENTENCES)),
        "ellipsis line fraction 0.4 > 0.3",
        {"max_ellipsis_lines_ratio": 0.4},
    ),
    "numbers": (  # 31 numerals: 121 of 152 words have a letter
        PROSE + "\n" + " ".join(str(i) for i in range(1, 32)),
        "alphabetic word fraction 0.796 < 0.8",
        {"min_alpha_words_ratio": 0.7},
    ),
    "no stop words": (NO_STOP_WORDS, "1 stop words < 2", {"min_stop_words": 1}),
    # 40 words "x0000000".."x9999999" (each has a letter): 280 digits in 659 + 40 * 9 = 1019 characters
    "digits": (
        PROSE + "\n" + " ".join(["x" + str(d) * 7 for d in range(10)] * 4),
        "digit fraction 0.275 > 0.25",
        {"max_digit_fraction": 0.3},
    ),
}


@pytest.mark.parametrize("case", GQ_CASES)
def test_gopher_quality_drops_each_rule_with_its_reason(case):
    text, reason, looser = GQ_CASES[case]
    assert GopherQuality()(text) == reason
    assert GopherQuality(**looser)(text) is None


def test_gopher_quality_words():
    # letter/digit runs: punctuation and hyphens split, apostrophes join (THE keeper's well known lamp OF
    # course); stop words match in any case
    assert GopherQuality(min_words=8)("THE keeper's well-known lamp, OF course!") == "7 words < 8"
    assert GopherQuality(min_words=7)("THE keeper's well-known lamp, OF course!") is None
    assert GopherQuality()(" ".join(["the of lamp"] * 33_334)) == "100002 words > 100000"
    assert GopherQuality(min_words=None)("") == "no words"


# -- Gopher repetition -------------------------------------------------------------------------------------------
LONG_WORD = "pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 letters
SYMBOLS = "\n".join("!?;:%&+=~^")  # a paragraph of 10 one-character lines and no word: 19 characters
TWO = filler(14, 2)
REPETITION_CASES = {
    # 7 distinct lines and 5 "Menu": 4 of 12 lines repeat an earlier one
    "lines": (
        "\n".join(PROSE_LINES[:2] + ["Menu"] + PROSE_LINES[2:4] + ["Menu", "Menu"] + PROSE_LINES[4:6] + ["Menu"])
        + "\n"
        + "\n".join(PROSE_LINES[6:] + ["Menu"]),
        "duplicated line fraction 0.333 > 0.3",
        {"dup_line_frac": 0.4},
    ),
    # paragraphs P1 R P2 R P3 R, R = "Read more.": 2 of 6 repeat (and 2 of 10 lines)
    "paragraphs": (
        "\n\n".join(
            x for p in (PROSE_LINES[0:3], PROSE_LINES[3:5], PROSE_LINES[5:]) for x in ("\n".join(p), "Read more.")
        ),
        "duplicated paragraph fraction 0.333 > 0.3",
        {"dup_para_frac": 0.4},
    ),
    # a 45-letter word alone on 3 of 7 lines: 2 repeats (0.29 of lines) of 90 of 233 characters
    "line characters": (
        "\n".join(
            ["Keepers climbed stairs", LONG_WORD, "Ships passed slowly by", LONG_WORD, "Storms came from west"]
            + [LONG_WORD, "Visitors liked the top view"]
        ),
        "duplicated line character fraction 0.386 > 0.2",
        {"dup_line_char_frac": 0.4},
    ),
    # paragraphs of 5, 10, 5, 10, 4 lines: the symbols' copy is 1 of 5 paragraphs, 19 of 85 characters; its
    # 10 lines are 10 of 34 lines, 10 characters
    "paragraph characters": (
        "\n\n".join(["\n".join(TWO[0:5]), SYMBOLS, "\n".join(TWO[5:10]), SYMBOLS, "\n".join(TWO[10:])]),
        "duplicated paragraph character fraction 0.224 > 0.2",
        {"dup_para_char_frac": 0.3},
    ),
    # "ab cd" 6 times among 12 five-letter words: 24 of 84 letters
    "top 2-gram": (
        interleave(filler(12), "ab cd", 6),
        "top 2-gram character fraction 0.286 > 0.2",
        {"top_2gram_char_frac": 0.3},
    ),
    # "x y abcdefghij" 3 times among 24 six-letter words: 36 of 180 letters; its 2-grams, 6 and 33 of 180
    "top 3-gram": (
        interleave(filler(24, 6), "x y abcdefghij", 3),
        "top 3-gram character fraction 0.2 > 0.18",
        {"top_3gram_char_frac": 0.2},
    ),
    # "x y z abcdefghij" 3 times among 186 letters: 39 of 225 (its 3-grams 36, 2-grams 33)
    "top 4-gram": (
        interleave(filler(36) + ["zzzzzz"], "x y z abcdefghij", 3),
        "top 4-gram character fraction 0.173 > 0.16",
        {"top_4gram_char_frac": 0.2},
    ),
    # a 5-gram of 25 letters twice among 250: 50 of 300
    "duplicated 5-grams": (
        interleave(filler(50), "alpha bravo delta gamma omega", 2),
        "duplicated 5-gram character fraction 0.167 > 0.15",
        {"dup_5gram_char_frac": 0.2},
    ),
    # a 10-gram of 44 letters twice among 720: 88 of 808; so are all its 5..9-grams (0.109, under 0.11..0.15),
    # so this checks that the computation does not stop early
    "duplicated 10-grams": (
        interleave(filler(120, 6), "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjjjjjj", 2),
        "duplicated 10-gram character fraction 0.109 > 0.1",
        {"dup_10gram_char_frac": 0.11},
    ),
}


@pytest.mark.parametrize("case", REPETITION_CASES)
def test_gopher_repetition_drops_each_rule_with_its_reason(case):
    text, reason, looser = REPETITION_CASES[case]
    assert GopherRepetition()(text) == reason
    assert GopherRepetition(**looser)(text) is None


def test_gopher_repetition_ties_and_overlaps():
    # ties: in "x y abcdefghij" x3, the 2-grams (x, y) and (y, abcdefghij) both occur 3 times; the longer
    # counts: 33 of 180 letters (not 6 of 180, whichever came first)
    text = REPETITION_CASES["top 3-gram"][0]
    assert GopherRepetition(top_2gram_char_frac=0.18, top_3gram_char_frac=None)(text) == (
        "top 2-gram character fraction 0.183 > 0.18"
    )
    # overlapping occurrences count each word once: "ha" x6 then 50 letters of filler; (ha, ha, ha) occurs 4
    # times but covers 6 words, 12 of 62 letters (not 4 * 6 = 24); (ha, ha) 12 of 62, under 0.2 (not 20 of 62)
    text = "ha " * 6 + " ".join(filler(10))
    assert GopherRepetition()(text) == "top 3-gram character fraction 0.194 > 0.18"
    no_top = {f"top_{n}gram_char_frac": None for n in (2, 3, 4)}
    assert GopherRepetition(**no_top)(text) == "duplicated 5-gram character fraction 0.194 > 0.15"
    # a passage of 100 words repeated around 50 others: 1000 of 1250 letters duplicated (numpy's branch)
    a, b = filler(150)[:100], filler(150)[100:]
    assert GopherRepetition(**no_top)(" ".join(a + b + a)) == "duplicated 5-gram character fraction 0.8 > 0.15"
    assert GopherRepetition()("  \n\n ") == "empty document"


def test_covered_chars_matches_brute_force():
    rng = random.Random(0)
    for n_starts in (5, 40, 64, 300):  # both branches (the loop below 64 starts, numpy from 64)
        lens = [rng.randint(1, 9) for _ in range(1000)]
        prefix = [0]
        for x in lens:
            prefix.append(prefix[-1] + x)
        n = rng.randint(5, 10)
        starts = sorted(rng.sample(range(len(lens) - n + 1), n_starts))
        covered = {i + j for i in starts for j in range(n)}
        assert _covered_chars(starts, n, prefix) == sum(lens[i] for i in covered)


# -- FineWeb -----------------------------------------------------------------------------------------------------
LONG_LINES = [  # 10 lines of 38..42 characters, no final punctuation
    "Keepers climbed the narrow stairs at dusk",
    "Ships passed the rocks in the grey morning",
    "The lamp burned oil through the long night",
    "Storms came from the west every autumn",
    "Visitors liked the view from the gallery",
    "A careful log recorded wind and weather",
    "Supplies arrived with the monthly boat",
    "The lens turned on brass clockwork gears",
    "Volunteers restored the tower last year",
    "Old stone walls kept out the winter cold",
]
SHORT_LINES = ["The boat left at dawn.", "Gulls cried overhead.", "Fog rolled in fast.", "The bell rang twice."]
SHORT_LINES += ["Waves hit the rocks.", "Night fell early.", "The keeper slept."]
LONG_PAIRS = "\n".join(  # 10 lines of two long words: 9 newlines, 20 words
    f"{a} {b}."
    for a, b in [
        ("Incomprehensibilities", "notwithstanding"),
        ("Counterrevolutionaries", "disagreed"),
        ("Electroencephalographs", "malfunctioned"),
        ("Uncharacteristically", "thunderstorms"),
        ("Telecommunications", "collapsed"),
        ("Internationalization", "accelerated"),
        ("Overenthusiastically", "celebrating"),
        ("Disproportionately", "underestimated"),
        ("Compartmentalization", "succeeded"),
        ("Indistinguishability", "persisted"),
    ]
)
FINEWEB_CASES = {
    "punctuation": ("\n".join(LONG_LINES[:9] + [LONG_LINES[9] + "."]), "punctuated line fraction 0.1 < 0.12", 0.1),
    # 7 of 10 lines of <= 30 characters
    "short lines": ("\n".join(SHORT_LINES + [s + "." for s in LONG_LINES[:3]]), "short line fraction 0.7 > 0.67", 0.7),
    # a 19-character line twice: 19 of 698 - 8 newlines
    "duplicated lines": (
        "\n".join(PROSE_LINES[:4] + ["Share this article."] + PROSE_LINES[4:] + ["Share this article."]),
        "duplicated line character fraction 0.0275 > 0.01",
        0.03,
    ),
    "newlines": (LONG_PAIRS, "newline-to-word ratio 0.45 > 0.3", 0.45),  # 9 newlines, 20 words
}


@pytest.mark.parametrize("case", FINEWEB_CASES)
def test_fineweb_quality_drops_each_rule_with_its_reason(case):
    text, reason, limit = FINEWEB_CASES[case]
    assert FineWebQuality()(text) == reason
    rule = {
        "punctuation": "min_line_punct_frac",
        "short lines": "max_short_line_frac",
        "duplicated lines": "max_dup_line_char_frac",
        "newlines": "max_newline_word_ratio",
    }[case]
    assert FineWebQuality(**{rule: limit})(text) is None


def test_fineweb_punctuation_may_close_with_quotes_and_brackets():
    # 2 of 10 lines end in `."` and `?)`: punctuated (0.2), as C4 counts an end quotation mark
    text = "\n".join(LONG_LINES[:8] + [LONG_LINES[8] + '."', LONG_LINES[9] + "?)"])
    assert FineWebQuality()(text) is None
    assert FineWebQuality(min_line_punct_frac=0.25)(text) == "punctuated line fraction 0.2 < 0.25"
    assert FineWebQuality(short_line_length=41, min_line_punct_frac=None)(text) == "short line fraction 0.7 > 0.67"


# -- C4 bad words ------------------------------------------------------------------------------------------------
def test_c4_bad_words_whole_words_any_case(tmp_path):
    f = C4BadWords()
    assert f(PROSE + " What the FUCK.") == "bad word 'fuck'"
    assert f("That shit's cold.") == "bad word 'shit'"  # C4 matches between non-word characters
    assert f("He offered a hand\njob by job.") == "bad word 'hand job'"  # a phrase, any whitespace between
    assert f("Scunthorpe United won the cup.") is None  # whole words only: no Scunthorpe problem
    assert f("assholes") is None  # entries match exactly, as C4's list does: no stemming
    words = tmp_path / "words.txt"
    words.write_text("# a user's list\nLorem\ndolor sit\n")
    custom = C4BadWords(words_file=str(words))
    assert custom("Lorem ipsum") == "bad word 'lorem'"
    assert custom("ipsum dolor  sit amet") == "bad word 'dolor sit'"
    assert custom("What the fuck.") is None  # the user's list replaces the built-in one
    with pytest.raises(ValueError, match="missing.txt"):
        C4BadWords(words_file=str(tmp_path / "missing.txt"))


# -- configuration, the model score, pickling --------------------------------------------------------------------
def test_build_filters_from_config():
    assert [type(f) for f in build_filters()] == list(FILTERS.values())
    built = build_filters(
        {"gopher_quality": {"min_words": 30, "stop_words": ["The", "of"]}, "c4_bad_words": {"enabled": False}}
    )
    assert [f.name for f in built] == ["gopher_quality", "gopher_repetition", "fineweb_quality"]
    assert built[0].min_words == 30 and built[0].stop_words == ("the", "of")
    assert built[0](" ".join(PROSE.split()[:40])) is None
    with pytest.raises(ValueError, match="unknown filter.*gopher_qualty.*valid: gopher_quality, gopher_repetition"):
        build_filters({"gopher_qualty": {}})
    with pytest.raises(ValueError, match="gopher_quality: unknown parameter.*min_word;.*valid: enabled, min_words"):
        build_filters({"gopher_quality": {"min_word": 30}})
    with pytest.raises(ValueError, match="max_digit_fraction must be a number"):
        build_filters({"gopher_quality": {"max_digit_fraction": "0.1"}})
    with pytest.raises(ValueError, match="enabled must be true or false"):
        build_filters({"fineweb_quality": {"enabled": "no"}})


def mean_word_length(texts: list[str]) -> list[float]:  # a stand-in for a model's score (module level: picklable)
    return [sum(map(len, t.split())) / max(len(t.split()), 1) for t in texts]


def test_score_filter_bounds():
    f = ScoreFilter("wordlen", mean_word_length, min_score=3, max_score=6)
    assert f.reasons(["a bb cc", "three words here", "extraordinarily"]) == ["score 1.667 < 3", None, "score 15 > 6"]
    assert f("three words here") is None
    assert ScoreFilter("nan", lambda ts: [float("nan")] * len(ts), max_score=1).reasons(["x"]) == ["score nan"]
    with pytest.raises(ValueError, match="gave 1 values for 2 texts"):
        ScoreFilter("bad", lambda ts: [0.0], min_score=0).reasons(["a", "b"])
    with pytest.raises(ValueError, match="give min_score, max_score or both"):
        ScoreFilter("none", mean_word_length)
    with pytest.raises(ValueError, match="min_score 5 > max_score 1"):
        ScoreFilter("swapped", mean_word_length, min_score=5, max_score=1)


def test_filters_survive_pickling():
    texts = [PROSE] + [case[0] for cases in (GQ_CASES, REPETITION_CASES, FINEWEB_CASES) for case in cases.values()]
    texts.append("What the fuck.")
    filters = build_filters({"gopher_quality": {"min_words": 3}}) + [
        ScoreFilter("wordlen", mean_word_length, max_score=5)
    ]
    for f in filters:
        g = pickle.loads(pickle.dumps(f))
        assert [g(t) for t in texts] == [f(t) for t in texts]
        assert any(f(t) for t in texts)  # a filter that keeps everything would make this vacuous
