"""Us vs datatrove on the same documents in the same run: documents/s and MB/s per stage, and dedup quality.

    python -m benchmarks.data_pipeline [--corpus corpus/] [--docs 1000] [--repeats 3] [--planted 100]
                                       [--out benchmarks/results/data_pipeline.json]

The documents are a seeded sample of the demonstration corpus (benchmarks/data_corpus.py; built into --corpus if
it is not there). Every stage runs in this one process on both sides, ours and datatrove's alternating within
each repeat, and the medians are reported (this machine's speed moves ~35% between runs: only ratios measured
side by side mean anything). Stages:
- the quality filters one by one, then chained (one pass per document, as a pipeline runs them: datatrove's
  filters then share one word tokenization through its lru_cache, ours share nothing and need not);
- MinHash signatures (5-gram, 14 bands x 8 rows) in process, and the whole MinHash dedup (signatures, buckets,
  clusters, filter) as datatrove's four steps vs ours (opengemma.data.scale) on the same LocalPipelineExecutor
  (one task for the per-document stages, one per band for the buckets, workers=1), reading the same JSONL;
- exact dedup the same way (datatrove's ExactDedupSignature/FindDedups/Filter on its simplify_text vs ours);
- PII redaction (ours: nine kinds with validators; datatrove's PIIFormatter: emails and IPs), for scale only.
Offline adjustments to datatrove, each its own documented path, none a change to what it computes:
- its English word tokenizer is spaCy's rule-based `spacy.blank("en")` (load_word_tokenizer's choice; no model
  download, needs `pip install spacy`); a second column runs its filters with a regex word tokenizer instead, to
  show how much of its time is spaCy;
- its C4 bad-words list is downloaded at run time: its download helper is pointed at a local file holding our
  list (opengemma/data/badwords_en.txt), so both sides look for the same words;
- datatrove 0.10.1 hashes str with xxhash, which xxhash >= 4 refuses (its `processing` extra pins xxhash<4):
  with xxhash 4 installed, str is encoded to UTF-8 first, as xxhash 3 did inside.
Dedup quality: copies of random sample documents are planted with words replaced at random positions (2-5% of
the words, and 10-20% for a harder tier) or in 1-3 contiguous runs (2-5%), appended after the originals. Recall:
planted copies removed into their original's cluster; precision: removed documents that share a cluster with a
planted relative or with a document of word 5-gram Jaccard >= 0.5 (a near-duplicate the corpus had already).
"theory" is the mean over planted pairs of 1 - (1 - J^8)^14 at each pair's true Jaccard J.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TIERS = {
    "2-5% scattered": (0.02, 0.05, False),
    "2-5% in runs": (0.02, 0.05, True),
    "10-20% scattered": (0.1, 0.2, False),
}


# ---- the documents -------------------------------------------------------------------------------------------


def load_sample(corpus: Path, n: int, seed: int = 0) -> list[dict]:
    """n documents drawn without replacement from every *.jsonl.gz of the corpus, in corpus order."""
    from opengemma.data.readers import read_inputs

    if not any(corpus.glob("*.jsonl.gz")):
        from benchmarks import data_corpus

        print(f"no corpus in {corpus}: building it (python -m benchmarks.data_corpus --out {corpus})")
        data_corpus.main(["--out", str(corpus)])
    docs = [{"id": d.id, "text": d.text, **d.meta} for d in read_inputs([corpus])]
    pick = sorted(random.Random(seed).sample(range(len(docs)), min(n, len(docs))))
    return [docs[i] for i in pick]


def plant(docs: list[dict], per_tier: int, seed: int = 1) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """(copies, {copy id: original id}, {copy id: tier}): each original copied once, words replaced by words
    drawn from the sample's vocabulary."""
    rng = random.Random(seed)
    vocab = sorted({w for d in docs[:200] for w in d["text"].split()})
    long_enough = [d for d in docs if len(d["text"].split(" ")) >= 100]
    originals = rng.sample(long_enough, min(len(long_enough), per_tier * len(TIERS)))
    copies, origin, tier_of = [], {}, {}
    for k, (tier, (lo, hi, runs)) in enumerate(TIERS.items()):
        for d in originals[k * per_tier : (k + 1) * per_tier]:
            words = d["text"].split(" ")
            m = max(1, round(rng.uniform(lo, hi) * len(words)))
            if runs:  # m words in 1-3 contiguous runs: an edited sentence or header, not scattered typos
                cuts = sorted(rng.sample(range(1, m), min(rng.randint(0, 2), m - 1))) if m > 1 else []
                pos = []
                for length in np.diff([0, *cuts, m]):
                    start = rng.randrange(0, len(words) - length + 1)
                    pos += range(start, start + length)
            else:
                pos = rng.sample(range(len(words)), m)
            for i in pos:
                words[i] = rng.choice(vocab)
            cid = f"{d['id']}#copy"
            copies.append({**d, "id": cid, "text": " ".join(words)})
            origin[cid], tier_of[cid] = d["id"], tier
    return copies, origin, tier_of


def shingles(text: str, n: int = 5) -> set:
    from opengemma.data.dedup import normalize

    w = normalize(text).split()
    return set(zip(*(w[i:] for i in range(n)))) if len(w) >= n else {tuple(w)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


# ---- datatrove, offline ----------------------------------------------------------------------------------------


def datatrove_offline(tmp: Path) -> None:
    """The three adjustments of the module docstring, applied once before datatrove's steps are built."""
    import xxhash
    from datatrove.pipeline.filters import c4_filters
    from datatrove.utils.hashes import xxhash as dt_xxhash
    from loguru import logger

    from opengemma.data.filters import BAD_WORDS_FILE

    logger.remove()  # datatrove logs every task's stats table to stderr
    try:
        xxhash.xxh64_intdigest("probe")
    except TypeError:
        dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
        dt_xxhash.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)
    words = [w.strip() for w in BAD_WORDS_FILE.read_text().splitlines() if w.strip() and not w.startswith("#")]
    local = tmp / "badwords_en.txt"
    local.write_text("\n".join(words) + "\n")
    c4_filters.cached_asset_path_or_download = lambda *a, **k: str(local)


def regex_word_tokenizer():
    """A datatrove WordTokenizer splitting words with our filters' regex (filters.WORD): no spaCy."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    from opengemma.data.filters import WORD

    class RegexWords(WordTokenizer):
        def word_tokenize(self, text):
            return WORD.findall(text)

        def sent_tokenize(self, text):
            return [s for s in text.split("\n") if s.strip()]

        def span_tokenize(self, text):
            raise NotImplementedError

    return RegexWords("en")


# ---- timing --------------------------------------------------------------------------------------------------


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable over `repeats` rounds, the order rotating each round."""
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def filter_stages(texts: list[str], repeats: int) -> list[dict]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4BadWordsFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from opengemma.data import filters as F

    regex = regex_word_tokenizer()
    pairs = {
        "Gopher quality": (F.GopherQuality(), GopherQualityFilter, True),
        "Gopher repetition": (F.GopherRepetition(), GopherRepetitionFilter, True),
        "FineWeb quality": (F.FineWebQuality(), FineWebQualityFilter, True),
        "C4 bad words": (F.C4BadWords(), C4BadWordsFilter, False),
    }
    docs = lambda: [Document(text=t, id=str(i)) for i, t in enumerate(texts)]  # noqa: E731
    rows, chain_ours, chain_dt, chain_rx = [], [], [], []
    for stage, (ours, cls, tokenized) in pairs.items():
        dt = cls()
        rx = cls(language=regex) if tokenized else None
        out = {}
        fns = {
            "ours": lambda: out.__setitem__("ours", [ours(t) is None for t in texts]),
            "datatrove": lambda d=docs(): out.__setitem__("datatrove", [dt.filter(x) is True for x in d]),
        }
        if rx is not None:
            fns["datatrove (regex words)"] = lambda d=docs(): [rx.filter(x) for x in d]
        rows.append({"stage": stage, "seconds": interleaved(fns, repeats), "agree": agreement(out)})
        chain_ours.append(ours), chain_dt.append(dt), chain_rx.append(cls(language=regex) if tokenized else dt)

    def run_chain(filters, d):
        return sum(all(f.filter(x) is True for f in filters) for x in d)  # all() stops at the first drop

    fns = {
        "ours": lambda: sum(F.first_reason(chain_ours, t) is None for t in texts),
        "datatrove": lambda d=docs(): run_chain(chain_dt, d),
        "datatrove (regex words)": lambda d=docs(): run_chain(chain_rx, d),
    }
    rows.append({"stage": "all four filters, chained", "seconds": interleaved(fns, repeats)})
    return rows


def agreement(out: dict) -> float:
    a, b = out["ours"], out["datatrove"]
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def signature_stage(texts: list[str], repeats: int) -> dict:
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    from opengemma.data import dedup

    with tempfile.TemporaryDirectory() as tmp:
        dt = MinhashDedupSignature(tmp, MinhashConfig())  # 5-gram, 14 x 8, 64-bit: FineWeb's, as ours
        rx = MinhashDedupSignature(tmp, MinhashConfig(), language=regex_word_tokenizer())
        fns = {
            "ours": lambda: dedup.band_keys(texts),
            "datatrove": lambda: [dt.get_signature(dt.get_shingles(t)) for t in texts],
            "datatrove (regex words)": lambda: [rx.get_signature(rx.get_shingles(t)) for t in texts],
        }
        return {"stage": "MinHash signatures", "seconds": interleaved(fns, repeats)}


def pii_stage(texts: list[str], repeats: int) -> dict:
    from datatrove.pipeline.formatters import PIIFormatter

    from opengemma.data import pii

    dt = PIIFormatter()
    fns = {"ours": lambda: [pii.redact(t) for t in texts], "datatrove": lambda: [dt.format(t) for t in texts]}
    return {"stage": "PII redaction (9 kinds vs 2)", "seconds": interleaved(fns, repeats)}


# ---- whole dedup on LocalPipelineExecutor ------------------------------------------------------------------------


def write_input(folder: Path, docs: list[dict]) -> None:
    folder.mkdir(parents=True)
    with gzip.open(folder / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")


def run_stages(stages: list[tuple[list, int]], logs: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor

    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # each task logs its stats table there
        for i, (pipeline, tasks) in enumerate(stages):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(logs / str(i))).run()


def read_records(folder: Path):
    for f in sorted(folder.glob("*.jsonl.gz")):
        yield from map(json.loads, gzip.open(f, "rt"))


def minhash_datatrove(inp: Path, work: Path) -> tuple[dict[str, str], set[str]]:
    """datatrove's four MinHash steps; -> ({doc id: cluster key (its cluster id, or its own id when alone)},
    the removed ids)."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig()
    w = lambda sub: str(work / sub)  # noqa: E731
    run_stages(
        [
            ([JsonlReader(str(inp)), MinhashDedupSignature(w("sigs"), cfg)], 1),
            ([MinhashDedupBuckets(w("sigs"), w("buckets"), config=cfg)], cfg.num_buckets),
            ([MinhashDedupCluster(w("buckets"), w("remove"), config=cfg, save_cluster_id=True)], 1),
            (
                [
                    JsonlReader(str(inp)),
                    MinhashDedupFilter(w("remove"), exclusion_writer=JsonlWriter(w("removed")), load_cluster_ids=True),
                    JsonlWriter(w("kept")),
                ],
                1,
            ),
        ],
        work / "logs",
    )
    keys, removed = {}, set()
    for sub in ("kept", "removed"):
        for r in read_records(work / sub):
            c = r["metadata"].get("minhash_cluster_id", -1)
            keys[r["id"]] = f"cluster{c}" if c != -1 else r["id"]
            removed.update([r["id"]] if sub == "removed" else [])
    return keys, removed


def minhash_ours(inp: Path, work: Path) -> tuple[dict[str, str], set[str]]:
    """Our four stages (opengemma.data.scale), MinHash only; -> ({doc id: cluster key (its survivor's id)},
    the removed ids)."""
    from datatrove.pipeline.readers import JsonlReader

    from opengemma.data import dedup
    from opengemma.data.scale import DedupFilter, MinHashBuckets, MinHashClusters, MinHashSignatures, RecordWriter

    cfg, mh = dedup.MinHashConfig(), str(work / "mh")
    run_stages(
        [
            ([JsonlReader(str(inp)), MinHashSignatures(mh, cfg, exact=False)], 1),
            ([MinHashBuckets(mh, cfg, exact=False)], cfg.bands),
            ([MinHashClusters(mh, cfg, exact=False)], 1),
            ([JsonlReader(str(inp)), DedupFilter(mh, RecordWriter(work / "removed")), RecordWriter(work / "kept")], 1),
        ],
        work / "logs",
    )
    keys, removed = {}, set()
    for sub in ("kept", "removed"):
        for r in read_records(work / sub):
            keys[r["id"]] = r["reason"].removeprefix("near-duplicate of ") if "reason" in r else r["id"]
            removed.update([r["id"]] if sub == "removed" else [])
    return keys, removed


def _simplified(doc) -> str:
    from datatrove.utils.text import simplify_text

    return simplify_text(doc.text)


def exact_datatrove(inp: Path, work: Path) -> None:
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg, w = ExactDedupConfig(content_getter=_simplified), lambda sub: str(work / sub)
    run_stages(
        [
            ([JsonlReader(str(inp)), ExactDedupSignature(w("sigs"), cfg)], 1),
            ([ExactFindDedups(w("sigs"), w("dups"), cfg)], 1),
            ([JsonlReader(str(inp)), ExactDedupFilter(w("dups"), cfg), JsonlWriter(w("kept"))], 1),
        ],
        work / "logs",
    )


def exact_ours(inp: Path, work: Path) -> None:
    from datatrove.pipeline.readers import JsonlReader

    from opengemma.data.scale import DedupFilter, MinHashBuckets, MinHashClusters, MinHashSignatures, RecordWriter

    mh = str(work / "mh")
    run_stages(
        [
            ([JsonlReader(str(inp)), MinHashSignatures(mh, near=False)], 1),
            ([MinHashBuckets(mh, near=False)], 1),
            ([MinHashClusters(mh, near=False)], 1),
            ([JsonlReader(str(inp)), DedupFilter(mh), RecordWriter(work / "kept")], 1),
        ],
        work / "logs",
    )


def executor_stage(name: str, ours, theirs, inp: Path, tmp: Path, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each whole dedup (fresh folders every run: datatrove skips completed tasks) and the last
    run's outputs."""
    out, runs = {}, {"n": 0}

    def go(side, fn):
        runs["n"] += 1
        out[side] = fn(inp, tmp / f"{name.split()[0]}-{side}-{runs['n']}")

    fns = {"ours": lambda: go("ours", ours), "datatrove": lambda: go("datatrove", theirs)}
    return {"stage": name, "seconds": interleaved(fns, repeats)}, out


def quality(keys: dict[str, str], removed: set[str], origin: dict, tier_of: dict, text: dict) -> dict:
    """Recall per tier and precision over all removals (module docstring), from {doc id: cluster key}."""
    family = lambda d: origin.get(d, d)  # noqa: E731
    clusters: dict[str, list[str]] = {}
    for d, k in keys.items():
        clusters.setdefault(k, []).append(d)
    sh: dict[str, set] = {}
    sim = lambda a, b: jaccard(sh.setdefault(a, shingles(text[a])), sh.setdefault(b, shingles(text[b])))  # noqa: E731
    good = sum(any(family(o) == family(d) or sim(d, o) >= 0.5 for o in clusters[keys[d]] if o != d) for d in removed)
    recall = {}
    for tier in TIERS:
        copies = [c for c, t in tier_of.items() if t == tier]
        recall[tier] = sum(c in removed and keys[c] == keys[origin[c]] for c in copies) / max(len(copies), 1)
    return {"recall": recall, "precision": good / max(len(removed), 1), "removed": len(removed)}


def theory(origin: dict, tier_of: dict, text: dict) -> dict:
    from opengemma.data.dedup import candidate_probability

    out = {}
    for tier in TIERS:
        js = [jaccard(shingles(text[c]), shingles(text[origin[c]])) for c, t in tier_of.items() if t == tier]
        out[tier] = {
            "mean_jaccard": float(np.mean(js)) if js else 0.0,
            "expected_recall": float(np.mean([candidate_probability(j, 14, 8) for j in js])) if js else 0.0,
        }
    return out


SETTINGS = [(5, 14, 8), (5, 20, 5), (5, 28, 4), (3, 14, 8), (3, 20, 5)]  # (n-gram, bands, rows); FineWeb's first


def other_settings(origin: dict, tier_of: dict, text: dict) -> list[dict]:
    """What other MinHash settings would catch, in theory, at the planted pairs' true Jaccard for their n-gram:
    expected recall per tier, the threshold (1/b)^(1/r), and the chance that a pair at J = 0.3 or 0.5 (related
    but not duplicated texts) becomes a candidate, the price of a lower threshold."""
    from opengemma.data.dedup import candidate_probability as p

    js = {}
    for n in sorted({n for n, _, _ in SETTINGS}):
        js[n] = {t: [jaccard(shingles(text[c], n), shingles(text[origin[c]], n)) for c in tier_of if tier_of[c] == t]
                 for t in TIERS}  # fmt: skip
    return [
        {
            "ngram": n,
            "bands": b,
            "rows": r,
            "threshold": (1 / b) ** (1 / r),
            "expected_recall": {t: float(np.mean([p(j, b, r) for j in js[n][t]] or [0])) for t in TIERS},
            "p_candidate_at_0.3": p(0.3, b, r),
            "p_candidate_at_0.5": p(0.5, b, r),
        }
        for n, b, r in SETTINGS
    ]


def minhash_inprocess(docs: list[dict], ngram: int, bands: int, rows: int) -> tuple[dict[str, str], set[str]]:
    """Our dedup functions called directly (as `opengemma data prepare` runs them) with another setting."""
    from opengemma.data import dedup

    cfg = dedup.MinHashConfig(ngram, bands, rows)
    keys = dedup.band_keys([d["text"] for d in docs], cfg)
    roots = dedup.cluster_roots((dedup.bucket_pairs([keys], b) for b in range(bands)), len(docs))
    ids = [d["id"] for d in docs]
    return {ids[i]: ids[r] for i, r in enumerate(roots)}, {ids[i] for i, r in enumerate(roots) if r != i}


def folio_note(corpus: Path) -> dict:
    """How alike the First Folio acts are to the modern ones (same play, same act number, both split in 5)."""
    from opengemma.data.dedup import candidate_probability
    from opengemma.data.readers import read_inputs

    docs = [d for d in read_inputs([corpus]) if d.meta.get("source", "").startswith("shakespeare")]
    acts: dict[tuple, dict] = {}
    for d in docs:
        acts.setdefault((d.meta["work"].lower(), d.meta["source"]), []).append(d.text)
    js = []
    for (work, source), texts in acts.items():
        folio = acts.get((work, "shakespeare_folio"))
        if source == "shakespeare" and folio and len(folio) == len(texts) == 5:
            js += [jaccard(shingles(a), shingles(b)) for a, b in zip(texts, folio)]
    return {
        "aligned_act_pairs": len(js),
        "jaccard_median": float(np.median(js)) if js else None,
        "jaccard_max": float(max(js)) if js else None,
        "max_candidate_probability": float(candidate_probability(max(js), 14, 8)) if js else None,
    }


# ---- the report ----------------------------------------------------------------------------------------------


def table(rows: list[dict], mb: float, ndocs: int) -> str:
    head = f"{'stage':<30} {'ours docs/s':>11} {'dt docs/s':>10} {'ours MB/s':>9} {'dt MB/s':>8} {'ours/dt':>8}"
    lines = [head + f" {'ours/dt(regex)':>14} {'agree':>6}"]
    for r in rows:
        s = r["seconds"]
        rx = f"{s['datatrove (regex words)'] / s['ours']:.2f}x" if "datatrove (regex words)" in s else ""
        agree = f"{r['agree']:.2f}" if "agree" in r else ""
        lines.append(
            f"{r['stage']:<30} {r['docs'] / s['ours']:>11.0f} {r['docs'] / s['datatrove']:>10.0f} "
            f"{r['mb'] / s['ours']:>9.2f} {r['mb'] / s['datatrove']:>8.2f} {s['datatrove'] / s['ours']:>7.2f}x"
            f" {rx:>14} {agree:>6}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default=str(ROOT / "corpus"))
    p.add_argument("--docs", type=int, default=1000, help="documents sampled from the corpus")
    p.add_argument("--planted", type=int, default=100, help="planted near-duplicates per tier")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_pipeline.json"))
    args = p.parse_args(argv)
    try:
        import spacy  # noqa: F401
    except ImportError:
        p.error("datatrove's English word tokenizer is spaCy's: pip install spacy (no model download is needed)")

    corpus = Path(args.corpus)
    docs = load_sample(corpus, args.docs)
    texts = [d["text"] for d in docs]
    mb, ndocs = sum(len(t.encode()) for t in texts) / 1e6, len(texts)
    copies, origin, tier_of = plant(docs, args.planted)
    dedup_docs = docs + copies
    text = {d["id"]: d["text"] for d in dedup_docs}
    dmb = sum(len(t.encode()) for t in text.values()) / 1e6
    print(f"{ndocs} documents ({mb:.2f} MB) from {corpus}; dedup runs on them + {len(copies)} planted copies")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datatrove_offline(tmp)
        rows = [{**r, "docs": ndocs, "mb": mb} for r in filter_stages(texts, args.repeats)]
        rows.append({**signature_stage(texts, args.repeats), "docs": ndocs, "mb": mb})
        write_input(tmp / "input", dedup_docs)
        row, keys = executor_stage(
            "MinHash dedup (4 stages)", minhash_ours, minhash_datatrove, tmp / "input", tmp, args.repeats
        )
        rows.append({**row, "docs": len(dedup_docs), "mb": dmb})
        row, _ = executor_stage(
            "exact dedup (3-4 stages)", exact_ours, exact_datatrove, tmp / "input", tmp, args.repeats
        )
        rows.append({**row, "docs": len(dedup_docs), "mb": dmb})
        rows.append({**pii_stage(texts, args.repeats), "docs": ndocs, "mb": mb})

    print(table(rows, mb, ndocs))
    dq = {side: quality(*kr, origin, tier_of, text) for side, kr in keys.items()}
    th = theory(origin, tier_of, text)
    print(f"\nnear-duplicate recall of planted copies ({args.planted} per tier) and precision over all removals:")
    print(f"{'':<18} {'ours':>6} {'datatrove':>9} {'theory':>7} {'mean J':>7}")
    for tier in TIERS:
        r = {s: dq[s]["recall"][tier] for s in dq}
        print(f"{tier:<18} {r['ours']:>6.3f} {r['datatrove']:>9.3f} {th[tier]['expected_recall']:>7.3f} "
              f"{th[tier]['mean_jaccard']:>7.3f}")  # fmt: skip
    print(f"{'precision':<18} {dq['ours']['precision']:>6.3f} {dq['datatrove']['precision']:>9.3f}")
    print(f"{'removed':<18} {dq['ours']['removed']:>6} {dq['datatrove']['removed']:>9}")
    settings = other_settings(origin, tier_of, text)
    print("\nin theory, at the planted pairs' true Jaccard (expected recall per tier; candidate odds of J=0.3, 0.5):")
    for x in settings:
        rec = " ".join(f"{v:.2f}" for v in x["expected_recall"].values())
        print(f"  {x['ngram']}-gram {x['bands']:>2}x{x['rows']:<2} threshold {x['threshold']:.2f}: recall {rec};"
              f" P(J=0.3) {x['p_candidate_at_0.3']:.3f} P(J=0.5) {x['p_candidate_at_0.5']:.3f}")  # fmt: skip
    measured = {f"{n}-gram {b}x{r}": quality(*minhash_inprocess(dedup_docs, n, b, r), origin, tier_of, text)
                for n, b, r in SETTINGS}  # fmt: skip
    print("measured, ours in process (recall per tier, precision, removed):")
    for name, q in measured.items():
        rec = " ".join(f"{v:.2f}" for v in q["recall"].values())
        print(f"  {name:<14} recall {rec}; precision {q['precision']:.3f}; removed {q['removed']}")
    folio = folio_note(corpus)
    print(f"\nFirst Folio vs modern acts: {folio}")
    result = {
        "host": {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count()},
        "peers": {m: version(m) for m in ("datatrove", "spacy", "xxhash")},
        "corpus": str(corpus),
        "docs": ndocs,
        "mb": mb,
        "repeats": args.repeats,
        "stages": rows,
        "dedup_quality": dq,
        "theory": th,
        "other_settings": settings,
        "other_settings_measured": measured,
        "folio": folio,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # LocalPipelineExecutor's forkserver needs this guard
    sys.exit(main())
