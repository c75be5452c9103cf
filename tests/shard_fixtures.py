"""Tiny token shards for the training tests: two sources of short documents, the tiny SentencePiece tokenizer."""

import json
import random
from pathlib import Path

from helpers import tiny_sentencepiece

from opengemma.data.shards import tokenize_parts
from opengemma.tokenizer import Tokenizer

WORDS = "the model answers a question about cats dogs and rivers it writes python code hello world".split()


def read_jsonl(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def make_shards(root: Path, docs_per_source: int = 40, seed: int = 0) -> Path:
    """root/tokenizer.model and root/shards/{prose,code}/ (what `opengemma data prepare` lays out); returns
    root/shards."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.model").write_bytes(tiny_sentencepiece())
    rng = random.Random(seed)
    parts = []
    for source, extra in (("prose", "."), ("code", " def f(x): return x + 1")):
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40))) + extra for _ in range(docs_per_source)]
        path = root / f"{source}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        parts.append((source, "p0", path))
    tokenize_parts(parts, root / "shards", Tokenizer(root / "tokenizer.model"), read_jsonl, progress=False)
    return root / "shards"
