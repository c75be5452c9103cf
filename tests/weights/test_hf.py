"""Hugging Face checkpoints (opengemma/weights/hf.py): an export that transformers loads and opengemma reads back
exactly, sharded; strict errors on missing, unexpected or misshapen tensors, corrupt files, pickles, other models."""

import json
import shutil

import pytest
import torch
import transformers
from helpers import random_tokens, tiny_model
from safetensors.torch import load_file, save_file

from opengemma.weights import CheckpointError
from opengemma.weights.hf import load_hf_dir, save_hf_dir

TINY = ["tiny-gemma", "tiny-gemma-mha", "tiny-gemma2", "tiny-gemma3"]


@pytest.mark.parametrize("name", TINY)
def test_hf_export_loads_in_transformers_and_back(tmp_path, name):
    model = tiny_model(name, std=0.1)
    save_hf_dir(model, tmp_path)
    tok = random_tokens(model.config, 2, 24, seed=5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = model(tok)
        assert (hf(tok).logits - ours).abs().max() <= 1e-4
        assert torch.equal(load_hf_dir(tmp_path)(tok), ours)


def test_hf_export_sharded(tmp_path, monkeypatch):
    import opengemma.weights.hf as hfmod

    monkeypatch.setattr(hfmod, "SHARD_BYTES", 100_000)
    model = tiny_model("tiny-gemma3", std=0.1)
    save_hf_dir(model, tmp_path, dtype=torch.bfloat16)
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("model-*"))) > 2
    back = load_hf_dir(tmp_path, dtype=torch.bfloat16)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.to(torch.bfloat16)), k


@pytest.fixture
def hf_dir(tmp_path):
    save_hf_dir(tiny_model("tiny-gemma2", std=0.1), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit(hf_dir, fn):
    f = hf_dir / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f)


def test_safetensors_missing_tensor(hf_dir):
    _edit(hf_dir, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_dir(hf_dir)


def test_safetensors_unexpected_tensor(hf_dir):
    _edit(hf_dir, lambda sd: sd.update({"model.layers.9.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.9\.extra\.weight"):
        load_hf_dir(hf_dir)


def test_safetensors_wrong_shape(hf_dir):
    _edit(hf_dir, lambda sd: sd.update({"model.norm.weight": torch.zeros(63)}))
    with pytest.raises(CheckpointError, match=r"wrong shapes: model\.norm\.weight: expected \(64,\), found \(63,\)"):
        load_hf_dir(hf_dir)


def test_corrupt_safetensors_and_config(hf_dir):
    (hf_dir / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_hf_dir(hf_dir)
    (hf_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_hf_dir(hf_dir)


def test_pickle_checkpoints_refused(tmp_path, hf_dir):
    d = tmp_path / "pt"
    d.mkdir()
    shutil.copy(hf_dir / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_hf_dir(d)


def test_unsupported_architecture(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="LlamaForCausalLM.*not supported"):
        load_hf_dir(hf_dir)
