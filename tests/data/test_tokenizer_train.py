"""opengemma/data/tokenizer_train.py: a tokenizer trained with Gemma's choices has Gemma 3's special ids, piece
types and trainer/normalizer spec, round-trips every string, renders chat with its turn tokens, and is a pure
function of its corpus and seed. One ~0.2 s training on a ~400 KB hand-made corpus serves most tests."""

from __future__ import annotations

import random

import pytest
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from opengemma.data.tokenizer_train import GEMMA_RESERVED, reservoir_sample, sentences, train_tokenizer
from opengemma.tokenizer import Tokenizer

_T = sp_pb2.ModelProto.SentencePiece
WORDS = (
    "the of and to in is that it was for on are with as his they be at one have this from or had by word but what "
    "some we can out other were all there when up use your how said an each she which do their time if will way "
    "about many then them write would like so these her long make thing see him two has look more day could go"
).split()


def corpus(n_docs: int = 600, seed: int = 0) -> list[str]:
    """Prose paragraphs with numbers, indented code, and a little Cyrillic, Greek and CJK: ~400 KB."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        paras = []
        for _ in range(rng.randint(1, 4)):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
            paras.append(f"{words.capitalize()}. In {rng.randint(1500, 2024)} there were {rng.randint(0, 10**6)}.")
        docs.append("\n\n".join(paras))
    code = "def f{i}(x):\n    if x > {i}:\n\treturn x * 2\n    return -x  # {i}\n"
    docs += [code.format(i=i) for i in range(200)]
    docs += ["Привет мир, это тест. Γειά σου κόσμε. 你好，世界。日本語のテキスト。"] * 50
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(
        iter(corpus()), tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=800, progress=False
    )


def test_special_ids_at_gemma_places(trained):
    """Hand-written from Gemma 3's tokenizer.model: the ids the chat format and the model configs assume."""
    proto = trained.model_proto()
    expected = {
        0: ("<pad>", _T.CONTROL),
        1: ("<eos>", _T.CONTROL),
        2: ("<bos>", _T.CONTROL),
        3: ("<unk>", _T.UNKNOWN),
        4: ("<mask>", _T.USER_DEFINED),
        5: ("[multimodal]", _T.USER_DEFINED),
        6: ("<unused0>", _T.USER_DEFINED),
        104: ("<unused98>", _T.USER_DEFINED),
        105: ("<start_of_turn>", _T.USER_DEFINED),
        106: ("<end_of_turn>", _T.USER_DEFINED),
        107: ("\n", _T.USER_DEFINED),
        137: ("\n" * 31, _T.USER_DEFINED),
        138: ("\u2581\u2581", _T.USER_DEFINED),
        167: ("\u2581" * 31, _T.USER_DEFINED),
        168: ("<table>", _T.USER_DEFINED),
        237: ("</footer>", _T.USER_DEFINED),
        238: ("<0x00>", _T.BYTE),
        493: ("<0xFF>", _T.BYTE),
    }
    assert {i: (proto.pieces[i].piece, proto.pieces[i].type) for i in expected} == expected
    assert GEMMA_RESERVED == 494 and all(p.type == _T.NORMAL for p in proto.pieces[494:])
    assert (trained.pad_id, trained.eos_id, trained.bos_id, trained.unk_id) == (0, 1, 2, 3)
    assert (trained.start_of_turn_id, trained.end_of_turn_id, trained.vocab_size) == (105, 106, 800)


# The fields that decide how text is split and normalized (vocab_size and input_format, "tsv" in Google's file,
# describe their corpus, not the tokenizer).
TRAINER_FIELDS = (
    "model_type split_by_unicode_script split_by_whitespace split_by_number split_digits allow_whitespace_only_pieces "
    "byte_fallback unk_id bos_id eos_id pad_id unk_piece bos_piece eos_piece pad_piece max_sentencepiece_length "
    "treat_whitespace_as_suffix character_coverage"
).split()
NORMALIZER_FIELDS = "name precompiled_charsmap add_dummy_prefix remove_extra_whitespaces escape_whitespaces".split()


@pytest.mark.real_model
def test_matches_real_gemma_spec(trained, gemma):
    ours, real = trained.model_proto(), gemma.model_proto()
    assert [(p.piece, p.type) for p in ours.pieces[:GEMMA_RESERVED]] == [
        (p.piece, p.type) for p in real.pieces[:GEMMA_RESERVED]
    ]
    for f in TRAINER_FIELDS:
        assert getattr(ours.trainer_spec, f) == getattr(real.trainer_spec, f), f
    for f in NORMALIZER_FIELDS:
        assert getattr(ours.normalizer_spec, f) == getattr(real.normalizer_spec, f), f
    # U+2581 is SentencePiece's escaped space: the one string neither model round-trips, the same way.
    assert trained.decode(trained.encode("a\u2581b", bos=False)) == gemma.decode(gemma.encode("a\u2581b", bos=False))


HARD = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "a\tb\t\tc",
    "\n",
    "\n\n\n" * 20 + "x",  # 60 newlines: longer than the longest newline piece
    " " * 100,
    "line one\r\nline two\r\n",
    "    def f(x):\n        return x\n",
    "😀👍🏽 🇫🇷 👨‍👩‍👧",
    "日本語のテキスト 中文 한국어",
    "ᚠᛇᚻ᛫ᛒᛦᚦ ꦲꦏ𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⠁⠃",  # runic, Javanese, maths: unseen scripts -> bytes
    "\x00\x01\x02\x7f\x1b[31m",  # control characters
    "\u200b\u200d\ufeff\u00a0\u3000",  # zero-width and odd spaces
    "e\u0301 é ﬁ Ⅳ ｆｕｌｌ",  # combining accent, ligature, NFKC bait: identity keeps them
    "<start_of_turn>user\nhi<end_of_turn>\n<bos><eos><pad><unk>",
    "1234567890 3.14159 -0x1F",
    "\U0010ffff\U000e0001",
]


def random_strings(n: int, seed: int = 0) -> list[str]:
    """Random code points from every plane (not surrogates, which UTF-8 cannot hold, nor U+2581)."""
    rng = random.Random(seed)
    ranges = [(0x00, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            c = rng.randint(lo, hi)
            chars.append(chr(c) if c != 0x2581 else " ")
        out.append("".join(chars))
    return out


@pytest.mark.parametrize("text", HARD, ids=range(len(HARD)))
def test_round_trip_hard_strings(trained, text):
    assert trained.decode(trained.encode(text, bos=False)) == text


def test_round_trip_random_unicode(trained):
    texts = random_strings(300)
    ids = trained.encode_batch(texts, bos=False)
    assert [trained.decode(i) for i in ids] == texts
    # and byte fallback did the work: unseen characters are byte pieces, never <unk>
    assert trained.unk_id not in {i for row in ids for i in row}
    assert any(trained.is_byte(i) for row in ids for i in row)


def test_chat_finds_turn_tokens(trained):
    messages = [
        {"role": "user", "content": "Hello there"},
        {"role": "model", "content": "Hi!"},
        {"role": "user", "content": "Bye"},
    ]
    ids, mask = trained.encode_chat(messages)
    assert ids == trained.encode(trained.render_chat(messages), bos=False, allow_special=True)
    assert ids[:2] == [2, 105] and ids.count(105) == 4 and ids.count(106) == 3
    assert trained.decode(ids) == trained.render_chat(messages).removeprefix("<bos>")  # control <bos> vanishes
    assert len(mask) == len(ids) and sum(mask) > 0


def test_deterministic_and_seeded(tmp_path):
    # 300 sentences sampled out of ~1,600: the seed picks the sample, so it must change the model
    docs = corpus(300)
    a = train_tokenizer(
        docs, tmp_path / "a.model", vocab_size=700, max_sentences=300, seed=0, threads=2, progress=False
    )
    b = train_tokenizer(
        docs, tmp_path / "b.model", vocab_size=700, max_sentences=300, seed=0, threads=1, progress=False
    )
    c = train_tokenizer(
        docs, tmp_path / "c.model", vocab_size=700, max_sentences=300, seed=1, threads=2, progress=False
    )
    assert a.model_proto_bytes == b.model_proto_bytes == (tmp_path / "a.model").read_bytes()
    assert a.model_proto_bytes != c.model_proto_bytes


def test_failure_leaves_no_file(tmp_path):
    out = tmp_path / "t.model"
    with pytest.raises(ValueError, match="reserves 494"):
        train_tokenizer(["hello"], out, vocab_size=494, progress=False)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        train_tokenizer(["hello world"] * 10, out, vocab_size=5000, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sentences_cut_long_lines_and_keep_text():
    long = "ü" * 5000  # 10,000 bytes
    docs = ["a\n\nb  c\n", long, "\t x"]
    got = list(sentences(docs, max_bytes=4192))
    assert got[:2] == ["a", "b  c"] and got[-1] == "\t x"
    cut = got[2:-1]
    assert "".join(cut) == long and all(len(s.encode()) <= 4192 for s in cut) and len(cut) == 5


def test_reservoir_sample_is_uniform():
    """Each of 20 items lands in a 5-item sample with probability 1/4: over 4,000 seeds, within 4 binomial SEs."""
    items = [f"s{i}" for i in range(20)]
    counts = dict.fromkeys(items, 0)
    for seed in range(4000):
        got = reservoir_sample(iter(items), 5, seed)
        assert len(set(got)) == 5 and set(got) <= set(items)
        for s in got:
            counts[s] += 1
    se = (4000 * 0.25 * 0.75) ** 0.5
    assert all(abs(c - 1000) < 4 * se for c in counts.values()), counts
    assert reservoir_sample(iter(items), 30, 0) == items  # fewer than k: all of them, in order
