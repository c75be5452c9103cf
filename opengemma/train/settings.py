"""A recipe's settings: defaults in the script, values from a TOML file (`--config run.toml`), flags on top.

Config files hold values only (DESIGN.md rule 8): a key the recipe does not define is an error listing the valid
ones, and every key is also a flag, spelled with dashes (`batch_size` = `--batch-size 8`; booleans take
`--compile` / `--no-compile`). Tables are allowed for dict-valued settings (e.g. `[model_config]`), whose flag
takes `key=value,key=value`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _dict_flag(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())  # numbers, booleans, None; else the string
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def parse(defaults: dict[str, tuple], argv: list[str] | None = None, description: str = "") -> dict:
    """defaults: name -> (default value, type, help). Returns the resolved settings as a plain dict."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a TOML file of settings (values only); flags override it")
    for name, (default, kind, help_) in defaults.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{help_} [{default}]")
        elif kind is dict:
            p.add_argument(flag, type=_dict_flag, default=None, help=f"{help_} (key=value,...)")
        else:
            p.add_argument(flag, type=kind, default=None, help=f"{help_} [{default}]")
    args = p.parse_args(argv)
    values = {name: spec[0] for name, spec in defaults.items()}
    if args.config:
        path = Path(args.config)
        try:
            loaded = tomllib.loads(path.read_text())
        except FileNotFoundError:
            p.error(f"no such config file: {path}")
        except tomllib.TOMLDecodeError as e:
            p.error(f"{path}: not valid TOML ({e})")
        unknown = sorted(set(loaded) - set(defaults))
        if unknown:
            p.error(f"{path}: unknown keys {unknown}; valid keys: {', '.join(defaults)}")
        for name, value in loaded.items():
            kind = defaults[name][1]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if value is not None and kind in (int, float, str, bool, dict) and not isinstance(value, kind):
                p.error(f"{path}: {name} must be {kind.__name__}, got {value!r}")
            values[name] = value
        values["config"] = str(path)
    for name in defaults:
        flag = getattr(args, name)
        if flag is not None:
            values[name] = {**(values[name] or {}), **flag} if defaults[name][1] is dict else flag
    return values


def run_recipe(train, defaults: dict[str, tuple], argv: list[str] | None, doc: str, name: str, input_errors=()) -> int:
    """A recipe's main(): its settings parsed, then `train(settings, stop)`, where SIGINT / SIGTERM set
    stop["now"] (the loop finishes its step, saves and returns) instead of killing the step half-written.
    input_errors: exceptions meaning bad input (a malformed record, a missing file): one line naming it, exit 2."""
    import signal

    s = parse(defaults, argv, doc)
    stop = {"now": False}
    previous = {sig: signal.signal(sig, lambda *_: stop.update(now=True)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train(s, stop)
    except tuple(input_errors) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the settings every training recipe shares, with its own defaults ------------------------------------------
def optim_settings(
    lr: float | None,
    lr_help: str,
    *,
    min_lr_ratio: float = 0.0,
    schedule: str = "cosine",
    warmup: int = 10,
    weight_decay: float = 0.0,
    weight_decay_help: str = "AdamW decay on matrices",
) -> dict[str, tuple]:
    """The optimizer and schedule settings (train/optim.py's AdamW and lr_at)."""
    return {
        "lr": (lr, float, lr_help),
        "min_lr_ratio": (min_lr_ratio, float, "the schedule's floor, as a fraction of lr"),
        "schedule": (schedule, str, "cosine | wsd | constant, after linear warmup"),
        "warmup": (warmup, int, "warmup steps"),
        "weight_decay": (weight_decay, float, weight_decay_help),
        "grad_clip": (1.0, float, "global gradient-norm clip (0: off)"),
    }


def lora_settings(dropout: bool = False) -> dict[str, tuple]:
    """LoRA's settings (lora.py); rank 0 trains every weight."""
    out = {
        "lora_rank": (0, int, "LoRA rank (0: every weight trains)"),
        "lora_alpha": (None, float, "LoRA alpha (default 2 x rank)"),
        "lora_dropout": (0.0, float, "dropout on the adapters' input"),
        "lora_targets": ("all", str, "projections (q_proj,...,down_proj) or groups (attention, mlp, all)"),
    }
    if not dropout:
        del out["lora_dropout"]
    return out


def pairs_settings(out: str, epochs_help: str = "passes over the pairs when steps is 0") -> dict[str, tuple]:
    """The data and batch settings of a recipe that trains on preference pairs (reward, DPO)."""
    return {
        "data": (None, str, "training pairs, JSONL (prompt / chosen / rejected)"),
        "val_data": (None, str, "held-out pairs (default: a seeded val_fraction of data)"),
        "val_fraction": (0.05, float, "held out of data when there is no val_data"),
        "val_max": (500, int, "at most this many held-out pairs"),
        "out": (out, str, "the run directory"),
        "steps": (0, int, "optimizer steps (0: `epochs` passes over the pairs)"),
        "epochs": (1.0, float, epochs_help),
        "batch_size": (8, int, "pairs per optimizer step, over all ranks and micro-batches"),
        "grad_accum": (1, int, "micro-batches per optimizer step"),
        "seq_len": (512, int, "tokens per side (longer ones are cut)"),
    }


def run_settings(
    *,
    save_every: int = 200,
    keep: int = 2,
    eval_every: int = 50,
    eval_help: str = "steps between held-out evaluations",
    seed_help: str = "data order, held-out split and the initialization of what is new",
    blocks: bool = True,
    export_help: str | None = "write the tuned model at the end",
) -> dict[str, tuple]:
    """Checkpoints, evaluation, seed, precision, device; `blocks`: torch.compile / activation checkpointing per
    block; export_help None: no export setting."""
    out = {
        "save_every": (save_every, int, "steps between checkpoints"),
        "keep": (keep, int, "checkpoints kept"),
        "eval_every": (eval_every, int, eval_help),
        "seed": (0, int, seed_help),
        "dtype": ("auto", str, "float32 | bfloat16 | auto (bf16 where native) compute; trained weights stay fp32"),
        "compile": (False, bool, "torch.compile each block"),
        "activation_checkpointing": (False, bool, "recompute each block in backward"),
        "device": (None, str, "cpu | cuda (default: cuda when available)"),
        "threads": (0, int, "torch CPU threads per process (0: torch's default)"),
        "export": (True, bool, export_help),
    }
    if not blocks:
        del out["compile"], out["activation_checkpointing"]
    if export_help is None:
        del out["export"]
    return out
