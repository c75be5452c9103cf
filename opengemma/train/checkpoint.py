"""Training checkpoints: torch.distributed.checkpoint (DCP) of everything a run needs to continue exactly.

Layout of RUN_DIR/checkpoints/step_N/ (N = optimizer steps done):
  .metadata, __R_0.distcp   DCP: {"model": weights, "optim": AdamW state}, each rank writing its own shards; a
                            checkpoint written by N ranks loads on M ranks or in one plain process
  rng_R.json                rank R's RNG states (torch CPU and CUDA, numpy, Python), as JSON: never a pickle
  meta.json                 step, the model config, the data loader's position, the run's settings; written last
  tokenizer.model           the run's tokenizer, so that a checkpoint exports on its own
Atomic: everything is written into a hidden `.tmp_step_N` sibling, and rank 0 renames it to `step_N` only after
every rank's files and meta.json are complete. A kill -9 mid-save leaves a `.tmp_` directory, which resume never
picks and the next save removes. Only the last `keep` complete checkpoints stay.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..atomic import atomic_path
from ..config import GemmaConfig
from ..model import Gemma
from .dist import Dist, barrier

_STEP = re.compile(r"step_(\d+)")


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run (meta.json present), oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for p in root.glob("step_*") if root.is_dir() else ():
        m = _STEP.fullmatch(p.name)
        if m and (p / "meta.json").is_file() and (p / ".metadata").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def save(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict,
    d: Dist,
    keep: int = 3,
    tokenizer: str | Path | None = None,
    trainable_only: bool = False,
) -> Path:
    """Write checkpoint `step` (a collective: every rank calls it). `meta` must be JSON; it gains the step.
    trainable_only: the parameters being trained and their optimizer state, not the frozen base (LoRA runs: the
    base is rebuilt from its source on resume and export; a 270M base would otherwise add 1 GB per checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    model_state, optim_state = _states(model, optimizer, trainable_only)
    with _quiet():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    _write_json(tmp / f"rng_{d.rank}.json", rng_state())
    barrier(d)  # every rank's shards and RNG file are on disk
    if d.main:
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
        _write_json(tmp / "meta.json", {**meta, "step": step, "world": d.world})
        if final.exists():  # the same step saved again (e.g. Ctrl-C right after a resume): the new one wins
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        prune(run_dir, keep)
    barrier(d)
    return final


def prune(run_dir: str | Path, keep: int) -> None:
    """Remove all but the last `keep` complete checkpoints, and any half-written `.tmp_` directory."""
    root = Path(run_dir) / "checkpoints"
    for tmp in root.glob(".tmp_step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _clean(name: str) -> str:  # parameter names as get_state_dict writes them (no wrapper prefixes)
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def _states(model: nn.Module, optimizer, trainable_only: bool) -> tuple[dict, dict]:
    if not trainable_only:
        return get_state_dict(model, optimizer)
    opts = StateDictOptions(ignore_frozen_params=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=opts)
    trainable = {_clean(n) for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model_state.items() if k in trainable}, optim_state  # buffers are frozen too


def load(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    d: Dist,
    trainable_only: bool = False,
) -> dict:
    """Restore weights, optimizer state and (same world size) this rank's RNG states; returns meta.json.
    trainable_only: a checkpoint saved so (the frozen base is already in the model)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = {"model": get_model_state_dict(model)}
        with _quiet():
            dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        return meta
    model_state, optim_state = _states(model, optimizer, trainable_only)
    state = {"model": model_state, "optim": optim_state}
    with _quiet():
        dcp.load(state, checkpoint_id=path)
    opts = StateDictOptions(strict=not trainable_only, ignore_frozen_params=trainable_only)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts)
    rng = path / f"rng_{d.rank}.json"
    if meta.get("world") == d.world and rng.is_file():
        set_rng_state(json.loads(rng.read_text()))
    return meta


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, merged: bool = True, swap=None
) -> tuple[Gemma, Path | None]:
    """A checkpoint's weights as a plain one-process Gemma (any world size wrote it), and its tokenizer file.
    A LoRA run's checkpoint holds the adapters only (meta.json's "lora" and "base"): the base is imported from its
    source, the adapters applied and (merged) folded into it. swap: the module swap the run trained with (e.g. a
    reward head), applied before the weights are read."""
    path = Path(path)
    if not (path / "meta.json").is_file() or not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no meta.json / .metadata)")
    meta = json.loads((path / "meta.json").read_text())
    tok = path / "tokenizer.model"
    if meta.get("lora"):
        from ..lora import LoRAConfig, apply_lora, merge

        model, base_tok = import_weights(meta["base"])
        apply_lora(model, LoRAConfig(**meta["lora"]))
        state = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
        with _quiet():
            dcp.load({"model": state}, checkpoint_id=path)
        model.load_state_dict(state, strict=False)
        if merged:
            merge(model)
        return model.to(dtype), tok if tok.is_file() else base_tok
    model = Gemma(GemmaConfig.from_dict(meta["config"]))
    if swap is not None:
        swap(model)
    state = {"model": model.state_dict()}
    with _quiet():
        dcp.load(state, checkpoint_id=path)  # reads just the model's tensors, resharded to this one process
    model.load_state_dict(state["model"])
    return model.to(dtype), tok if tok.is_file() else None


def import_weights(source: str | Path) -> tuple[Gemma, Path | None]:
    """The initial weights of a run that continues a checkpoint: a real model's name (the default model's GGUF,
    converted once into the cache), a Hugging Face directory, a .gguf file or another run's checkpoint, read
    through the existing weight maps, as a float32 Gemma on the CPU; and its tokenizer file."""
    if (Path(source) / "meta.json").is_file():
        return load_model(source)
    from ..weights.hf import load_hf_dir
    from ..weights.store import resolve_source

    path, _ = resolve_source(source)
    tok = path / "tokenizer.model"
    return load_hf_dir(path), tok if tok.is_file() else None


def export_hf(
    path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32, instruction_tuned: bool = False
) -> Path:
    """A checkpoint -> a Hugging Face layout directory (config.json, model.safetensors, tokenizer.model) that
    opengemma.load, serve, eval and transformers' *ForCausalLM read (LoRA checkpoints: merged into their base).
    instruction_tuned: also Gemma's chat template and <end_of_turn> as a stop token (a fine-tuned chat model)."""
    from ..weights.hf import save_hf_dir

    model, tok = load_model(path)
    out = Path(out)
    from ..tokenizer import Tokenizer

    save_hf_dir(model, out, tokenizer=Tokenizer(tok) if tok else None, dtype=dtype, instruction_tuned=instruction_tuned)
    return out


def export_adapter(path: str | Path, out: str | Path) -> Path:
    """A LoRA run's checkpoint -> a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    from ..lora import save_adapter

    meta = json.loads((Path(path) / "meta.json").read_text())
    if not meta.get("lora"):
        raise ValueError(f"{path} is not a LoRA run's checkpoint (no adapters to export)")
    model, _ = load_model(path, merged=False)
    return save_adapter(model, out, base_model=str(meta["base"]))


# --- RNG states as JSON ------------------------------------------------------------------------------------------


def export_tuned(ckpt: str | Path, out: str | Path, lora: bool) -> None:
    """A tuned chat model from a run's last checkpoint, in one process: out/merged (Hugging Face layout, float32,
    Gemma's chat template) and, for LoRA runs, out/adapter (PEFT layout)."""
    out = Path(out)
    if lora:
        export_adapter(ckpt, out / "adapter")
    export_hf(ckpt, out / "merged", instruction_tuned=True)
    print(f"wrote {out / 'merged'}" + (f" and {out / 'adapter'}" if lora else ""), flush=True)


def rng_state() -> dict:
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    nps = np.random.get_state()
    state = {
        "torch": b64(torch.get_rng_state()),
        "numpy": [nps[0], base64.b64encode(nps[1].tobytes()).decode(), *map(int, nps[2:4]), float(nps[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


@contextlib.contextmanager
def _quiet():
    """DCP warns on every single-process save and load that it assumes one process: it does, by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
