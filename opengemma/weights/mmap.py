"""Zero-copy safetensors reading: tensors are views of a private (copy-on-write) memory map, so a load
costs page-table set-up, not a copy of the file; pages come in as the first forward touches them."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def mmap_safetensors(path: str | Path, align: int = 0, needs_align=None) -> dict[str, torch.Tensor]:
    """align: copy out tensors whose data is not aligned to this many bytes (safetensors only aligns to
    8; some CPU kernels, e.g. the int8 GEMV, need 64-byte aligned weights); needs_align(name): which
    tensors that applies to (default all)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    (n,) = struct.unpack("<Q", mm[:8])
    if 8 + n > size:
        raise ValueError(f"{path}: corrupt safetensors header")
    header = json.loads(mm[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        if base + end > size:
            raise ValueError(f"{path}: tensor {name} lies past the end of the file (truncated?)")
        numel = 1
        for d in info["shape"]:
            numel *= d
        t = (
            torch.frombuffer(mm, dtype=dtype, count=numel, offset=base + start)
            if numel
            else torch.empty(0, dtype=dtype)
        )
        t = t.view(info["shape"])
        copy = align and t.data_ptr() % align and (needs_align is None or needs_align(name))
        out[name] = t.clone() if copy else t
    return out
