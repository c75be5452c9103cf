"""metrics of a training run: FLOPs/MFU, the metrics.jsonl log, the progress bar, the loss PNG.

    flops/token   6 N + 12 * sum_i H * Q * T_i          (PaLM, Chowdhery et al. 2022, Appendix B)
    MFU           tokens/s * flops/token / peak FLOP/s  (peak: the dense GEMM rate measured on this device)

metrics.jsonl holds one JSON object per line, appended and flushed line by line by rank 0: train records carry
`loss`, validation records `val_loss`, both `step`. A resumed run appends to the same file; the reader takes a
step's last line, so the curve shows what the resumed run computed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from opengemma.atomic import atomic_path
from opengemma.config import LAYER_LOCAL, GemmaConfig

METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # PNG specification, section 5.2
SIG_DIGITS = 6  # float32 carries ~7 significant digits; the 7th of a loss is noise
EMA_BETA = 0.9  # train-loss smoothing of the plot: ~10 logged points of memory

_clock = time.perf_counter  # a module attribute so that the tests can drive time
_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


# -- FLOPs and MFU ----------------------------------------------------------------------------------------
def flops_per_token(cfg: GemmaConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) as counted in PaLM (Chowdhery et al. 2022), Appendix B:

        6 N + 12 * L * H * Q * T   ->   6 N + sum over layers i of 12 * H * Q * T_i

    N: the parameters taking part in matmuls: every non-embedding parameter (cfg.num_params(embedding=False):
    the projections, plus the RMSNorm scales, < 0.01% of it) plus the V x C output matrix once. Gemma ties that
    matrix to the embedding: the embedding lookup does no FLOPs, the output projection does (2 V C per token
    forward, 4 V C backward). An untied lm_head is that same one matrix (num_params(embedding=False) counts
    neither table), so either way it is counted once. 6 = 2 (multiply-add) x 3 (forward, backward for the
    inputs, backward for the weights).
    The attention term counts the two score matmuls (Q K^T and P V: 2 x 2 x T x Q FLOPs per head, x 3 for
    backward). PaLM counts the full context T, not the causal half a kernel actually computes; we keep that
    convention, so MFUs compare with PaLM's and torchtitan's. A sliding-window layer (cfg.layer_types[i] ==
    LAYER_LOCAL) sees T_i = min(T, cfg.sliding_window) keys; a global layer T_i = T. Packed documents do not
    shrink T (the same convention: the matmuls a dense kernel would run).
    """
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    n = cfg.num_params(embedding=False) + cfg.vocab_size * cfg.d_model
    attn = 0
    for kind in cfg.layer_types:
        t = min(seq_len, cfg.sliding_window) if kind == LAYER_LOCAL else seq_len
        attn += 12 * cfg.n_heads * cfg.head_dim * t
    return float(6 * n + attn)


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """The dense GEMM rate actually reached on `device` in `dtype`: FLOP/s = 2 n^3 / t for one n x n by
    n x n matmul (n = 2048 on CPU, 8192 on CUDA: large enough to reach the plateau), t the best per-matmul
    time over repeats run for about `seconds` after a warm-up, CUDA synchronized around each repeat.

    MFU is reported against this measured peak, not a spec sheet: a CPU has no published peak (it depends on
    the SKU, the threads torch uses, AVX-512/AMX and the clock under load, and on a shared machine on the
    neighbours), and a measured peak also holds on GPUs whose clocks or power caps differ from the sheet. A
    measured peak lies below the sheet's figure, so these MFUs read higher than spec-sheet MFUs (torchtitan's
    and PaLM's): say which when comparing. Cached per (device type, dtype) for the process.
    """
    device = torch.device(device)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    key = (device.type, dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n = 8192 if device.type == "cuda" else 2048
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def timed(k: int) -> float:  # seconds per matmul, over a batch of k (amortizes the synchronize)
        sync()
        t0 = _clock()
        for _ in range(k):
            torch.mm(a, b, out=c)
        sync()
        return (_clock() - t0) / k

    timed(1)  # warm-up: thread pools, cuBLAS handles and heuristics, clocks ramping up
    per = timed(1)
    k = max(1, min(1000, int(seconds / 10 / max(per, 1e-9))))  # ~10 repeats in `seconds`
    best, start, repeats = per, _clock(), 0
    while repeats < 3 or _clock() - start < seconds:
        best = min(best, timed(k))
        repeats += 1
    peak = 2.0 * n**3 / best
    _PEAK_CACHE[key] = peak
    return peak


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float | None) -> float | None:
    """Model FLOPs utilization = tokens_per_s * flops_per_tok / peak (per device: pass one device's tokens/s
    and one device's peak); None when no peak is known."""
    if peak is None:
        return None
    if not peak > 0 or tokens_per_s < 0 or flops_per_tok < 0:
        raise ValueError(f"need peak > 0 and non-negative rates, got {tokens_per_s=}, {flops_per_tok=}, {peak=}")
    return tokens_per_s * flops_per_tok / peak


# -- metrics.jsonl --------------------------------------------------------------------------------------
def _clean(v: Any, where: str) -> Any:
    """A JSON-ready copy: floats to SIG_DIGITS significant digits, NaN/inf to None, ints stay ints."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise TypeError(f"metric {where!r} is a tensor of shape {tuple(v.shape)}; log scalars")
        v = v.item()
    elif hasattr(v, "item") and callable(v.item) and not isinstance(v, (dict, list, tuple, str)):
        v = v.item()  # numpy scalars
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return float(f"{v:.{SIG_DIGITS}g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x, where) for x in v]
    raise TypeError(f"metric {where!r} has type {type(v).__name__}; log numbers, strings, lists or dicts")


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl, one flushed line each, so a kill -9 loses at most the line
    being written (flush hands it to the OS; no fsync: a power cut may lose more). A no-op when not enabled
    (every rank but 0). A torn last line left by a killed run is repaired before appending: otherwise the
    resumed run's first record would be glued to it and the file would no longer parse."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._f = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        if not isinstance(record, dict):
            raise TypeError(f"a metrics record is a dict, got {type(record).__name__}")
        if self._f is None:
            raise ValueError(f"MetricsLog of {self.path} is closed")
        line = json.dumps(_clean(record, "record"), allow_nan=False, separators=(",", ":"))
        self._f.write(line + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_tail(path: Path) -> None:
    """If the file does not end in a newline: end a complete record with one, or cut a torn one off."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        whole = isinstance(json.loads(data[cut:]), dict)
    except ValueError:
        whole = False
    with open(path, "r+b") as f:
        if whole:
            f.seek(0, 2)
            f.write(b"\n")
        else:
            f.truncate(cut)


def read_metrics(path: str | Path, val_key: str = "val_loss") -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of a metrics.jsonl, each sorted by step. A validation record holds
    `val_key` (val_loss; RLHF's: val_reward), a train record `loss` (a record may be both). A step logged twice is read by its last line (a
    resumed run re-logs the steps after its checkpoint). A torn last line (kill -9 mid-write) is ignored; a
    malformed line elsewhere raises ValueError with the file and line number."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"a record is a JSON object, got {type(rec).__name__}")
        except ValueError as e:
            if i == len(lines):
                continue  # torn by a kill mid-write
            raise ValueError(f"{path}:{i}: malformed metrics line: {e}") from None
        for key, into in (("loss", train), (val_key, val)):
            if key in rec:
                step = rec.get("step")
                if not isinstance(step, int) or isinstance(step, bool):
                    raise ValueError(f"{path}:{i}: a record with {key!r} needs an int 'step', got {step!r}")
                into.pop(step, None)
                into[step] = rec
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


# -- the loss PNG -----------------------------------------------------------------------------------------
def _ema(xs: list[float], beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average with Adam's bias correction (Kingma & Ba 2015), so it starts at xs[0]."""
    out, m = [], 0.0
    for i, x in enumerate(xs, 1):
        m = beta * m + (1 - beta) * x
        out.append(m / (1 - beta**i))
    return out


def _interp(x, xp, fp):
    """np.interp, extended linearly past both ends (the axis margins lie outside the logged steps)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0]), y)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), y)


def plot_loss(run_dir: str | Path) -> Path | None:
    """Write run_dir/loss.png from run_dir/metrics.jsonl: train loss against step (thin line and its EMA,
    thick), validation loss (markers), a top axis in tokens when the train records carry `tokens`. Written
    under a temporary name and renamed into place (opengemma.atomic). None, writing nothing, without records."""
    run_dir = Path(run_dir)
    src = run_dir / METRICS_FILE
    if not src.exists():
        return None
    train, val = read_metrics(src)
    tr = [(r["step"], r["loss"]) for r in train if isinstance(r["loss"], (int, float))]
    va = [(r["step"], r["val_loss"]) for r in val if isinstance(r["val_loss"], (int, float))]
    if not tr and not va:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if tr:
        s, y = zip(*tr)
        ax.plot(s, y, lw=0.6, alpha=0.45, color="C0", label="train")
        ax.plot(s, _ema(list(y)), lw=2.0, color="C0", label=f"train (EMA {EMA_BETA})")
    if va:
        s, y = zip(*va)
        ax.plot(s, y, "o-", ms=4, lw=1.2, color="C1", label="validation")
    st = [(r["step"], r["tokens"]) for r in train if isinstance(r.get("tokens"), (int, float))]
    steps, toks = (np.array(v, dtype=float) for v in zip(*st)) if len(st) >= 2 else (None, None)
    if steps is not None and np.all(np.diff(steps) > 0) and np.all(np.diff(toks) > 0):
        top = ax.secondary_xaxis(
            "top", functions=(lambda x: _interp(x, steps, toks), lambda t: _interp(t, toks, steps))
        )
        top.set_xlabel("tokens")
        top.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = run_dir / LOSS_PNG
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
        with open(tmp, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise RuntimeError(f"matplotlib wrote no PNG to {tmp}")
    return out


# -- the progress bar -------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar of optimizer steps with loss and tokens/s in its postfix; silent when not enabled."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        if total < 0 or initial < 0:
            raise ValueError(f"need total >= 0 and initial >= 0, got {total=}, {initial=}")
        self.enabled = enabled
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_s: float, **extra: Any) -> None:
        """Set the bar to `step` steps done; show loss (4 decimals), tok/s and any `extra` metrics."""
        if not self.enabled:
            return
        post = {"loss": f"{loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"}
        post.update({k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in extra.items()})
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(step - self._bar.n)  # tqdm's update honours its refresh interval

    def write(self, msg: str) -> None:
        """Print `msg` above the bar (not through it)."""
        if self.enabled:
            tqdm.write(str(msg))

    def close(self) -> None:
        self._bar.close()


def peak_memory_gib(device: torch.device) -> float:
    """The process's peak memory so far: resident set on the CPU (ru_maxrss, KiB on Linux), allocated on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def plot_rl(out: str | Path) -> Path | None:
    """rl.png: an RLHF run's reward (and the judge's scores) and its KL to the reference per step."""
    out = Path(out)
    from matplotlib.figure import Figure

    if not (out / "metrics.jsonl").exists():
        return None
    train, evals = read_metrics(out / "metrics.jsonl", val_key="val_reward")
    if not train:
        return None
    fig = Figure(figsize=(10, 3.6), dpi=110, layout="constrained")
    a, b = fig.subplots(1, 2)
    a.plot([r["step"] for r in train], [r["reward"] for r in train], label="reward (train rollouts)")
    j = [r for r in train if "judge" in r]
    if j:
        a.plot([r["step"] for r in j], [r["judge"] for r in j], "o-", label="judge (same rollouts)")
    v = [r for r in evals if "val_judge" in r]
    if v:
        a.plot([r["step"] for r in v], [r["val_judge"] for r in v], "s--", label="judge (held-out, greedy)")
    a.set_xlabel("step")
    a.set_title("reward")
    a.legend(fontsize=8)
    b.plot([r["step"] for r in train], [r["kl"] for r in train], label="KL to the reference (k1, per answer)")
    b.plot([r["step"] for r in train], [r["beta"] for r in train], label="beta")
    b.set_xlabel("step")
    b.set_title("KL")
    b.legend(fontsize=8)
    path = out / "rl.png"
    fig.savefig(path)
    return path
