"""The int8 / int4 modules and their numerics (opengemma/qlinear.py): rounding error bounds and packing, the
quantized linears and embeddings vs matmuls on their dequantized weights (kernel and dense paths), the CPU
int4 layout built in row blocks, the int4+int8 output layer's candidates carrying the int8 layer's logits."""

import pytest
import torch

from opengemma.qlinear import (
    DENSE_INT4_M,
    RESCORE_K,
    SMALL_M,
    Int4Embedding,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    RescoredEmbedding,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)


def test_int8_quantization_error_bound():
    w = torch.randn(300, 256)
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_quantization_error_and_packing(group):
    w = torch.randn(96, 256)
    q, s, z = quantize_int4(w, group)
    assert q.min() >= 0 and q.max() <= 15
    deq = ((q.view(96, -1, group).float() - 8) * s[..., None] + z[..., None]).view(96, 256)
    # the clipping search never does worse than plain min-max rounding, group by group
    g = w.view(96, -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    sc = (hi - lo) / 15
    minmax = (torch.round((g - lo) / sc) * sc + lo).view(96, 256)
    assert (
        ((deq - w) ** 2).view(96, -1, group).sum(-1) <= ((minmax - w) ** 2).view(96, -1, group).sum(-1) + 1e-6
    ).all()
    assert ((deq - w).abs() <= s.repeat_interleave(group, dim=1) * 4).all()  # clipped outliers stay bounded
    assert torch.equal(unpack_int4(pack_int4(q)), q)


@pytest.mark.parametrize("M", [1, 3, 40])  # the CPU GEMV kernel path and the dequantize-then-matmul path
def test_int8_linear_matches_reference(M):
    torch.manual_seed(1)
    w, x = torch.randn(512, 256) * 0.05, torch.randn(M, 256).bfloat16()
    m = Int8Linear.from_float(w, torch.bfloat16)
    ref = x.float() @ m.dequantized().T  # exact math on the quantized weights
    y = m(x).float()
    scale = ref.abs().max()
    assert (y - ref).abs().max() <= 0.01 * scale  # bf16 activations and scales
    assert (y - x.float() @ w.T).abs().max() <= 0.03 * scale  # vs the float matmul: quantization error


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize(
    "M,dtype",
    [
        (1, torch.bfloat16),
        (24, torch.bfloat16),
        (DENSE_INT4_M, torch.bfloat16),
        (1, torch.float32),
        (24, torch.float32),
    ],
)  # kernel, kernel, dense, dense, dense
def test_int4_linear_matches_reference(group, M, dtype, monkeypatch):
    import opengemma.qlinear as q  # where the modules read it

    torch.manual_seed(2)
    monkeypatch.setattr(q, "DENSE_ELEMENTS", 100 * 256)  # the dense path in several row blocks, one partial
    w, x = torch.randn(512, 256) * 0.05, torch.randn(M, 256).to(dtype)
    m = Int4Linear.from_float(w, group, dtype)
    m.prepare()
    ref = x.double() @ m.dequantized().double().T
    y = m(x)
    assert y.dtype == dtype and y.shape == (M, 512)
    scale = ref.abs().max()
    assert (y.double() - ref).abs().max() <= (0.01 if dtype == torch.bfloat16 else 1e-5) * scale
    assert (y - x.float() @ w.T).abs().max() <= 0.25 * scale  # 4-bit: coarse, bounded


def test_int4_cpu_layout_built_in_row_blocks_equals_built_at_once(monkeypatch):
    import opengemma.qlinear as q  # where the modules read it

    m = Int4Linear.from_float(torch.randn(100, 64), 32, torch.bfloat16)  # 100 rows: padded to 112
    monkeypatch.setattr(q, "PACK_ROWS", 10**9)
    m.prepare()
    whole = m.kernel_weight
    monkeypatch.setattr(q, "PACK_ROWS", 64)  # the layout packs blocks of 64 rows (32 would mix them)
    m.prepare()
    assert torch.equal(m.kernel_weight, whole)


@pytest.mark.parametrize("cls,args", [(Int8Linear, ()), (Int4Linear, (32,))])
def test_quantized_embedding_lookup_and_attend(cls, args):
    w = torch.randn(1000, 64) * 0.1
    emb = (Int8Embedding if cls is Int8Linear else Int4Embedding)(1000, 64, *args, dtype=torch.bfloat16)
    emb.table = cls.from_float(w, *args, torch.bfloat16)
    if cls is Int4Linear:
        emb.table.prepare()
    ids = torch.tensor([[0, 5, 999], [7, 7, 1]])
    deq = emb.table.dequantized()
    assert (emb(ids).float() - deq[ids]).abs().max() <= 0.01 * deq.abs().max()
    x = torch.randn(2, 3, 64).bfloat16()
    ref = x.float() @ deq.T
    assert (emb.attend(x).float() - ref).abs().max() <= 0.01 * ref.abs().max()


@pytest.mark.parametrize("M", [1, 5, 16, 17])
def test_rescored_output_layer_is_the_int8_layer_on_its_candidates(M):
    """int4+int8: the RESCORE_K tokens the int4 copy ranks best carry the int8 layer's logits bit for bit
    (each row its own candidates), the rest the int4 copy's; over SMALL_M rows, the int8 layer throughout."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2000, 64, generator=g) * 0.1
    emb = RescoredEmbedding(2000, 64, 32, torch.bfloat16)
    emb.table, emb.approx = Int8Linear.from_float(w, torch.bfloat16), Int4Linear.from_float(w, 32, torch.bfloat16)
    emb.approx.prepare()
    x = torch.randn(M, 64, generator=g).bfloat16()
    got, int8, int4 = emb.attend(x), emb.table(x), emb.approx(x)
    if M > SMALL_M:
        assert torch.equal(got, int8)
        return
    top = int4.topk(RESCORE_K, dim=-1).indices
    chosen = torch.zeros_like(got, dtype=torch.bool).scatter(1, top, True)
    assert torch.equal(got[chosen], int8[chosen]) and torch.equal(got[~chosen], int4[~chosen])
    assert torch.equal(got.argmax(-1), int8.argmax(-1))
    ids = torch.tensor([[3, 1999]])  # lookups read the int8 table
    assert torch.equal(emb(ids), Int8Embedding.forward(emb, ids))
