"""opengemma: Gemma 1/2/3 language models in PyTorch."""

__version__ = "0.1.0"

from .api import LLM, load  # noqa: E402
from .config import GemmaConfig  # noqa: E402

__all__ = ["LLM", "load", "GemmaConfig", "__version__"]
