"""Calibration text for GPTQ (int4): the documentation of a fixed list of Python standard-library modules,
ordinary technical English that every machine with Python has. It shares no module with the held-out text
of benchmarks/quality.py (a test checks that no paragraph is shared either)."""

from __future__ import annotations

import importlib
import inspect

import torch

# names the calibration set (and GPTQ recipe) in the quantized-model cache
CALIBRATION_ID = "stdlib1-32k-2"  # bump when the text, its size or the GPTQ recipe changes
MODULES = [
    "os",
    "re",
    "typing",
    "functools",
    "itertools",
    "datetime",
    "random",
    "string",
    "textwrap",
    "csv",
    "zipfile",
    "tarfile",
    "shutil",
    "socket",
    "urllib.request",
    "configparser",
    "dataclasses",
    "enum",
    "inspect",
    "contextlib",
    "io",
    "tempfile",
    "hashlib",
    "base64",
    "doctest",
    "timeit",
    "difflib",
    "calendar",
    "pprint",
    "ipaddress",
    "uuid",
    "optparse",
    "gettext",
    "locale",
    "codecs",
    "struct",
    "bisect",
    "queue",
    "sched",
    "selectors",
    "glob",
    "fnmatch",
]


def stdlib_documentation(modules: list[str]) -> str:
    """The docstrings (over 200 characters) of these modules and of the objects each defines itself."""
    parts: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # a trimmed Python build: use what is there
            continue
        for obj in [mod, *[getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]]:
            if obj is not mod and getattr(obj, "__module__", None) != mod.__name__:
                continue  # re-exported or imported: documented by its own module
            doc = inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else None  # its own, not inherited
            if doc and len(doc) > 200 and doc not in parts:
                parts.append(doc)
    return "\n\n".join(parts)


def calibration_text() -> str:
    return stdlib_documentation(MODULES)


def calibration_batches(tokenizer, tokens: int = 32768, window: int = 512) -> list[torch.Tensor]:
    """(1, window) id tensors, each starting with <bos>, `tokens` in all (fewer if the text is shorter)."""
    ids = tokenizer.encode(calibration_text(), bos=False)[:tokens]
    step = window - 1
    return [torch.tensor([[tokenizer.bos_id] + ids[s : s + step]]) for s in range(0, len(ids) - step + 1, step)]
