"""Programs as rewards and judges, and the reward-hacking watch.

    fn = load_callable("mypkg.checks:exact", "verifier")     # fn(prompt, completion, **fields) -> float
    hacking([(reward, judge), ...], window=3, tolerance=0.05)

A verifier is the user's own code, imported from the Python path (never model-written code: the model's answers
are only ever passed to it as strings). The watch compares the trained reward with a held-out judge scored on the
same rollouts (Gemma's RLHF used high-capacity raters for this; a ground-truth checker or a second reward model
here): reward up while the judge goes down is the signature of a policy exploiting its reward (Gao et al. 2022,
"Scaling laws for reward model overoptimization").
"""

from __future__ import annotations

import importlib

import numpy as np


def load_callable(spec: str, what: str):
    """'package.module:function' -> the function (imported from the Python path: the user's own code)."""
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name:
        raise ValueError(f"{what} must be package.module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not callable")
    return fn


def hacking(judged: list[tuple[float, float]], window: int, tolerance: float) -> bool:
    """The last `window` judged steps against the `window` before: mean reward up and mean judge down by more
    than `tolerance`."""
    if len(judged) < 2 * window:
        return False
    recent, before = np.array(judged[-window:]), np.array(judged[-2 * window : -window])
    return bool(recent[:, 0].mean() > before[:, 0].mean() and recent[:, 1].mean() < before[:, 1].mean() - tolerance)
