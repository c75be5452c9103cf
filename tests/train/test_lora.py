"""LoRA and QLoRA: a fresh adapter is the base exactly, merge() equals the adapted model, PEFT's files round-trip
both ways against the `peft` package, and quantized bases pass gradients to the adapters only."""

import pytest
import torch
from helpers import make_hf_model, random_tokens, tiny_model

from opengemma.config import GemmaConfig
from opengemma.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_modules,
    merge,
    read_adapter_config,
    resolve_targets,
    save_adapter,
)
from opengemma.quantize import quantize_model, unfuse_projections
from opengemma.weights.hf import load_hf_dir

TINY = ["tiny-gemma", "tiny-gemma2", "tiny-gemma3"]


def _randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", TINY)
def test_fresh_adapter_equals_base_exactly(name):
    model = tiny_model(name, std=0.05)
    tok = random_tokens(model.config, 2, 24, seed=1)
    with torch.no_grad():
        ref = model(tok)
        apply_lora(model, LoRAConfig(rank=4, alpha=8))
        out = model(tok)
    assert len(lora_modules(model)) == 7 * model.config.n_layers
    assert torch.equal(out, ref)  # B = 0: bit for bit, not within a tolerance


@pytest.mark.parametrize("name", TINY)
def test_merge_equals_adapted_model(name):
    model = tiny_model(name, std=0.05)
    apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=("attention", "down_proj")))
    _randomize_b(model)
    tok = random_tokens(model.config, 2, 24, seed=1)
    with torch.no_grad():
        base = tiny_model(name, std=0.05)(tok)
        adapted = model(tok)
        merged = merge(model)(tok)
    assert not lora_modules(model)
    assert (adapted - base).abs().max() > 1e-3  # the adapter does something
    assert (merged - adapted).abs().max() < 1e-5
    assert set(model.state_dict()) == set(tiny_model(name, std=0.05).state_dict())  # a plain Gemma again


def test_only_adapters_train_and_targets_resolve():
    model = tiny_model("tiny-gemma3", std=0.05)
    apply_lora(model, LoRAConfig(rank=2, targets="q_proj,mlp"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".")[-2] for n in trainable} == {"q_proj", "gate_proj", "up_proj", "down_proj"}
    assert resolve_targets("all") == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    with pytest.raises(ValueError, match="unknown LoRA target"):
        resolve_targets(["qproj"])
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, LoRAConfig(rank=2))


def _hf_pair(tmp_path, name="tiny-gemma3"):
    cfg = GemmaConfig.from_name(name)
    hf = make_hf_model(cfg)
    hf.save_pretrained(tmp_path / "base")
    return hf, load_hf_dir(tmp_path / "base")


@pytest.mark.parametrize("name", TINY)
def test_adapter_trained_here_loads_in_peft(tmp_path, name):
    import peft  # the test extra installs it: the round trip is checked, never skipped

    hf, ours = _hf_pair(tmp_path, name)
    apply_lora(ours, LoRAConfig(rank=4, alpha=16, targets=("q_proj", "v_proj", "o_proj", "up_proj")))
    _randomize_b(ours, seed=3)
    save_adapter(ours, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    tuned = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    tok = random_tokens(ours.config, 2, 20, seed=2)
    with torch.no_grad():
        ref, out = tuned(tok).logits, ours(tok)
    assert (out - ref).abs().max() < 1e-4
    with torch.no_grad(), tuned.disable_adapter():
        base = tuned(tok).logits
    assert (ref - base).abs().max() > 1e-3  # peft really applied the adapter


@pytest.mark.parametrize("name", TINY)
def test_adapter_trained_with_peft_loads_here(tmp_path, name):
    import peft  # the test extra installs it: the round trip is checked, never skipped

    hf, ours = _hf_pair(tmp_path, name)
    cfg = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["k_proj", "gate_proj", "down_proj"], lora_dropout=0.0)
    tuned = peft.get_peft_model(hf, cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    tuned.save_pretrained(tmp_path / "peft_adapter")
    load_adapter(ours, tmp_path / "peft_adapter")
    assert read_adapter_config(tmp_path / "peft_adapter").scaling == 3.0
    tok = random_tokens(ours.config, 2, 20, seed=2)
    with torch.no_grad():
        ref, out = tuned(tok).logits, ours(tok)
    assert (out - ref).abs().max() < 1e-4
    with torch.no_grad(), tuned.disable_adapter():
        assert (ref - tuned(tok).logits).abs().max() > 1e-3


def test_load_adapter_refuses_mismatched_files(tmp_path):
    model = tiny_model("tiny-gemma3", std=0.05)
    apply_lora(model, LoRAConfig(rank=4, targets=("q_proj",)))
    save_adapter(model, tmp_path / "a")
    other = tiny_model("tiny-gemma", std=0.05)  # another depth / width: the names or shapes differ
    with pytest.raises(ValueError):
        load_adapter(other, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        load_adapter(tiny_model("tiny-gemma3", std=0.05), tmp_path)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_qlora_gradients_reach_adapters_only(mode):
    torch.manual_seed(0)
    model = tiny_model("tiny-gemma3", std=0.05)
    quantize_model(model, mode, group_size=32, dtype=torch.float32, embedding="float")
    frozen = {k: v.clone() for k, v in unfuse_projections(model).state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    assert all(m.quantized for m in lora_modules(model).values())
    _randomize_b(model)
    tok = random_tokens(model.config, 2, 24, seed=1)
    model.train()
    loss = model(tok).float().logsumexp(-1).mean()
    loss.backward()
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    # the packed weights did not move, and are what the frozen base held before the swap
    for k, v in frozen.items():
        ours = k.replace("_proj.", "_proj.base.") if "_proj." in k else k
        assert torch.equal(model.state_dict()[ours], v), k


def test_qlora_input_gradient_equals_dequantized_float():
    """The backward through a frozen quantized base (dequantized a block at a time) equals autograd through the
    same dequantized weights held as a float Linear."""
    torch.manual_seed(0)
    from opengemma.qlinear import Int4Linear, Int8Linear

    w = torch.randn(48, 64) * 0.1
    for q in (Int8Linear.from_float(w, torch.float32), Int4Linear.from_float(w, 32, torch.float32)):
        if isinstance(q, Int4Linear):
            q.prepare()
        lin = torch.nn.Linear(64, 48, bias=False)
        lin.weight.data = q.dequantized().float()
        a, b = LoRALinear(q, 4, 8.0), LoRALinear(lin, 4, 8.0)
        b.lora_A.data, b.lora_B.data = a.lora_A.data.clone(), torch.randn(48, 4) * 0.1
        a.lora_B.data = b.lora_B.data.clone()
        x1 = torch.randn(3, 40, 64, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        (a(x1) ** 2).sum().backward()
        (b(x2) ** 2).sum().backward()
        assert (x1.grad - x2.grad).abs().max() < 1e-4
        assert (a.lora_A.grad - b.lora_A.grad).abs().max() < 1e-3 * b.lora_A.grad.abs().max()


def test_fused_quantized_projections_split_exactly():
    model = tiny_model("tiny-gemma3", std=0.05)
    quantize_model(model, "int8", dtype=torch.float32, embedding="float")
    assert model.layers[0].attn.qkv_proj is not None  # quantize fuses q|k|v
    tok = random_tokens(model.config, 1, 16, seed=0)
    with torch.no_grad():
        ref = model(tok)
        apply_lora(model, LoRAConfig(rank=2))
        out = model(tok)
    assert model.layers[0].attn.qkv_proj is None and isinstance(model.layers[0].attn.q_proj, LoRALinear)
    assert torch.equal(out, ref)
