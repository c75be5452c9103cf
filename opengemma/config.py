"""Model configuration: one dataclass, presets by exact name, and a reader for Hugging Face config.json.

Gemma 1, 2 and 3 differ only in the switches below (see ../shared/docs/PAPER.md, PITFALLS.md #6, #7, #11).
This module imports nothing heavy so that the CLI can list presets instantly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER_GLOBAL = "global"  # full causal attention, rope_base
LAYER_LOCAL = "local"  # sliding-window causal attention, rope_local_base


@dataclass
class GemmaConfig:
    name: str = "custom"
    vocab_size: int = 256000
    d_model: int = 2048
    n_layers: int = 18
    n_heads: int = 8
    n_kv_heads: int = 1  # 1 = multi-query, n_heads = multi-head, else grouped-query
    head_dim: int = 256
    d_ff: int = 16384  # per projection (gate and up each); the paper's table counts both together
    max_seq_len: int = 8192
    norm_eps: float = 1e-6
    rope_base: float = 10000.0  # RoPE base of global layers
    rope_scaling_factor: float = 1.0  # linear position interpolation on global layers (Gemma 3 4B+: 8)
    rope_local_base: float = 10000.0  # RoPE base of sliding-window layers (Gemma 3: 10k vs 1M global)
    query_pre_attn_scalar: float | None = None  # scores scale = this ** -0.5; None -> head_dim
    attn_softcap: float | None = None  # Gemma 2: 50
    final_softcap: float | None = None  # Gemma 2: 30
    sandwich_norms: bool = False  # Gemma 2/3: RMSNorm on the outputs of attention and MLP too
    qk_norm: bool = False  # Gemma 3: RMSNorm over head_dim on queries and keys
    sliding_window: int | None = None  # tokens a local layer sees, itself included
    # Which layers are sliding-window: explicit list, or derived from sliding_window_pattern
    # (every pattern-th layer is global; Gemma 2: 2, Gemma 3: 6). Empty + no pattern: all global.
    layer_types: list[str] = field(default_factory=list)
    sliding_window_pattern: int | None = None
    tie_embeddings: bool = True
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.query_pre_attn_scalar is None:
            self.query_pre_attn_scalar = float(self.head_dim)
        if not self.layer_types:
            if self.sliding_window is not None and self.sliding_window_pattern:
                p = self.sliding_window_pattern
                self.layer_types = [LAYER_GLOBAL if (i + 1) % p == 0 else LAYER_LOCAL for i in range(self.n_layers)]
            else:
                self.layer_types = [LAYER_GLOBAL] * self.n_layers
        if len(self.layer_types) != self.n_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        bad = sorted(set(self.layer_types) - {LAYER_GLOBAL, LAYER_LOCAL})
        if bad:
            raise ValueError(f"unknown layer types {bad}; valid: {LAYER_GLOBAL!r}, {LAYER_LOCAL!r}")
        if LAYER_LOCAL in self.layer_types and not self.sliding_window:
            raise ValueError("local (sliding-window) layers need sliding_window")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.d_model)

    def num_params(self, embedding: bool = True) -> int:
        """Exact parameter count of the model this config builds (tied embedding counted once)."""
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (2 * self.n_heads + 2 * self.n_kv_heads)  # q, o + k, v
        mlp = 3 * d * self.d_ff
        norms = d * (4 if self.sandwich_norms else 2) + (2 * hd if self.qk_norm else 0)
        total = self.n_layers * (attn + mlp + norms) + d  # + final norm
        if embedding:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "GemmaConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GemmaConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown GemmaConfig keys {unknown}; valid keys: {', '.join(sorted(valid))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any] | str | Path) -> "GemmaConfig":
        """Read a Hugging Face config.json (dict or path) of a Gemma, Gemma2 or Gemma3 (text) model.

        Released checkpoints use the older keys (rope_theta, rope_local_base_freq, sliding_window_pattern,
        hidden_act) while recent transformers write rope_parameters per layer type and layer_types lists:
        both are read (PITFALLS.md #11).
        """
        if not isinstance(hf, dict):
            path = Path(hf)
            if path.is_dir():
                path = path / "config.json"
            try:
                hf = json.loads(path.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"no config.json at {path}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from None
        if "text_config" in hf and hf.get("model_type") == "gemma3":  # multimodal wrapper: take the text part
            hf = {"model_type": "gemma3_text", **hf["text_config"]}
        mt = hf.get("model_type")
        if mt not in HF_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {mt!r}; supported: {', '.join(HF_MODEL_TYPES)}")
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        # Gemma always uses tanh-GELU, even where old configs say "gelu" (PITFALLS.md #3).
        if act not in ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ValueError(f"unsupported activation {act!r} (Gemma uses tanh-approximated GELU)")
        n_layers = hf["num_hidden_layers"]
        n_heads = hf["num_attention_heads"]
        d_model = hf["hidden_size"]
        head_dim = hf.get("head_dim") or d_model // n_heads

        rope_base = float(hf.get("rope_theta", 10000.0))
        rope_local = float(hf.get("rope_local_base_freq", 10000.0))
        scaling = 1.0
        rp = hf.get("rope_parameters")
        if isinstance(rp, dict):
            if "full_attention" in rp or "sliding_attention" in rp:
                full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
            else:
                full, local = rp, {}
            rope_base = float(full.get("rope_theta", rope_base))
            rope_local = float(local.get("rope_theta", rope_local if mt == "gemma3_text" else rope_base))
            if full.get("rope_type", "default") == "linear":
                scaling = float(full["factor"])
            elif full.get("rope_type", "default") != "default":
                raise ValueError(f"unsupported rope_type {full.get('rope_type')!r} (default or linear)")
        rs = hf.get("rope_scaling")
        if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "linear":
            scaling = float(rs["factor"])
        if mt == "gemma3_text" and "rope_theta" not in hf and not rp:
            rope_base = 1_000_000.0

        sliding = hf.get("sliding_window") if mt != "gemma" else None
        layer_types: list[str] = []
        if hf.get("layer_types"):
            layer_types = [LAYER_LOCAL if t == "sliding_attention" else LAYER_GLOBAL for t in hf["layer_types"]]
        elif mt == "gemma2":
            layer_types = [LAYER_LOCAL if (i + 1) % 2 else LAYER_GLOBAL for i in range(n_layers)]
        elif mt == "gemma3_text":
            p = hf.get("sliding_window_pattern", 6)
            layer_types = [LAYER_LOCAL if (i + 1) % p else LAYER_GLOBAL for i in range(n_layers)]
        if hf.get("use_bidirectional_attention"):
            raise ValueError("bidirectional (embedding) Gemma models are not causal LMs; not supported")
        eos = hf.get("eos_token_id", 1)
        return cls(
            name=hf.get("_name_or_path") or mt,
            vocab_size=hf["vocab_size"],
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads", n_heads),
            head_dim=head_dim,
            d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 8192),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_base=rope_base,
            rope_scaling_factor=scaling,
            rope_local_base=rope_local,
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") or head_dim,
            attn_softcap=hf.get("attn_logit_softcapping") if mt != "gemma" else None,
            final_softcap=hf.get("final_logit_softcapping") if mt != "gemma" else None,
            sandwich_norms=mt in ("gemma2", "gemma3_text"),
            qk_norm=mt == "gemma3_text",
            sliding_window=sliding if LAYER_LOCAL in layer_types else None,
            layer_types=layer_types or [LAYER_GLOBAL] * n_layers,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            bos_id=hf.get("bos_token_id", 2) if hf.get("bos_token_id") is not None else 2,
            eos_id=(eos[0] if isinstance(eos, list) else eos) if eos is not None else 1,
            pad_id=hf.get("pad_token_id", 0) if hf.get("pad_token_id") is not None else 0,
        )

    @property
    def family(self) -> str:
        """'gemma', 'gemma2' or 'gemma3': which architecture the switches amount to."""
        if self.qk_norm:
            return "gemma3"
        if self.sandwich_norms:
            return "gemma2"
        return "gemma"

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json that transformers' Gemma/Gemma2/Gemma3ForCausalLM reads back exactly."""
        fam = self.family
        base: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_act": "gelu_pytorch_tanh",
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "attention_bias": False,
            "torch_dtype": "float32",
        }
        types = ["sliding_attention" if t == LAYER_LOCAL else "full_attention" for t in self.layer_types]
        if fam == "gemma":
            if self.query_pre_attn_scalar != self.head_dim or self.sliding_window or self.attn_softcap:
                raise ValueError("this config has switches that a Gemma (1) HF config cannot express")
            return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "rope_theta": self.rope_base, **base}
        hf = {
            **base,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "attn_logit_softcapping": self.attn_softcap,
            "final_logit_softcapping": self.final_softcap,
            "sliding_window": self.sliding_window or self.max_seq_len,
            "layer_types": types,
        }
        if fam == "gemma2":
            if self.rope_local_base != self.rope_base or self.rope_scaling_factor != 1.0:
                raise ValueError("Gemma 2 HF configs have one RoPE base and no scaling")
            return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "rope_theta": self.rope_base, **hf}
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_base}
        if self.rope_scaling_factor != 1.0:
            full = {"rope_type": "linear", "factor": self.rope_scaling_factor, "rope_theta": self.rope_base}
        return {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            **hf,
            "rope_parameters": {
                "full_attention": full,
                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_base},
            },
            # older transformers read these instead
            "rope_theta": self.rope_base,
            "rope_local_base_freq": self.rope_local_base,
            **(
                {"rope_scaling": {"rope_type": "linear", "factor": self.rope_scaling_factor}}
                if self.rope_scaling_factor != 1.0
                else {}
            ),
        }


HF_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3")

_G2 = dict(
    sandwich_norms=True,
    attn_softcap=50.0,
    final_softcap=30.0,
    sliding_window=4096,
    sliding_window_pattern=2,
    query_pre_attn_scalar=256,
)
_G3 = dict(
    sandwich_norms=True,
    qk_norm=True,
    sliding_window=512,
    sliding_window_pattern=6,
    rope_base=1_000_000.0,
    rope_local_base=10_000.0,
    vocab_size=262144,
    max_seq_len=32768,
    query_pre_attn_scalar=256,
)

# Exact names. Real sizes from the papers / released config.json files.
PRESETS: dict[str, dict[str, Any]] = {
    # Gemma (paper Table 1; 256000 embedding rows as released, 16384 / 24576 per FFN projection)
    "gemma-2b": dict(d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, head_dim=256, d_ff=16384),
    "gemma-7b": dict(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_ff=24576),
    # Gemma 2
    "gemma-2-2b": dict(_G2, d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256, d_ff=9216),
    "gemma-2-9b": dict(_G2, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256, d_ff=14336),
    "gemma-2-27b": dict(
        _G2, d_model=4608, n_layers=46, n_heads=32, n_kv_heads=16, head_dim=128, d_ff=36864, query_pre_attn_scalar=144
    ),
    # Gemma 3 (text)
    "gemma-3-270m": dict(_G3, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=2048),
    "gemma-3-1b": dict(_G3, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=6912),
    # tiny configs for tests: same switches, small sizes
    "tiny-gemma": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=16, d_ff=128, max_seq_len=256
    ),
    "tiny-gemma-mha": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=128, max_seq_len=256
    ),
    "tiny-gemma2": dict(
        _G2,
        vocab_size=512,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        d_ff=128,
        max_seq_len=256,
        sliding_window=8,
        query_pre_attn_scalar=24,
    ),
    "tiny-gemma3": dict(
        _G3,
        vocab_size=512,
        d_model=64,
        n_layers=6,
        n_heads=4,
        n_kv_heads=1,
        head_dim=16,
        d_ff=128,
        max_seq_len=256,
        sliding_window=8,
        query_pre_attn_scalar=16,
        sliding_window_pattern=3,
    ),
}

# Presets that name a real checkpoint opengemma.load() can fetch without a path.
REAL_MODELS = ("gemma-3-270m",)
DEFAULT_MODEL = "gemma-3-270m"  # what opengemma.load() and the CLI load without a name


def cache_root() -> Path:
    """Where opengemma keeps what it converts, quantizes and compiles: $OPENGEMMA_CACHE, ~/.cache/opengemma."""
    return Path(os.environ.get("OPENGEMMA_CACHE") or Path.home() / ".cache" / "opengemma")
