"""opengemma: Gemma 1/2/3 language models in PyTorch.

The top level is lazy: `opengemma.load` and `opengemma.LLM` import the API (and torch) on first use, so
`import opengemma.config` and `opengemma --help` stay light."""

__version__ = "0.1.0"

__all__ = ["LLM", "load", "GemmaConfig", "__version__"]


def __getattr__(name: str):
    if name in ("LLM", "load"):
        from . import api

        return getattr(api, name)
    if name == "GemmaConfig":
        from .config import GemmaConfig

        return GemmaConfig
    raise AttributeError(f"module 'opengemma' has no attribute {name!r}")
