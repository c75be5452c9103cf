"""Dedup, claim by claim: exact dedup keeps the first of each set of normalized copies across shards; MinHash
clusters planted near-duplicates with their originals and never merges distinct documents on one topic; the
band math matches 1 - (1 - s**r)**b; signatures estimate Jaccard as well as datasketch's; the buckets and
clusters stages give hand-worked roots, equal to a plain union-find's, the same however the documents are
sharded. The documents are made here from a seeded pseudo-word vocabulary, so every count is reproducible."""

import hashlib
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from opengemma.data.dedup import (
    MinHashConfig,
    _permutations,
    band_keys,
    bucket_pairs,
    candidate_probability,
    cluster_roots,
    cluster_sizes,
    content_hashes,
    exact_keep,
    keys_from_signatures,
    minhash,
    near_duplicate_keep,
    normalize,
    shingle_hashes,
    signatures,
)

CFG = MinHashConfig()
SYLLABLES = "ka lo mi ne ru ta si po de ga vi zu ber tan ol is ar en mon del".split()


def _vocab(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def _words(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    return rng.choices(vocab, weights=[1 / (i + 1) for i in range(len(vocab))], k=n)  # Zipfian, like text


def _text(words: list[str]) -> str:
    """Words as prose: a capital and a full stop every 12 words, a comma now and then."""
    out = []
    for i, w in enumerate(words):
        out.append((w.capitalize() if i % 12 == 0 else w) + ("." if i % 12 == 11 else "," if i % 7 == 3 else ""))
    return " ".join(out)


def _roots_of(shards: list[list[str]], cfg: MinHashConfig = CFG) -> np.ndarray:
    """The three stages as the pipeline runs them: keys per shard, pairs per band, clusters once."""
    keys = [band_keys(s, cfg) for s in shards]
    return cluster_roots((bucket_pairs(keys, b) for b in range(cfg.bands)), sum(map(len, shards)))


# ---- normalization and exact dedup ---------------------------------------------------------------------------


def test_normalize_folds_case_width_punctuation_and_whitespace_but_not_digits_or_accents():
    assert normalize("  Hello,\tWORLD!!\n ｆｕｌｌ－ｗｉｄｔｈ  ﬁne_tune ") == "hello world full width fine tune"
    assert normalize("end.Start") == normalize("end. Start") == "end start"
    assert normalize("Price: $5") != normalize("Price: $6")  # numbers stay: not copies
    assert normalize("café") != normalize("cafe")  # accents tell words apart in many languages
    assert normalize("") == normalize(" .,;!? ") == ""


def test_content_hashes_are_blake2b_of_the_normalized_text_little_endian():
    want = int.from_bytes(hashlib.blake2b(b"hello world", digest_size=8).digest(), "little")
    got = content_hashes(["Hello,  World!", "hello world", "hello worlds"])
    assert got.dtype == np.uint64 and got.tolist()[:2] == [want, want] and got[2] != want


def test_exact_keep_keeps_the_first_copy_in_global_order_across_shards():
    a, b, c = "The cat sat on the mat.", "A different sentence here", "Third text, unrelated"
    shards = [
        [b, "the CAT sat on the mat", a],  # row 1 is a's copy by case and punctuation, and comes first
        [c, "  a DIFFERENT   sentence, here!", c],
        [],
        ["THE cat sat... on the mat?!"],
    ]
    masks = exact_keep([content_hashes(s) for s in shards])
    assert [m.tolist() for m in masks] == [[True, True, False], [True, False, False], [], [False]]
    assert all(m.dtype == bool for m in masks)
    vocab = _vocab(random.Random(0), 300)
    distinct = [_text(_words(random.Random(i), vocab, 40)) for i in range(200)]
    assert np.concatenate(exact_keep([content_hashes(distinct[:70]), content_hashes(distinct[70:])])).all()


# ---- shingles and signatures ---------------------------------------------------------------------------------


def test_shingles_are_one_per_word_ngram_position_free_and_normalized():
    assert len(shingle_hashes("one two three four five six seven", 5)) == 3
    assert len(shingle_hashes("one two", 5)) == len(shingle_hashes("", 5)) == 1  # shorter than n: one shingle
    assert shingle_hashes("one two", 5)[0] != shingle_hashes("one three", 5)[0]
    # the same 3-gram hashes the same wherever it stands; case and punctuation do not matter
    assert shingle_hashes("x y a b c", 3)[2] == shingle_hashes("A, b; C!", 3)[0]
    assert len(set(shingle_hashes("a b c d e f g h", 2).tolist())) == 7  # seven distinct bigrams


def test_signatures_are_identical_in_a_fresh_process_with_another_hash_seed():
    code = (
        "from opengemma.data.dedup import band_keys;"
        "print(band_keys(['the quick brown fox jumps over the lazy dog again', 'x']).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    here = band_keys(["the quick brown fox jumps over the lazy dog again", "x"])
    assert out.strip() == str(here.tolist()) and here.shape == (2, CFG.bands)


def test_minhash_is_a_function_of_the_set_and_the_minimum_over_a_union():
    x = np.random.default_rng(0).integers(0, 2**64, size=5000, dtype=np.uint64)
    shuffled = np.random.default_rng(1).permutation(np.concatenate([x, x]))
    assert (minhash(shuffled) == minhash(x)).all()  # order and repeats do not matter
    assert (minhash(x) == np.minimum(minhash(x[:2500]), minhash(x[2500:]))).all()  # sig(A | B) = min(sig A, sig B)
    assert (minhash(x[:0]) == np.iinfo(np.uint64).max).all()


def test_permutations_come_from_the_published_splitmix64_sequence():
    # Vigna's splitmix64.c from seed 1234567 first yields 6457827717110365317 (odd, so a_0 is it unchanged)
    assert int(_permutations(1234567, 1)[0][0]) == 6457827717110365317


def _pair(s: float, union: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of consecutive integers with |A & B| / |A | B| == s exactly: A = [0, k), B = [union - k, union)."""
    both = round(s * union)
    k = both + (union - both) // 2
    assert (2 * k - union) / union == s
    return np.arange(k, dtype=np.uint64), np.arange(union - k, union, dtype=np.uint64)


@pytest.mark.parametrize("s", [0.5, 0.7, 0.8, 0.9])
def test_candidate_rate_over_seeds_matches_the_banding_formula(s):
    """For fixed sets the randomness is the hash family's: over 1,000 seeds the fraction of seeds that put A and B
    in one bucket of some band is binomial around candidate_probability (4 sigma, plus 1/M for continuity)."""
    a, b, m = *_pair(s), 1000
    sigs = [np.stack([minhash(x, MinHashConfig(seed=seed)) for seed in range(m)]) for x in (a, b)]
    hits = int((keys_from_signatures(sigs[0]) == keys_from_signatures(sigs[1])).any(axis=1).sum())
    p = candidate_probability(s, CFG.bands, CFG.rows)
    assert abs(hits / m - p) <= 4 * math.sqrt(p * (1 - p) / m) + 1 / m, (hits / m, p)


def test_per_row_collision_rate_estimates_jaccard_as_well_as_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = np.random.default_rng(0)
    errors = {"ours": [], "datasketch": []}
    for s in [0.5, 0.7, 0.8, 0.9]:
        both = round(200 * s)
        for _ in range(15):
            pool = rng.integers(0, 2**63, size=200 + (200 - both), dtype=np.uint64)  # random shingle hashes
            a, b = pool[:200], np.concatenate([pool[:both], pool[200:]])[:200]
            truth = len(set(a.tolist()) & set(b.tolist())) / len(set(a.tolist()) | set(b.tolist()))
            errors["ours"].append(float((minhash(a) == minhash(b)).mean()) - truth)
            ma, mb = (datasketch.MinHash(num_perm=112, seed=1) for _ in range(2))
            for m, x in [(ma, a.tobytes()), (mb, b.tobytes())]:
                m.update_batch([x[i : i + 8] for i in range(0, len(x), 8)])  # the same 8-byte shingles
            errors["datasketch"].append(ma.jaccard(mb) - truth)
    n, sd = len(errors["ours"]), math.sqrt(0.25 / 112)  # sd of one 112-row estimate at worst (s = 0.5)
    for e in errors.values():
        assert abs(np.mean(e)) <= 4 * sd / math.sqrt(n)  # unbiased
    rmse = {k: math.sqrt(np.mean(np.square(e))) for k, e in errors.items()}
    assert rmse["ours"] <= 1.25 * rmse["datasketch"] and rmse["ours"] <= sd, rmse


# ---- near-duplicates end to end ------------------------------------------------------------------------------


def _edit_runs(rng: random.Random, words: list[str], vocab: list[str], frac: float, runs: int) -> list[str]:
    """A near-duplicate as the web makes them: round(frac * len) words replaced, in `runs` contiguous spans
    (runs=0: each word on its own, scattered)."""
    out, k = list(words), max(1, round(frac * len(words)))
    runs = runs or k
    for r in range(runs):
        span = k // runs + (r < k % runs)
        start = rng.randrange(len(out) - span)
        out[start : start + span] = [w + "x" for w in _words(rng, vocab, span)]  # "x": never the word it replaces
    return out


def test_planted_near_duplicates_cluster_with_their_originals_and_distinct_documents_stay_apart():
    rng = random.Random(7)
    docs, origin = [], []  # origin[i]: which original document i was made from
    for topic in range(4):  # documents on one topic share a vocabulary and a header and footer of 20 words each
        vocab = _vocab(rng, 400)
        header, footer = _words(rng, vocab, 20), _words(rng, vocab, 20)
        for j in range(25):
            words = header + _words(rng, vocab, 260) + footer
            variant = _edit_runs(rng, words, vocab, rng.uniform(0.02, 0.05), rng.randint(1, 3))
            docs += [_text(words), _text(variant).upper()]  # case does not matter either
            origin += [topic * 25 + j] * 2
    order = list(range(len(docs)))
    rng.shuffle(order)  # the variant comes first about half the time
    docs, origin = [docs[i] for i in order], np.array([origin[i] for i in order])
    roots = _roots_of([docs[:70], docs[70:71], docs[71:]])

    pairs = [np.flatnonzero(origin == o) for o in range(100)]
    recall = np.mean([roots[i] == roots[j] for i, j in pairs])
    assert recall >= 0.95, recall
    for r in np.unique(roots):  # precision 1.0: a cluster holds copies of one original only
        members = np.flatnonzero(roots == r)
        assert len(set(origin[members].tolist())) == 1 and r == members.min()  # its root is its first document
    keep = near_duplicate_keep(roots)
    assert keep.sum() == len(np.unique(roots)) and keep[[p.min() for p in pairs]].all()


def test_detection_rate_of_scattered_edits_follows_the_theory_on_real_shingles():
    """Words changed one at a time, 1-6%: each pair is caught with candidate_probability(J) for J its exact shingle
    Jaccard, so the count caught over 150 pairs lies within 4 sigma of the sum of those probabilities."""
    rng = random.Random(3)
    vocab = _vocab(rng, 500)
    caught, expected, var = 0, 0.0, 0.0
    for _ in range(150):
        words = _words(rng, vocab, 300)
        variant = _edit_runs(rng, words, vocab, rng.uniform(0.01, 0.06), runs=0)
        a, b = set(shingle_hashes(_text(words), 5).tolist()), set(shingle_hashes(_text(variant), 5).tolist())
        p = candidate_probability(len(a & b) / len(a | b), CFG.bands, CFG.rows)
        ka, kb = band_keys([_text(words), _text(variant)])
        caught, expected, var = caught + bool((ka == kb).any()), expected + p, var + p * (1 - p)
    assert abs(caught - expected) <= 4 * math.sqrt(var) + 1, (caught, expected)


# ---- buckets and clusters ------------------------------------------------------------------------------------


def test_bucket_pairs_and_cluster_roots_on_a_hand_made_key_table():
    # docs 0..6, 4 bands. Band 0: 0 ~ 2. Band 1: 1 ~ 4 ~ 6 (one bucket of three). Band 3: 2 ~ 5. Doc 3 alone.
    keys = np.array(
        [
            [10, 20, 30, 40],
            [11, 77, 31, 41],
            [10, 22, 32, 99],
            [13, 23, 33, 43],
            [14, 77, 34, 44],
            [15, 25, 35, 99],
            [16, 77, 36, 46],
        ],
        dtype=np.uint64,
    )
    assert bucket_pairs([keys], 0).tolist() == [[0, 2]]
    assert sorted(bucket_pairs([keys], 1).tolist()) == [[1, 4], [1, 6]]  # a star on the bucket's first member
    assert bucket_pairs([keys], 2).shape == (0, 2) and bucket_pairs([keys], 2).dtype == np.int64
    assert bucket_pairs([keys[:3], keys[3:]], 3).tolist() == [[2, 5]]  # global index = shard offset + row
    roots = cluster_roots((bucket_pairs([keys], b) for b in range(4)), 7)
    assert roots.tolist() == [0, 1, 0, 3, 1, 0, 1]  # 0~2 (band 0), 2~5 (band 3): one cluster rooted at 0
    assert near_duplicate_keep(roots).tolist() == [True, True, False, True, False, False, False]
    assert cluster_sizes(roots) == {3: 2, 1: 1}


def test_cluster_roots_equal_a_plain_union_find_on_random_graphs():
    rng = np.random.default_rng(0)
    for n, m in [(1, 0), (50, 200), (2000, 1500), (2000, 2500)]:
        edges = np.sort(rng.integers(0, n, size=(m, 2)), axis=1)
        chain = np.stack([np.arange(n - 1, 0, -1) - 1, np.arange(n - 1, 0, -1)], axis=1)[: n // 4]  # a long path
        parent = list(range(n))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for u, v in np.concatenate([edges, chain]).tolist():
            ru, rv = find(u), find(v)
            parent[max(ru, rv)] = min(ru, rv)  # keep the smaller index as root
        want = [find(x) for x in range(n)]
        assert cluster_roots([edges, chain], n).tolist() == want


def test_sharded_stages_give_the_roots_of_one_shard_memory_mapped_too(tmp_path):
    rng = random.Random(1)
    vocab = _vocab(rng, 300)
    base = [_words(rng, vocab, 120) for _ in range(20)]
    docs = [_text(w) for w in base] + [_text(_edit_runs(rng, w, vocab, 0.02, 1)) for w in base]
    rng.shuffle(docs)
    one = _roots_of([docs])
    assert len(np.unique(one)) < len(docs)  # there are clusters to agree on
    shards = [docs[:13], docs[13:13], docs[13:31], docs[31:]]
    assert _roots_of(shards).tolist() == one.tolist()
    for i, s in enumerate(shards):
        np.save(tmp_path / f"{i}.npy", band_keys(s))
    mapped = [np.load(tmp_path / f"{i}.npy", mmap_mode="r") for i in range(len(shards))]
    roots = cluster_roots((bucket_pairs(mapped, b) for b in range(CFG.bands)), len(docs))
    assert roots.tolist() == one.tolist()


def test_candidate_probability_hand_values_and_signature_shapes():
    assert candidate_probability(0.8, 14, 8) == pytest.approx(1 - (1 - 0.8**8) ** 14) == pytest.approx(0.9238, 1e-3)
    assert candidate_probability(0.0, 14, 8) == 0.0 and candidate_probability(1.0, 14, 8) == 1.0
    # (1/14)**(1/8) = 0.72, FineWeb's threshold, is where the curve is steepest, not where it crosses 1/2
    assert candidate_probability(0.72, 14, 8) == pytest.approx(0.6499, abs=1e-4)
    assert candidate_probability(0.685, 14, 8) == pytest.approx(0.5, abs=2e-3)
    cfg = MinHashConfig(ngram=3, bands=4, rows=2, seed=5)
    assert signatures(["a b c d", "e"], cfg).shape == (2, 8) and band_keys([], cfg).shape == (0, 4)
    assert (signatures(["a b c d"], cfg) != signatures(["a b c d"], MinHashConfig(3, 4, 2, seed=6))).all()
