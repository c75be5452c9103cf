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
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

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
) -> Path:
    """Write checkpoint `step` (a collective: every rank calls it). `meta` must be JSON; it gains the step."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step_{step}", root / f".tmp_step_{step}"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(d)
    model_state, optim_state = get_state_dict(model, optimizer)
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


def load(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, d: Dist) -> dict:
    """Restore weights, optimizer state and (same world size) this rank's RNG states; returns meta.json."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = {"model": get_model_state_dict(model)}
        with _quiet():
            dcp.load(state, checkpoint_id=path)
        set_model_state_dict(model, state["model"])
        return meta
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _quiet():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = path / f"rng_{d.rank}.json"
    if meta.get("world") == d.world and rng.is_file():
        set_rng_state(json.loads(rng.read_text()))
    return meta


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Gemma, Path | None]:
    """A checkpoint's weights as a plain one-process Gemma (any world size wrote it), and its tokenizer file."""
    path = Path(path)
    if not (path / "meta.json").is_file() or not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no meta.json / .metadata)")
    meta = json.loads((path / "meta.json").read_text())
    model = Gemma(GemmaConfig.from_dict(meta["config"]))
    state = {"model": model.state_dict()}
    with _quiet():
        dcp.load(state, checkpoint_id=path)  # reads just the model's tensors, resharded to this one process
    model.load_state_dict(state["model"])
    tok = path / "tokenizer.model"
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


def export_hf(path: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """A checkpoint -> a Hugging Face layout directory (config.json, model.safetensors, tokenizer.model) that
    opengemma.load, serve, eval and transformers' *ForCausalLM read."""
    from ..weights.hf import save_hf_dir

    model, tok = load_model(path)
    out = Path(out)
    save_hf_dir(model, out, dtype=dtype)
    if tok is not None:
        from ..weights.hf import save_tokenizer_files

        save_tokenizer_files(tok.read_bytes(), out)
    return out


# --- RNG states as JSON ------------------------------------------------------------------------------------------


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
