"""opengemma/data/mixture.py: the mixture file validates with errors naming the key; stages switch at the step
their fraction says; realized proportions match the weights within sampling error; a resumed sampler (state through
JSON) continues exactly; each source's windows concatenate to whole epochs of its documents, each epoch a fresh
permutation, with doc_starts where documents begin. Sources are hand-made token lists whose tokens name their
document, so the stream can be parsed back without knowing the permutation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from opengemma.data.mixture import (
    Mixture,
    MixtureError,
    MixtureSampler,
    Stage,
    load_mixture,
    parse_mixture,
    schedule_report,
)

START = 1_000_000  # a document's first token is START + its index; the rest are its index * 1000 + position


class ListShards:
    """TokenShards' reading interface over lists: what the sampler uses (lengths, doc)."""

    def __init__(self, lengths: list[int]):
        self.docs = [
            np.array([START + i, *(i * 1000 + np.arange(1, n))], dtype=np.uint32) for i, n in enumerate(lengths)
        ]

    def lengths(self) -> np.ndarray:
        return np.array([len(d) for d in self.docs], dtype=np.int64)

    def doc(self, i: int) -> np.ndarray:
        return self.docs[i]


def mixture(stages, total_tokens, seed=0, sources=("a", "b", "c")) -> Mixture:
    return Mixture({s: Path(f"/nonexistent/{s}") for s in sources}, stages, total_tokens, seed)


def shards(seed: int = 0) -> dict[str, ListShards]:
    rng = np.random.default_rng(seed)
    return {s: ListShards(rng.integers(2, 40, size=n).tolist()) for s, n in (("a", 7), ("b", 30), ("c", 3))}


TOML = """
seed = 3
total_tokens = 10_000_000
[sources]
shakespeare = "prepared/shards/shakespeare"
gcide = "/abs/gcide"
[[stages]]
name = "main"
fraction = 0.8
weights = { shakespeare = 3, gcide = 7 }
[[stages]]
name = "anneal"
fraction = 0.2
weights = { shakespeare = 0.8, gcide = 0.2 }
"""


def test_load_mixture_resolves_and_normalizes(tmp_path):
    (tmp_path / "mix.toml").write_text(TOML)
    m = load_mixture(tmp_path / "mix.toml")
    assert m.sources == {"shakespeare": tmp_path / "prepared/shards/shakespeare", "gcide": Path("/abs/gcide")}
    assert (m.seed, m.total_tokens, [s.name for s in m.stages]) == (3, 10_000_000, ["main", "anneal"])
    assert m.stages[0].weights == pytest.approx({"shakespeare": 0.3, "gcide": 0.7}) and m.stages[1].fraction == 0.8 / 4
    assert m.stage_ends().tolist() == [8_000_000, 10_000_000]


def _base() -> dict:
    return {
        "total_tokens": 100,
        "sources": {"a": "x", "b": "y"},
        "stages": [
            {"name": "s0", "fraction": 0.5, "weights": {"a": 1}},
            {"name": "s1", "fraction": 0.5, "weights": {"b": 1}},
        ],
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["stages"][1]["weights"].update(wiki=1), r"^stages\[1\]\.weights\.wiki: unknown source"),
        (lambda d: d["stages"][0].update(fraction=0.4), r"^stages: the fractions sum to 0\.9, they must sum to 1"),
        (lambda d: d["stages"][0]["weights"].update(b=-0.5), r"^stages\[0\]\.weights\.b: must be >= 0"),
        (lambda d: d["stages"][0].update(weights={"a": 0}), r"^stages\[0\]\.weights: need at least one positive"),
        (lambda d: d.update(totl_tokens=5), r"^totl_tokens: unknown key"),
        (lambda d: d["stages"][0].update(fracton=1), r"^stages\[0\]\.fracton: unknown key"),
        (lambda d: d.pop("total_tokens"), r"^total_tokens: missing"),
        (lambda d: d.update(total_tokens=1.5), r"^total_tokens: must be an integer"),
        (lambda d: d["stages"][1].update(name="s0"), r"^stages\[1\]\.name: must be a unique"),
        (lambda d: d["sources"].update(c=3), r"^sources\.c: must be a path"),
    ],
)
def test_errors_name_the_key(edit, message):
    d = _base()
    parse_mixture(d, Path("."))  # the base itself is valid
    edit(d)
    with pytest.raises(MixtureError, match=message):
        parse_mixture(d, Path("."))


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TOML.replace("gcide = 7", "gcide = 7, wiki = 1"))
    with pytest.raises(MixtureError, match=r"bad\.toml: stages\[0\]\.weights\.wiki: unknown source"):
        load_mixture(path)
    path.write_text("seed = [")
    with pytest.raises(MixtureError, match=r"bad\.toml: not valid TOML"):
        load_mixture(path)


def test_stages_switch_at_the_right_step():
    """total 1,000 tokens, seq_len 300, halves: step k starts at token 300k, so 0 and 1 (0, 300) are in the first
    half, 2 and 3 (600, 900) in the second; ceil(1000 / 300) = 4 steps."""
    m = mixture([Stage("one", 0.5, {"a": 1}), Stage("two", 0.5, {"b": 2})], 1000)
    got = [(s.step, s.stage, s.source) for s in MixtureSampler(m, 300, shards=shards())]
    assert got == [(0, "one", "a"), (1, "one", "a"), (2, "two", "b"), (3, "two", "b")]
    m = mixture([Stage("main", 0.8, {"a": 1}), Stage("anneal", 0.2, {"c": 1})], 10_000)
    stages = [s.stage for s in MixtureSampler(m, 100, shards=shards())]
    assert stages == ["main"] * 80 + ["anneal"] * 20
    assert schedule_report(m, 100)["stages"]["anneal"]["first_step"] == 80


def test_realized_proportions_match_weights():
    weights = [{"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 0.1, "b": 0.0, "c": 0.9}]
    m = mixture([Stage("main", 0.75, weights[0]), Stage("anneal", 0.25, weights[1])], 4000 * 16, seed=7)
    sampler = MixtureSampler(m, 16, shards=shards())
    samples = list(sampler)
    assert len(samples) == 4000 and {len(s.tokens) for s in samples} == {17}
    real = sampler.realized()
    for (name, n), w in zip((("main", 3000), ("anneal", 1000)), weights):
        stage = real["stages"][name]
        assert stage["steps"] == n and sum(stage["tokens"].values()) == n * 17
        for src, p in w.items():
            assert abs(stage["proportion"][src] - p) <= 4 * math.sqrt(p * (1 - p) / n), (name, src, stage)
            assert stage["weight"][src] == pytest.approx(p)
    assert real["stages"]["anneal"]["tokens"]["b"] == 0  # a zero weight is never drawn
    # consecutive draws are independent: repeats of the previous source at the rate sum(w^2)
    main = [s.source for s in samples[:3000]]
    repeats, p = sum(x == y for x, y in zip(main, main[1:])), sum(v * v for v in weights[0].values())
    assert abs(repeats / 2999 - p) <= 4 * math.sqrt(p * (1 - p) / 2999)
    # the report computes the same counts from the draws alone, vectorized in chunks
    report = schedule_report(m, 16, chunk=333)
    assert {k: v["tokens"] for k, v in report["stages"].items()} == {k: v["tokens"] for k, v in real["stages"].items()}
    # and another seed draws another sequence
    other = MixtureSampler(mixture(m.stages, m.total_tokens, seed=8), 16, shards=shards())
    assert [s.source for s in other] != [s.source for s in samples]


def _parse(stream: np.ndarray) -> list[int]:
    """The indices of the documents starting in a stream, in order (a document's first token names it)."""
    starts = np.flatnonzero(stream >= START)
    return (stream[starts] - START).tolist()


def test_windows_concatenate_to_epochs_of_permuted_documents():
    m = mixture([Stage("s", 1.0, {"a": 1, "b": 1})], 6000, seed=1)
    src = shards()
    sampler = MixtureSampler(m, 10, shards=src)
    windows: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for s in sampler:
        windows[s.source].append(s.tokens)
        assert s.tokens.dtype == np.uint32
        assert s.doc_starts.tolist() == np.flatnonzero(s.tokens >= START).tolist()  # where documents begin
    for name, ws in windows.items():
        docs, stream = src[name].docs, np.concatenate(ws)
        epoch_tokens = sum(map(len, docs))
        n_epochs = len(stream) // epoch_tokens
        assert n_epochs >= 3, (name, n_epochs)
        orders = []
        for e in range(n_epochs):
            chunk = stream[e * epoch_tokens : (e + 1) * epoch_tokens]
            order = _parse(chunk)
            assert sorted(order) == list(range(len(docs)))  # every document once per epoch...
            assert np.array_equal(chunk, np.concatenate([docs[i] for i in order]))  # ...whole, in that order
            orders.append(order)
        assert len({tuple(o) for o in orders}) == n_epochs  # a new permutation each epoch
        # the cursor is where the stream stopped: epochs consumed = tokens drawn / tokens per epoch
        assert sampler.realized()["epochs"][name] == pytest.approx(len(stream) / epoch_tokens)


def test_resume_gives_the_uninterrupted_samples():
    m = mixture([Stage("main", 0.6, {"a": 1, "b": 2, "c": 1}), Stage("anneal", 0.4, {"c": 1, "a": 3})], 2400, seed=5)
    uninterrupted = MixtureSampler(m, 8, shards=shards())
    full = [(s.step, s.stage, s.source, s.tokens.tolist(), s.doc_starts.tolist()) for s in uninterrupted]
    assert len(full) == 300
    for k in (0, 1, 137, 299, 300):
        first = MixtureSampler(m, 8, shards=shards())
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))
        assert len(json.dumps(state)) < 500
        resumed = MixtureSampler(m, 8, shards=shards())
        resumed.load_state_dict(state)
        rest = [(s.step, s.stage, s.source, s.tokens.tolist(), s.doc_starts.tolist()) for s in resumed]
        assert rest == full[k:], k
        assert resumed.realized() == uninterrupted.realized()  # the counts travel in the state too
    # a cursor spelled at its epoch's end reads on from the next epoch's start
    at_end = MixtureSampler(m, 8, shards=shards())
    at_end.load_state_dict({**state, "step": 0, "cursors": {"a": [1, 0], "b": [0, 0], "c": [0, 0]}})
    ends = json.loads(json.dumps(state))
    ends.update(step=0, cursors={"a": [0, int(shards()["a"].lengths().sum())], "b": [0, 0], "c": [0, 0]})
    spelled = MixtureSampler(m, 8, shards=shards())
    spelled.load_state_dict(ends)
    assert [s.tokens.tolist() for s in at_end] == [s.tokens.tolist() for s in spelled]
    with pytest.raises(ValueError, match="seq_len"):
        MixtureSampler(m, 9, shards=shards()).load_state_dict(state)


def test_with_real_token_shards(tmp_path):
    """End to end: tokenize_parts' shards, a TOML with relative paths, the sampler opening them itself."""
    from opengemma.data.shards import tokenize_parts
    from opengemma.data.tokenizer_train import train_tokenizer

    texts = {
        "poems": [f"Shall I compare thee {i} to a summer's day?" for i in range(40)],
        "dict": ["word: a unit"] * 25,
    }
    tok = train_tokenizer(
        [t for ts in texts.values() for t in ts], tmp_path / "t.model", vocab_size=540, progress=False
    )
    parts = []
    for name, ts in texts.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(ts))
        parts.append((name, "part0", tmp_path / f"{name}.txt"))
    read = lambda path: path.read_text().split("\n")  # noqa: E731 (in-process: workers=1)
    manifest = tokenize_parts(parts, tmp_path / "prepared" / "shards", tok, read, progress=False)
    (tmp_path / "mix.toml").write_text(
        'total_tokens = 2000\n[sources]\npoems = "prepared/shards/poems"\ndict = "prepared/shards/dict"\n'
        '[[stages]]\nname = "all"\nfraction = 1.0\nweights = { poems = 1, dict = 1 }\n'
    )
    m = load_mixture(tmp_path / "mix.toml")
    samples = list(MixtureSampler(m, 32))
    assert len(samples) == 63 and all(len(s.tokens) == 33 for s in samples)
    assert all((s.tokens[s.doc_starts] == tok.bos_id).all() for s in samples)
    stream = np.concatenate([s.tokens for s in samples if s.source == "dict"])
    one = [tok.bos_id, *tok.encode("word: a unit", bos=False), tok.eos_id]  # every dict document is this one
    assert stream.tolist() == (one * (len(stream) // len(one) + 1))[: len(stream)]
    report = schedule_report(m, 32)
    drawn = sum(s.source == "poems" for s in samples) * 33
    assert report["sources"]["poems"] == {"tokens": drawn, "epochs": drawn / manifest["sources"]["poems"]["n_tokens"]}
