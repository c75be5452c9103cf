"""The distributed seam: torchrun's environment in, a model built, wrapped and sharded out.

One process (plain `python -m ...`) trains an ordinary module; under torchrun every block, then the root, is
wrapped by FSDP2's `fully_shard` (the tied embedding / output matrix lives in the root and is sharded once). The
order follows torchtitan's parallelize step: activation checkpointing, then torch.compile, then FSDP, each per
block. Multi-device random init cannot reproduce a single process's draws (TRAINING.md), so rank 0 builds and
initializes (or loads) the full model on the CPU and `set_model_state_dict(..., broadcast_from_rank0=True)` shards
it: a run starts from the same weights on any number of ranks, which the 1-vs-2-process test relies on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import GemmaConfig
from ..model import Gemma
from ..quantize import prepare_quantized


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: object | None = None  # a 1-D DeviceMesh over all ranks when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1


def init(device: str | None = None) -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; start the process group (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(kind, local_rank) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

    # an explicit CPU mesh on CPU: with GPUs present, gloo + fully_shard would otherwise move parameters to CUDA
    mesh = init_device_mesh(kind, (world,))
    return Dist(rank, world, local_rank, dev, mesh)


def shutdown(d: Dist) -> None:
    if d.sharded and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.sharded:
        dist.barrier()


def print0(d: Dist, *args, **kwargs) -> None:
    if d.main:
        print(*args, **kwargs, flush=True)


def all_sum(d: Dist, value: float) -> float:
    """A float summed over the ranks (losses, token counts), as a Python number."""
    if not d.sharded:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)  # gloo and NCCL both reduce float64 CPU/GPU tensors; keep it on the CPU for gloo
    return float(t.item())


def all_cat(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor (the same shape on each) concatenated along dim 0 in rank order, on the CPU: per-row
    values (RL rewards, KLs) gathered into the whole step's. t itself in one process."""
    if not d.sharded:
        return t
    t = t.contiguous().to(d.device)
    parts = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(parts, t)
    return torch.cat(parts).cpu()


def replica(cfg: GemmaConfig, state: dict[str, torch.Tensor], seed: int, swap=None) -> Gemma:
    """A whole, unsharded model on this rank, the same as `build` starts from (e.g. the RL rollouts' decoder: a
    token at a time through FSDP would gather every layer per token). Its trained weights follow the sharded
    model through `copy_trained`. `state` is taken as is (assigned, not copied)."""
    return _full_model(cfg, state, seed, swap)


@torch.no_grad()
def copy_trained(src: nn.Module, dst: nn.Module) -> None:
    """dst's parameters set from src's trainable ones, gathered whole from every rank's shard (a collective under
    FSDP2: every rank calls it), by name: fully_shard keeps the parameters' names."""
    params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        if p.requires_grad:
            params[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)


def autocast(d: Dist, dtype: torch.dtype):
    """bf16 compute for one process (fp32 master weights): autocast. Sharded runs get bf16 from FSDP's
    MixedPrecisionPolicy instead (parameters gathered in bf16, gradients reduced in fp32)."""
    if dtype == torch.float32 or d.sharded:
        return contextlib.nullcontext()
    return torch.autocast(d.device.type, dtype=dtype)


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """A recipe's `dtype` setting: float32, bfloat16, or auto = bfloat16 where the hardware computes it natively (CUDA;
    CPUs with AVX-512 BF16 or AMX, as oneDNN reports), else float32. On an AVX2-only CPU bf16 matmuls are emulated:
    measured here (AMD EPYC, AVX2, 2 cores), the 270M's output layer over 512 tokens took 25 s in bf16."""
    if name == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native else torch.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32, bfloat16 or auto, got {name!r}")
    return getattr(torch, name)


def apply_ac(model: Gemma) -> None:
    """Activation checkpointing per block: keep each block's input, recompute its insides in backward
    (non-reentrant torch.utils.checkpoint, the variant FSDP2 and compile compose with)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)  # no dropout: no RNG to replay


def apply_compile(model: Gemma) -> None:
    """torch.compile each block's forward: repeated structure, so a compiled graph serves every block of a kind.
    The forward, not the module: FSDP2's hooks on the block then run outside the graph, and parameter names stay."""
    for block in model.layers:
        block.forward = torch.compile(block.forward, dynamic=False)


def build(
    cfg: GemmaConfig,
    d: Dist,
    *,
    state: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    ac: bool = False,
    compile: bool = False,
    swap=None,
) -> Gemma:
    """The model to train, on d.device: `state` (full fp32 weights, e.g. an imported checkpoint; needed on rank 0
    only) or `init_weights()` after torch.manual_seed(seed). Sharded with FSDP2 under torchrun; bf16 compute
    through the mixed-precision policy there when dtype is bf16 (parameters and optimizer state stay fp32).
    swap: a module swap applied after construction and loading, before wrapping (e.g. LoRA adapters, drawn after
    torch.manual_seed(seed) so that every world size starts from the same adapters)."""
    if not d.sharded:
        model = _full_model(cfg, state, seed, swap).to(d.device)
        prepare_quantized(model)  # a move drops int4 kernel layouts (QLoRA over int4): rebuild them on the device
        _wrap(model, ac, compile)
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    with torch.device("meta"):
        model = Gemma(cfg)
        if swap is not None:
            swap(model)
    _wrap(model, ac, compile)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else None
    kwargs = {"mesh": d.mesh, **({"mp_policy": mp} if mp else {})}
    for block in model.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    model.to_empty(device=d.device)
    model.init_rope()  # non-persistent buffers: to_empty left them uninitialized
    full = _full_model(cfg, state, seed, swap).state_dict() if d.main else {}
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=opts)
    return model


def _full_model(cfg: GemmaConfig, state: dict[str, torch.Tensor] | None, seed: int, swap=None) -> Gemma:
    if state is not None:
        # built on meta and given the loaded tensors themselves (a checkpoint's memory map): no random init to
        # overwrite, and no second copy of the weights in memory while the run starts
        with torch.device("meta"):
            model = Gemma(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        model.init_rope()
    else:
        torch.manual_seed(seed)
        model = Gemma(cfg)
        model.init_weights()
    if swap is not None:
        torch.manual_seed(seed)
        swap(model)
    return model


def _wrap(model: Gemma, ac: bool, compile: bool) -> None:
    if ac:
        apply_ac(model)
    if compile:
        apply_compile(model)


def set_sync(model: nn.Module, sync: bool) -> None:
    """Gradient accumulation under FSDP2: reduce-scatter only on the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over every rank's shard) to max_norm; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)
