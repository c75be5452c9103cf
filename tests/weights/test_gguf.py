"""GGUF checkpoints (opengemma/weights/gguf.py): round trips in float and quantized types, GGUF -> HF -> opengemma,
a file's own 4-bit blocks kept as int4 groups (quantize="gguf" and "int4"), strict errors on bad files."""

import numpy as np
import pytest
import torch
from helpers import random_tokens, tiny_model

import opengemma
from opengemma.model import Gemma
from opengemma.qlinear import dequantize_int4
from opengemma.weights import CheckpointError
from opengemma.weights.gguf import INT4_TYPES, int4_groups, load_gguf, open_gguf, save_gguf
from opengemma.weights.hf import load_hf_dir, save_hf_dir

TINY = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]


@pytest.mark.parametrize("name", TINY)
def test_gguf_f32_round_trip(tmp_path, name):
    model = tiny_model(name, std=0.1)
    path = save_gguf(model, tmp_path / "m.gguf")
    back, reader = load_gguf(path, progress=False)
    assert back.config.family == model.config.family
    for f in (
        "n_kv_heads",
        "layer_types",
        "sliding_window",
        "attn_softcap",
        "final_softcap",
        "qk_norm",
        "sandwich_norms",
        "query_pre_attn_scalar",
        "rope_base",
        "rope_local_base",
        "vocab_size",
    ):
        assert getattr(back.config, f) == getattr(model.config, f), f
    tok = random_tokens(model.config, 2, 24, seed=5)
    with torch.no_grad():
        # norms go through +1 / -1 in float32: equal to rounding
        assert (back(tok) - model(tok)).abs().max() <= 1e-5


@pytest.mark.parametrize("qtype,tol", [("F16", 0.05), ("Q8_0", 0.25)])
def test_gguf_quantized_types_load(tmp_path, qtype, tol):
    model = tiny_model("tiny-gemma2", std=0.1)
    path = save_gguf(model, tmp_path / "m.gguf", qtype=qtype)
    reader = open_gguf(path)
    assert {t.tensor_type.name for t in reader.tensors} == {"F32", qtype}
    back, _ = load_gguf(path, progress=False)
    w, w0 = back.layers[0].mlp.up_proj.weight, model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w, w0) and (w - w0).abs().max() < 0.01  # really quantized, and close
    tok = random_tokens(model.config, 2, 24, seed=5)
    with torch.no_grad():
        assert (back(tok) - model(tok)).abs().max() <= tol


def test_gguf_to_hf_to_opengemma_identical(tmp_path):
    """GGUF -> (opengemma's cache / convert) HF directory -> opengemma: identical logits."""
    model = tiny_model("tiny-gemma3", std=0.1)
    gguf_path = save_gguf(model, tmp_path / "m.gguf", qtype="Q8_0")
    from_gguf, _ = load_gguf(gguf_path, progress=False)
    save_hf_dir(from_gguf, tmp_path / "hf")
    from_hf = load_hf_dir(tmp_path / "hf")
    tok = random_tokens(model.config, 2, 24, seed=5)
    with torch.no_grad():
        assert torch.equal(from_gguf(tok), from_hf(tok))


# -- keeping a file's own quantization --------------------------------------------------------------
def _random_blocks(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """n random but valid blocks of a 4-bit type: finite fp16 scale fields, arbitrary 6-bit scales and nibbles."""
    rng = np.random.default_rng(seed)
    size, n_f16 = {"Q4_0": (18, 1), "Q4_1": (20, 2), "Q4_K": (144, 2)}[kind]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    blocks[:, : 2 * n_f16] = rng.uniform(-0.05, 0.05, (n, n_f16)).astype(np.float16).view(np.uint8)
    return blocks


@pytest.mark.parametrize("kind", INT4_TYPES)
def test_int4_groups_are_the_files_own_values(kind):
    """A 4-bit GGUF tensor read as int4 groups of 32 dequantizes to exactly what the gguf library reads."""
    from types import SimpleNamespace

    import gguf

    N, K = 6, 512
    qt = getattr(gguf.GGMLQuantizationType, kind)
    blocks = _random_blocks(kind, N * K // (256 if kind == "Q4_K" else 32)).reshape(N, -1)
    t = SimpleNamespace(name="w", tensor_type=qt, shape=(K, N), data=blocks)
    q, scales, zeros = int4_groups(t)
    assert q.shape == (N, K) and q.dtype == torch.uint8 and int(q.max()) <= 15 and scales.shape == (N, K // 32)
    ref = torch.from_numpy(gguf.quants.dequantize(blocks, qt)).reshape(N, K)
    torch.testing.assert_close(dequantize_int4(q, scales, zeros), ref, rtol=1e-6, atol=1e-9)


def _expected_weight(ref: Gemma, name: str) -> torch.Tensor:
    """A float model's weight of a (possibly fused) module name."""
    parent, _, leaf = name.rpartition(".")
    parts = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}.get(leaf)
    if leaf == "table":
        return ref.embed.weight
    if parts:
        return torch.cat([ref.get_submodule(f"{parent}.{p}").weight for p in parts])
    return ref.get_submodule(name).weight


def test_gguf_mode_keeps_the_files_quantization(tmp_path, monkeypatch):
    """quantize="gguf": 4-bit blocks become int4 groups holding the file's exact values (no re-rounding),
    5-8-bit types int8, float tensors stay float; fusion only joins matrices of one format; cached."""
    from opengemma.model import Linear
    from opengemma.qlinear import Int4Linear, Int8Embedding, Int8Linear

    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    model = tiny_model("tiny-gemma3", std=0.1)
    mixed = {
        "layers.0.attn.v_proj.weight": "Q4_1",
        "layers.0.mlp.down_proj.weight": "Q8_0",
        "layers.1.attn.o_proj.weight": "F16",
        "layers.1.attn.k_proj.weight": "Q5_0",
        "embed.weight": "Q8_0",
    }
    path = save_gguf(model, tmp_path / "m.gguf", qtype="Q4_0", qtypes=mixed)
    with pytest.warns(UserWarning, match="no tokenizer"):
        ref = opengemma.load(path).model  # the file dequantized to float32
    with pytest.warns(UserWarning, match="no tokenizer"):
        llm = opengemma.load(path, quantize="gguf", dtype="float32")  # float32 scales: exact
    m = llm.model
    assert m.quantization["mode"] == "gguf" and m.quantization["method"] == "kept"
    l0, l1 = m.layers[0], m.layers[1]
    assert isinstance(l0.attn.qkv_proj, Int4Linear)  # Q4_0, Q4_0, Q4_1: one format, fused
    assert isinstance(l0.mlp.down_proj, Int8Linear) and isinstance(m.embed, Int8Embedding)
    assert type(l1.attn.o_proj) is Linear and l1.attn.o_proj.weight.dtype == torch.float32
    assert l1.attn.qkv_proj is None and isinstance(l1.attn.k_proj, Int8Linear)  # Q4_0 | Q5_0 | Q4_0: not fused
    assert isinstance(l1.attn.q_proj, Int4Linear) and isinstance(l1.mlp.gate_up_proj, Int4Linear)
    int4 = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, Int4Linear)]
    # qkv, o, gate_up, down per layer, but layer 0's down is int8; layer 1: q, v, gate_up, down
    assert len(int4) == 4 * m.config.n_layers - 1
    for name, mod in int4:
        assert torch.equal(mod.dequantized(), _expected_weight(ref, name)), name
    tok = random_tokens(m.config, 2, 24, seed=5)
    with torch.no_grad():
        out, want = m(tok), ref(tok)
    # only the int8 matrices (the Q8_0 / Q5_0 ones) were rounded again, and the kernels' sums differ in order
    assert (out - want).abs().max() <= 0.02 * want.abs().max()
    import opengemma.quantize as q

    monkeypatch.setattr(q, "quantize_model", lambda *a, **k: pytest.fail("quantized twice"))
    with pytest.warns(UserWarning, match="no tokenizer"):
        again = opengemma.load(path, quantize="gguf", dtype="float32").model
    assert again.quantization["formats"] == m.quantization["formats"]
    with torch.no_grad():
        assert torch.equal(again(tok), out)


def test_gguf_mode_with_the_int4_int8_output_layer_keeps_everything_else(tmp_path, monkeypatch):
    """quantize="gguf", embedding_quantize="int4+int8": the file's matrices as gguf mode keeps them, and the
    output layer's int8 table as gguf mode's; only the int4 copy that decode scores with is new."""
    from opengemma.qlinear import RescoredEmbedding

    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    path = save_gguf(
        tiny_model("tiny-gemma3", std=0.1),
        tmp_path / "m.gguf",
        qtype="Q4_0",
        qtypes={"layers.0.attn.k_proj.weight": "Q5_0", "embed.weight": "Q8_0"},
    )
    with pytest.warns(UserWarning, match="no tokenizer"):
        kept = opengemma.load(path, quantize="gguf").model
    with pytest.warns(UserWarning, match="no tokenizer"):
        fast = opengemma.load(path, quantize="gguf", embedding_quantize="int4+int8", int4_method="rtn").model
    assert isinstance(fast.embed, RescoredEmbedding) and fast.quantization["formats"] == kept.quantization["formats"]
    a, b = kept.state_dict(), fast.state_dict()
    assert {k for k in b if not k.startswith("embed.approx")} == set(a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    tok = random_tokens(fast.config, 2, 24, seed=5)
    with torch.no_grad():
        h = fast(tok, hidden=True)[0]  # one row at a time, as decode scores: the int4 copy's path
        rows = [h[i : i + 1] for i in range(len(h))]  # (the int8 kernel's sums differ with the row count)
        got, want = (torch.cat([m.embed.attend(r) for r in rows]) for m in (fast, kept))
    top = got.topk(8)  # the best 8 tokens and their logits are gguf mode's (ties may come in either order)
    assert len(h) > 1 and torch.equal(top.values, want.topk(8).values)
    assert torch.equal(top.values, want.gather(1, top.indices))


def test_int4_mode_takes_a_gguf_files_4bit_blocks_as_they_are(tmp_path, monkeypatch):
    from opengemma.qlinear import Int4Linear

    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    model = tiny_model("tiny-gemma3", std=0.1)
    # Q4_0 (symmetric: its grid seldom spans a group's min..max) is what rounding again would not reproduce
    path = save_gguf(model, tmp_path / "m.gguf", qtype="Q4_0", qtypes={"layers.0.mlp.up_proj.weight": "Q8_0"})
    with pytest.warns(UserWarning, match="no tokenizer"):
        ref = opengemma.load(path).model
    with pytest.warns(UserWarning, match="no tokenizer"):
        m = opengemma.load(path, quantize="int4", int4_method="rtn", dtype="float32").model
    kept = set(m.quantization["exact_int4"])
    assert "layers.0.mlp.up_proj" not in kept and "layers.1.mlp.up_proj" in kept
    assert torch.equal(m.layers[1].mlp.gate_up_proj.dequantized(), _expected_weight(ref, "layers.1.mlp.gate_up_proj"))
    # the Q8_0 matrix was rounded to the int4 grid: close, not equal
    w, w0 = m.layers[0].mlp.gate_up_proj.dequantized(), _expected_weight(ref, "layers.0.mlp.gate_up_proj")
    assert isinstance(m.layers[0].mlp.gate_up_proj, Int4Linear) and not torch.equal(w, w0)
    with pytest.raises(ValueError, match="not made from a GGUF"):
        save_hf_dir(model, tmp_path / "hf")
        opengemma.load(tmp_path / "hf", quantize="gguf")


# -- bad input -------------------------------------------------------------------------------------
def test_truncated_gguf(tmp_path):
    path = save_gguf(tiny_model("tiny-gemma3", std=0.1), tmp_path / "m.gguf")
    data = path.read_bytes()
    for cut in (10, len(data) // 3, len(data) - 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\d+\.gguf.*(corrupt|truncated)"):
            load_gguf(bad, progress=False)
        with pytest.raises(CheckpointError):
            opengemma.load(bad)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        opengemma.load(bad)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


def test_gguf_non_gemma_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture 'llama' is not a Gemma"):
        opengemma.load(tmp_path / "llama.gguf")
