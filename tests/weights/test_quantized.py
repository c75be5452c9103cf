"""The quantized checkpoint format (opengemma/weights/quantized.py): the int4 CPU kernel layout cached next to the
weights (a damaged copy detected and rebuilt), int8 data 64-byte aligned so that loading maps it."""

import pytest
import torch
from helpers import tiny_model

from opengemma.qlinear import Int4Linear
from opengemma.quantize import quantize_model
from opengemma.weights.quantized import load_quantized, save_quantized


def test_int4_cpu_layout_cached_next_to_the_weights(tmp_path, monkeypatch):
    """The first CPU load saves the int4 kernel layout in the cache directory, later loads map it instead of
    repacking; a damaged copy is detected (shapes, first block vs the weights) and rebuilt."""
    from opengemma.weights.quantized import cpu_layout_file

    model = tiny_model("tiny-gemma3", std=0.1)
    tok = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        quantize_model(model, "int4", group_size=32, embedding="int4+int8")
        ref = model(tok)
        save_quantized(model, tmp_path / "q")
        file = cpu_layout_file(tmp_path / "q")
        assert not file.exists()
        assert torch.equal(load_quantized(tmp_path / "q")(tok), ref)
        assert file.exists()

        def no_repack(self):
            raise AssertionError("repacked although a cached layout exists")

        with monkeypatch.context() as m:
            m.setattr(Int4Linear, "prepare", no_repack)
            warm = load_quantized(tmp_path / "q")
            assert torch.equal(warm(tok), ref)
        layouts = [m.kernel_weight for m in warm.modules() if isinstance(m, Int4Linear)]
        assert len(layouts) == 4 * len(warm.layers) + 1 and all(w is not None for w in layouts)  # qkv, o, gate_up, down

        # flip the first block's bytes of one matrix's layout in the file: detected, rebuilt, same outputs
        from opengemma.weights.quantized import _layout

        start, offsets = _layout(file)
        data = bytearray(file.read_bytes())
        at = start + offsets["layers.1.mlp.gate_up_proj.kernel_weight"]
        data[at : at + 16] = bytes(255 - b for b in data[at : at + 16])
        file.write_bytes(bytes(data))
        with pytest.warns(UserWarning, match="rebuilding the int4 CPU layout"):
            back = load_quantized(tmp_path / "q")
        assert torch.equal(back(tok), ref)
        assert torch.equal(load_quantized(tmp_path / "q")(tok), ref)  # the rebuilt file is good again


def test_quantized_checkpoint_data_is_64_byte_aligned(tmp_path):
    """The int8 kernel needs 64-byte aligned weights: the saved data starts aligned, so loading maps them
    instead of copying (the tied 262144-row table would otherwise be a 160 MB copy)."""
    import json
    import struct

    # d_model 80: the bf16 tensors stored before the int8 ones (norms, scales) end 32 bytes off alignment
    for mode, emb, kw in (("int4", "int4+int8", {}), ("int8", "int8", dict(d_model=80))):
        save_quantized(
            quantize_model(tiny_model("tiny-gemma3", std=0.1, **kw), mode, group_size=32, embedding=emb),
            tmp_path / mode,
        )
        with open(tmp_path / mode / "model.safetensors", "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        int8 = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "I8"]
        assert int8 and all((8 + n + header[k]["data_offsets"][0]) % 64 == 0 for k in int8)
        back = load_quantized(tmp_path / mode)  # and the padding tensor is not part of the model
        assert torch.equal(
            back.embed.table.weight,
            quantize_model(tiny_model("tiny-gemma3", std=0.1, **kw), mode, 32, embedding=emb).embed.table.weight,
        )
