"""Triton GEMV: few-row products (decode at batch 1-4) against float, int8 or int4 weights on GPU.

A decode step is a chain of matrix-vector products that only need to stream each weight once at full memory
bandwidth. Generated code misses that on the largest ones (gemma-2b's down projection, K = 16,384 but only
N = 2,048 rows, ran at half the bandwidth) and on int8, whose reductions ran slower than bf16's. Here one
kernel covers the three weight formats the quantized modules keep:

  FLOAT  weight (N, K) in bf16/fp16/fp32
  INT8   weight (N, K) int8, per-row scales (N,)                         y = (x @ w^T) * s
  INT4   qweight (N, K/2) uint8 (element 2j in the low nibble), scales and zeros (N, K/G) per group of G:
         w = (q - 8) * s + z, so a group's share is s * (sum x q - 8 sum x) + z * sum x: the scale and zero
         are applied once per group, not per element.

A program streams BLOCK_N weight rows through NG chunks of K per step (CHUNK elements; for int4 a
quantization group, one 16-byte vector at G = 32). Float and int8 products accumulate elementwise and reduce
once at the end; int4 reduces each group in-thread, then applies its scale and zero. Each row of x (up to 4)
has its own accumulator, so the weight tile is read once for all of them. Long K and few rows (N * split
small against the number of multiprocessors) are split along K into `split` partial sums, written side by
side in float32 and added by the caller (deterministic: no atomics), so every multiprocessor has rows to
stream. Tile shapes are autotuned per (N, K, format, rows) on first use.

Registered as a `torch.library.triton_op`, so torch.compile inlines the kernel into the decode step's graph
(and its CUDA graph). With TRITON_INTERPRET=1 the same kernel runs on CPU tensors through Triton's
interpreter: that is how the tests check it on machines without a GPU."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

FLOAT, INT8, INT4 = 0, 1, 2
CHUNK = 32  # float/int8: K elements per contiguous chunk (int4: the quantization group)
GEMV_MAX_M = 4  # rows (batch x tokens) up to which products go to the GEMV kernel; more use tensor cores
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, as triton.jit reads it

triton = None
if torch.cuda.is_available() or INTERPRET:  # importing Triton costs ~150 MB of memory: not on CPU-only runs
    try:
        import triton
        import triton.language as tl
    except ImportError:  # every caller falls back to torch's own kernels
        triton = None


def available(x2: torch.Tensor, group_size: int = CHUNK) -> bool:
    """Whether the GEMV kernel can take this (M, K) input: Triton installed, a GPU tensor (or the
    interpreter on CPU), few rows, K in whole chunks (int4: groups) of a power-of-two size."""
    return (
        triton is not None
        and (x2.device.type == "cuda" or INTERPRET)
        and x2.dim() == 2
        and 0 < x2.shape[0] <= GEMV_MAX_M
        and x2.shape[1] % group_size == 0
        and group_size & (group_size - 1) == 0
    )


if triton is not None:

    @triton.jit
    def _int4_part(x_row, g, g_ok, rc, lo, hi, s, z, GS: tl.constexpr):
        """One row of x against a tile of int4 groups: (BN, NG) group sums s * (x.q - 8 sum x) + z * sum x."""
        xk = x_row + g[:, None] * GS + 2 * rc[None, :]  # (NG, CH) even k; odd k one further
        xe = tl.load(xk, mask=g_ok[:, None], other=0).to(tl.float32)
        xo = tl.load(xk + 1, mask=g_ok[:, None], other=0).to(tl.float32)
        dot = tl.sum(lo * xe[None, :, :] + hi * xo[None, :, :], axis=2)  # in-thread: a group is one vector
        xs = tl.sum(xe + xo, axis=1)  # (NG,)
        return s * (dot - 8.0 * xs[None, :]) + z * xs[None, :]

    @triton.jit
    def _store_row(out_ptr, acc, row: tl.constexpr, pid_s, rn, n_ok, M, N: tl.constexpr, s_ptr, FMT: tl.constexpr):
        res = tl.sum(acc, axis=1)  # (BN,)
        if FMT == 1:  # int8: per-row scales, once at the end
            res = res * tl.load(s_ptr + rn, mask=n_ok, other=0).to(tl.float32)
        tl.store(out_ptr + (pid_s * M + row) * N + rn, res, mask=n_ok & (rn * 0 + row < M))

    @triton.jit
    def _gemv_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        z_ptr,
        out_ptr,
        M,
        N: tl.constexpr,
        K: tl.constexpr,
        FMT: tl.constexpr,
        GS: tl.constexpr,
        CH: tl.constexpr,
        M_PAD: tl.constexpr,
        SPLIT: tl.constexpr,
        BLOCK_N: tl.constexpr,
        NG: tl.constexpr,
    ):
        # program (pid_n, pid_s): weight rows pid_n * BLOCK_N ..., the K chunks of split pid_s;
        # out (SPLIT, M, N) float32. One accumulator per row of x (M_PAD <= 4): the weight tile is read once
        # for all of them. Rows past M (padding) re-read row M - 1 and are not stored.
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        per_split: tl.constexpr = K // GS // SPLIT  # chunks per split
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
        n_ok = rn < N
        x1 = x_ptr + tl.minimum(1, M - 1) * K
        x2 = x_ptr + tl.minimum(2, M - 1) * K
        x3 = x_ptr + tl.minimum(3, M - 1) * K
        if FMT == 2:  # int4: (BN, NG, CH) bytes, per-group sums
            rg = tl.arange(0, NG)
            rc = tl.arange(0, CH)
            acc0 = tl.zeros((BLOCK_N, NG), dtype=tl.float32)
            acc1 = acc0
            acc2 = acc0
            acc3 = acc0
            for i in range(0, per_split, NG):  # a trip count known at compile time
                g_ok = i + rg < per_split
                g = pid_s * per_split + i + rg  # (NG,) group indices
                b = tl.load(
                    w_ptr + rn[:, None, None] * (K // 2) + g[None, :, None] * CH + rc[None, None, :],
                    mask=n_ok[:, None, None] & g_ok[None, :, None],
                    other=0,
                )  # two weights a byte
                lo = (b & 15).to(tl.float32)
                hi = (b >> 4).to(tl.float32)
                sz = rn[:, None] * (K // GS) + g[None, :]
                sz_ok = n_ok[:, None] & g_ok[None, :]
                s = tl.load(s_ptr + sz, mask=sz_ok, other=0).to(tl.float32)  # (BN, NG)
                z = tl.load(z_ptr + sz, mask=sz_ok, other=0).to(tl.float32)
                acc0 += _int4_part(x_ptr, g, g_ok, rc, lo, hi, s, z, GS)
                if M_PAD > 1:
                    acc1 += _int4_part(x1, g, g_ok, rc, lo, hi, s, z, GS)
                if M_PAD > 2:
                    acc2 += _int4_part(x2, g, g_ok, rc, lo, hi, s, z, GS)
                    acc3 += _int4_part(x3, g, g_ok, rc, lo, hi, s, z, GS)
        else:  # float / int8: (BN, BK) tiles, elementwise accumulators reduced once at the end
            BK: tl.constexpr = NG * GS
            span: tl.constexpr = per_split * GS  # K elements per split
            rk = tl.arange(0, BK)
            acc0 = tl.zeros((BLOCK_N, BK), dtype=tl.float32)
            acc1 = acc0
            acc2 = acc0
            acc3 = acc0
            for i in range(0, span, BK):
                k_ok = i + rk < span
                k = pid_s * span + i + rk  # (BK,)
                w = tl.load(w_ptr + rn[:, None] * K + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0).to(
                    tl.float32
                )
                acc0 += w * tl.load(x_ptr + k, mask=k_ok, other=0).to(tl.float32)[None, :]
                if M_PAD > 1:
                    acc1 += w * tl.load(x1 + k, mask=k_ok, other=0).to(tl.float32)[None, :]
                if M_PAD > 2:
                    acc2 += w * tl.load(x2 + k, mask=k_ok, other=0).to(tl.float32)[None, :]
                    acc3 += w * tl.load(x3 + k, mask=k_ok, other=0).to(tl.float32)[None, :]
        _store_row(out_ptr, acc0, 0, pid_s, rn, n_ok, M, N, s_ptr, FMT)
        if M_PAD > 1:
            _store_row(out_ptr, acc1, 1, pid_s, rn, n_ok, M, N, s_ptr, FMT)
        if M_PAD > 2:
            _store_row(out_ptr, acc2, 2, pid_s, rn, n_ok, M, N, s_ptr, FMT)
            _store_row(out_ptr, acc3, 3, pid_s, rn, n_ok, M, N, s_ptr, FMT)

    # Tile shapes (rows per program, chunks per step, warps, pipeline stages): small tiles for float/int8 and
    # few rows, larger ones so that an int4 thread holds whole 16-byte groups. Ten: seconds to tune a shape.
    _CONFIGS = [
        triton.Config({"BLOCK_N": bn, "NG": ng}, num_warps=w, num_stages=st)
        for bn, ng, w, st in [
            (8, 8, 4, 3),
            (16, 4, 4, 3),
            (16, 8, 4, 3),
            (32, 4, 4, 3),
            (32, 8, 4, 2),
            (32, 8, 8, 2),
            (64, 4, 4, 2),
            (64, 8, 8, 2),
            (8, 16, 4, 3),
            (16, 16, 8, 2),
        ]
    ]

    def _fits(c, fmt: int, m_pad: int) -> bool:
        """Float/int8 keep an accumulator tile per row of x: at most 128 float32 accumulators a thread (larger
        tiles spill registers at 4 rows when compiled for sm_90: tests/quantize/test_kernels.py)."""
        return fmt == INT4 or c.kwargs["BLOCK_N"] * c.kwargs["NG"] * CHUNK * m_pad <= 128 * 32 * c.num_warps

    # one autotuner per config list (chosen in Python at launch, so torch.compile sees a plain autotuned kernel)
    _TUNED = {
        (fmt, m): triton.autotune(
            [c for c in _CONFIGS if _fits(c, fmt, m)], key=["N", "K", "FMT", "GS", "M_PAD", "SPLIT"]
        )(_gemv_kernel)
        for fmt in (FLOAT, INT8, INT4)
        for m in (1, 2, 4)
    }

    def _gemv_run(
        x2: torch.Tensor,
        weight: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        fmt: int,
        group_size: int,
        split: int,
    ) -> torch.Tensor:
        M, K = x2.shape
        N = weight.shape[0]
        out = torch.empty((split, M, N), dtype=torch.float32, device=x2.device)
        meta = dict(
            N=N,
            K=K,
            FMT=fmt,
            GS=group_size,
            CH=group_size // 2 if fmt == INT4 else group_size,
            M_PAD=triton.next_power_of_2(M),
            SPLIT=split,
        )
        if INTERPRET:  # the interpreter cannot time configs: one fixed tile
            _gemv_kernel[(triton.cdiv(N, 16), split)](x2, weight, scales, zeros, out, M, **meta, BLOCK_N=16, NG=4)
        else:
            tuned = _TUNED[fmt, meta["M_PAD"]]
            torch.library.wrap_triton(tuned)[lambda c: (triton.cdiv(N, c["BLOCK_N"]), split)](
                x2, weight, scales, zeros, out, M, **meta
            )
        return out

    if not INTERPRET:  # a triton_op: torch.compile sees the kernel and inlines it into the step's graph
        torch.library.triton_op("opengemma::gemv", _gemv_run, mutates_args=())
    else:  # the interpreter's kernel cannot be traced: an opaque op with a shape-only fake, so a compiled
        # step on CPU still checks the modules' dispatch in one graph
        gemv_op = torch.library.custom_op("opengemma::gemv", _gemv_run, mutates_args=())

        @gemv_op.register_fake
        def _(x2, weight, scales, zeros, fmt, group_size, split):
            return x2.new_empty((split, x2.shape[0], weight.shape[0]), dtype=torch.float32)


def split_k(N: int, K: int, group_size: int, sms: int) -> int:
    """Partial sums along K so that rows x splits give every multiprocessor work (about 64 rows per SM),
    keeping at least 8 chunks per split; a power of two dividing K's chunk count."""
    chunks, split = K // group_size, 1
    while N * split < 64 * sms and chunks % (2 * split) == 0 and chunks // (2 * split) >= 8:
        split *= 2
    return split


_SMS: dict[tuple[str, int | None], int] = {}  # multiprocessors per device, filled eagerly (prime_devices, first call)


def _sms(device: torch.device) -> int:
    key = (device.type, device.index)
    if key not in _SMS:
        _SMS[key] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return _SMS[key]


def gemv(
    x2: torch.Tensor,
    weight: torch.Tensor,
    fmt: int = FLOAT,
    scales: torch.Tensor | None = None,
    zeros: torch.Tensor | None = None,
    group_size: int = CHUNK,
) -> torch.Tensor:
    """x2 (M, K) against weight rows (N, K) in format fmt: (M, N) in x2's dtype (accumulated in float32).
    Callers check `available(x2, group_size)` first."""
    K, N = x2.shape[1], weight.shape[0]
    split = split_k(N, K, group_size, _sms(x2.device))
    s = scales if scales is not None else weight  # unused pointers for the float format
    z = zeros if zeros is not None else s
    out = torch.ops.opengemma.gemv(x2.contiguous(), weight, s, z, fmt, group_size, split)
    return (out[0] if split == 1 else out.sum(0)).to(x2.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear without bias, through the GEMV kernel where it applies."""
    x2 = x.reshape(-1, x.shape[-1])
    if available(x2):
        return gemv(x2.to(weight.dtype), weight).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)
    return nn.functional.linear(x, weight)


def prime_devices(devices) -> None:
    """Read each device's multiprocessor count now, so that a traced decode step reads a number and never
    queries the device (engine.generate.set_gemv calls it when switching the kernel on)."""
    for device in devices:
        _sms(device)
