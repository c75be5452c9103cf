"""Quality filters: named stages with published default thresholds, each giving the reason it drops a document.

A filter is a picklable dataclass (its fields are its thresholds; None switches a rule off) called on a text:
it returns None to keep it, or a short reason such as "mean word length 2.1 < 3". FILTERS names them; the
pipeline's TOML config builds them through build_filters. ScoreFilter plugs in a model-based score (e.g. a
small LM's perplexity) as one more stage.

Words are found by one compiled regex, WORD: runs of letters and digits, joined across apostrophes ("don't",
"l'été"); punctuation, "_" and hyphens separate words, as spaCy's English tokenizer splits them. Not spaCy
(datatrove's choice) nor NLTK: both need models or downloads (impossible offline), run one to two orders of
magnitude slower, and these statistics only need word boundaries and lengths, which whitespace-delimited
scripts show directly. (A run of CJK ideographs counts as one word: these are English rules.)

Speed: every statistic is one C-level pass (str.count, a compiled regex's findall, set and Counter over
lists, map over str methods), computed only when the rules before it passed; no Python loop runs per
character. Lines are the non-blank lines throughout (a blank line is not short, bulleted or duplicated).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, fields
from itertools import accumulate, compress, count
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

__all__ = ["Filter", "GopherQuality", "GopherRepetition", "FineWebQuality", "C4BadWords", "FILTERS"]
__all__ += ["build_filters", "first_reason", "ScoreFilter", "WORD"]

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
LINE = re.compile(r"^.*\S.*$", re.M)  # a non-blank line (`.` stops at "\n")
BLANK_LINE = re.compile(r"^[^\S\n]*$", re.M)
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")  # one or more blank lines
BULLET_LINE = re.compile(r"^[^\S\n]*[•‣◦⁃▪●\-*]", re.M)
ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)[^\S\n]*$", re.M)
# a sentence-ending mark (Latin, CJK, Devanagari, Arabic, Ethiopic, Burmese, Khmer), then any closing quotes
# or brackets: C4's rule counts a line ending in `."` as punctuated, datatrove's mark-only set does not
PUNCT_LINE = re.compile(r"[.!?…。！？‼‽⁇⁈⁉।॥؟۔።။។｡．][\"'”’»)\]]*[^\S\n]*$", re.M)
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher A.1.1
BAD_WORDS_FILE = Path(__file__).with_name("badwords_en.txt")
_BAD_TOKEN = re.compile(r"[^\W_]+")  # C4 matches between non-word characters: "shit's" contains "shit"


def _n_lines(text: str) -> int:
    """Non-blank lines, counted without splitting: all lines minus blank ones."""
    return text.count("\n") + 1 - len(BLANK_LINE.findall(text))


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(items that repeat an earlier one, their characters): all minus the distinct ones, in C."""
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def _covered_chars(starts: list[int], n: int, prefix: list[int]) -> int:
    """Characters of the words covered by the n-grams at (increasing) `starts`, each word counted once;
    prefix[i] = characters of words[:i]. Many starts (a repetitive document): numpy, by a difference array
    (+1 where an n-gram starts, -1 where it ends; a word is covered where the running sum is positive)."""
    if len(starts) < 64:
        end = chars = 0
        for i in starts:
            chars += prefix[i + n] - prefix[max(i, end)]
            end = i + n
        return chars
    a, size = np.asarray(starts), len(prefix)
    covered = np.cumsum(np.bincount(a, minlength=size) - np.bincount(a + n, minlength=size))[:-1] > 0
    return int(np.diff(np.asarray(prefix))[covered].sum())


def _fmt(x: float) -> str:
    return f"{x:.3g}"


class Filter:
    """A named stage: __call__(text) -> None to keep, or the reason to drop. Subclasses are dataclasses whose
    fields are thresholds; a numeric field also takes None (that rule off)."""

    name: ClassVar[str] = ""

    def __post_init__(self):
        for f in fields(self):  # a TOML typo such as "0.1" (a string) fails here, not mid-corpus
            value, kind = getattr(self, f.name), str(f.type)
            numeric = "float" in kind or "int" in kind
            if numeric and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{self.name}.{f.name} must be a number or None, not {value!r}")

    def __call__(self, text: str) -> str | None:
        raise NotImplementedError


@dataclass
class GopherQuality(Filter):
    """Gopher's quality rules (Rae et al. 2021, "Scaling Language Models", Appendix A.1.1), defaults as there
    and as datatrove's GopherQualityFilter. With W = the words of the lower-cased text, L = its non-blank lines:

        W                                 in [min_words, max_words]
        sum(len(w)) / |W|                 in [min_mean_word_length, max_mean_word_length]
        count("#") / |W|, count("..." or "…") / |W|          <= max_symbol_word_ratio (each)
        |lines starting with a bullet| / |L|                 <= max_bullet_lines_ratio
        |lines ending in an ellipsis| / |L|                  <= max_ellipsis_lines_ratio
        |words with a letter| / |W|                          >= min_alpha_words_ratio (numerals-only: no letter)
        |distinct stop words in W|                           >= min_stop_words
        ASCII digits / characters                            <= max_digit_fraction
    """

    name: ClassVar[str] = "gopher_quality"
    min_words: int | None = 50  # Gopher: a document must hold 50 to 100,000 words
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3  # Gopher: mean word length outside 3 to 10 characters
    max_mean_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # Gopher: symbol-to-word ratio > 0.1, hash or ellipsis
    max_bullet_lines_ratio: float | None = 0.9  # Gopher: > 90% of lines starting with a bullet point
    max_ellipsis_lines_ratio: float | None = 0.3  # Gopher: > 30% of lines ending with an ellipsis
    min_alpha_words_ratio: float | None = 0.8  # Gopher: 80% of words must contain an alphabetic character
    min_stop_words: int | None = 2  # Gopher: at least two of the eight stop words below
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS
    # Not Gopher's; RedPajama-V2 reports it (rps_doc_frac_chars_digits) without a cut. Measured here on 24 GNU
    # info manuals (coreutils, find, gettext, nettle, ...): whole manuals hold 0.4-3% digits, their paragraphs
    # of >= 50 words 16% at the 99th percentile; 3 of ~3,400 exceed 0.25, all numeric tables. Prose is under
    # 1% and a dictionary's dates and numbered senses a few percent, so 0.25 drops number dumps (logs, price
    # and score tables), which the word-level alphabetic rule misses when numbers are glued to letters.
    max_digit_fraction: float | None = 0.25

    def __post_init__(self):
        super().__post_init__()
        self.stop_words = tuple(w.lower() for w in self.stop_words)  # a TOML array arrives as a list
        self._stop = frozenset(self.stop_words)

    def __call__(self, text: str) -> str | None:
        words = WORD.findall(text.lower())
        n = len(words)
        if self.min_words is not None and n < self.min_words:
            return f"{n} words < {self.min_words}"
        if self.max_words is not None and n > self.max_words:
            return f"{n} words > {self.max_words}"
        if n == 0:
            return "no words"
        mean = sum(map(len, words)) / n
        if self.min_mean_word_length is not None and mean < self.min_mean_word_length:
            return f"mean word length {_fmt(mean)} < {self.min_mean_word_length}"
        if self.max_mean_word_length is not None and mean > self.max_mean_word_length:
            return f"mean word length {_fmt(mean)} > {self.max_mean_word_length}"
        if self.max_symbol_word_ratio is not None:
            for symbol, k in (("hash", text.count("#")), ("ellipsis", text.count("...") + text.count("…"))):
                if k / n > self.max_symbol_word_ratio:
                    return f"{symbol}-to-word ratio {_fmt(k / n)} > {self.max_symbol_word_ratio}"
        lines = _n_lines(text)
        if self.max_bullet_lines_ratio is not None:
            r = len(BULLET_LINE.findall(text)) / lines
            if r > self.max_bullet_lines_ratio:
                return f"bullet line fraction {_fmt(r)} > {self.max_bullet_lines_ratio}"
        if self.max_ellipsis_lines_ratio is not None:
            r = len(ELLIPSIS_LINE.findall(text)) / lines
            if r > self.max_ellipsis_lines_ratio:
                return f"ellipsis line fraction {_fmt(r)} > {self.max_ellipsis_lines_ratio}"
        if self.min_alpha_words_ratio is not None:
            r = 1 - sum(map(str.isnumeric, words)) / n
            if r < self.min_alpha_words_ratio:
                return f"alphabetic word fraction {_fmt(r)} < {self.min_alpha_words_ratio}"
        if self.min_stop_words is not None:
            k = len(self._stop.intersection(words))
            if k < self.min_stop_words:
                return f"{k} stop words < {self.min_stop_words}"
        if self.max_digit_fraction is not None:
            r = sum(map(text.count, "0123456789")) / len(text)
            if r > self.max_digit_fraction:
                return f"digit fraction {_fmt(r)} > {self.max_digit_fraction}"
        return None


@dataclass
class GopherRepetition(Filter):
    """Gopher's repetition rules (Rae et al. 2021, Appendix A.1.1, Table A1), as the paper defines them:

    - duplicated line (paragraph) fraction: lines (paragraphs) that repeat an earlier one / all of them;
      its character fraction: the characters of those repeats / the document's characters. Paragraphs are
      separated by blank lines.
    - top n-gram character fraction (n = 2, 3, 4): the characters of the words inside the occurrences of the
      most frequent word n-gram (if it occurs more than once; the longest of ties) / the characters of all words.
    - duplicated n-gram character fraction (n = 5..10): the characters of the words inside every occurrence
      of every n-gram that occurs more than once, a word inside overlapping n-grams counted once (the paper's
      caveat) / the characters of all words (RedPajama-V2's rps_doc_frac_chars_dupe_*grams reads it so too).
    Words are of the lower-cased text; word characters exclude spaces, which differ by tokenization only.
    A word covered by a duplicated (n+1)-gram is covered by a duplicated n-gram, so the duplicated fraction
    falls with n: once it is under every remaining threshold, the larger n need not be computed.
    """

    name: ClassVar[str] = "gopher_repetition"
    dup_line_frac: float | None = 0.30  # Gopher Table A1 (and datatrove), all thirteen values
    dup_para_frac: float | None = 0.30
    dup_line_char_frac: float | None = 0.20
    dup_para_char_frac: float | None = 0.20
    top_2gram_char_frac: float | None = 0.20
    top_3gram_char_frac: float | None = 0.18
    top_4gram_char_frac: float | None = 0.16
    dup_5gram_char_frac: float | None = 0.15
    dup_6gram_char_frac: float | None = 0.14
    dup_7gram_char_frac: float | None = 0.13
    dup_8gram_char_frac: float | None = 0.12
    dup_9gram_char_frac: float | None = 0.11
    dup_10gram_char_frac: float | None = 0.10

    def __call__(self, text: str) -> str | None:
        if not text.strip():
            return "empty document"
        lines, paragraphs = LINE.findall(text), PARAGRAPH_BREAK.split(text.strip())
        (line_dups, line_chars), (para_dups, para_chars) = _duplicates(lines), _duplicates(paragraphs)
        for what, value, limit in (
            ("duplicated line fraction", line_dups / len(lines), self.dup_line_frac),
            ("duplicated paragraph fraction", para_dups / len(paragraphs), self.dup_para_frac),
            ("duplicated line character fraction", line_chars / len(text), self.dup_line_char_frac),
            ("duplicated paragraph character fraction", para_chars / len(text), self.dup_para_char_frac),
        ):
            if limit is not None and value > limit:
                return f"{what} {_fmt(value)} > {limit}"
        words = WORD.findall(text.lower())
        prefix = [0, *accumulate(map(len, words))]
        if not prefix[-1]:
            return None
        for n in (2, 3, 4):
            limit = getattr(self, f"top_{n}gram_char_frac")
            if limit is None or len(words) < n:
                continue
            grams = _ngrams(words, n)
            counts = Counter(grams)
            k = max(counts.values())
            if k < 2:
                continue
            # of the most frequent n-grams (ties are common), the longest: the answer does not hang on order
            top = max(compress(counts, map(k.__eq__, counts.values())), key=lambda g: sum(map(len, g)))
            if any(top[j:] == top[: n - j] for j in range(1, n)):  # occurrences may overlap: count words once
                chars = _covered_chars(list(compress(count(), map(top.__eq__, grams))), n, prefix)
            else:
                chars = k * sum(map(len, top))
            if chars / prefix[-1] > limit:
                return f"top {n}-gram character fraction {_fmt(chars / prefix[-1])} > {limit}"
        limits = [(n, getattr(self, f"dup_{n}gram_char_frac")) for n in range(5, 11)]
        for i, (n, limit) in enumerate(limits):
            grams = _ngrams(words, n)
            counts = Counter(grams)
            if len(counts) == len(grams):  # no duplicated n-gram, hence none longer
                return None
            repeated = map((1).__lt__, map(counts.__getitem__, grams))  # count > 1, in C
            frac = _covered_chars(list(compress(count(), repeated)), n, prefix) / prefix[-1]
            if limit is not None and frac > limit:
                return f"duplicated {n}-gram character fraction {_fmt(frac)} > {limit}"
            if frac <= min((x for _, x in limits[i + 1 :] if x is not None), default=math.inf):
                return None
        return None


@dataclass
class FineWebQuality(Filter):
    """FineWeb's own heuristics (Penedo et al. 2024, "The FineWeb Datasets", section 3.5; datatrove's
    FineWebQualityFilter defaults). With L = the non-blank lines:

        |lines ending in terminal punctuation| / |L|        >= min_line_punct_frac
        |lines of <= short_line_length characters| / |L|   <= max_short_line_frac
        characters of lines repeating an earlier line / non-newline characters   <= max_dup_line_char_frac
        newlines / words                                    <= max_newline_word_ratio
    """

    name: ClassVar[str] = "fineweb_quality"
    min_line_punct_frac: float | None = 0.12  # FineWeb: removed when <= 12% of lines end in punctuation
    max_short_line_frac: float | None = 0.67  # FineWeb: removed when >= 67% of lines are of <= 30 characters
    short_line_length: int = 30
    # datatrove's char_duplicates_ratio default, which its FineWeb pipeline runs (the write-up gives 0.1)
    max_dup_line_char_frac: float | None = 0.01
    max_newline_word_ratio: float | None = 0.3  # datatrove's new_line_ratio: newline-separated lists of words

    def __call__(self, text: str) -> str | None:
        lines = LINE.findall(text)
        if not lines:
            return "empty document"
        if self.min_line_punct_frac is not None:
            r = len(PUNCT_LINE.findall(text)) / len(lines)
            if r < self.min_line_punct_frac:
                return f"punctuated line fraction {_fmt(r)} < {self.min_line_punct_frac}"
        if self.max_short_line_frac is not None:
            r = sum(1 for k in map(len, lines) if k <= self.short_line_length) / len(lines)
            if r > self.max_short_line_frac:
                return f"short line fraction {_fmt(r)} > {self.max_short_line_frac}"
        newlines = text.count("\n")
        if self.max_dup_line_char_frac is not None:
            r = _duplicates(lines)[1] / (len(text) - newlines)
            if r > self.max_dup_line_char_frac:
                return f"duplicated line character fraction {_fmt(r)} > {self.max_dup_line_char_frac}"
        if self.max_newline_word_ratio is not None:
            r = newlines / max(len(WORD.findall(text)), 1)
            if r > self.max_newline_word_ratio:
                return f"newline-to-word ratio {_fmt(r)} > {self.max_newline_word_ratio}"
        return None


@dataclass
class C4BadWords(Filter):
    """C4's rule (Raffel et al. 2020, section 2.2): drop any document containing a word of the "List of
    Dirty, Naughty, Obscene or Otherwise Bad Words" (LDNOOBW), matched as whole words, case-insensitively.
    The built-in list (badwords_en.txt) is a short subset of unambiguous English obscenities, since nothing
    is downloaded; `words_file` points at the full list (one entry a line, "#" comments). Entries that are
    one word are looked up in a set (one C-level isdisjoint over the words); the rest (phrases, entries with
    symbols) go into one regex with word-boundary guards."""

    name: ClassVar[str] = "c4_bad_words"
    words_file: str | None = None

    def __post_init__(self):
        super().__post_init__()
        path = Path(self.words_file) if self.words_file else BAD_WORDS_FILE
        try:
            entries = [e.strip().lower() for e in path.read_text(encoding="utf-8").splitlines()]
        except OSError as e:
            raise ValueError(f"{self.name}.words_file: cannot read {path}: {e}") from e
        entries = [e for e in entries if e and not e.startswith("#")]
        self._words = frozenset(e for e in entries if _BAD_TOKEN.fullmatch(e))
        phrases = sorted((e for e in entries if not _BAD_TOKEN.fullmatch(e)), key=len, reverse=True)
        body = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
        self._phrases = re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])") if phrases else None
        # a short list is first looked for as plain substrings (each a fast C search): most texts contain
        # none, and then no whole-word match can exist; a long list costs more searching than tokenizing
        needles = {max(e.split(), key=len) for e in entries}  # a phrase needs each of its words
        self._needles = tuple(sorted(needles)) if len(needles) <= 100 else None

    def __call__(self, text: str) -> str | None:
        low = text.lower()
        if self._needles is not None and not any(map(low.__contains__, self._needles)):
            return None
        tokens = _BAD_TOKEN.findall(low)
        if not self._words.isdisjoint(tokens):
            return f"bad word {min(self._words.intersection(tokens))!r}"
        if self._phrases is not None and (m := self._phrases.search(low)):
            return f"bad word {' '.join(m.group(0).split())!r}"  # the entry, whatever the spacing matched
        return None


FILTERS: dict[str, type[Filter]] = {f.name: f for f in (GopherQuality, GopherRepetition, FineWebQuality, C4BadWords)}


def build_filters(config: dict | None = None) -> list[Filter]:
    """The filters of a TOML-shaped config, in FILTERS order, every one on unless {"enabled": False}:
    {"gopher_quality": {"min_words": 30}, "c4_bad_words": {"enabled": False}}. An unknown filter or
    parameter is a ValueError listing the valid ones."""
    config = dict(config or {})
    if unknown := sorted(set(config) - set(FILTERS)):
        raise ValueError(f"unknown filter(s) {', '.join(unknown)}; valid: {', '.join(FILTERS)}")
    out = []
    for name, cls in FILTERS.items():
        params = config.get(name) or {}
        if not isinstance(params, dict):
            raise ValueError(f"{name}: expected a table of parameters, got {params!r}")
        params = dict(params)
        enabled = params.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"{name}.enabled must be true or false, not {enabled!r}")
        valid = [f.name for f in fields(cls) if f.init]
        if unknown := sorted(set(params) - set(valid)):
            raise ValueError(f"{name}: unknown parameter(s) {', '.join(unknown)}; valid: enabled, {', '.join(valid)}")
        if enabled:  # a rule set to false is off (TOML has no null; None turns a threshold off)
            out.append(cls(**{k: None if v is False else v for k, v in params.items()}))
    return out


def first_reason(filters: list, text: str) -> tuple[str, str] | None:
    """(stage name, reason) of the first filter that drops `text`, or None when all keep it."""
    for f in filters:
        if (reason := f(text)) is not None:
            return f.name, reason
    return None


class ScoreFilter:
    """A model-based quality stage: `score` maps a batch of texts to one number each (an LM's perplexity, a
    classifier's probability...); a document is dropped when its score is below min_score or above
    max_score, or is NaN. Picklable when `score` is (a module-level function or a picklable object)."""

    def __init__(
        self,
        name: str,
        score: Callable[[list[str]], list[float]],
        *,
        min_score: float | None = None,
        max_score: float | None = None,
    ):
        if min_score is None and max_score is None:
            raise ValueError(f"{name}: give min_score, max_score or both (without either it keeps everything)")
        if min_score is not None and max_score is not None and min_score > max_score:
            raise ValueError(f"{name}: min_score {min_score} > max_score {max_score}")
        self.name, self.score, self.min_score, self.max_score = name, score, min_score, max_score

    def reasons(self, texts: list[str]) -> list[str | None]:
        scores = list(self.score(list(texts)))
        if len(scores) != len(texts):
            raise ValueError(f"{self.name}: the score gave {len(scores)} values for {len(texts)} texts")
        return [self._reason(float(s)) for s in scores]

    def _reason(self, s: float) -> str | None:
        if math.isnan(s):
            return "score nan"
        if self.min_score is not None and s < self.min_score:
            return f"score {s:.4g} < {self.min_score}"
        if self.max_score is not None and s > self.max_score:
            return f"score {s:.4g} > {self.max_score}"
        return None

    def __call__(self, text: str) -> str | None:
        return self.reasons([text])[0]

    def __repr__(self) -> str:
        return f"ScoreFilter({self.name!r}, {self.score!r}, min_score={self.min_score}, max_score={self.max_score})"
