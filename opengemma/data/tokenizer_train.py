"""Train a SentencePiece tokenizer with Gemma's choices, for models trained from scratch at small scale.

The trainer and normalizer settings are those of Google's Gemma 3 ``tokenizer.model`` (read from its
``ModelProto``): BPE; byte fallback (an unseen character becomes its UTF-8 bytes, so nothing is ever <unk>);
digits split one by one; splits at script and number boundaries but not at whitespace, and pieces made of
whitespace only allowed (code indentation stays cheap); the identity normalizer with no dummy prefix and no
whitespace squeezing (the text is kept exactly). The first 494 ids have Gemma 3's pieces and types exactly:

    0 <pad>  1 <eos>  2 <bos>  3 <unk>          (control, control, control, unknown)
    4 <mask>  5 [multimodal]  6..104 <unused0>..<unused98>  105 <start_of_turn>  106 <end_of_turn>
    107..137 "\\n" x 1..31   138..167 "\u2581" x 2..31 (space runs)   168..237 HTML tags   (all user-defined)
    238..493 the byte pieces <0x00>..<0xFF>

then the learned merges. User-defined pieces are matched wherever they occur in text (as in Gemma), so the
chat format's ``<start_of_turn>`` is one id. Every string round-trips, ``decode(encode(s)) == s``, except
U+2581 itself, which SentencePiece uses to escape spaces and so decodes as " " (Gemma's own model does the same).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tqdm import tqdm

from ..atomic import atomic_path
from ..tokenizer import Tokenizer

__all__ = ["train_tokenizer", "GEMMA_USER_DEFINED", "GEMMA_RESERVED", "sentences", "reservoir_sample"]

# Gemma 3's HTML pieces (ids 168..237), in its order: each group's opening tags, then its closing tags.
_HTML_GROUPS = (
    ("table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td"),
    ("h1", "h2", "h3", "h4", "h5", "h6", "blockquote"),
    ("strong", "em", "b", "i", "u", "s", "sub", "sup", "code"),
    ("a", "html", "body", "img", "span", "bbox", "ul", "li", "div", "iframe", "footer"),
)
# ids 4..237: SentencePiece places user-defined symbols right after the four reserved ids, in the order given.
GEMMA_USER_DEFINED: tuple[str, ...] = (
    "<mask>",
    "[multimodal]",
    *(f"<unused{i}>" for i in range(99)),
    "<start_of_turn>",
    "<end_of_turn>",
    *("\n" * k for k in range(1, 32)),
    *("\u2581" * k for k in range(2, 32)),  # spaces as SentencePiece sees them (escaped before matching)
    *(f"<{t}>" for group in _HTML_GROUPS for t in (*group, *(f"/{t}" for t in group))),
)
GEMMA_RESERVED = 4 + len(GEMMA_USER_DEFINED) + 256  # ids before the first merge: 494, as in Gemma 3

# SentencePiece skips (does not cut) training sentences longer than this many bytes; its default.
MAX_SENTENCE_BYTES = 4192


def sentences(texts: Iterable[str], max_bytes: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Documents -> training sentences: their non-empty lines, cut into pieces of at most ``max_bytes`` UTF-8
    bytes. Newlines themselves need no training: every run of up to 31 is a user-defined piece."""
    step = max_bytes // 4  # a character is at most 4 UTF-8 bytes
    for text in texts:
        for line in text.split("\n"):
            if not line:
                continue
            if len(line.encode("utf-8")) <= max_bytes:
                yield line
            else:
                yield from (line[j : j + step] for j in range(0, len(line), step))


def reservoir_sample(items: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of ``k`` items from a stream of unknown length (all of them if there are fewer), in one
    pass and O(k) memory: Algorithm L (Li, ACM TOMS 20(4), 1994), which draws only O(k log(N/k)) random numbers.

    Why not SentencePiece's own (input_sentence_size + shuffle_input_sentence): its generator is seeded once per
    thread, at first use, so a second training in the same process ignores ``set_random_generator_seed``."""
    rng = random.Random(seed)
    it = iter(items)
    sample = list(itertools.islice(it, k))
    if len(sample) < k or k == 0:
        return sample
    w = math.exp(math.log(1.0 - rng.random()) / k)  # 1 - random() is in (0, 1]: log is defined
    while True:
        skip = math.floor(math.log(1.0 - rng.random()) / math.log1p(-w)) if w < 1.0 else 0
        nxt = next(itertools.islice(it, skip, None), None)
        if nxt is None:
            return sample
        sample[rng.randrange(k)] = nxt
        w *= math.exp(math.log(1.0 - rng.random()) / k)


def _settings(vocab_size: int, threads: int) -> dict:
    """The trainer's arguments: Gemma 3's trainer and normalizer spec (ids, pieces, splitting, normalization)."""
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_number=True,
        split_by_whitespace=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=list(GEMMA_USER_DEFINED),  # the wrapper CSV-quotes them, "\n" included
        max_sentence_length=MAX_SENTENCE_BYTES,
        input_sentence_size=0,  # we hand it the sample (reservoir_sample): its own one ignores a changed seed
        num_threads=threads,
    )


def train_tokenizer(
    texts: Iterable[str],
    out: str | os.PathLike,
    *,
    vocab_size: int = 8192,
    max_sentences: int = 2_000_000,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> Tokenizer:
    """Train on ``texts`` (documents, streamed: only a uniform sample of ``max_sentences`` of their lines is kept),
    write the model to ``out`` atomically and return it loaded. The same texts and seed give the same model bytes,
    whatever ``threads``."""
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    if vocab_size <= GEMMA_RESERVED:
        raise ValueError(f"vocab_size {vocab_size} leaves no merges: Gemma's layout reserves {GEMMA_RESERVED} ids")
    docs = tqdm(texts, desc="tokenizer: reading", unit=" docs", disable=not progress)
    settings = _settings(vocab_size, threads or os.cpu_count() or 1)
    try:
        sample = reservoir_sample(sentences(docs), max_sentences, seed)
    finally:
        docs.close()
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample), model_writer=buf, minloglevel=1 if progress else 2, **settings
        )
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars", "Vocabulary size too high"
        raise ValueError(f"tokenizer training failed: {str(e).strip()}") from None
    # The trainer records num_threads in the model; clear it so the bytes depend on the corpus and seed only, not
    # on the machine (the merges themselves do not depend on the thread count).
    proto = sp_pb2.ModelProto.FromString(buf.getvalue())
    proto.trainer_spec.ClearField("num_threads")
    data = proto.SerializeToString()
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Tokenizer(out)
