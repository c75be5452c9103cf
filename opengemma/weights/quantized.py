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
    # safetensors aligns data to 8 bytes; the int8 kernel wants its weights at 64 (mmap_safetensors copies
    # out what is not). safetensors orders tensors by dtype (float32 ... int16, then int8, then uint8), so a
    # padding int16 tensor that sorts last among int16 aligns the int8 block (whose sizes are multiples of
    # 64 for real shapes), and padding in the metadata aligns the data's start.
    st = tmp / "model.safetensors"
    save_file(state, str(st), metadata={"format": "pt", "pad": ""})
    start, offsets = _layout(st)
    int8 = [offsets[k] for k, v in state.items() if v.dtype == torch.int8]
    if int8 and min(int8) % ALIGN:
        state[PAD] = torch.zeros(-min(int8) % ALIGN // 2, dtype=torch.int16)
        save_file(state, str(st), metadata={"format": "pt", "pad": ""})
        start, _ = _layout(st)
    if start % ALIGN:  # a multiple of 8 (the header is padded to 8): grows the header by exactly that
        save_file(state, str(st), metadata={"format": "pt", "pad": " " * (-start % ALIGN)})
    (tmp / "quantization.json").write_text(json.dumps(
        {**model.quantization, "config": model.config.to_dict()}, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


ALIGN = 64  # bytes: what the int8 GEMV kernel wants of its weights


PAD = "~alignment"  # the padding tensor's name (int16; sorts after every other int16 name)


def _layout(path: Path) -> tuple[int, dict[str, int]]:
    """Where a safetensors file's data starts, and each tensor's offset in it."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return 8 + n, {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


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
    state.pop(PAD, None)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_names(expected, {k: tuple(v.shape) for k, v in state.items()}, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    model.quantization.update({k: v for k, v in info.items() if k != "config"})
    model.quantization.setdefault("method", "rtn")
    model.init_rope()
    model = model.to(device).eval()
    prepare_quantized(model)
    return model
