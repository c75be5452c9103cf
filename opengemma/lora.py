"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a module swap after construction
(DESIGN.md rule 9): each targeted projection becomes a `LoRALinear` that keeps the frozen base and adds

    y = base(x) + (alpha / r) * B A dropout(x)         A (r, in) ~ kaiming-uniform(a=sqrt(5)), B (out, r) = 0

so a fresh adapter changes nothing (B = 0) and only A and B train. The base may be a float `nn.Linear` (LoRA) or
an `Int8Linear` / `Int4Linear` weight-only quantized module (QLoRA, Dettmers et al. 2023): its packed weights stay
frozen and its gradient with respect to the input is made in the backward from the weights dequantized a block
of rows at a time (`_FrozenQuantLinear`), so no dequantized copy of any matrix is kept between forward and
backward (QLoRA's own "dequantize in the backward").

Adapters save and load in PEFT's layout (`adapter_config.json` + `adapter_model.safetensors`, tensor names
`base_model.model.<transformers module>.lora_A.weight`), so an adapter trained here loads with `peft` on the
exported base and the other way round. The module names come from the Hugging Face weight map
(weights/hf.py): the map is the single source of truth for both. PEFT's defaults are followed where the file
does not say (init as above, scaling alpha / r, `use_rslora` false).

    apply_lora(model, LoRAConfig(rank=16, alpha=32, targets=("q_proj", "v_proj")))   # swap in place
    save_adapter(model, "tuned/adapter");  load_adapter(model, "tuned/adapter")      # PEFT files
    merge(model)                                                                      # plain Linears again
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import atomic_path
from .model import Gemma
from .qlinear import Int4Linear, Int8Linear

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION + MLP
# shorthands accepted wherever target names are (the CLI's --lora-targets)
TARGET_GROUPS = {"attention": ATTENTION, "mlp": MLP, "all": TARGETS}
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the transformers model: base_model (LoraModel).model


@dataclass
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0  # PEFT's default is 8 at r = 8 (scaling 1); 2r is the common choice (scaling 2)
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=TARGETS)

    def __post_init__(self):
        self.targets = resolve_targets(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def resolve_targets(targets) -> tuple[str, ...]:
    """Names or groups ("attention", "mlp", "all"), as a sequence or a comma-separated string -> projection names."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    out: list[str] = []
    for t in targets:
        for name in TARGET_GROUPS.get(t, (t,)):
            if name not in TARGETS:
                raise ValueError(
                    f"unknown LoRA target {name!r}; choose from {', '.join(TARGETS)} or {', '.join(TARGET_GROUPS)}"
                )
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no LoRA target modules given")
    return tuple(out)


class _FrozenQuantLinear(torch.autograd.Function):
    """y = W x for a frozen weight-only quantized W; dL/dx = dL/dy W made in the backward from W dequantized a block
    of output rows at a time (bounded temporaries), nothing saved but the module."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        with torch.no_grad():
            return module(x)

    @staticmethod
    def backward(ctx, g):
        m = ctx.module
        g2 = g.reshape(-1, m.out_features)  # (M, N)
        gx = torch.zeros(g2.shape[0], m.in_features, dtype=torch.float32, device=g.device)
        step = max(16, (1 << 22) // m.in_features)  # 4M weights at a time (8 MB in bf16)
        for s in range(0, m.out_features, step):
            w = _dequantized_rows(m, s, s + step).to(g.dtype)  # (n, K)
            gx += (g2[:, s : s + step] @ w).float()
        return gx.to(g.dtype).reshape(*g.shape[:-1], m.in_features), None


def _dequantized_rows(m: nn.Module, start: int, stop: int) -> torch.Tensor:
    if isinstance(m, Int4Linear):
        return m.dense(start, stop)
    return m.weight[start:stop].to(m.scales.dtype) * m.scales[start:stop, None]  # Int8Linear


class LoRALinear(nn.Module):
    """A frozen projection plus a trainable low-rank update. `base` keeps its own class and state (a model.Linear,
    an Int8Linear or an Int4Linear); A and B are float32 and follow the activation dtype in the product."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device = next(iter(base.state_dict().values())).device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.lora_A.is_meta:
            return
        # PEFT's init_lora_weights=True: A as nn.Linear's default init (kaiming uniform, a = sqrt(5)), B zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    enabled = True  # adapters_disabled() turns it off: the frozen base alone

    @property
    def quantized(self) -> bool:
        return isinstance(self.base, (Int8Linear, Int4Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized and torch.is_grad_enabled() and x.requires_grad:
            y = _FrozenQuantLinear.apply(x, self.base)
        else:
            y = self.base(x)
        a, b = self.lora_A, self.lora_B
        if not torch.is_autocast_enabled(x.device.type):  # autocast casts by itself
            a, b = a.to(x.dtype), b.to(x.dtype)
        if not self.enabled:
            return y
        return y + F.linear(F.linear(self.dropout(x), a), b) * self.scaling  # (.., in) -> (.., r) -> (.., out)

    def delta(self) -> torch.Tensor:
        """(out, in) float32: the update the adapter adds to the weight, scaling * B @ A."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model alone inside the block (every LoRALinear's update skipped): a LoRA policy's frozen reference,
    with no second copy of the weights (peft's disable_adapter)."""
    mods = list(lora_modules(model).values())
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


def apply_lora(model: Gemma, config: LoRAConfig) -> Gemma:
    """Swap every targeted projection of every block for a LoRALinear, in place; freeze everything else. A quantized
    model's fused q|k|v and gate|up projections are split back first (exact) so that each can take its adapter."""
    if lora_modules(model):
        raise ValueError("this model already has LoRA adapters (merge() them first)")
    from .quantize import unfuse_projections

    unfuse_projections(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.attn, layer.mlp):
            for name in config.targets:
                base = getattr(parent, name, None)
                if base is not None:
                    setattr(parent, name, LoRALinear(base, config.rank, config.alpha, config.dropout))
    model.lora = config
    return model


def merge(model: Gemma) -> Gemma:
    """Fold every adapter into its base weight (W += scaling B A, in the base's dtype) and put the plain projection
    back: the model is an ordinary Gemma again, which saves and exports like any other. Quantized bases cannot
    take the update exactly: merge the adapter into the float model instead (load_adapter on it, then merge)."""
    for name, m in lora_modules(model).items():
        if m.quantized:
            raise ValueError(f"{name}: cannot merge into a quantized base; load the adapter on the float model")
        parent, child = _parent(model, name)
        with torch.no_grad():
            m.base.weight += m.delta().to(m.base.weight.dtype)
        setattr(parent, child, m.base)
    model.__dict__.pop("lora", None)
    return model


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return model.get_submodule(path), child


# -- PEFT files ------------------------------------------------------------------------------------------------
def _hf_module_names(model: Gemma) -> dict[str, str]:
    """{our module path: transformers module path} of the targetable projections, from the HF weight map."""
    from .weights.hf import weight_map

    keys = [
        f"layers.{i}.{part}.{t}.weight" for i in range(len(model.layers)) for part in ("attn", "mlp") for t in TARGETS
    ]
    return {
        ours.removesuffix(".weight"): theirs.removesuffix(".weight")
        for ours, theirs in weight_map(model.config, keys).items()
    }


def adapter_state(model: Gemma) -> dict[str, torch.Tensor]:
    """The adapters' tensors under PEFT's names (float32, contiguous)."""
    names = _hf_module_names(model)
    out = {}
    for name, m in lora_modules(model).items():
        hf = PEFT_PREFIX + names[name]
        out[f"{hf}.lora_A.weight"] = m.lora_A.detach().float().contiguous().cpu()
        out[f"{hf}.lora_B.weight"] = m.lora_B.detach().float().contiguous().cpu()
    return out


def save_adapter(model: Gemma, path: str | Path, base_model: str = "") -> Path:
    """Write adapter_config.json and adapter_model.safetensors (PEFT's LoRA layout) into `path`, atomically."""
    from safetensors.torch import save_file

    config: LoRAConfig | None = getattr(model, "lora", None)
    if config is None or not lora_modules(model):
        raise ValueError("this model has no LoRA adapters to save")
    path = Path(path)
    hf_cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
    }
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file(adapter_state(model), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(hf_cfg, indent=2) + "\n")
    return path


def read_adapter_config(path: str | Path) -> LoRAConfig:
    """A PEFT LoRA adapter's config as a LoRAConfig; what opengemma cannot apply exactly is refused by name."""
    path = Path(path)
    f = path / ADAPTER_CONFIG
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{f}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key, ok in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none")):
        if cfg.get(key, ok) != ok:
            raise ValueError(f"{f}: {key} = {cfg[key]!r} is not supported (opengemma applies plain LoRA)")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            raise ValueError(f"{f}: {key} is not supported (one rank and alpha for all of the target modules)")
    targets = cfg.get("target_modules")
    if isinstance(targets, str):  # PEFT also takes a regex; only plain names are portable
        targets = [targets]
    return LoRAConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=0.0, targets=tuple(targets or ()))


def load_adapter(model: Gemma, path: str | Path) -> Gemma:
    """Apply a PEFT-layout LoRA adapter (trained here or with `peft`) to `model`, unmerged; strict: every tensor of
    the file is used and every adapter of the model is filled, shapes checked."""
    from safetensors.torch import load_file

    from .weights import CheckpointError

    path = Path(path)
    config = read_adapter_config(path)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: no {ADAPTER_WEIGHTS}")
    state = load_file(weights)
    apply_lora(model, config)
    expected = adapter_state(model)
    # PEFT may keep its adapter name in the keys (".lora_A.default.weight") in some versions' in-memory dicts
    state = {k.replace(".default.weight", ".weight"): v for k, v in state.items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights}: adapter tensors do not match the model: missing {missing[:4]}{'...' if len(missing) > 4 else ''}"
            f", unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}"
        )
    names = {v: k for k, v in _hf_module_names(model).items()}
    with torch.no_grad():
        for key, t in state.items():
            module_name, which = key.removeprefix(PEFT_PREFIX).rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            m = model.get_submodule(names[module_name])
            p = getattr(m, which)
            if p.shape != t.shape:
                raise CheckpointError(f"{weights}: {key} has shape {tuple(t.shape)}, the model wants {tuple(p.shape)}")
            p.copy_(t)
    return model


__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "merge",
    "save_adapter",
    "load_adapter",
    "read_adapter_config",
    "adapter_state",
    "lora_modules",
    "resolve_targets",
]
