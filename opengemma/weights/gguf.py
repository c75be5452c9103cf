"""GGUF files (llama.cpp's format) of the gemma, gemma2 and gemma3 architectures, both ways.

Reading goes through the `gguf` library (GGUFReader memory-maps the file; gguf.quants dequantizes every
ggml type, K-quants included). Two conventions of llama.cpp's converter matter (ASSETS.md):
- norm weights are stored with Gemma's "+1" folded in, so we load w - 1 and write w + 1;
- q/k projections are not permuted (rotate-half RoPE, as in the HF layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..config import LAYER_GLOBAL, LAYER_LOCAL, GemmaConfig
from ..model import Gemma
from . import CheckpointError, assign_state_dict, check_names, expand_map, meta_model
from .gguf_tokenizer import add_tokenizer

ARCHITECTURES = ("gemma", "gemma2", "gemma3")

# opengemma name <- GGUF name
GGUF_MAP = [
    ("embed.weight", "token_embd.weight"),
    ("norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("layers.{i}.attn_norm.weight", "blk.{i}.attn_norm.weight"),
    ("layers.{i}.attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    ("layers.{i}.attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    ("layers.{i}.attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    ("layers.{i}.attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    ("layers.{i}.attn.q_norm.weight", "blk.{i}.attn_q_norm.weight"),
    ("layers.{i}.attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),
    ("layers.{i}.post_attn_norm.weight", "blk.{i}.post_attention_norm.weight"),
    ("layers.{i}.mlp_norm.weight", "blk.{i}.ffn_norm.weight"),
    ("layers.{i}.post_mlp_norm.weight", "blk.{i}.post_ffw_norm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    ("layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    ("layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
]


def is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def weight_map(cfg: GemmaConfig, model_keys) -> dict[str, str]:
    full = expand_map(GGUF_MAP, cfg.n_layers)
    return {ours: theirs for ours, theirs in full.items() if ours in model_keys}


def open_gguf(path: str | Path):
    import gguf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such GGUF file: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        return gguf.GGUFReader(path)
    except CheckpointError:
        raise
    except Exception as e:  # truncated or corrupt files raise assorted errors inside the reader
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None


def metadata(reader) -> dict[str, Any]:
    """Scalar and string metadata (arrays longer than 64 entries, like the vocabulary, are left out)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if len(field.data) > 64:
            continue
        try:
            out[key] = field.contents()
        except Exception:
            continue
    return out


def config_from_gguf(reader, source: str = "gguf") -> GemmaConfig:
    meta = metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{source}: architecture {arch!r} is not a Gemma text model; supported: {', '.join(ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise CheckpointError(f"{source}: missing metadata {arch}.{key}")
        return v

    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise CheckpointError(f"{source}: missing tensor token_embd.weight")
    d, n_layers, n_heads = int(get("embedding_length")), int(get("block_count")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", d // n_heads))
    cfg: dict[str, Any] = dict(
        name=str(meta.get("general.name", Path(source).stem)),
        vocab_size=int(embd.shape[1]),  # ggml order: (in, out)
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        d_ff=int(get("feed_forward_length")),
        max_seq_len=int(get("context_length")),
        norm_eps=float(np.float32(get("attention.layer_norm_rms_epsilon", 1e-6))),
        rope_base=float(get("rope.freq_base", 10000.0)),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)),
        eos_id=int(meta.get("tokenizer.ggml.eos_token_id", 1)),
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
    )
    cfg["norm_eps"] = float(f"{cfg['norm_eps']:.6g}")  # stored as float32: 1e-6 reads 9.99999997e-07
    if meta.get(f"{arch}.rope.scaling.type") == "linear":
        cfg["rope_scaling_factor"] = float(get("rope.scaling.factor"))
    if arch in ("gemma2", "gemma3"):
        cfg["sandwich_norms"] = True
        cfg["sliding_window"] = int(get("attention.sliding_window"))
        # llama.cpp: the 27B models scale queries by (d_model / n_heads)^-0.5, all others by head_dim^-0.5
        big = (arch == "gemma2" and n_layers == 46) or (arch == "gemma3" and n_layers == 62)
        cfg["query_pre_attn_scalar"] = d // n_heads if big else head_dim
        if f"{arch}.attention.query_pre_attn_scalar" in meta:  # written by opengemma: exact
            cfg["query_pre_attn_scalar"] = float(meta[f"{arch}.attention.query_pre_attn_scalar"])
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
        default_p = 2 if arch == "gemma2" else 6
        if isinstance(pattern, list):  # per-layer flags: True = sliding
            cfg["layer_types"] = [LAYER_LOCAL if p else LAYER_GLOBAL for p in pattern]
        else:
            p = int(pattern) if pattern else default_p
            cfg["layer_types"] = [LAYER_GLOBAL if (i + 1) % p == 0 else LAYER_LOCAL for i in range(n_layers)]
    if arch == "gemma2":
        cfg["attn_softcap"] = float(get("attn_logit_softcapping", 50.0))
        cfg["final_softcap"] = float(get("final_logit_softcapping", 30.0))
        cfg["rope_local_base"] = cfg["rope_base"]
    if arch == "gemma3":
        cfg["qk_norm"] = True
        # Not stored by older converters; fixed for the family (ASSETS.md).
        cfg["rope_local_base"] = float(meta.get("gemma3.rope.freq_base_swa", 10000.0))
    if arch == "gemma":
        cfg["rope_local_base"] = cfg["rope_base"]
    return GemmaConfig(**cfg)


def tensor_table(reader) -> list[tuple[str, str, tuple[int, ...]]]:
    """[(name, ggml type, shape in (out, in) order)] for `opengemma info`."""
    return [(t.name, t.tensor_type.name, tuple(int(x) for x in reversed(t.shape))) for t in reader.tensors]


def load_gguf(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[Gemma, Any]:
    """Dequantize every tensor to `dtype`. Returns (model, reader) (the reader also holds the tokenizer)."""
    import gguf
    from tqdm import tqdm

    reader = open_gguf(path)
    cfg = config_from_gguf(reader, str(path))
    model, expected = meta_model(cfg)
    wmap = weight_map(cfg, expected)
    tensors = {t.name: t for t in reader.tensors}
    found = {name: tuple(int(x) for x in reversed(t.shape)) for name, t in tensors.items()}
    check_names({wmap[k]: s for k, s in expected.items()}, found, str(path))

    state = {}
    for ours, theirs in tqdm(wmap.items(), desc=f"dequantizing {Path(path).name}", disable=not progress, leave=False):
        t = tensors[theirs]
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:  # truncated data or an unknown type
            raise CheckpointError(f"{path}: cannot read tensor {theirs} ({t.tensor_type.name}): {e}") from None
        # F32 tensors come straight from the read-only memory map: copy those, not the dequantized ones
        arr = np.array(arr, dtype=np.float32, copy=not arr.flags.writeable or arr.dtype != np.float32)
        x = torch.from_numpy(arr).reshape(expected[ours])
        if is_norm(ours):
            x = x - 1.0  # llama.cpp stores 1 + w
        state[ours] = x.to(device=device, dtype=dtype)
    return assign_state_dict(model, state, device), reader


# -- keeping the file's own blocks -------------------------------------------------------------------
INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")  # 4-bit values with one scale and offset per 32 weights
FLOAT_TYPES = ("F32", "F16", "BF16")


def _reader(src):
    """A GGUFReader from a path, or the reader itself (opening one parses the header: seconds for a vocabulary)."""
    return open_gguf(src) if isinstance(src, (str, Path)) else src


def _matrices(src):
    """(opengemma module name ("layers.0.attn.q_proj", "embed", ...), GGUF tensor) of the file's matrices.
    src: a path or a GGUFReader."""
    reader = _reader(src)
    tensors = {t.name: t for t in reader.tensors}
    for ours, theirs in expand_map(GGUF_MAP, config_from_gguf(reader).n_layers).items():
        if theirs in tensors and not is_norm(ours):
            yield ours.removesuffix(".weight"), tensors[theirs]


def tensor_types(src) -> dict[str, str]:
    """{opengemma module name: ggml type name} of the file's matrices (src: a path or a GGUFReader)."""
    return {name: t.tensor_type.name for name, t in _matrices(src)}


def keep_formats(types: dict[str, str]) -> dict[str, str]:
    """What each matrix becomes when a model keeps its GGUF file's quantization (quantize="gguf"): 4-bit
    blocks (Q4_0/Q4_1/Q4_K) are int4 groups of 32 exactly; every other quantized type (Q5_0, Q6_K, Q8_0, ...)
    has no exact home among the kernels' formats and is rounded once more to int8 per output channel (from
    5+ bits: a small extra error); float tensors stay float."""
    return {name: "int4" if t in INT4_TYPES else "float" if t in FLOAT_TYPES else "int8" for name, t in types.items()}


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes of one 32-weight block -> (n, 32): weights 0-15 in the low nibbles, 16-31 in the high."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def int4_groups(t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0 / Q4_1 / Q4_K tensor's own 4-bit values with each 32-weight group's scale and offset, in
    quantize_int4's convention w = (q - 8) * scale + zero: (N, K) uint8 in 0..15, (N, K / 32) float32 twice.
    Exact: it dequantizes to what gguf.quants.dequantize gives (to float32 rounding)."""
    import gguf

    kind = t.tensor_type.name
    K = int(t.shape[0])  # ggml order: (in, out)
    raw = np.ascontiguousarray(t.data).view(np.uint8)
    f16 = lambda a: np.ascontiguousarray(a).view(np.float16).astype(np.float32)  # noqa: E731
    if kind in ("Q4_0", "Q4_1"):
        nbytes = 18 if kind == "Q4_0" else 20
        b = raw.reshape(-1, nbytes)
        d = f16(b[:, 0:2])  # (n, 1)
        q = _nibbles(b[:, nbytes - 16 :])
        zero = np.zeros_like(d) if kind == "Q4_0" else 8.0 * d + f16(b[:, 2:4])  # Q4_1: w = d * q + m
        scale = d
    elif kind == "Q4_K":  # 256-weight super-blocks: fp16 d, dmin; 8 six-bit (scale, min) pairs; 128 bytes
        b = raw.reshape(-1, 144)
        d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
        sc, mn = gguf.quants.Q4_K.get_scale_min(np.ascontiguousarray(b[:, 4:16]))  # (n, 8) each
        qs = b[:, 16:].reshape(-1, 4, 32)  # 4 chunks of 64 weights: low nibbles first, then high
        q = np.stack([qs & 15, qs >> 4], axis=2)  # (n, 4, 2, 32) = (n, 8 groups, 32)
        scale = d * sc.astype(np.float32)  # w = d * sc * q - dmin * m
        zero = 8.0 * scale - dmin * mn.astype(np.float32)
    else:
        raise ValueError(f"{t.name}: {kind} is not a 4-bit block type ({', '.join(INT4_TYPES)})")
    q = torch.from_numpy(np.ascontiguousarray(q).reshape(-1, K))
    N = q.shape[0]
    return (
        q,
        torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32).reshape(N, K // 32)),
        torch.from_numpy(np.ascontiguousarray(zero, dtype=np.float32).reshape(N, K // 32)),
    )


def load_int4_groups(src) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """int4_groups of every 4-bit-block weight of the file (a path or a GGUFReader), by opengemma module name."""
    out = {}
    for name, t in _matrices(src):
        if t.tensor_type.name in INT4_TYPES:
            try:
                out[name] = int4_groups(t)
            except ValueError as e:  # truncated data: the reshape fails
                raise CheckpointError(f"GGUF tensor {t.name} ({t.tensor_type.name}) cannot be read: {e}") from None
    return out


# -- writing ---------------------------------------------------------------------------------------
WRITE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")  # what gguf.quants can write


def save_gguf(
    model: Gemma, path: str | Path, tokenizer=None, qtype: str = "F32", qtypes: dict[str, str] | None = None
) -> Path:
    """Write a GGUF file that llama.cpp-style readers (and opengemma) load. qtype: one of WRITE_TYPES for the
    2-D matrices (norms stay F32, as llama.cpp does); qtypes: {opengemma tensor name: type} exceptions, for
    mixed files like llama.cpp's _M/_S ones."""
    import gguf

    qtypes = qtypes or {}
    for t in {qtype, *qtypes.values()}:
        if t not in WRITE_TYPES:
            raise ValueError(f"unsupported GGUF type {t!r}; choose from {', '.join(WRITE_TYPES)}")
    arch = model.config.family
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_gguf(gguf.GGUFWriter(str(tmp), arch), model, tokenizer, qtype, qtypes)
    return path


def _write_gguf(w, model: Gemma, tokenizer, qtype: str, qtypes: dict[str, str]) -> None:
    import gguf

    cfg = model.config
    arch = cfg.family
    w.add_name(cfg.name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_base)
    if cfg.rope_scaling_factor != 1.0:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(cfg.sliding_window or cfg.max_seq_len)
        w.add_array(f"{arch}.attention.sliding_window_pattern", [t == LAYER_LOCAL for t in cfg.layer_types])
        # llama.cpp derives the query scale from the model size; store ours exactly (an extra key it ignores)
        w.add_float64(f"{arch}.attention.query_pre_attn_scalar", float(cfg.query_pre_attn_scalar))
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_softcap)
        w.add_final_logit_softcapping(cfg.final_softcap)
    if arch == "gemma3":
        w.add_float32("gemma3.rope.freq_base_swa", cfg.rope_local_base)
    if tokenizer is not None:
        add_tokenizer(w, tokenizer.model_proto_bytes, cfg.bos_id, cfg.eos_id, cfg.pad_id)

    state = model.state_dict()
    for ours, theirs in weight_map(cfg, state).items():
        x = state[ours].detach().float().cpu()
        if is_norm(ours):
            w.add_tensor(theirs, (x + 1.0).numpy())
            continue
        arr, kind = x.numpy(), qtypes.get(ours, qtype)
        if kind == "F32" or arr.ndim != 2:
            w.add_tensor(theirs, arr)
        elif kind == "F16":
            w.add_tensor(theirs, arr.astype(np.float16))
        else:
            qt = getattr(gguf.GGMLQuantizationType, kind)
            w.add_tensor(theirs, gguf.quants.quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
