"""Which documents survive deduplication: exact (a normalized content hash) and near-duplicate (MinHash LSH),
each as sharded stages whose outputs are plain arrays, so no stage needs one in-memory index of everything.

The stages (FineWeb's, run by datatrove as signatures -> buckets -> clusters -> filter):
    signatures  per shard:  band_keys(texts)          -> (N_s, bands) uint64, saved as .npy
    buckets     per band:   bucket_pairs(keys, band)  -> (P, 2) int64 links (bucket's smallest index, member)
    clusters    once:       cluster_roots(pairs, N)   -> (N,) int64 root = the smallest global index of its cluster
    filter      per shard:  near_duplicate_keep(roots) (exact dedup: exact_keep(content_hashes) per shard)
Global document order is shard 0 row 0, shard 0 row 1, ..., then shard 1: the survivor of every cluster is
its first document in that order, so a rerun or a different worker count keeps the same documents.

MinHash (Broder 1997; Leskovec et al., MMDS ch. 3): with h_i a random permutation of shingle hashes and
A, B shingle sets, P[min h_i(A) == min h_i(B)] = J(A, B) = |A & B| / |A | B|. The 112 minima are cut into b
bands of r rows; two documents become candidates when all r rows of some band agree:
    P[candidate] = 1 - (1 - J**r)**b        (b=14, r=8: 0.5 -> 0.05, 0.685 -> 0.50, 0.8 -> 0.92, 0.9 -> 0.9996)
The curve is steepest near (1/b)**(1/r) = 0.72 (MMDS's threshold; there P = 0.65). A word substituted here and
there at rate f keeps (1-f)**5 of the 5-gram shingles, so J = (1-f)**5 / (2 - (1-f)**5): f = 2% gives J = 0.83
and P = 0.97, f = 5% J = 0.63 and P = 0.30, for any MinHash at these settings; edits in contiguous runs (a
changed sentence, a new date line) cost far fewer shingles and are caught at P > 0.97 up to ~5% of the words.
Every hash is computed from the UTF-8 bytes with fixed constants (no Python hash(), no RNG stream that may
change between numpy versions), so signatures agree across processes and machines.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_U64 = (1 << 64) - 1


# ---- normalization and exact dedup ---------------------------------------------------------------------------


@functools.cache
def _punctuation_table() -> dict[int, str]:
    # Unicode punctuation (P*) and symbols (S*) become spaces. Every such code point lies below U+20000 (planes
    # 2+ hold ideographs, tags and private use), so the table builds in ~20 ms instead of ~400 ms for all planes.
    top = min(sys.maxunicode + 1, 0x20000)
    return {c: " " for c in range(top) if unicodedata.category(chr(c))[0] in "PS"}


def normalize(text: str) -> str:
    """The text as dedup compares it: NFKC, lowercase, punctuation and symbols dropped, whitespace collapsed.

    datatrove's simplify_text idea (what FineWeb hashes), with two of its steps left out on purpose:
    - NFKC folds compatibility forms (full-width letters, ligatures, superscripts) and composes accents;
      diacritics are kept, not stripped, because in Vietnamese, Hindi or Turkish they tell words apart.
    - digits are kept (datatrove maps every number to 0): documents that differ only in their numbers (a
      table, a changelog) are not copies for exact dedup, and MinHash still catches them when they are few.
    Punctuation goes to a space, not to nothing, so "end.Start" and "end. Start" agree. Measured on 500-word
    documents: str.translate + split is ~60 us per document, a compiled `[^\\W_]+` findall ~200 us.
    Stable across machines for one Unicode version (Python 3.11: 14.0); code points assigned later may differ.
    """
    return " ".join(unicodedata.normalize("NFKC", text).lower().translate(_punctuation_table()).split())


def content_hashes(texts: Iterable[str]) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of blake2b(normalize(text)), read little-endian on every machine."""
    digests = b"".join(hashlib.blake2b(normalize(t).encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def exact_keep(hashes: list[np.ndarray]) -> list[np.ndarray]:
    """Per-shard bool masks: the first occurrence in global order of each hash is kept, every later copy dropped.

    np.unique(return_index=True) returns the first index of each value; all shards' hashes (8 bytes a document)
    are held at once, which is small next to the documents themselves.
    """
    sizes = [len(h) for h in hashes]
    flat = np.concatenate([np.asarray(h, dtype=np.uint64) for h in hashes]) if hashes else np.zeros(0, np.uint64)
    keep = np.zeros(len(flat), dtype=bool)
    keep[np.unique(flat, return_index=True)[1]] = True
    return np.split(keep, np.cumsum(sizes)[:-1])


# ---- MinHash signatures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinHashConfig:
    ngram: int = 5  # word 5-gram shingles (FineWeb; datatrove's MinhashConfig.n_grams)
    bands: int = 14  # 14 buckets x 8 hashes = 112 (FineWeb): threshold ~ (1/14)**(1/8) = 0.72 similarity
    rows: int = 8
    seed: int = 1  # every worker must use the same seed: it fixes the permutations


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (Steele et al. 2014): a bijection of uint64 whose every output bit depends on every
    input bit, so structured inputs (small integers, polynomial hashes) come out uniform."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# The byte polynomial: hash(bytes[s:e]) = sum_j bytes[s+j] * P**j  (mod 2**64), read off prefix sums as
# (H[e] - H[s]) * P**-s, which needs P odd (invertible mod 2**64). Normalized text holds no NUL byte, so
# strings of different lengths do not meet by trailing zeros. P is FNV-1a's 64-bit prime. Mod 2**64 such a
# polynomial can be made to collide on purpose (Thue-Morse strings of >= 2**11 bytes); natural text does not, and
# a collision would only make two shingles look alike.
_P = 0x100000001B3
_P_INV = pow(_P, -1, 1 << 64)
_POWERS: list[np.ndarray] = [np.ones((2, 1), np.uint64)]  # rows P**j and P**-j, grown by doubling when needed
_POWERS_KEPT = 1 << 21  # bytes of text covered by the kept table (32 MB); a longer document builds its own


def _powers(n: int) -> np.ndarray:
    table = _POWERS[0]
    if table.shape[1] < n:
        size = 1 << max(12, (n - 1).bit_length())
        table = np.empty((2, size), np.uint64)
        table[0], table[1] = _P, _P_INV
        table[:, 0] = 1
        table = np.cumprod(table, axis=1, dtype=np.uint64)  # wraps mod 2**64, as intended
        if size <= _POWERS_KEPT:
            _POWERS[0] = table  # one assignment: a concurrent reader sees the old table or the new one
    return table


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """uint64, one per word n-gram of normalize(text), in order (a text of fewer than n words: one, of all of it).

    An n-gram's hash is _mix64 of the byte polynomial of its span "w1 w2 ... wn" in the normalized text, all n-grams
    at once from one prefix sum: no Python loop over words (datatrove hashes " ".join(ngram) one at a time).
    """
    data = np.frombuffer(normalize(text).encode("utf-8"), dtype=np.uint8)
    pw = _powers(len(data) + 1)
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(data * pw[0, : len(data)], out=prefix[1:])
    spaces = np.flatnonzero(data == 32)  # normalize leaves exactly one space between words
    if len(spaces) + 1 < ngram:
        starts, ends = np.zeros(1, np.int64), np.full(1, len(data), np.int64)
    else:
        starts = np.concatenate([[0], spaces[: len(spaces) + 1 - ngram] + 1])
        ends = np.concatenate([spaces[ngram - 1 :], [len(data)]])
    return _mix64((prefix[ends] - prefix[starts]) * pw[1, starts])


@functools.cache
def _permutations(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    # h_i(x) = a_i * x + b_i (mod 2**64), a_i odd: a bijection of uint64 per i (datatrove uses a*x+b mod 2**61-1
    # after the same uint64 wraparound). Inputs are _mix64-ed first, so this is enough for min-wise behaviour:
    # the band test checks the collision rate against 1 - (1 - s**r)**b to 4 sigma.
    # The splitmix64 generator (Steele et al. 2014): its k-th output from `seed` is the finalizer of seed + k * gamma.
    steps = np.arange(1, 2 * n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    vals = _mix64(steps + np.uint64(seed & _U64))
    return vals[:n] | np.uint64(1), vals[n:]


# Shingles per block: a (1024, 112) uint64 block (0.9 MB) stays in cache and bounds memory for any length. Measured
# on a 20,000-shingle document: 21 ms in blocks, 37 ms in one (20000, 112) array.
_CHUNK = 1024


def minhash(shingles: np.ndarray, cfg: MinHashConfig = MinHashConfig()) -> np.ndarray:
    """(bands*rows,) uint64 signature of a set of uint64 shingles: sig_i = min over x of a_i * mix(x) + b_i.

    Any uint64 values work (they are mixed first); an empty set gives all-ones, which matches only other empty sets.
    """
    a, b = _permutations(cfg.seed, cfg.bands * cfg.rows)
    x = _mix64(np.asarray(shingles, dtype=np.uint64).reshape(-1))
    sig = np.full(len(a), _U64, dtype=np.uint64)
    for i in range(0, len(x), _CHUNK):
        v = x[i : i + _CHUNK, None] * a  # (S_chunk, bands*rows)
        v += b
        np.minimum(sig, v.min(axis=0), out=sig)
    return sig


def signatures(texts: Iterable[str], cfg: MinHashConfig = MinHashConfig()) -> np.ndarray:
    """(N, bands*rows) uint64 MinHash signatures of the texts' word n-gram shingles."""
    sigs = [minhash(shingle_hashes(t, cfg.ngram), cfg) for t in texts]
    return np.stack(sigs) if sigs else np.zeros((0, cfg.bands * cfg.rows), np.uint64)


def keys_from_signatures(sigs: np.ndarray, cfg: MinHashConfig = MinHashConfig()) -> np.ndarray:
    """(N, bands) uint64: each band's r rows folded into one key, k <- mix(k ^ row), so equal keys mean (up to a
    2**-64 accident) equal rows: one sort per band then finds every candidate pair."""
    rows = np.asarray(sigs, dtype=np.uint64).reshape(len(sigs), cfg.bands, cfg.rows)
    key = np.full(rows.shape[:2], 0x9E3779B97F4A7C15, dtype=np.uint64)
    for r in range(cfg.rows):
        key = _mix64(key ^ rows[:, :, r])
    return key


def band_keys(texts: Iterable[str], cfg: MinHashConfig = MinHashConfig()) -> np.ndarray:
    """(N, bands) uint64: the signatures stage's output, what each shard saves as .npy."""
    return keys_from_signatures(signatures(texts, cfg), cfg)


# ---- buckets and clusters --------------------------------------------------------------------------------------


def bucket_pairs(keys: list[np.ndarray], band: int) -> np.ndarray:
    """The buckets stage for one band: (P, 2) int64 (smaller, larger) global indices of documents sharing a key.

    keys[s] is shard s's (N_s, bands) array (an np.load(mmap_mode='r') array reads only column `band`). A stable
    sort by key groups each bucket in index order; every member is linked to its bucket's first (smallest) index,
    a star of k-1 links per bucket of k rather than all k*(k-1)/2 pairs.
    """
    cols = [np.asarray(k[:, band], dtype=np.uint64) for k in keys]
    col = np.concatenate(cols) if cols else np.zeros(0, np.uint64)
    order = np.argsort(col, kind="stable")
    sorted_keys = col[order]
    first = np.ones(len(col), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    head = np.maximum.accumulate(np.where(first, np.arange(len(col)), 0))  # position of each bucket's first member
    return np.stack([order[head][~first], order[~first]], axis=1).astype(np.int64).reshape(-1, 2)


def cluster_roots(pairs: Iterable[np.ndarray], n_docs: int) -> np.ndarray:
    """The clusters stage: (n_docs,) int64, each document's root = the smallest global index in its connected
    component over all bands' links.

    Vectorized union-find (hook and compress, as Shiloach-Vishkin): with every parent[x] <= x, each round hooks the
    larger root of every unsatisfied link under the smaller (np.minimum.at), then pointer-jumps parent = parent[parent]
    until every node points at a root. Roots only decrease and a tree's root is its minimum, so at the fixed point
    (no link joins two roots) each component is one tree rooted at its smallest index. A path takes one round.
    """
    parent = np.arange(n_docs, dtype=np.int64)
    edges = [np.asarray(p, dtype=np.int64).reshape(-1, 2) for p in pairs]
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    u, v = edges[:, 0], edges[:, 1]
    while len(u):
        pu, pv = parent[u], parent[v]
        live = pu != pv
        u, v = np.maximum(pu, pv)[live], np.minimum(pu, pv)[live]  # links between current roots only
        np.minimum.at(parent, u, v)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def near_duplicate_keep(roots: np.ndarray) -> np.ndarray:
    """bool: a document survives iff it is its cluster's root (one survivor per cluster, the first in order)."""
    return np.asarray(roots) == np.arange(len(roots))


def cluster_sizes(roots: np.ndarray) -> dict[int, int]:
    """Histogram of cluster sizes: {size: number of clusters of that size}, singletons (size 1) included."""
    sizes = np.unique(np.asarray(roots), return_counts=True)[1]
    size, count = np.unique(sizes, return_counts=True)
    return {int(s): int(c) for s, c in zip(size, count)}


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P[two documents of Jaccard similarity s share a band] = 1 - (1 - s**rows)**bands (MMDS ch. 3.4)."""
    return 1.0 - (1.0 - s**rows) ** bands
