"""Quantized checkpoints (opengemma's own layout): model.safetensors with int8 / packed int4 tensors and
their scales, plus quantization.json (mode, group size, dtype, the model config). Used as the cache of
quantized models, so that a warm quantized load is a memory map, not a re-quantization."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import GemmaConfig
from ..model import Gemma
from ..quantize import empty_quantized, prepare_quantized
from . import CheckpointError, check_names
from .mmap import mmap_safetensors


def save_quantized(model: Gemma, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # safetensors aligns data to 8 bytes; the int8 kernel wants 64 (mmap_safetensors copies out what is not).
    # Padding the header's metadata so that the data starts 64-aligned keeps most tensors zero-copy.
    st = tmp / "model.safetensors"
    save_file(state, str(st), metadata={"format": "pt", "pad": ""})
    pad = -_data_start(st) % ALIGN  # a multiple of 8 (the header is padded to 8): grows the header exactly
    if pad:
        save_file(state, str(st), metadata={"format": "pt", "pad": " " * pad})
    (tmp / "quantization.json").write_text(json.dumps(
        {**model.quantization, "config": model.config.to_dict()}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


ALIGN = 64  # bytes: what the int8 GEMV kernel wants of its weights


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def is_quantized_dir(path: Path) -> bool:
    return (path / "quantization.json").exists() and (path / "model.safetensors").exists()


def load_quantized(path: str | Path, device: str | torch.device = "cpu") -> Gemma:
    path = Path(path)
    try:
        info = json.loads((path / "quantization.json").read_text())
        cfg = GemmaConfig.from_dict(info["config"])
        dtype = getattr(torch, info["dtype"])
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/quantization.json: malformed ({e})") from None
    with torch.device("meta"):
        model = empty_quantized(Gemma(cfg), info["mode"], info.get("group_size") or 32, dtype, info.get("embedding"),
                                info.get("fused", False), formats=info.get("formats"))
    # only the int8 kernel's weights must be aligned: int4 data is repacked by prepare(), the rest read as is
    state = mmap_safetensors(path / "model.safetensors", align=ALIGN, needs_align=lambda name: name.endswith(".weight"))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_names(expected, {k: tuple(v.shape) for k, v in state.items()}, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    model.quantization.update({k: v for k, v in info.items() if k != "config"})
    model.quantization.setdefault("method", "rtn")
    model.init_rope()
    model = model.to(device).eval()
    prepare_quantized(model)
    return model
