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
