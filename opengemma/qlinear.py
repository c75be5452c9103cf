"""The weight-only quantized modules and their numerics: Int8Linear / Int4Linear, the tied embedding/output
matrix as Int8Embedding / Int4Embedding / RescoredEmbedding, and the rounding that fills them. quantize.py
swaps them into a model. Activations stay in the model's dtype (bfloat16 is what the CPU and GPU kernels are
fast with). One file because: the int8 and int4 modules share their kernels' layouts and numerics, which are
read together.

- int8: symmetric, one scale per output channel. Kernel: aten._weight_int8pack_mm on CPU for a few rows
  (decode); otherwise x @ W_int8^T in the activation dtype, times the scales (int8 values are exact in
  bf16). On GPU, the compiled one-row decode fuses the conversion into inductor's reduction (measured on
  an H200: still slower than bf16, the generated int8 reductions read at a lower bandwidth).
- int4: asymmetric, one scale and zero per group of `group_size` inputs; tinygemm's convention
  w = (q - 8) * scale + zero. Kernels: aten._weight_int4pack_mm_for_cpu / aten._weight_int4pack_mm (CUDA),
  which want the weights in their own packed layout; the portable form (two nibbles a byte, low first)
  is what is saved, and what the embedding lookup reads.
- GPU, optional (engine.generate.set_gemv): products of at most kernels.GEMV_MAX_M rows (decode) go to a Triton
  GEMV kernel that reads int8 and portable int4 weights directly (opengemma/kernels.py).
- int4 rounding: to nearest with a per-group clipping search, or GPTQ (gptq_int4: opengemma.gptq on this int4
  grid) given each layer's input statistics on calibration text (gptq.input_moments; opengemma.calibration).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .gptq import Grid, gptq

SMALL_M = 16  # rows at or below which the CPU int8 GEMV kernel beats dequantize-then-matmul
# rows from which dequantizing an int4 matrix to bf16 once and running the dense matmul beats torch's CPU int4
# kernel (prefill, scoring). That kernel has no vectorized float32 path (40x slower than in bf16), so float32
# activations always take the dense path.
DENSE_INT4_M = 192
DENSE_ELEMENTS = 1 << 22  # weights dequantized at a time on that path (8 MB in bf16; a block matrix is one piece)
PACK_ROWS = 4096  # rows per block when building the CPU int4 kernel layout (a multiple of its 64-row blocks)


# -- the numerics -------------------------------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> q int8 (N, K), scales float32 (N,): w ~= q * scale."""
    w = w.float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-10)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float -> q uint8 in [0, 15] (N, K), scales and zeros float32 (N, K // group_size):
    w ~= (q - 8) * scale + zero. Each group's range is its min..max shrunk by the factor (from a small
    grid) that minimizes the group's squared error: clipping a few outliers buys resolution for the rest."""
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"in_features {K} is not a multiple of the int4 group size {group_size}")
    g = w.float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    best_err = best_lo = best_scale = None
    for r in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7):
        lo_r = mid - half * r
        scale = (2 * half * r / 15.0).clamp(min=1e-10)
        q = torch.round((g - lo_r) / scale).clamp(0, 15)
        err = ((q * scale + lo_r - g) ** 2).sum(dim=-1, keepdim=True)
        if best_err is None:
            best_err, best_lo, best_scale = err, lo_r, scale
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_scale = torch.where(better, lo_r, best_lo), torch.where(better, scale, best_scale)
    q = torch.round((g - best_lo) / best_scale).clamp(0, 15).to(torch.uint8)
    scales, zeros = best_scale.squeeze(-1), (best_lo + 8.0 * best_scale).squeeze(-1)
    return q.reshape(N, K), scales, zeros


def _int4_fit(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_int4(w, group_size)[1:]


def _int4_round(col: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.round((col - z) / s + 8.0).clamp(0, 15)


def _int4_value(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (q - 8.0) * s + z


# quantize_int4's grid for GPTQ: 16 levels w = (q - 8) * scale + zero per group, ranges from the clipping search
INT4_GRID = Grid(fit=_int4_fit, round=_int4_round, value=_int4_value, dtype=torch.uint8)


def gptq_int4(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (opengemma.gptq) onto quantize_int4's grid: same returns as quantize_int4."""
    return gptq(w, hessian, INT4_GRID, group_size, damp=damp, block=block, act_order=act_order)


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    N, K = q.shape
    G = scales.shape[1]
    g = (q.reshape(N, G, K // G).float() - 8.0) * scales.unsqueeze(-1).float() + zeros.unsqueeze(-1).float()
    return g.reshape(N, K)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values 0..15 -> (N, K/2) uint8, element 2j in the low nibble."""
    return (q[:, ::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    return torch.stack((p & 15, p >> 4), dim=-1).reshape(p.shape[0], -1)


def _kernel_pack_int4(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Portable (N, K) 0..15 -> the layout of the int4 matmul kernel of `device`."""
    if device.type == "cuda":  # tinygemm wants high nibble first, then its tiled layout
        packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).to(device)
        return torch.ops.aten._convert_weight_to_int4pack(packed, 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).to(device), 1)


def _scales_zeros(scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, G) each -> (G, N, 2), the kernels' scale-and-zero tensor."""
    return torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous().to(dtype)


def _int4_mm(x2: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    if x2.device.type == "cuda":
        return torch.ops.aten._weight_int4pack_mm(x2, packed, group_size, sz)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group_size, sz)


def _int8_mm(x2: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, K) @ int8 (N, K)^T, times the (N,) scales: (M, N) in x2's dtype."""
    if x2.device.type == "cpu" and x2.shape[0] <= SMALL_M:
        return torch.ops.aten._weight_int8pack_mm(x2, weight, scales)
    return F.linear(x2, weight.to(x2.dtype)) * scales


# -- modules ------------------------------------------------------------------------------------------
class Int8Linear(nn.Module):
    gemv = False  # few-row products through the Triton GEMV kernel on GPU (engine.generate.set_gemv)

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))

    @classmethod
    def from_float(cls, w: torch.Tensor, dtype: torch.dtype) -> "Int8Linear":
        m = cls(w.shape[1], w.shape[0], dtype, device=w.device)
        q, s = quantize_int8(w)
        m.weight.copy_(q)
        m.scales.copy_(s.to(dtype))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (M, K)
        if self.gemv and kernels.available(x2):
            y = kernels.gemv(x2, self.weight, kernels.INT8, self.scales)
        else:
            y = _int8_mm(x2, self.weight, self.scales)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    @classmethod
    def cat(cls, parts: list["Int8Linear"]) -> "Int8Linear":
        """Stack output channels (exact: scales are per row)."""
        m = cls(parts[0].in_features, sum(p.out_features for p in parts), parts[0].scales.dtype, parts[0].weight.device)
        if m.weight.is_meta:  # a skeleton to load into: shapes only (ops on meta tensors are slow to set up)
            return m
        m.weight = torch.cat([p.weight for p in parts])
        m.scales = torch.cat([p.scales for p in parts])
        return m

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4Linear(nn.Module):
    gemv = False  # few-row products through the Triton GEMV kernel, from the portable layout (engine.generate.set_gemv)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int = 64,
        dtype: torch.dtype = torch.bfloat16,
        device=None,
    ):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the int4 group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        G = in_features // group_size
        # portable form, saved: (N, K/2) nibbles, scales and zeros (N, G)
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, G, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, G, dtype=dtype, device=device))
        # the kernel's layout for the current device, built by prepare(); buffers (not plain attributes) so
        # that a compiled graph and its CUDA graph treat them as fixed module state, not per-call inputs
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("kernel_sz", None, persistent=False)

    @classmethod
    def from_float(
        cls, w: torch.Tensor, group_size: int, dtype: torch.dtype, hessian: torch.Tensor | None = None
    ) -> "Int4Linear":
        """Round to nearest (per-group clipping search), or GPTQ when the inputs' second moment is given."""
        m = cls(w.shape[1], w.shape[0], group_size, dtype, device=w.device)
        if hessian is None:
            q, s, z = quantize_int4(w, group_size)
        else:
            q, s, z = gptq_int4(w, hessian.to(w.device), group_size)
        m.qweight.copy_(pack_int4(q))
        m.scales.copy_(s.to(dtype))
        m.zeros.copy_(z.to(dtype))
        return m

    @classmethod
    def from_groups(
        cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype
    ) -> "Int4Linear":
        """From values already on a 4-bit grid (a GGUF file's Q4 blocks): q (N, K) in 0..15, scales and
        zeros (N, G). No rounding here; only the scales' cast to `dtype`."""
        (N, K), G = q.shape, scales.shape[1]
        m = cls(K, N, K // G, dtype, device=q.device)
        m.qweight.copy_(pack_int4(q.to(torch.uint8)))
        m.scales.copy_(scales.to(dtype))
        m.zeros.copy_(zeros.to(dtype))
        return m

    def prepare(self) -> None:
        """Build the kernel layout for the current device (after loading or moving the module)."""
        scales, zeros, N = self.scales, self.zeros, self.out_features
        pad = -N % 16  # the kernels tile N by 16: pad with empty rows, slice them off
        # CPU: blocks of rows pack independently; a block at a time bounds the unpacked int32 temporaries
        # (the 262144-row output matrix would need 0.7 GB at once)
        step = PACK_ROWS if self.qweight.device.type == "cpu" else N
        parts = [self._packed_rows(i, i + step) for i in range(0, N, step)]
        if pad:
            scales = torch.cat([scales, scales.new_zeros(pad, scales.shape[1])])
            zeros = torch.cat([zeros, zeros.new_zeros(pad, zeros.shape[1])])
        self.kernel_weight = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.kernel_sz = _scales_zeros(scales, zeros, scales.dtype)

    def _packed_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop in the kernel layout of the weights' device, padded with empty rows (q = 8, and
        zero scales in kernel_sz) to a multiple of 16: the kernels tile N by 16."""
        q = unpack_int4(self.qweight[start:stop])
        if len(q) % 16:
            q = torch.cat([q, q.new_full((-len(q) % 16, q.shape[1]), 8)])
        return _kernel_pack_int4(q, self.qweight.device)

    def adopt_layout(self, weight: torch.Tensor, sz: torch.Tensor) -> None:
        """Take a kernel layout that prepare() built earlier (a cached copy) instead of building it. Checked:
        shapes and dtypes, and the first 64-row block against the portable weights (a stale or damaged copy
        raises ValueError)."""
        N, K = self.out_features + -self.out_features % 16, self.in_features
        if (weight.shape, weight.dtype, sz.shape, sz.dtype) != (
            (N, K // 2),
            torch.uint8,
            (K // self.group_size, N, 2),
            self.scales.dtype,
        ):
            raise ValueError(f"kernel layout of shape {tuple(weight.shape)} / {tuple(sz.shape)} does not fit {N}x{K}")
        rows = min(64, self.out_features)
        first = self._packed_rows(0, rows)
        if not (
            torch.equal(first, weight[: len(first)])
            and torch.equal(sz[:, :rows], _scales_zeros(self.scales[:rows], self.zeros[:rows], sz.dtype))
        ):
            raise ValueError("kernel layout does not match the weights")
        self.kernel_weight, self.kernel_sz = weight, sz

    def _apply(self, fn, recurse=True):  # the packed layout is per device: moving the module drops it
        self.kernel_weight = self.kernel_sz = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_weight is None:
            raise RuntimeError("Int4Linear.prepare() was not called after loading (prepare_quantized(model))")
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if self.gemv and kernels.available(x2, self.group_size):
            y = kernels.gemv(x2, self.qweight, kernels.INT4, self.scales, self.zeros, self.group_size)
        elif x2.device.type == "cpu" and (x2.shape[0] >= DENSE_INT4_M or x2.dtype == torch.float32):
            # a block of rows at a time bounds the dequantized copy (the output matrix would take 335 MB)
            step = max(16, DENSE_ELEMENTS // self.in_features)
            parts = [F.linear(x2, self.dense(i, i + step)) for i in range(0, self.out_features, step)]
            y = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        else:
            y = _int4_mm(x2, self.kernel_weight, self.group_size, self.kernel_sz)[:, : self.out_features]
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(unpack_int4(self.qweight), self.scales, self.zeros)

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start:stop of the weights in the activation dtype, for a dense matmul, as (q - 8) * s + z.
        Not q * s + (z - 8 s): in bf16 those two terms nearly cancel for small weights, and rounding each
        cost +0.1 point of int4 perplexity; float32 arithmetic would cost 40% more time."""
        p, s, z = self.qweight[start:stop], self.scales[start:stop], self.zeros[start:stop]
        N, G = s.shape
        f = (p ^ 0x88).view(torch.int8)  # each nibble q -> q ^ 8, which as a signed 4-bit number is q - 8
        q = torch.stack(((f << 4) >> 4, f >> 4), dim=-1).view(N, G, -1).to(s.dtype)  # arithmetic shifts
        return (q * s[..., None] + z[..., None]).view(N, self.in_features)

    @classmethod
    def cat(cls, parts: list["Int4Linear"]) -> "Int4Linear":
        """Stack output channels (exact: groups run along the inputs)."""
        m = cls(
            parts[0].in_features,
            sum(p.out_features for p in parts),
            parts[0].group_size,
            parts[0].scales.dtype,
            parts[0].qweight.device,
        )
        if m.qweight.is_meta:
            return m
        m.qweight = torch.cat([p.qweight for p in parts])
        m.scales = torch.cat([p.scales for p in parts])
        m.zeros = torch.cat([p.zeros for p in parts])
        return m

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group={self.group_size}"


class Int8Embedding(nn.Module):
    """Quantized token embedding, also the tied output layer (attend)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.table = Int8Linear(embedding_dim, num_embeddings, dtype, device)  # rows = tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        return t.weight[ids].to(t.scales.dtype) * t.scales[ids].unsqueeze(-1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)

    @property
    def weight(self) -> torch.Tensor:
        """The table dequantized in the activation dtype, (V, C): for callers that need the output matrix as a
        tensor, e.g. the training loss's chunked head under QLoRA (model.forward(head=...)). A fresh copy per call."""
        t = self.table
        return t.weight.to(t.scales.dtype) * t.scales[:, None]


class Int4Embedding(nn.Module):
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        group_size: int = 64,
        dtype: torch.dtype = torch.bfloat16,
        device=None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.table = Int4Linear(embedding_dim, num_embeddings, group_size, dtype, device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        rows = ids.reshape(-1)
        w = dequantize_int4(unpack_int4(t.qweight[rows]), t.scales[rows], t.zeros[rows])
        return w.to(t.scales.dtype).reshape(*ids.shape, self.embedding_dim)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)

    @property
    def weight(self) -> torch.Tensor:
        """The table dequantized in the activation dtype, (V, C) (see Int8Embedding.weight)."""
        return self.table.dense()


RESCORE_K = 64  # tokens whose logits an int4+int8 output layer recomputes from the int8 rows


@torch.library.custom_op("opengemma::int8_rows_mm", mutates_args=())
def int8_rows_mm(x2: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """x2 (M, K) against its own rows top (M, k) of an int8 matrix: (M, k), computed by the int8 layer's
    own kernel (every row against all M * k gathered rows, then each row's block: M is small), so the values
    equal Int8Linear's bit for bit. An opaque op: inductor's int8 GEMM lowering would need the gathered
    scales as a stored buffer."""
    M, k = top.shape
    rows = top.reshape(-1)
    out = _int8_mm(x2, weight[rows], scales[rows]).view(M, M, k)
    return out.diagonal(dim1=0, dim2=1).transpose(0, 1).contiguous()


@int8_rows_mm.register_fake
def _(x2, weight, scales, top):
    return x2.new_empty(top.shape)


class RescoredEmbedding(Int8Embedding):
    """The tied table in int8 (lookups, and the output layer over many rows) plus an int4 copy that scores
    decode steps: its logits pick the RESCORE_K best tokens, whose logits are then recomputed from their int8
    rows. A decode step reads the int4 table and k int8 rows instead of the int8 table (~half the bytes of
    the model's largest matrix), and the logits that greedy decoding, top-k (k <= 64) and nucleus sampling
    look at are the int8 model's; only the tail keeps int4 values."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        group_size: int = 32,
        dtype: torch.dtype = torch.bfloat16,
        device=None,
    ):
        super().__init__(num_embeddings, embedding_dim, dtype, device)
        self.approx = Int4Linear(embedding_dim, num_embeddings, group_size, dtype, device)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.embedding_dim)
        if x2.shape[0] > SMALL_M:  # scoring many positions (prefill, perplexity): int8 throughout
            return self.table(x)
        t = self.table
        x2 = x2.to(t.scales.dtype)
        logits = self.approx(x2)  # (M, V) int4 scores
        top = logits.topk(RESCORE_K, dim=-1).indices  # (M, k)
        exact = int8_rows_mm(x2, t.weight, t.scales, top)
        logits = logits.scatter(1, top, exact.to(logits.dtype))
        return logits.reshape(*x.shape[:-1], self.num_embeddings).to(x.dtype)
