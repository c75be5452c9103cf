"""N-gram decontamination against evaluation texts the caller hands in, and the PaLM-style contamination report.

    index = NGramIndex(eval_texts, n=13)            # built once, pickled to the workers
    text, matches = decontaminate(doc, index)       # None: the document goes; matches say which items it held
    contamination_report(eval_texts, corpus)        # the audit: the fraction of eval items found in a corpus

Words are GPT-3's grams (Brown et al. 2020, Appendix C): lowercase, whitespace-delimited, punctuation removed.
Each word is hashed once, in numpy, from its characters' code points (a polynomial hash, then the splitmix64
finalizer; never Python's per-process salted hash()), and an n-gram's hash is the same polynomial over its n word
hashes, from one prefix sum over all of a document's words. Membership is a binary search
(np.searchsorted) in the sorted uint64 n-grams of the eval set. 64-bit hashes: over ~10^7 eval n-grams and 10^12
corpus n-grams, about 10^12 * 10^7 / 2^64 = 0.5 spurious matches in all.

An eval item with fewer than n words has no n-gram and is never matched: GPT-3's filter had the same blind spot
at 13, and dolma decontaminates only paragraphs of >= 13 words, because a short text (a one-line question, a
yes/no answer) also occurs in many documents that never saw the benchmark. NGramIndex.short counts them per task.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

U64 = np.uint64
_P = 0x9E3779B97F4A7C15  # the polynomial hash's base: odd (the 64-bit golden ratio), so no power of it is 0


@dataclass(frozen=True)
class EvalText:
    task: str  # e.g. "mmlu", "humaneval", "bbh_navigate"
    item: str  # the item's id within the task
    text: str  # prompt and answer(s) of the item


@dataclass(frozen=True)
class Match:
    task: str
    item: str  # the first item of `task` (in the order handed in) holding the n-gram
    start: int  # character span of the matching n-gram in the scanned text
    end: int


# -- words and their hashes ----------------------------------------------------------------------------
@functools.cache
def _table() -> np.ndarray:
    """Per Basic Multilingual Plane code point: 0 for whitespace, 1 for a character dropped from words, else its
    lowercase. Dropped: punctuation (P*), symbols (S*: "$", "+", "=" are in string.punctuation too) and control or
    format characters (C*: a zero-width space is not a letter); code points 0 and 1 are controls, so never kept."""
    out = np.empty(0x10000, dtype=np.uint32)
    for c in range(0x10000):
        ch = chr(c)
        out[c] = 0 if ch.isspace() else 1 if unicodedata.category(ch)[0] in "PSC" else ord(ch.lower()[0])
    return out  # (only U+0130 lowers to two characters, "i" and a dot: the "i" is kept)


_BLOCK = 1 << 20  # words hashed per block of n-grams: bounds the power tables at 8 MB each


@functools.cache
def _powers() -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2^64 for i <= _BLOCK (per process, never pickled)."""
    fwd = np.cumprod(np.concatenate([[U64(1)], np.full(_BLOCK, _P, dtype=U64)]), dtype=U64)
    inv = np.cumprod(np.concatenate([[U64(1)], np.full(_BLOCK, pow(_P, -1, 1 << 64), dtype=U64)]), dtype=U64)
    return fwd, inv


_S30, _S27, _S31 = U64(30), U64(27), U64(31)
_M1, _M2 = U64(0xBF58476D1CE4E5B9), U64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele et al. 2014), in place: spreads every input bit over the 64-bit output."""
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def _words(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the kept lowercase code points; per word: its first and past-the-end index into them, its char start and
    end). A word is a whitespace-delimited token with at least one kept character ("-" or "..." is none)."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if text.isascii() or cp.max() <= 0xFFFF:
        v = _table().take(cp)
    else:  # emoji, historic scripts, CJK extensions: kept as they are
        v = np.where(cp > 0xFFFF, cp, _table().take(np.minimum(cp, 0xFFFF)))
    space = np.flatnonzero(v == 0)
    start = np.concatenate([[0], space + 1])  # tokens lie between whitespace (most of them empty between spaces)
    end = np.concatenate([space, [len(v)]])
    # kept characters before token i's start: its start, less the i spaces and the dropped characters before it;
    # one space separates consecutive tokens, so a token's kept characters end where the next token's begin
    a = start - np.arange(len(start)) - np.searchsorted(np.flatnonzero(v == 1), start)
    keep = v > 1
    b = np.concatenate([a[1:], [np.count_nonzero(keep)]])
    word = b > a
    return v[keep], a[word], b[word], start[word], end[word]


def words(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The normalized words of `text` and their char start/end offsets into it (text[start:end] is the
    whitespace-delimited token the word came from, punctuation included)."""
    chars, a, b, start, end = _words(text)
    s = chars.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
    return [s[i:j] for i, j in zip(a.tolist(), b.tolist())], start, end


def _word_hashes(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mix(sum_j c_j P^j + length) per word, c_j its kept code points: the words tile the kept characters, so
    one np.add.reduceat sums them all (wrapping uint64 arithmetic)."""
    chars, a, b, start, end = _words(text)
    if not len(a):
        return np.zeros(0, dtype=U64), start, end
    lengths = b - a
    rel = np.arange(len(chars)) - np.repeat(a, lengths)  # each character's position within its word
    if lengths.max() > _BLOCK:  # one "word" of a million characters (a base64 blob): fold its positions
        rel %= _BLOCK
    h = np.add.reduceat(chars * _powers()[0].take(rel), a, dtype=U64)
    h += lengths.astype(U64)
    return _mix(h), start, end


def _ngrams_of(wh: np.ndarray, n: int) -> np.ndarray:
    """sum_i w_{j+i} P^i for each run of n consecutive word hashes (Rabin-Karp over words), from one prefix sum:
    sum_i w_{j+i} P^i = (S[j+n] - S[j]) P^-j with S[k] = sum_{i<k} w_i P^i. The word hashes are already mixed,
    so the sum needs no finalizer. Blocks of _BLOCK words (overlapping by n - 1) give the same values."""
    m = len(wh) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=U64)
    if len(wh) > _BLOCK:
        step = _BLOCK - n + 1
        return np.concatenate([_ngrams_of(wh[i : i + _BLOCK], n) for i in range(0, m, step)])
    fwd, inv = _powers()
    prefix = np.zeros(len(wh) + 1, dtype=U64)
    np.cumsum(wh * fwd[: len(wh)], out=prefix[1:])
    out = prefix[n:] - prefix[:m]
    out *= inv[:m]
    return out


def ngram_hashes(text: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint64 hash of each word n-gram of `text` and its char start and end; equal n-grams hash equally in
    every process (no salt). A text of fewer than n words has none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    wh, start, end = _word_hashes(text)
    return _ngrams_of(wh, n), start[: max(len(wh) - n + 1, 0)], end[n - 1 :]


def _windows_with_letters(text: str, n: int) -> np.ndarray:
    """Per word n-gram of `text` (the order ngram_hashes gives): whether any of its words holds a letter."""
    chars, a, b, _, _ = _words(text)
    if not len(a):
        return np.zeros(0, dtype=bool)
    is_digit = (chars >= ord("0")) & (chars <= ord("9"))
    letters = np.add.reduceat((~is_digit).astype(np.int64), a) > 0  # kept characters are letters or digits
    c = np.concatenate([[0], np.cumsum(letters)])
    return (c[n:] - c[:-n]) > 0 if len(letters) >= n else np.zeros(0, dtype=bool)


def _batched_ngrams(
    texts: Iterable[str], n: int, chunk_chars: int = 1 << 22
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n-gram hashes, index of the text each came from) over many texts, hashed a few MB at a time: one numpy
    pass per chunk instead of per (often short) text. Texts are joined by a newline, and n-grams that cross
    a join are dropped."""
    buf: list[str] = []
    size = first = 0

    def flush():
        joined = "\n".join(buf)
        bounds = np.cumsum([0] + [len(t) + 1 for t in buf[:-1]])  # char offset where each text starts
        wh, start, _ = _word_hashes(joined)
        owner = np.searchsorted(bounds, start, side="right") - 1
        h = _ngrams_of(wh, n)
        same = owner[: len(h)] == owner[n - 1 :]
        # n-grams of numbers only ("1 2 3 4 5 6 7 8 9 10 11 12 13" in a HumanEval test) are evidence of nothing:
        # on the demonstration corpus they matched tables of the Python manual. At least one word with a letter.
        same &= _windows_with_letters(joined, n)[: len(h)]
        return h[same], owner[: len(h)][same] + first

    for t in texts:
        buf.append(t)
        size += len(t) + 1
        if size >= chunk_chars:
            yield flush()
            first += len(buf)
            buf, size = [], 0
    if buf:
        yield flush()


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes first in numpy 2.3+, several times slower here)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if len(a) else a


def _prefilter(keys: np.ndarray) -> tuple[np.ndarray, np.uint64]:
    """A one-byte-per-slot table of the sorted keys' top bits, >= 4 slots per key: an n-gram not held is turned
    away by one lookup (>= 78% of the time) instead of a binary search, which costs ~20 cache misses."""
    bits = max(16, int(4 * len(keys)).bit_length())
    shift = U64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[keys >> shift] = True
    return table, shift


def _lookup(keys: np.ndarray, table: np.ndarray, shift: np.uint64, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices into h of the hashes found in keys, the first position of each in keys)."""
    cand = np.flatnonzero(table[h >> shift])
    lo = np.searchsorted(keys, h[cand])
    found = keys[np.minimum(lo, len(keys) - 1)] == h[cand]
    return cand[found], lo[found]


# -- the index ---------------------------------------------------------------------------------------------
class NGramIndex:
    """The word n-grams of a set of eval texts, as a sorted uint64 array: picklable, ~12 bytes per n-gram.

    Each distinct (n-gram, task) pair is kept once, with the first item of that task holding it, so one
    n-gram shared by 250 items of a task (a task's fixed instructions) gives one match for that task, and
    one n-gram in two tasks gives a match for each.
    """

    def __init__(self, texts: Iterable[EvalText], n: int = 13):  # 13: GPT-3 (Appendix C); Llama 2 calls it standard
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.tasks: list[str] = []
        self.items: list[str] = []  # item ids, in the order handed in
        task_ids: dict[str, int] = {}
        item_task: list[int] = []

        def listed():
            for t in texts:
                item_task.append(task_ids.setdefault(t.task, len(task_ids)))
                self.items.append(t.item)
                yield t.text

        parts = list(_batched_ngrams(listed(), n))
        self.tasks = list(task_ids)
        self._item_task = np.array(item_task, dtype=np.int32)
        h = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=U64)
        owner = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        task = self._item_task[owner]
        order = np.lexsort((task, h))  # by hash, then task; lexsort is stable, so then by item (the order handed in)
        h, owner, task = h[order], owner[order], task[order]
        first = np.concatenate([[True], (h[1:] != h[:-1]) | (task[1:] != task[:-1])])[: len(h)]
        self._keys, self._owner = h[first], owner[first].astype(np.int32)
        per_task = np.bincount(self._item_task, minlength=len(self.tasks))
        with_ngrams = np.bincount(self._item_task[_unique(owner)], minlength=len(self.tasks))
        self.counts = dict(zip(self.tasks, per_task.tolist()))  # items per task
        self.short = dict(zip(self.tasks, (per_task - with_ngrams).tolist()))  # items with fewer than n words
        self._filter = _prefilter(self._keys)  # rebuilt after unpickling rather than shipped to the workers

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_filter"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._filter = _prefilter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def matches(self, text: str) -> list[Match]:
        """Each n-gram of `text` found in the index, once per task holding it, in order of position."""
        if not len(self._keys):
            return []
        h, start, end = ngram_hashes(text, self.n)
        hit, lo = _lookup(self._keys, *self._filter, h)
        if not len(hit):  # the common case: a clean document costs a table lookup per n-gram, no Python loop
            return []
        hi = np.searchsorted(self._keys, h[hit], side="right")
        out = []
        for j, a, b in zip(hit.tolist(), lo.tolist(), hi.tolist()):
            for k in range(a, b):
                item = int(self._owner[k])
                out.append(Match(self.tasks[self._item_task[item]], self.items[item], int(start[j]), int(end[j])))
        return out


# GPT-3 (Appendix C): cut each colliding 13-gram and 200 characters around it, discard pieces under 200
# characters, and drop a document split into more than 10 pieces (whole-document removal "overly penalized
# long documents such as books"). Pieces that survive are joined by a blank line: they were not contiguous.
# (GPT-3 also ignored 13-grams found in more than 10 training documents: a count over the whole corpus, which
# is the caller's to make from the matches, not this per-document function's.)
PIECE_SEPARATOR = "\n\n"


def decontaminate(
    text: str,
    index: NGramIndex,
    *,
    mode: str = "remove",
    window: int = 200,
    min_piece: int = 200,
    max_splits: int = 10,
) -> tuple[str | None, list[Match]]:
    """(the document, or what is left of it, or None when it goes; the matches found). No match: (text, []).

    mode "remove": a document with any match goes. mode "excise": GPT-3's rule above; a document left in more
    than `max_splits` pieces, or with no piece of `min_piece` characters, goes."""
    if mode not in ("remove", "excise"):
        raise ValueError(f"mode must be 'remove' or 'excise', got {mode!r}")
    found = index.matches(text)
    if not found:
        return text, []
    if mode == "remove":
        return None, found
    spans = sorted((max(m.start - window, 0), min(m.end + window, len(text))) for m in found)
    pieces, pos = [], 0
    for s, e in spans:
        if s > pos:
            pieces.append(text[pos:s])
        pos = max(pos, e)
    if pos < len(text):
        pieces.append(text[pos:])
    kept = [p for p in pieces if len(p) >= min_piece]
    if len(pieces) > max_splits or not kept:
        return None, found
    return PIECE_SEPARATOR.join(kept), found


# -- the audit ------------------------------------------------------------------------------------------------
def contamination_report(
    eval_texts: Iterable[EvalText],
    corpus: Iterable[str],
    *,
    n: int = 8,
    threshold: float = 0.7,
    examples: int = 5,
) -> dict:
    """PaLM's contamination check (Chowdhery et al. 2022, sec. 8): an eval item is contaminated when at least
    70% of its 8-grams occur somewhere in the corpus. Streams the corpus once, holding only the eval set's
    n-grams (memory scales with the eval set, not the corpus).

    Returns {"n", "threshold", "documents", "tasks": {task: {"items", "too_short", "contaminated", "fraction",
    "examples": [{"item", "overlap", "text"}, ...]}}, "total": {"items", "contaminated", "fraction"}}; fraction =
    contaminated / items, where items with fewer than n words (too_short) count as clean; examples are the
    contaminated items of highest overlap, their text cut at 500 characters."""
    evals = list(eval_texts)
    h_parts, o_parts = zip(*_batched_ngrams((e.text for e in evals), n)) if evals else ((), ())
    h = np.concatenate(h_parts) if h_parts else np.zeros(0, dtype=U64)
    owner = np.concatenate(o_parts) if o_parts else np.zeros(0, dtype=np.int64)
    keys = _unique(h)
    # distinct n-grams of each item, as (item, position in keys) pairs
    pairs = _unique(owner * max(len(keys), 1) + np.searchsorted(keys, h))
    item_of, key_of = pairs // max(len(keys), 1), pairs % max(len(keys), 1)
    seen = np.zeros(len(keys), dtype=bool)
    docs = 0

    def counted():
        nonlocal docs
        for d in corpus:
            docs += 1
            yield d

    if len(keys):
        table = _prefilter(keys)
        for ch, _ in _batched_ngrams(counted(), n):
            seen[_lookup(keys, *table, ch)[1]] = True
    else:
        for _ in counted():
            pass
    total = np.bincount(item_of, minlength=len(evals))
    found = np.bincount(item_of, weights=seen[key_of], minlength=len(evals))
    overlap = np.divide(found, total, out=np.zeros(len(evals)), where=total > 0)
    dirty = (total > 0) & (overlap >= threshold)

    tasks: dict[str, dict] = {}
    for i, e in enumerate(evals):
        t = tasks.setdefault(e.task, {"items": 0, "too_short": 0, "contaminated": 0, "fraction": 0.0, "examples": []})
        t["items"] += 1
        t["too_short"] += int(total[i] == 0)
        if dirty[i]:
            t["contaminated"] += 1
            t["examples"].append({"item": e.item, "overlap": float(overlap[i]), "text": e.text[:500]})
    for t in tasks.values():
        t["fraction"] = t["contaminated"] / t["items"]
        t["examples"] = sorted(t["examples"], key=lambda x: -x["overlap"])[:examples]  # stable: ties keep order
    n_dirty = int(dirty.sum())
    return {
        "n": n,
        "threshold": threshold,
        "documents": docs,
        "tasks": tasks,
        "total": {"items": len(evals), "contaminated": n_dirty, "fraction": n_dirty / len(evals) if evals else 0.0},
    }
