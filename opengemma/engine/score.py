"""Exact log-likelihoods of token ids through the KV cache: sum of log p(continuation | context) per request
(evaluation's multiple choice, and later DPO's reference log-probs and RLHF's KL term), and rolling windows
over whole sequences (perplexity).

Requests are turned into *rows*: token sequences, each carrying the targets scored inside it. Sequences are
sorted, so one that is a prefix of the next (a context whose single-token answers " A", " B", ... are all
read at its last position, or a shorter choice) is scored inside the longer row, and neighbours share their
longest common prefix (the few-shot examples): a batch computes that prefix once into the cache of row 0,
copies it to every row, and runs only the rows' suffixes. Scores are exact log-probabilities, the same as
scoring each request alone in a plain forward (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..model import Gemma
from .generate import prefill_chunks

SHARED = 32  # tokens in common (and half the row) that make rows one cluster, batched with its prefix once


@dataclass
class Target:
    req: int  # request index
    first: int  # index in the row's sequence of the first scored token
    tokens: list[int]


def _context_len(row) -> int:
    """Tokens of a row before its first scored position (they only condition)."""
    return min(t.first for t in row[1]) - 1


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scorer:
    """Exact log-likelihoods of token-id requests for a model, batched through its KV cache.

    max_len: the longest sequence scored at once; longer contexts are cut on the left.
    batch_size: rows per forward; token_budget caps rows x longest row (the KV cache's size).
    chunk: tokens per forward (setup_cache's prefill_chunk). progress: a progress bar per call.
    """

    def __init__(
        self,
        model: Gemma,
        *,
        batch_size: int = 16,
        max_len: int = 2048,
        token_budget: int = 32768,
        chunk: int = 256,
        progress: bool = True,
    ):
        self.model = model
        self.batch_size, self.token_budget, self.chunk, self.progress = batch_size, token_budget, chunk, progress
        self.max_len = min(max_len, model.config.max_seq_len)
        self.device = model.norm.weight.device

    def loglikelihood_tokens(
        self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "scoring"
    ) -> list[tuple[float, bool, int]]:
        """(context ids, continuation ids) -> (sum of log p(continuation ids | context ids), whether greedy
        decoding would produce exactly them, number of continuation ids). The context includes <bos>; a
        context longer than max_len less the continuation is cut on the left."""
        rows = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"request {i}: empty continuation")
            if len(ctx) < 1:
                raise ValueError(f"request {i}: the context needs at least one token (<bos>)")
            if len(cont) > self.max_len:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens does not fit max_len {self.max_len}")
            # the last token is only predicted, never read: leaving it out lets the choices of one context
            # (" A", " B", ...) share a row
            seq = (list(ctx) + list(cont))[:-1]
            cut = max(0, len(seq) - self.max_len)  # cut the context on the left
            rows.append((seq[cut:], [Target(i, len(ctx) - cut, list(cont))]))
        out = self._score_rows(rows, desc)
        return [(lp, greedy, len(cont)) for (lp, greedy), (_, cont) in zip(out, pairs)]

    def rolling_tokens(
        self, seqs: Sequence[list[int]], stride: int | None = None, desc: str = "perplexity"
    ) -> list[tuple[float, int]]:
        """Sum of log p over seq[1:] for each token sequence (seq[0] is <bos>), and the token count. Windows of
        max_len tokens advance by `stride` (default max_len // 2: each token is predicted with at least half a
        window of context)."""
        L = self.max_len
        stride = max(1, min(stride or L // 2, L - 1))
        rows, owner = [], []
        for i, seq in enumerate(seqs):
            start = 1  # next token to predict
            while start < len(seq):
                end = min(len(seq), start + (L - 1 if start == 1 else stride))
                s = max(0, end - L)
                rows.append((seq[s : end - 1], [Target(len(owner), start - s, seq[start:end])]))
                owner.append(i)
                start = end
        out = self._score_rows(rows, desc)
        totals = [0.0] * len(seqs)
        for (lp, _), i in zip(out, owner):
            totals[i] += lp
        return [(totals[i], len(seq) - 1) for i, seq in enumerate(seqs)]

    @torch.inference_mode()
    def _score_rows(self, rows: list[tuple[list[int], list[Target]]], desc: str) -> list[tuple[float, bool]]:
        n_req = sum(len(t) for _, t in rows)
        results: list[tuple[float, bool] | None] = [None] * n_req
        # sort; a row that is a prefix of the next is scored inside it
        rows = sorted(rows, key=lambda r: r[0])
        merged: list[tuple[list[int], list[Target]]] = []
        for seq, targets in reversed(rows):
            if merged and len(seq) <= len(merged[-1][0]) and merged[-1][0][: len(seq)] == seq:
                merged[-1][1].extend(targets)
            else:
                merged.append((seq, list(targets)))
        merged.reverse()

        # Clusters of rows sharing a long prefix (few-shot examples) are batched together, shortest first
        # (less padding); rows sharing nothing are pooled and batched by length.
        clusters = []
        for row in merged:
            shared = _common_prefix(clusters[-1][0][0], row[0]) if clusters else 0
            if shared >= SHARED and 2 * shared >= len(row[0]):
                clusters[-1].append(row)
            else:
                clusters.append([row])
        groups = [sorted(c, key=lambda r: len(r[0])) for c in clusters if len(c) >= 4]
        # the rest by context (what precedes the first scored token), so that the rows of one context stay
        # together and a batch can compute it once and fork it (_score_batch)
        groups.append(sorted((r for c in clusters if len(c) < 4 for r in c), key=lambda r: (_context_len(r), r[0])))
        batches = []
        for g in groups:
            cur, longest = [], 0
            for row in g:
                longest = max(longest, len(row[0]))
                if cur and (len(cur) >= self.batch_size or (len(cur) + 1) * longest > self.token_budget):
                    batches.append(cur)
                    cur, longest = [], len(row[0])
                cur.append(row)
            if cur:
                batches.append(cur)
        bar = tqdm(total=n_req, desc=desc, disable=not self.progress, unit="req", dynamic_ncols=True)
        for batch in batches:
            for t, res in self._score_batch(batch):
                results[t.req] = res
            bar.update(sum(len(t) for _, t in batch))
        bar.close()
        return results

    def _score_batch(self, batch):
        """Score one batch by the cheaper of two plans. Shared prefix: the batch's common prefix once (row
        0, copied to all rows), then every row's rest. Fork: each distinct context once (left-padded so all
        end together), its cache rows repeated for the rows that continue it, then only the continuations."""
        model, device = self.model, self.device
        seqs = [seq for seq, _ in batch]
        B = len(seqs)
        ctx = [_context_len(r) for r in batch]  # tokens before the first scored position, per row
        P = min(ctx)  # the shared prefix, short of every row's first scored position
        for s in seqs[1:]:
            P = min(P, _common_prefix(seqs[0], s))
        longest = max(len(s) for s in seqs)
        owners: dict[tuple, int] = {}  # distinct contexts -> index
        row_ctx = [owners.setdefault(tuple(s[:c]), len(owners)) for s, c in zip(seqs, ctx)]
        G, Lc = len(owners), max(ctx)
        S = max(len(s) - c for s, c in zip(seqs, ctx))
        fork = G < B and G * Lc + B * S < 0.8 * (P + B * (longest - P))
        start = list(ctx) if fork else [P] * B  # where each row's own part begins
        base = Lc if fork else P  # position of the first token of the rows' own parts
        T = S if fork else longest - P
        cache_len = min(-(-(base + T) // 256) * 256, model.config.max_seq_len)
        pad = None
        try:
            if fork:
                model.setup_cache(G, cache_len, prefill_chunk=self.chunk)
                contexts = [None] * G
                for s, c, g in zip(seqs, ctx, row_ctx):
                    contexts[g] = s[:c]
                ctx_tokens = torch.full((G, Lc), model.config.pad_id, dtype=torch.long)
                for g, c in enumerate(contexts):
                    if c:
                        ctx_tokens[g, Lc - len(c) :] = torch.tensor(c)
                pad_g = torch.tensor([Lc - len(c) for c in contexts], device=device)
                for _ in prefill_chunks(model, ctx_tokens.to(device), 0, self.chunk, pad=pad_g, hidden=True):
                    pass
                index = torch.tensor(row_ctx, device=device)
                model.select_cache_rows(index)
                pad = pad_g.index_select(0, index)
            else:
                model.setup_cache(B, cache_len, prefill_chunk=self.chunk)
                if P > 0:  # the prefix once, into row 0, then copied to every row
                    prefix = torch.tensor([seqs[0][:P]], device=device)
                    for _ in prefill_chunks(model, prefix, 0, self.chunk, row=0, hidden=True):
                        pass
                    model.copy_cache_row(0)
            # the rows' own parts, right-padded: a causal model never lets a real token see the padding after it
            tokens = torch.full((B, T), model.config.pad_id, dtype=torch.long)
            for b, s in enumerate(seqs):
                tokens[b, : len(s) - start[b]] = torch.tensor(s[start[b] :])
            tokens = tokens.to(device)
            # what to read: (row, column in the row's own part predicting the token, the token)
            picks = [
                (b, t.first - 1 + j - start[b], tok)
                for b, (_, ts) in enumerate(batch)
                for t in ts
                for j, tok in enumerate(t.tokens)
            ]
            logp = torch.empty(len(picks))
            greedy = torch.empty(len(picks), dtype=torch.bool)
            # bounded: no slot past the chunk's end holds keys yet, so attention reads only the filled ones
            for s, e, h in prefill_chunks(model, tokens, base, self.chunk, pad=pad, hidden=True):  # h (B, t, C)
                sel = [k for k, (_, col, _) in enumerate(picks) if s <= col < e]
                for k0 in range(0, len(sel), 512):  # bounded logits memory: 512 x V floats at a time
                    ks = sel[k0 : k0 + 512]
                    rows_ = torch.tensor([picks[k][0] for k in ks], device=device)
                    cols = torch.tensor([picks[k][1] - s for k in ks], device=device)
                    want = torch.tensor([picks[k][2] for k in ks], device=device)
                    lg = model.logits(h[rows_, cols].unsqueeze(0))[0].float()  # (k, V)
                    lsm = torch.log_softmax(lg, -1)
                    logp[ks] = lsm.gather(1, want[:, None])[:, 0].cpu()
                    greedy[ks] = (lg.argmax(-1) == want).cpu()
        finally:
            model.clear_cache()
        out, k = [], 0
        for b, (_, ts) in enumerate(batch):
            for t in ts:
                n = len(t.tokens)
                out.append((t, (float(logp[k : k + n].double().sum()), bool(greedy[k : k + n].all()))))
                k += n
        return out
