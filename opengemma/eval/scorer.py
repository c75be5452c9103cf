"""Evaluation's model interface, on text: (context, continuation) pairs and documents are tokenized here and
scored exactly by the engine (engine/score.py, which works on token ids), prompts are generated through the
engine's batched generation and cut at stop strings.
"""

from __future__ import annotations

import math
from typing import Sequence

from tqdm.auto import tqdm

from ..engine import score
from ..model import Gemma


class Scorer:
    """Exact log-likelihoods and generations of text for a model (an `LLM`, or a `Gemma` plus a tokenizer);
    the token-level scoring is the engine's (`self.ids`, an engine.score.Scorer).

    max_len: the longest sequence scored at once; longer contexts are cut on the left.
    batch_size: rows per forward; token_budget caps rows x longest row (the KV cache's size).
    compile: generation's compiled decode step (None: on for CUDA; on CPU each new shape compiles ~40 s).
    """

    def __init__(
        self,
        llm,
        tokenizer=None,
        *,
        batch_size: int = 16,
        max_len: int = 2048,
        token_budget: int = 32768,
        chunk: int = 256,
        progress: bool = True,
        compile: bool | None = None,
    ):
        if isinstance(llm, Gemma):
            self.model, self.tokenizer = llm, tokenizer
        else:
            self.model, self.tokenizer = llm.model, tokenizer or llm.tokenizer
            compile = llm.compile if compile is None else compile
        self.ids = score.Scorer(
            self.model,
            batch_size=batch_size,
            max_len=max_len,
            token_budget=token_budget,
            chunk=chunk,
            progress=progress,
        )
        self.batch_size, self.progress, self.compile = batch_size, progress, compile  # generation's
        self.max_len = self.ids.max_len
        self.bos = self.model.config.bos_id

    # -- text level ----------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str, cache: dict | None = None) -> tuple[list[int], list[int]]:
        """Token ids of <bos> + context and of the continuation. The pair is encoded as one text and split
        where the context's own encoding ends, so merges across the boundary are the model's usual ones.
        Trailing spaces of the context move to the continuation ("A: " + "Paris" scores "▁Paris", the
        token the model would write, not "▁" then "Paris")."""
        tok = self.tokenizer
        n = len(context) - len(context.rstrip(" "))
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        ctx = cache.get(context) if cache is not None else None
        if ctx is None:
            ctx = tok.encode(context, bos=True)
            if cache is not None:
                cache[context] = ctx
        whole = tok.encode(context + continuation, bos=True)
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            return ctx, whole[len(ctx) :]
        return ctx, tok.encode(continuation, bos=False)

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], desc: str = "scoring"
    ) -> list[tuple[float, bool, int]]:
        """(context, continuation) -> (sum of log p(continuation tokens), whether greedy decoding would produce
        exactly them, number of continuation tokens)."""
        encoded: dict[str, list[int]] = {}  # each distinct context is encoded once (MMLU: four letters each)
        pairs = [self.encode_pair(c, x, encoded) for c, x in requests]
        return self.loglikelihood_tokens(pairs, desc=desc)

    def loglikelihood_rolling(
        self, texts: Sequence[str], stride: int | None = None, desc: str = "perplexity"
    ) -> list[tuple[float, int]]:
        """Log-likelihood of whole texts (after <bos>), in windows of max_len tokens that advance by `stride`
        (default max_len // 2: each token is predicted with at least half a window of context)."""
        seqs = [[self.bos] + self.tokenizer.encode(t, bos=False) for t in texts]
        return self.rolling_tokens(seqs, stride=stride, desc=desc)

    # -- token level: the engine's exact scoring ----------------------------------------------------
    def loglikelihood_tokens(
        self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "scoring"
    ) -> list[tuple[float, bool, int]]:
        return self.ids.loglikelihood_tokens(pairs, desc=desc)

    def rolling_tokens(
        self, seqs: Sequence[list[int]], stride: int | None = None, desc: str = "perplexity"
    ) -> list[tuple[float, int]]:
        return self.ids.rolling_tokens(seqs, stride=stride, desc=desc)

    # -- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        desc: str = "generating",
    ) -> list[str]:
        """Continue each prompt (<bos> prepended); stops at <eos> or any stop string (not included).
        Prompts are batched by length; a seed makes sampling reproducible per prompt and batch."""
        from ..engine.generate import generate
        from ..streaming import TextStream

        tok = self.tokenizer
        ids = []
        for p in prompts:
            x = tok.encode(p, bos=True)
            room = self.model.config.max_seq_len - max_new_tokens
            ids.append(x[:1] + x[1:][-(room - 1) :] if len(x) > room else x)  # keep the prompt's end
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        texts: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc=desc, disable=not self.progress, unit="prompt", dynamic_ncols=True)
        for k in range(0, len(order), self.batch_size):
            idx = order[k : k + self.batch_size]
            streams = [TextStream(tok, list(stop)) for _ in idx]

            def on_token(b: int, t: int, streams=streams) -> bool:
                streams[b].push(t)
                return streams[b].stopped

            generate(
                self.model,
                [ids[i] for i in idx],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seed is None else seed + k,
                stop_ids=tok.stop_ids,
                on_token=on_token,
                compile=self.compile,
            )
            for i, st in zip(idx, streams):
                st.finish()
                texts[i] = st.text
            bar.update(len(idx))
        bar.close()
        return texts


def perplexity(total_logprob: float, n: int) -> float:
    return math.exp(-total_logprob / max(n, 1))
