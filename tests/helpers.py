"""The tests' shared helpers, imported as `from helpers import ...` (tests/ is on pytest's pythonpath).

Every factory takes its numbers at the call site: a tiny model's weight std and seed, a token batch's shape
and seed. Here: tiny random opengemma models and their transformers references (the parity tests), random
token batches, the decode step as torch.compile would see it, the GEMV kernel's float64 reference, a server
on a loopback port, the tiny SentencePiece model of the tokenizer tests, and the real model's test texts."""

import contextlib
import functools
import io
import random
import socket
import threading
import time

import torch

from opengemma.config import GemmaConfig


# -- tiny random models ------------------------------------------------------------------------------------
def make_hf_model(cfg: GemmaConfig, seed: int = 0):
    """A transformers model of this config with random weights, norms included (nonzero)."""
    import transformers

    cfg_cls, model_cls = {
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[cfg.family]
    hf_cfg_dict = cfg.to_hf_config()
    hf_cfg = cfg_cls(**{k: v for k, v in hf_cfg_dict.items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)  # zero-init norms would hide a (1 + w) bug
            elif "embed" in name:
                p.normal_(0, 0.1)
    return model


def tiny_model(name: str, *, std: float, seed: int = 0, **overrides):
    """An opengemma model of a preset (config `overrides` on top) with random weights: every matrix drawn
    from N(0, std), norms from N(0, 0.5) (nonzero, so a (1 + w) bug shows), after torch.manual_seed(seed)."""
    from opengemma.model import Gemma

    torch.manual_seed(seed)
    model = Gemma(GemmaConfig.from_name(name, **overrides)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0, 0.5 if n.endswith("norm.weight") else std)
    return model


def random_tokens(cfg: GemmaConfig, B: int, T: int, *, seed: int) -> torch.Tensor:
    """A (B, T) batch of token ids drawn uniformly from the config's vocabulary, from its own generator."""
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def explain_decode_step(model, greedy: bool = True, max_k: int | None = None):
    """torch._dynamo.explain of the engine's decode step on `model` (batch of 2, a fresh 32-slot cache):
    what torch.compile(fullgraph=True) would see, without compiling."""
    import torch._dynamo

    from opengemma.engine.generate import decode_step

    B = 2
    model.setup_cache(B, 32, prefill_chunk=4)
    args = (
        model,
        torch.tensor([5, 6]),
        torch.tensor([3]),
        torch.tensor([0, 1]),
        torch.full((B,), 0.0 if greedy else 1.0),
        torch.full((B,), max_k or 0),
        torch.ones(B),
        torch.rand(B),
        greedy,
        max_k,
    )
    torch._dynamo.reset()
    try:
        with torch.inference_mode():
            return torch._dynamo.explain(decode_step)(*args)
    finally:
        model.clear_cache()


# -- the Triton GEMV kernel ---------------------------------------------------------------------------------
def gemv_reference(fmt, x, w, group_size):
    """float64 x @ W^T of what the GEMV kernel is given (weights as stored), and the kernel's arguments."""
    from opengemma import kernels
    from opengemma.qlinear import dequantize_int4, pack_int4, quantize_int4, quantize_int8

    if fmt == kernels.FLOAT:
        wb = w.bfloat16()
        return x.double() @ wb.double().T, (wb, wb, wb)
    if fmt == kernels.INT8:
        q, s = quantize_int8(w)
        s = s.bfloat16()
        return (x.double() @ q.double().T) * s.double(), (q, s, s)
    q, s, z = quantize_int4(w, group_size)
    s, z = s.bfloat16(), z.bfloat16()
    return x.double() @ dequantize_int4(q, s, z).double().T, (pack_int4(q), s, z)


# -- a server for the serve tests ---------------------------------------------------------------------------
@contextlib.contextmanager
def running(app):
    """Run an app with uvicorn on a free loopback port in a background thread; yields its base URL."""
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        srv.should_exit = True
        t.join(timeout=10)


# -- the tiny SentencePiece model (tokenizer, streaming and GGUF vocabulary tests) --------------------------
SENTENCEPIECE_USER_DEFINED = [
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "\n",
    "\n\n",
    "\u2581\u2581",
    "\u2581\u2581\u2581\u2581",
]

TINY_TEXTS = [
    "the cat answers  a question.",
    "    def f(x):\n        return x + 1\n\n\n",
    "digits 12345 and 2024",
    "emoji 😀🫨 and 한국어 and ünïcödé",
    "<start_of_turn>user\nhello<end_of_turn>\n",
    "",
    " leading space",
    "\t\ttabs\r\n",
]


def sentencepiece_training_lines() -> list[str]:
    """The training text of the tiny SentencePiece models: 220 lines of a small English vocabulary and code."""
    rng = random.Random(0)
    words = (
        "the model answers a question about cats dogs and rivers ; it writes python code with "
        "four spaces of indentation when asked , user hello world"
    ).split()
    lines = []
    for i in range(200):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", "?", "!", ""])
        lines.append(line + (f" {rng.randint(0, 9999)}" if rng.random() < 0.3 else ""))
        if i % 10 == 0:
            lines.append("    def f(x):  return x  +  1")
    return lines


@functools.cache
def tiny_sentencepiece() -> bytes:
    """A tiny SentencePiece model with Gemma's layout, trained once per session in a few milliseconds: pad 0,
    eos 1, bos 2, unk 3, BPE of 400 pieces, byte fallback, identity normalizer, user-defined turn markers."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentencepiece_training_lines()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=SENTENCEPIECE_USER_DEFINED,
        minloglevel=2,
    )
    return buf.getvalue()


# -- the real model's test texts ----------------------------------------------------------------------------
PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally nicknamed "
    '"La dame de fer" (French for "Iron Lady"), it was constructed as the centrepiece of the 1889 World\'s Fair, '
    "and to crown the centennial anniversary of the French Revolution."
)
LONG_TEXT = "\n\n".join(
    [
        PARAGRAPH,
        "Photosynthesis is the process by which green plants, algae and some bacteria convert light energy into "
        "chemical energy. During photosynthesis, light energy is captured and used to convert water, carbon dioxide "
        "and minerals into oxygen and energy-rich organic compounds.",
        "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot, *rest = xs\n    left = [x for x in rest "
        "if x < pivot]\n    right = [x for x in rest if x >= pivot]\n    return quicksort(left) + [pivot] + quicksort(right)",
        "The Industrial Revolution was the transition to new manufacturing processes in Great Britain, continental "
        "Europe and the United States, in the period from about 1760 to 1820-1840. This transition included going "
        "from hand production methods to machines, new chemical manufacturing and iron production processes, the "
        "increasing use of steam power and water power, the development of machine tools and the rise of the "
        "mechanised factory system.",
    ]
    * 3
)


def run_recipe(module: str, argv: list[str], *, patch: str = "", torchrun: bool = False, timeout: float = 300):
    """A recipe (opengemma.recipes.<module>) in a child process, 1 thread per process: plain, with `patch` (Python
    run first, e.g. a signal sent mid-run), or under torchrun with 2 ranks (gloo). Returns the CompletedProcess."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = f"import sys\n{textwrap.dedent(patch)}\nfrom opengemma.recipes import {module}\nsys.exit({module}.main())"
    prog = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", f"opengemma.recipes.{module}"]
    cmd = [sys.executable, *(prog if torchrun else ["-c", script])] + argv
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


# a SIGINT right after the metrics line of step 3: what Ctrl-C does to a run (patch= of run_recipe)
INTERRUPT_AT_STEP_3 = """
    import os, signal
    from opengemma.train import metrics
    log = metrics.MetricsLog.log
    def once(self, record):
        log(self, record)
        if record.get("step") == 3 and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)
    metrics.MetricsLog.log = once
"""


def flags(settings: dict) -> list[str]:
    """A recipe's command line from settings: `--batch-size 8`; booleans as `--export` / `--no-export`."""
    out = []
    for k, v in settings.items():
        k = k.replace("_", "-")
        out += [f"--{'' if v else 'no-'}{k}"] if isinstance(v, bool) else [f"--{k}", str(v)]
    return out
