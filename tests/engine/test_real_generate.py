"""Generation with the real default model (Gemma 3 270M, pretrained, Q4_K_M GGUF from PyPI): greedy tokens equal
transformers', a batch equals one prompt at a time, stop strings, streamed deltas concatenate to the text,
the chat format, prefills that reuse memory. The llm and hf_model fixtures are tests/conftest.py's."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.real_model


def test_greedy_capital_of_france(llm, hf_model):
    ids = llm.tokenizer.encode("The capital of France is")
    with torch.no_grad():
        top = llm.model(torch.tensor([ids]))[0, -1].topk(5).indices.tolist()
    assert 9079 in top  # "▁Paris"
    text, out = llm.generate("The capital of France is", max_new_tokens=20, return_outputs=True)
    ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids) :].tolist()
    assert out.tokens == ref[: len(out.tokens)]
    assert "France" in text or "Paris" in text


def test_batch_equals_single_and_stop_strings(llm):
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    batch = llm.generate(prompts, max_new_tokens=24)
    for p, b in zip(prompts, batch):
        assert llm.generate(p, max_new_tokens=24) == b
    full = batch[1]
    stop = full.strip().split("\n")[1][:6]  # a string that does occur in the continuation
    cut = llm.generate(prompts[1], max_new_tokens=24, stop=[stop, "zzzz-never"])
    assert stop not in cut and full.startswith(cut) and full[len(cut) :].startswith(stop)


def test_streaming_callback_concatenates_to_text(llm):
    deltas = {0: [], 1: []}
    texts = llm.generate(
        ["Emoji party: 🎉🎉", "Korean: 안녕하세요"],
        max_new_tokens=24,
        temperature=0.8,
        seed=7,
        callback=lambda i, d: deltas[i].append(d),
    )
    for i, t in enumerate(texts):
        assert "".join(deltas[i]) == t and "\ufffd" not in "".join(deltas[i][:-1])
    again = llm.generate(["Emoji party: 🎉🎉", "Korean: 안녕하세요"], max_new_tokens=24, temperature=0.8, seed=7)
    assert again == texts


def test_chat_format_runs(llm):
    ids, mask = llm.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    assert ids[:7] == [2, 105, 2364, 107, 10979, 106, 107]
    reply = llm.chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}], max_new_tokens=16
    )
    assert isinstance(reply, str)


PREFILL_FAULTS = r"""
import resource, sys, torch
import opengemma
from opengemma.engine.generate import prefill
llm = opengemma.load("gemma-3-270m", dtype="bfloat16", progress=False)  # on CPU: keep_freed_memory()
tok = torch.tensor([list(range(2, 514))])
counts = []
with torch.inference_mode():
    for _ in range(6):
        llm.model.setup_cache(1, 1024, prefill_chunk=256)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        prefill(llm.model, tok, None, 256)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(counts)
"""


@pytest.mark.slow  # ~2 min on 2 cores (six 512-token prefills of the real model in a child process)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_repeated_prefills_reuse_memory_instead_of_faulting_in_new_pages():
    """With glibc's defaults, each 512-token prefill of the default model faulted in 20-300 MB of fresh zeroed
    pages for its temporaries (unmapped again on free), up to 1.6x slower; keep_freed_memory() at load makes
    later prefills reuse the memory. Over the last 4 of 6 prefills: at most 8 MB of page faults."""
    out = subprocess.run(
        [sys.executable, "-c", PREFILL_FAULTS],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert sum(counts[2:]) * 4096 <= 8 << 20, counts
