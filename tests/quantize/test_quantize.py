"""Quantizing a model (opengemma/quantize.py's swaps): int8 / int4 / the int4+int8 output layer / a GGUF's mixed
formats, each against the float model carrying its dequantized weights, through a save / load, in generation,
and in a decode step without graph breaks."""

import pytest
import torch
from helpers import explain_decode_step, tiny_model

from opengemma.engine.generate import generate
from opengemma.qlinear import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, RescoredEmbedding
from opengemma.quantize import quantize_model
from opengemma.weights.quantized import load_quantized, save_quantized


def test_rescored_model_decodes_the_int8_output_layers_tokens(tmp_path):
    import copy

    model = tiny_model("tiny-gemma3", std=0.1)
    ref = quantize_model(copy.deepcopy(model), "int4", group_size=32, embedding="int8")
    resc = quantize_model(model, "int4", group_size=32, embedding="int4+int8")
    assert isinstance(resc.embed, RescoredEmbedding)
    prompts = [list(range(2, 14)), [2, 40, 41]]
    want = [o.tokens for o in generate(ref, prompts, max_new_tokens=16)]
    assert [o.tokens for o in generate(resc, prompts, max_new_tokens=16)] == want
    save_quantized(resc, tmp_path / "q")
    back = load_quantized(tmp_path / "q")
    assert isinstance(back.embed, RescoredEmbedding)
    assert [o.tokens for o in generate(back, prompts, max_new_tokens=16)] == want
    # compiled (the rescoring is an opaque custom op inside the one graph), against the compiled int8 layer
    # (inductor's fused bf16 arithmetic rounds differently from eager, for both)
    assert [o.tokens for o in generate(back, prompts, max_new_tokens=16, compile=True)] == [
        o.tokens for o in generate(ref, prompts, max_new_tokens=16, compile=True)
    ]


def _dequantized_reference(float_model, qmodel):
    """The float model carrying the quantized weights, dequantized: the exact math the kernels approximate."""
    import copy

    ref = copy.deepcopy(float_model)
    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    with torch.no_grad():
        for name, m in qmodel.named_modules():
            if not isinstance(m, (Int8Linear, Int4Linear)):
                continue
            parent, _, leaf = name.rpartition(".")
            if leaf == "table":  # the embedding
                ref.get_submodule(parent).weight.copy_(m.dequantized())
            elif leaf in fused:  # stacked rows of the original projections
                w = m.dequantized()
                for part in fused[leaf]:
                    target = ref.get_submodule(f"{parent}.{part}").weight
                    target.copy_(w[: target.shape[0]])
                    w = w[target.shape[0] :]
            else:
                ref.get_submodule(name).weight.copy_(m.dequantized())
    return ref


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_matches_its_dequantized_reference_and_round_trips(tmp_path, mode):
    model = tiny_model("tiny-gemma3", std=0.1)
    tok = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(3))
    import copy

    float_model = copy.deepcopy(model)
    with torch.no_grad():
        quantize_model(model, mode, group_size=32, embedding=mode)
        assert isinstance(model.layers[0].mlp.gate_up_proj, Int8Linear if mode == "int8" else Int4Linear)
        assert isinstance(model.layers[0].attn.qkv_proj, Int8Linear if mode == "int8" else Int4Linear)
        assert isinstance(model.embed, Int8Embedding if mode == "int8" else Int4Embedding)
        out = model(tok).float()
        ref = _dequantized_reference(float_model, model)(tok)
        assert (out - ref).abs().max() <= 0.1 * ref.abs().max()  # bf16 activations and scales only
        assert torch.equal(out.argmax(-1), ref.argmax(-1)) or (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
        if mode == "int8":  # and int8 stays close to the original float model
            full = float_model(tok)
            assert (out - full).abs().max() <= 0.1 * full.abs().max()
        save_quantized(model, tmp_path / "q")
        back = load_quantized(tmp_path / "q")
        assert torch.equal(back(tok), model(tok))
    # the quantized model generates, and a ragged batch still equals one prompt at a time
    prompts = [list(range(2, 14)), [2, 40, 41]]
    batch = generate(back, prompts, max_new_tokens=10)
    assert [generate(back, [p], max_new_tokens=10)[0].tokens for p in prompts] == [o.tokens for o in batch]


def mixed_formats(model) -> dict[str, str]:
    """int8, int4 and float matrices side by side, as a GGUF file's own types give (quantize="gguf")."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return {"embed": "int8", **{n: ("int8", "int4", "float")[i % 3] for i, n in enumerate(names)}}


@pytest.mark.parametrize(
    "mode,embedding", [("int8", "int8"), ("int4", "int4"), ("gguf", "default"), ("int4", "int4+int8")]
)
def test_quantized_decode_step_has_no_graph_breaks(mode, embedding):
    model = tiny_model("tiny-gemma3", std=0.1)
    formats = mixed_formats(model) if mode == "gguf" else None
    model = quantize_model(model, mode, group_size=32, embedding=embedding, formats=formats)
    if formats:
        assert {type(m).__name__ for m in model.layers[0].modules()} >= {"Int8Linear", "Int4Linear", "Linear"}
    explanation = explain_decode_step(model)
    assert explanation.graph_break_count == 0, explanation.break_reasons
