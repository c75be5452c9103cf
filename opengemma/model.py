"""The Gemma 1/2/3 text decoder in one file, read top to bottom.

Dims: B batch, T new tokens, S cache slots (keys), V vocab, C d_model, H query heads, K key/value heads,
G = H // K queries per key/value head, D head_dim, F d_ff (per projection).

Generations differ only by GemmaConfig switches: attention soft-capping and final-logit soft-capping
(Gemma 2), sandwich norms (2/3), QK-norm (3), sliding-window layers with their own RoPE base (2/3),
query_pre_attn_scalar. Numerics follow the reference implementation (google-deepmind/gemma and
transformers' Gemma): see ../shared/docs/PITFALLS.md, cited below as P#.

Positions and the KV cache: caches are preallocated (B, K, S, D) per layer and written in place
(compile-friendly, no reallocation). Global layers keep every position (S = max_len); sliding-window
layers keep a ring buffer of S = window + prefill chunk slots (position p lives in slot p % S), which is
all a window-limited query can see, even within a chunk. `input_pos` (T,) gives the positions of the new
tokens, shared by all rows; rows of a batch may be left-padded by `pad` (B,): a row's RoPE position is
input_pos - pad, and it never attends to its padding. The absolute position held by each slot is kept
per layer kind (-1 = empty), and masks are built from it.

Training rows pack documents: `segments` (B, T) names each token's document; masks keep attention inside it and
positions restart at its first token (RoPE is relative, so this matters for precision, not for the function).

One file because: the model is read top to bottom beside the paper and the reference (DESIGN.md rule 1); the
inference and training forwards share every line but the masks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .config import LAYER_LOCAL, GemmaConfig


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), all in float32, cast back at the very end (P1).

    Checkpoints store w (zero-centred), not 1 + w: converters must not add the 1 twice.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


def rope_inv_freq(head_dim: int, base: float, scaling: float = 1.0) -> torch.Tensor:
    """Inverse frequencies (D/2,), float32. Linear scaling divides them (position interpolation)."""
    # always on the CPU: computing under a meta-device context would pull in torch's reference kernels
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return 1.0 / (base**exponent) / scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (first half of D pairs with second half, not interleaved pairs; P4).

    x (B, n, T, D); cos, sin (B, 1, T, D/2) float32. Rotation in float32, cast back.
    """
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, n, T, D/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache(nn.Module):
    """Preallocated keys and values (B, K, S, D), written in place at the given slots."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # slots (T,); k, v (B, K, T, D) for the cache rows `rows` (a view: writes land in the cache)
        ck, cv = self.k[rows], self.v[rows]
        ck.index_copy_(2, slots, k.to(ck.dtype))
        cv.index_copy_(2, slots, v.to(cv.dtype))
        return ck, cv  # (B, K, S, D)


class Linear(nn.Linear):
    """nn.Linear whose few-row products can go to the Triton GEMV kernel on GPU (engine.generate.set_gemv; off by
    default; Gemma's projections have no bias)."""

    gemv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemv and self.bias is None:
            return kernels.linear(x, self.weight)
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """Token embedding that also serves as the tied output layer (logits = x @ E^T)."""

    gemv = False

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:  # random init on meta is pointless and costs a slow first-use import
            super().reset_parameters()

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight) if self.gemv else F.linear(x, self.weight)


class Attention(nn.Module):
    use_sdpa = True  # GPU multi-token steps through scaled_dot_product_attention where no soft-cap forbids it

    def __init__(self, cfg: GemmaConfig, layer_idx: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.is_local = cfg.layer_types[layer_idx] == LAYER_LOCAL
        self.scale = cfg.query_pre_attn_scalar**-0.5  # Gemma 1: head_dim; Gemma 2/3: per model (P7)
        self.softcap = cfg.attn_softcap
        self.q_proj = Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.kv_cache: KVCache | None = None
        self.qkv_proj: nn.Module | None = None  # optional fused q|k|v projection (quantize.fuse_projections)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        slots: torch.Tensor | None,
        end: int | None = None,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        if self.qkv_proj is not None:  # one matmul instead of three (fewer, larger kernel calls in decode)
            q, k, v = self.qkv_proj(x).split([H * D, K * D, K * D], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        if self.q_norm is not None:  # Gemma 3 QK-norm, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if slots is not None:
            k, v = self.kv_cache.update(slots, k, v, rows)  # (B, K, S, D)
            if end is not None:
                k, v = k[:, :, :end], v[:, :, :end]

        if mask is None or (slots is None and self.softcap is None and isinstance(mask, torch.Tensor)):
            # The no-cache forward (training, scoring) without soft-capping: a fused kernel (flash / memory
            # efficient; is_causal when the mask is plain causal) never materializes the (T, T) float32 scores,
            # neither forward nor in backward, and accumulates in float32 as the reference softmax does.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=K != H
            )
            return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))
        if not isinstance(mask, torch.Tensor):
            # a flex_attention BlockMask (the no-cache forward on GPU with soft-capped scores, sliding windows or
            # packed documents): the soft-cap is a score_mod inside the fused kernel, masked-out blocks are skipped
            cap = self.softcap
            y = flex_attention()(
                q,
                k,
                v,
                score_mod=None if cap is None else lambda s, b, h, qi, ki: torch.tanh(s / cap) * cap,
                block_mask=mask,
                scale=self.scale,
                enable_gqa=K != H,
            )
            return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))
        if self.use_sdpa and T > 1 and self.softcap is None and x.device.type == "cuda":
            # GPU prefill without soft-capping: a fused kernel never materializes the (T, S) scores and
            # accumulates in float32 as the reference softmax does. (On 2 CPU cores it measured 20% slower
            # than the grouped matmuls below, which stay the CPU path.)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=K != H)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))

        # Queries are grouped by their shared key/value head, (B, K, G*T, D), so that multi-query and
        # grouped attention are one matmul each, without repeating keys and values. Scores as the
        # reference computes them: matmul in the activation dtype, then scale, soft-cap (Gemma 2; it
        # sits between the scores and the softmax), mask and softmax in float32 (P4).
        S, G = k.shape[2], H // K
        qg = q.reshape(B * K, G * T, D)
        # 3-D bmm against a transposed *view* of the keys: in 4-D, matmul copies the whole key cache first
        scores = torch.bmm(qg, k.reshape(B * K, S, D).transpose(1, 2)).view(B, K, G * T, S).float() * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.view(B, K, G, T, S).masked_fill(~mask.view(B, 1, 1, T, S), float("-inf"))
        probs = scores.view(B, K, G * T, S).softmax(dim=-1).to(v.dtype)
        y = torch.bmm(probs.view(B * K, G * T, S), v.reshape(B * K, S, D)).view(B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)); GELU is the tanh approximation (P3)."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.gate_up_proj: nn.Module | None = None  # optional fused gate|up projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Block(nn.Module):
    def __init__(self, cfg: GemmaConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        # Gemma 2/3 "sandwich": normalize each sub-layer's output before the residual add too.
        self.post_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.sandwich_norms else nn.Identity()
        self.post_mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.sandwich_norms else nn.Identity()

    def forward(self, x, cos, sin, mask, slots, end=None, rows=slice(None)):
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, mask, slots, end, rows))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Gemma(nn.Module):
    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed = Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, bias=False)
        self.init_rope()

    def init_rope(self) -> None:
        """(Re)compute the RoPE frequency buffers, e.g. after building on the meta device."""
        c = self.config
        device = self.norm.weight.device if self.norm.weight.device.type != "meta" else None
        self.register_buffer(
            "inv_freq_global",
            rope_inv_freq(c.head_dim, c.rope_base, c.rope_scaling_factor).to(device),
            persistent=False,
        )
        self.register_buffer(
            "inv_freq_local", rope_inv_freq(c.head_dim, c.rope_local_base).to(device), persistent=False
        )

    # -- KV cache ------------------------------------------------------------------------------------
    def setup_cache(
        self,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        prefill_chunk: int = 512,
    ) -> None:
        """Preallocate caches for `batch_size` rows and positions < max_len, fed at most `prefill_chunk`
        tokens per forward. Sliding-window layers get a ring of window + prefill_chunk slots."""
        c = self.config
        if max_len > c.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model's context of {c.max_seq_len}")
        dtype = dtype or self.norm.weight.dtype  # the activation dtype (norms are never quantized)
        device = torch.device(device or self.norm.weight.device)
        lengths = {"global": max_len, "local": min(max_len, (c.sliding_window or 0) + prefill_chunk)}
        if self.cache_shape == (batch_size, lengths["global"], lengths["local"], dtype, device):
            # same shapes: reuse the buffers (a compiled decode step keeps its graph), just empty them
            self.slot_pos_global.fill_(-1)
            if c.sliding_window is not None:
                self.slot_pos_local.fill_(-1)
            return
        self.cache_shape = (batch_size, lengths["global"], lengths["local"], dtype, device)
        for layer in self.layers:
            S = lengths["local" if layer.attn.is_local else "global"]
            layer.attn.kv_cache = KVCache(batch_size, c.n_kv_heads, S, c.head_dim, dtype, device)
        for kind, S in lengths.items():  # absolute position held by each slot of each row, -1 = empty
            self.register_buffer(
                f"slot_pos_{kind}", torch.full((batch_size, S), -1, dtype=torch.long, device=device), persistent=False
            )

    cache_shape: tuple | None = None

    def clear_cache(self) -> None:
        self.cache_shape = None
        for layer in self.layers:
            layer.attn.kv_cache = None
        for kind in ("global", "local"):
            self.register_buffer(f"slot_pos_{kind}", None, persistent=False)

    def cache_tensors(self) -> list[torch.Tensor]:
        """Everything the cache holds, rows first: each layer's keys and values, and the slot positions."""
        kv = [
            t
            for layer in self.layers
            if layer.attn.kv_cache is not None
            for t in (layer.attn.kv_cache.k, layer.attn.kv_cache.v)
        ]
        pos = [getattr(self, f"slot_pos_{kind}", None) for kind in ("global", "local")]
        return kv + [p for p in pos if p is not None]

    def copy_cache_row(self, src: int = 0) -> None:
        """Copy one row's cached keys, values and slot positions into every row (a shared prompt prefix
        computed once, e.g. few-shot examples scored against many continuations)."""
        for t in self.cache_tensors():
            t.copy_(t[src : src + 1].expand_as(t))

    def select_cache_rows(self, index: torch.Tensor) -> None:
        """Keep the cache rows `index` (R,), in that order, repeats allowed: a context computed once,
        forked into one row per continuation."""
        for layer in self.layers:
            cache = layer.attn.kv_cache
            cache.k, cache.v = cache.k.index_select(0, index), cache.v.index_select(0, index)
        for kind in ("global", "local"):
            pos = getattr(self, f"slot_pos_{kind}", None)
            if pos is not None:
                self.register_buffer(f"slot_pos_{kind}", pos.index_select(0, index), persistent=False)
        self.cache_shape = (len(index),) + self.cache_shape[1:]

    @property
    def cache_len(self) -> int:
        pos = getattr(self, "slot_pos_global", None)
        return 0 if pos is None else pos.shape[1]

    # -- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        *,
        pad: torch.Tensor | None = None,
        last_only: bool = False,
        end: int | None = None,
        row: int | None = None,
        hidden: bool = False,
        segments: torch.Tensor | None = None,
        head=None,
    ) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V), or (B, 1, V) with last_only.

        hidden: return the final-normed hidden states (B, T, C) instead; `model.logits(h)` maps any
        selection of them to logits (scoring needs a few positions, not T x 262k floats).
        input_pos None: plain causal forward over positions 0..T-1, no cache.
        input_pos (T,): positions of these tokens, written to the cache; keys are everything cached.
        pad (B,): left-padding positions per row (ragged batches); defaults to none.
        end: (prefill from position 0) no position >= end has been cached, so only the first `end` slots
        of each cache can hold keys: attention skips the rest (a Python int, so shapes stay known).
        row: feed one cache row only (tokens (1, T)), e.g. to prefill a request joining a running batch;
        its positions may be anywhere on the ring (continuous batching keeps one clock for all rows).
        segments (B, T): packed training rows (no cache): the document each token belongs to (equal ids, in
        runs); a token attends only within its document and positions restart at each document's first token,
        so packing changes no document's logits.
        head: a callable head(h, output_weight) replacing the output layer, e.g. a chunked loss that never forms the
        (B, T, V) logits; it runs inside this forward, where a sharded (FSDP) output matrix is gathered.
        """
        B, T = tokens.shape
        c = self.config
        device = tokens.device
        kinds = ("global", "local") if c.sliding_window is not None else ("global",)
        rows = slice(None) if row is None else slice(row, row + 1)
        if input_pos is None:
            q_pos = torch.arange(T, device=device)  # (T,)
            keys = {kind: (q_pos.expand(B, T), None) for kind in kinds}
        else:
            if getattr(self, "slot_pos_global", None) is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_cache() first")
            q_pos = input_pos
            keys = {}
            for kind in kinds:
                slot_pos = getattr(self, f"slot_pos_{kind}")[rows]  # (B, S) view
                slots = input_pos % slot_pos.shape[1]  # (T,) ring-buffer slots (identity below the length)
                slot_pos.index_copy_(1, slots, input_pos.expand(B, T))
                keys[kind] = (slot_pos if end is None else slot_pos[:, :end], slots)

        if segments is not None and (input_pos is not None or pad is not None):
            raise ValueError("segments (packed documents) go with the plain forward: no input_pos, no pad")
        # RoPE positions (B, T): position minus the row's left padding, or minus its document's start
        pos = q_pos.unsqueeze(0).expand(B, T)
        if pad is not None:
            pos = (pos - pad.view(B, 1)).clamp(min=0)
        if segments is not None:
            pos = segment_positions(segments)
        pos = pos.float()
        cos_sin = {}
        for kind, inv_freq in (("global", self.inv_freq_global), ("local", self.inv_freq_local)):
            angles = (pos.unsqueeze(-1) * inv_freq).unsqueeze(1)  # (B, 1, T, D/2) float32 (P4)
            cos_sin[kind] = (angles.cos(), angles.sin())

        # Masks (B, 1, T, S), True = may attend. A padding query attends to itself only, which keeps
        # its (unused) output finite so that no NaN reaches real rows through the cache. The no-cache forward
        # hands plain causal attention to SDPA's is_causal (mask None) and, where flex_attention runs (GPU), every
        # other layer a BlockMask instead of a dense mask (soft-capping, a window shorter than T, documents).
        masks = {}
        plain = input_pos is None and pad is None
        for kind in kinds:
            windowed = kind == "local" and T > c.sliding_window
            if plain and segments is None and not windowed and c.attn_softcap is None:
                masks[kind] = None
                continue
            if plain and self.use_flex(device):  # soft-capped, windowed or packed: block-sparse flex attention
                masks[kind] = block_mask(B, T, c.sliding_window if kind == "local" else None, segments, device)
                continue
            k_pos = keys[kind][0]  # (B, S) position held by each key slot of each row
            S = k_pos.shape[1]
            qq, kk = q_pos.view(1, T, 1), k_pos.view(B, 1, S)
            mask = (kk <= qq) & (kk >= 0)  # (B, T, S) causal, filled slots only
            if kind == "local":
                mask = mask & (qq - kk < c.sliding_window)
            if pad is not None:
                mask = (mask & (kk >= pad.view(B, 1, 1))) | (kk == qq)
            if segments is not None:  # (B, T, T): keys of the query's own document only
                mask = mask & (segments.view(B, 1, T) == segments.view(B, T, 1))
            masks[kind] = mask.view(B, 1, T, S)

        x = self.embed(tokens)  # (B, T, C)
        # sqrt(d_model) cast to the activation dtype first, as the reference does (P2)
        x = x * torch.tensor(c.embed_scale, dtype=x.dtype, device=device)
        for layer in self.layers:
            kind = "local" if layer.attn.is_local else "global"
            x = layer(x, *cos_sin[kind], masks[kind], keys[kind][1], end, rows)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        if head is not None:
            return head(x, self.embed.weight if self.lm_head is None else self.lm_head.weight)
        return x if hidden else self.logits(x)

    flex: bool | None = None  # soft-capped no-cache attention through flex_attention: None = on GPU only

    def use_flex(self, device: torch.device) -> bool:
        # flex_attention has no backward on CPU (torch 2.13), so the CPU keeps the dense path there
        return device.type == "cuda" if self.flex is None else self.flex

    def init_weights(self, std: float = 0.02) -> None:
        """Random weights for training from scratch, from the global torch RNG (seed it first).

        Follows transformers' Gemma `_init_weights` (initializer_range 0.02: N(0, 0.02) for every Linear and the
        embedding; RMSNorm weights zero, so (1 + w) starts at 1), plus GPT-2's 1/sqrt(2 n_layers) scale on the two
        projections that write into the residual stream, o_proj and down_proj (Radford et al. 2019, section 2.3;
        nanoGPT's c_proj, torchtitan's depth init), so the residual's variance does not grow with depth. With the
        tied output matrix, initial logits have std 0.02 sqrt(d_model) (0.5 for the 270M): the first loss is
        about ln(V).
        """
        residual_std = std / (2 * self.config.n_layers) ** 0.5
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if out else std)
            elif isinstance(module, RMSNorm):
                nn.init.zeros_(module.weight)
        self.init_rope()

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (..., C) -> logits (..., V): the (tied) output layer and soft-capping."""
        logits = self.embed.attend(h) if self.lm_head is None else self.lm_head(h)
        if self.config.final_softcap is not None:
            logits = (torch.tanh(logits.float() / self.config.final_softcap) * self.config.final_softcap).type_as(h)
        return logits


_flex_compiled = None


def flex_attention():
    """flex_attention compiled once (eager it would materialize the scores it exists to avoid)."""
    global _flex_compiled
    if _flex_compiled is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        _flex_compiled = torch.compile(flex, dynamic=False)
    return _flex_compiled


def block_mask(B: int, T: int, window: int | None, segments: torch.Tensor | None, device: torch.device):
    """flex_attention's BlockMask of the no-cache forward: causal, within `window` for sliding layers, within the
    document for packed rows (segments (B, T)); the same rules as the dense masks in Gemma.forward."""
    from torch.nn.attention.flex_attention import create_block_mask

    def rule(b, h, qi, ki):
        keep = qi >= ki
        if window is not None:
            keep = keep & (qi - ki < window)
        if segments is not None:
            keep = keep & (segments[b, qi] == segments[b, ki])
        return keep

    return create_block_mask(
        rule, B if segments is not None else None, None, T, T, device=device, _compile=device.type == "cuda"
    )


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids of packed rows -> (B, T) each token's position within its document."""
    idx = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    first = torch.ones_like(segments, dtype=torch.bool)
    first[:, 1:] = segments[:, 1:] != segments[:, :-1]  # (B, T) a document's first token
    return idx - torch.cummax(torch.where(first, idx, 0), dim=1).values


def num_params(model: nn.Module, embedding: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if not embedding:
        n -= model.embed.weight.numel()
        if model.lm_head is not None:
            n -= model.lm_head.weight.numel()
    return n
