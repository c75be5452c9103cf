"""Weight-only quantization as module swaps (gpt-fast style): every nn.Linear becomes an Int8Linear /
Int4Linear and the tied embedding/output matrix an Int8Embedding / Int4Embedding / RescoredEmbedding
(qlinear.py: the modules, their kernels and numerics), as a QuantSpec (quant_spec.py) says, optionally
GPTQ-rounded on calibration text, and matrix by matrix for a GGUF file's own formats. A compiled decode
step notices the swap by itself (engine.generate.module_fingerprint).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .gptq import input_moments
from .model import Embedding, Gemma
from .qlinear import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, RescoredEmbedding
from .quant_spec import QUANT_MODES, QuantSpec, canonical_embedding, default_embedding

FORMATS = ("int8", "int4", "float")  # what one matrix can be in a mixed ("gguf") model


# -- swapping -----------------------------------------------------------------------------------------
def _embedding(w: torch.Tensor | None, shape, mode: str, group_size: int, dtype, device, hessian=None, exact=None):
    v, d = shape
    if mode == "int4+int8":
        emb = RescoredEmbedding(v, d, group_size, dtype, device)
        if w is not None:
            emb.table = _linear(w, shape, "int8", group_size, dtype, device)
            emb.approx = _linear(w, shape, "int4", group_size, dtype, device, hessian, exact)
        return emb
    emb = Int8Embedding(v, d, dtype, device) if mode == "int8" else Int4Embedding(v, d, group_size, dtype, device)
    if w is not None:  # GPTQ (int4) weighs the table as the output layer: its errors in logits
        emb.table = _linear(w, shape, mode, group_size, dtype, device, hessian, exact)
    return emb


def _linear(w: torch.Tensor | None, shape, mode: str, group_size: int, dtype, device, hessian=None, exact=None):
    """exact: (q, scales, zeros), the int4 groups the weights already are (GGUF Q4 blocks), taken as they are."""
    n, k = shape
    if w is None:
        return Int8Linear(k, n, dtype, device) if mode == "int8" else Int4Linear(k, n, group_size, dtype, device)
    if mode == "int8":
        return Int8Linear.from_float(w, dtype)
    if exact is not None:
        return Int4Linear.from_groups(*(t.to(w.device) for t in exact), dtype)
    return Int4Linear.from_float(w, group_size, dtype, hessian)


def _swap(
    model: Gemma,
    spec: QuantSpec,
    dtype: torch.dtype,
    meta: bool,
    moments: dict | None = None,
    formats: dict[str, str] | None = None,
    exact: dict | None = None,
    progress: bool = False,
) -> Gemma:
    """Every nn.Linear and the tied embedding as `spec` says (meta: the skeleton only, no data).
    formats: {module name: int8 | int4 | float} per matrix ("embed" for the embedding), mode "gguf" only.
    exact: {module name: (q, scales, zeros)} for matrices already on an int4 grid of the spec's group size."""
    if (spec.mode == "gguf") != (formats is not None):
        raise ValueError("mode 'gguf' (a format per matrix) needs formats, and only it")
    if formats is not None and set(formats.values()) - set(FORMATS):
        raise ValueError(f"unknown formats {set(formats.values()) - set(FORMATS)}; choose from {', '.join(FORMATS)}")
    group_size = spec.group_size
    # a mixed model's embedding is as the file has it
    embedding = formats.get("embed", "float") if spec.embedding == "file" else spec.embedding
    device = "meta" if meta else None
    exact, kept = exact or {}, []

    def exact_for(name: str, fmt: str, k: int):  # the file's groups, for an int4 matrix of their group size
        if fmt in ("int4", "int4+int8") and name in exact and exact[name][1].shape[1] * group_size == k:
            kept.append(name)
            return exact[name]
        return None

    with torch.no_grad():
        from tqdm import tqdm

        modules = list(model.named_modules())
        for prefix, module in tqdm(modules, desc="GPTQ", disable=not (progress and moments), leave=False):
            for child_name, child in list(module.named_children()):
                name = f"{prefix}.{child_name}".lstrip(".")
                if not isinstance(child, nn.Linear):
                    continue
                fmt = spec.mode if formats is None else formats[name]
                if fmt != "float":
                    w = None if meta else child.weight.detach()
                    shape = (child.out_features, child.in_features)
                    h = (moments or {}).get(name)
                    setattr(
                        module,
                        child_name,
                        _linear(
                            w,
                            shape,
                            fmt,
                            group_size,
                            dtype,
                            device or child.weight.device,
                            h,
                            exact_for(name, fmt, shape[1]),
                        ),
                    )
        if embedding != "float" and isinstance(model.embed, Embedding):
            w, shape = None if meta else model.embed.weight.detach(), tuple(model.embed.weight.shape)
            model.embed = _embedding(
                w,
                shape,
                embedding,
                group_size,
                dtype,
                device or model.embed.weight.device,
                (moments or {}).get("embed"),
                exact_for("embed", embedding, shape[1]),
            )
        if not meta:  # remaining float parameters (norms, a float embedding) follow the activation dtype
            for p in model.parameters():
                p.data = p.data.to(dtype)
    model.quantization = {
        "mode": spec.mode,
        "group_size": group_size,
        "dtype": str(dtype).removeprefix("torch."),
        "embedding": embedding,
    }
    if formats is not None:
        model.quantization["formats"] = dict(formats)
    if kept:
        model.quantization["exact_int4"] = sorted(kept)  # matrices taken as they were, not rounded
    return model


def as_spec(mode: str | QuantSpec, group_size: int = 32, embedding: str | None = "default") -> QuantSpec:
    """A QuantSpec from quantize_model's words (a mode and its embedding), rounding method left to the caller
    (GPTQ when calibration is given)."""
    if isinstance(mode, QuantSpec):
        return mode
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {', '.join(QUANT_MODES)}")
    embedding = canonical_embedding(embedding)
    return QuantSpec(mode, group_size, default_embedding(mode) if embedding == "default" else embedding)


def fuse_projections(model: Gemma) -> Gemma:
    """Replace q/k/v by one qkv_proj and gate/up by one gate_up_proj (quantized modules only: stacking
    their rows is exact). Decode then makes 4 matmul calls per layer instead of 7."""

    def same(parts):  # one quantized format (and int4 group size) for all: a mixed model may differ per matrix
        kinds = {(type(p), getattr(p, "group_size", None)) for p in parts}
        return len(kinds) == 1 and isinstance(parts[0], (Int8Linear, Int4Linear))

    for layer in model.layers:
        a, m = layer.attn, layer.mlp
        if a.q_proj is not None and same([a.q_proj, a.k_proj, a.v_proj]):
            a.qkv_proj = type(a.q_proj).cat([a.q_proj, a.k_proj, a.v_proj])
            a.q_proj = a.k_proj = a.v_proj = None
        if m.gate_proj is not None and same([m.gate_proj, m.up_proj]):
            m.gate_up_proj = type(m.gate_proj).cat([m.gate_proj, m.up_proj])
            m.gate_proj = m.up_proj = None
    model.quantization["fused"] = True
    return model


def unfuse_projections(model: Gemma) -> Gemma:
    """Undo fuse_projections: q/k/v and gate/up as separate modules again, split by output rows (exact), e.g. so
    that each can take its own LoRA adapter."""

    def split(m: nn.Module, sizes: list[int]) -> list[nn.Module]:
        out, start = [], 0
        for n in sizes:
            if isinstance(m, Int4Linear):
                part = Int4Linear(m.in_features, n, m.group_size, m.scales.dtype, device="meta")
                part.qweight, part.zeros = m.qweight[start : start + n].clone(), m.zeros[start : start + n].clone()
            else:
                part = Int8Linear(m.in_features, n, m.scales.dtype, device="meta")
                part.weight = m.weight[start : start + n].clone()
            part.scales = m.scales[start : start + n].clone()
            if isinstance(part, Int4Linear):
                part.prepare()
            out.append(part)
            start += n
        return out

    for layer in model.layers:
        a, m = layer.attn, layer.mlp
        if a.qkv_proj is not None:
            H, K, D = a.n_heads, a.n_kv_heads, a.head_dim
            a.q_proj, a.k_proj, a.v_proj = split(a.qkv_proj, [H * D, K * D, K * D])
            a.qkv_proj = None
        if m.gate_up_proj is not None:
            half = m.gate_up_proj.out_features // 2
            m.gate_proj, m.up_proj = split(m.gate_up_proj, [half, half])
            m.gate_up_proj = None
    if getattr(model, "quantization", None):
        model.quantization["fused"] = False
    return model


def quantize_model(
    model: Gemma,
    mode: str | QuantSpec,
    group_size: int = 32,
    dtype: torch.dtype = torch.bfloat16,
    embedding: str | None = "default",
    calibration=None,
    progress: bool = False,
    formats: dict[str, str] | None = None,
    exact: dict | None = None,
) -> Gemma:
    """Swap every nn.Linear (and the embedding / tied output matrix: embedding = "int8", "int4", "int4+int8",
    "float" (or None), "default" = the mode's own, quant_spec.default_embedding) for its quantized version, in
    place; or as a QuantSpec says. Norms stay in float; activations run in `dtype`. calibration: (1, T) token
    tensors; with int4, every int4 matrix (the output matrix too, when int4) is then quantized by GPTQ against
    the float model's activations on them.
    mode "gguf": each matrix as formats[name] says (int8, int4 or float; "embed" for the embedding), what
    a GGUF file's own types map to (weights.gguf.keep_formats). exact: {name: (q, scales, zeros)} int4
    matrices taken as they are (a GGUF's 4-bit blocks), neither rounded nor GPTQ'd. A compiled decode step
    of this model notices the new modules by itself (engine.generate.module_fingerprint)."""
    spec = as_spec(mode, group_size, embedding)
    int4 = spec.rounds_int4 or "int4" in (formats or {}).values()
    moments = input_moments(model, calibration, progress) if calibration is not None and int4 else None
    _swap(model, spec, dtype, meta=False, moments=moments, formats=formats, exact=exact, progress=progress)
    model.quantization["method"] = "gptq" if moments else "kept" if spec.mode == "gguf" else "rtn"
    fuse_projections(model)
    prepare_quantized(model)
    return model


def empty_quantized(model: Gemma, info: dict) -> Gemma:
    """The same swaps on a meta-device model, without data, as a saved model.quantization dict (quantized
    checkpoints' quantization.json) describes them: the skeleton to load a quantized state into."""
    embedding = canonical_embedding(info.get("embedding"))
    spec = QuantSpec(info["mode"], info.get("group_size") or 32, embedding)
    _swap(model, spec, getattr(torch, info["dtype"]), meta=True, formats=info.get("formats"))
    return fuse_projections(model) if info.get("fused", False) else model


def prepare_quantized(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, Int4Linear):
            m.prepare()
