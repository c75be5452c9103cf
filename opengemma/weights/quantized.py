"""Quantized checkpoints (opengemma's own layout): model.safetensors with int8 / packed int4 tensors and
their scales, plus quantization.json (mode, group size, dtype, the model config). Used as the cache of
quantized models, so that a warm quantized load is a memory map, not a re-quantization."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..config import GemmaConfig
from ..model import Gemma
from ..qlinear import Int4Linear
from ..quantize import empty_quantized, prepare_quantized
from . import CheckpointError, assign_state_dict, check_names, meta_model
from .mmap import mmap_safetensors


def save_quantized(model: Gemma, path: str | Path) -> Path:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_aligned(state, tmp / "model.safetensors")
        (tmp / "quantization.json").write_text(
            json.dumps({**model.quantization, "config": model.config.to_dict()}, indent=2)
        )
    return Path(path)


def save_aligned(state: dict[str, torch.Tensor], st: Path) -> None:
    """save_file with the int8 tensors and the data's start 64-byte aligned, so that mmap_safetensors can
    keep them zero-copy. safetensors aligns data to 8 bytes only, and orders tensors by dtype (float32 ...
    int16, then int8, then uint8): a padding int16 tensor that sorts last among int16 aligns the int8 block
    (whose sizes are multiples of 64 for real shapes), and padding in the metadata aligns the data's start."""
    save_file(state, str(st), metadata={"format": "pt", "pad": ""})
    start, offsets = _layout(st)
    int8 = [offsets[k] for k, v in state.items() if v.dtype == torch.int8]
    if int8 and min(int8) % ALIGN:
        state = {**state, PAD: torch.zeros(-min(int8) % ALIGN // 2, dtype=torch.int16)}
        save_file(state, str(st), metadata={"format": "pt", "pad": ""})
        start, _ = _layout(st)
    if start % ALIGN:  # a multiple of 8 (the header is padded to 8): grows the header by exactly that
        save_file(state, str(st), metadata={"format": "pt", "pad": " " * (-start % ALIGN)})


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
        if not isinstance(getattr(torch, info["dtype"]), torch.dtype):
            raise ValueError(f"dtype {info['dtype']!r}")
        model, expected = meta_model(cfg, lambda m: empty_quantized(m, info))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/quantization.json: malformed ({e})") from None
    # only the int8 kernel's weights must be aligned: int4 data is repacked by prepare(), the rest read as is
    state = mmap_safetensors(path / "model.safetensors", align=ALIGN, needs_align=lambda name: name.endswith(".weight"))
    state.pop(PAD, None)
    check_names(expected, {k: tuple(v.shape) for k, v in state.items()}, str(path))
    model = assign_state_dict(model, state, device)
    model.quantization.update({k: v for k, v in info.items() if k != "config"})
    model.quantization.setdefault("method", "rtn")
    if torch.device(device).type == "cpu":
        _prepare_cpu(model, path)
    else:
        prepare_quantized(model)
    return model


def cpu_layout_file(path: Path) -> Path:
    # torch's CPU int4 layout is its own (per version, and per instruction set in principle)
    cap = torch.backends.cpu.get_cpu_capability()
    return path / f"int4-cpu-layout-torch{torch.__version__}-{cap}.safetensors"


def _prepare_cpu(model: Gemma, path: Path) -> None:
    """The int4 kernel layout, memory-mapped from the cache directory when an earlier load saved it there
    (built by prepare() and saved otherwise). A warm load then neither repacks nor holds two copies of the
    int4 weights in memory: the portable ones stay on disk until something reads them."""
    int4 = {n: m for n, m in model.named_modules() if isinstance(m, Int4Linear)}
    if not int4:
        return prepare_quantized(model)
    file = cpu_layout_file(path)
    if file.exists():
        try:
            state = mmap_safetensors(file, align=ALIGN)
            for name, m in int4.items():
                m.adopt_layout(state[f"{name}.kernel_weight"], state[f"{name}.kernel_sz"])
            return
        except (OSError, ValueError, KeyError) as e:  # stale or damaged: rebuild it
            warnings.warn(f"{file}: rebuilding the int4 CPU layout ({type(e).__name__}: {e})")
    prepare_quantized(model)
    state = {f"{name}.{k}": getattr(m, k) for name, m in int4.items() for k in ("kernel_weight", "kernel_sz")}
    try:
        with atomic_path(file) as tmp:
            save_aligned(state, tmp)
    except OSError:  # a read-only cache: repack at every load
        pass
