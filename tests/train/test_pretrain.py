"""The pretraining recipe end to end on a tiny Gemma 3 (sliding windows shorter than the rows, packed documents):
one process == torchrun with 2 gloo ranks (FSDP2), kill -9 (between saves and inside a save) and Ctrl-C resume to
the uninterrupted curve exactly, export -> transformers gives opengemma's logits, continuing from the export starts
where the run ended."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from shard_fixtures import make_shards

from opengemma.recipes import pretrain
from opengemma.train import checkpoint
from opengemma.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("pretrain"), docs_per_source=60)


def args(shards, out, **over):
    a = dict(
        model="tiny-gemma3", data=shards, out=out, steps=STEPS, batch_size=4, seq_len=32, grad_accum=2, lr=3e-3,
        warmup=2, save_every=4, eval_every=4, keep=2, threads=1, val_rows=4,
    )  # fmt: skip
    a.update(over)
    return [x for k, v in a.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def curve(out):
    train, val = read_metrics(Path(out) / "metrics.jsonl")
    return [r["loss"] for r in train], [r["val_loss"] for r in val]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """The uninterrupted one-process run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    try:
        assert pretrain.main(args(shards, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def run(argv, *, patch="", env=None, torchrun=False):
    """The recipe in a fresh process; `patch` is Python run first (e.g. to kill -9 the process at a chosen point)."""
    script = (
        "import sys\n" + textwrap.dedent(patch) + "\nfrom opengemma.recipes import pretrain\nsys.exit(pretrain.main())"
    )
    prog = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "opengemma.recipes.pretrain"]
    cmd = [sys.executable, *(prog if torchrun else ["-c", script])] + argv
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)


def test_reference_run_learns_and_keeps_its_layout(reference):
    losses, val = curve(reference)
    assert len(losses) == STEPS and len(val) == 1 + STEPS // 4  # step 0, then every eval_every
    assert losses[-1] < losses[0] - 0.5 and val[-1] < val[0] - 0.5
    assert [p.name for p in checkpoint.checkpoints(reference)] == ["step_8", "step_12"]  # keep = 2
    assert (reference / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((reference / "checkpoints/step_12/meta.json").read_text())
    assert meta["step"] == STEPS and meta["tokens"] == STEPS * 4 * 32


def test_two_gloo_ranks_with_fsdp2_equal_one_process(shards, reference, tmp_path):
    out = tmp_path / "fsdp"
    r = run(args(shards, out), torchrun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    want, want_val = curve(reference)
    got, got_val = curve(out)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(got_val), torch.tensor(want_val), rtol=1e-5, atol=0)
    # the 2-rank checkpoint loads into one plain process, with the one-process run's weights
    a, _ = checkpoint.load_model(out / "checkpoints/step_12")
    b, _ = checkpoint.load_model(reference / "checkpoints/step_12")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        # within 1e-5 (a 300th of one lr-3e-3 Adam step): reduction order differs between 1 and 2 ranks
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)


KILL_AFTER_STEP = """
import os, signal
from opengemma.train import metrics
log = metrics.MetricsLog.log
def killing_log(self, record):
    log(self, record)
    if record.get("step") == {step} and "loss" in record:
        os.kill(os.getpid(), signal.{sig})
metrics.MetricsLog.log = killing_log
"""

KILL_IN_SAVE = """
import os, signal
from opengemma.train import checkpoint
replace = checkpoint.os.replace
def killing_replace(src, dst, *a, **k):
    if str(dst).endswith("step_8"):  # every file of step 8 written, the rename not yet done
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *a, **k)
checkpoint.os.replace = killing_replace
"""


def test_kill9_between_saves_resumes_to_the_uninterrupted_curve(shards, reference, tmp_path):
    out = tmp_path / "run"
    r = run(args(shards, out), patch=KILL_AFTER_STEP.format(step=6, sig="SIGKILL"))
    assert r.returncode == -signal.SIGKILL
    assert checkpoint.latest(out).name == "step_4" and len(curve(out)[0]) == 6  # steps 5, 6 are logged, unsaved
    r = run(args(shards, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "step 4" in r.stdout
    assert curve(out) == curve(reference)  # exactly: steps 5 and 6 recomputed, their last lines read


def test_kill9_during_a_save_never_leaves_a_checkpoint_to_pick(shards, reference, tmp_path):
    out = tmp_path / "run"
    r = run(args(shards, out), patch=KILL_IN_SAVE)
    assert r.returncode == -signal.SIGKILL
    assert (out / "checkpoints/.tmp_step_8/meta.json").is_file()  # complete but never renamed: not a checkpoint
    assert checkpoint.latest(out).name == "step_4"
    r = run(args(shards, out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert curve(out) == curve(reference)
    assert not list((out / "checkpoints").glob(".tmp_*"))


def test_ctrl_c_saves_then_the_rerun_finishes_the_curve(shards, reference, tmp_path):
    out = tmp_path / "run"
    r = run(args(shards, out), patch=KILL_AFTER_STEP.format(step=5, sig="SIGINT"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "interrupted: saved" in r.stdout
    assert checkpoint.latest(out).name == "step_5"
    assert run(args(shards, out)).returncode == 0
    assert curve(out) == curve(reference)


def test_export_loads_in_transformers_and_opengemma_with_equal_logits(reference, tmp_path):
    transformers = pytest.importorskip("transformers")
    import opengemma
    from opengemma.cli import main as cli

    ckpt = reference / "checkpoints/step_12"
    model, tok = checkpoint.load_model(ckpt)
    out = tmp_path / "hf"
    assert cli(["convert", str(ckpt), str(out)]) == 0
    assert (out / "tokenizer.model").read_bytes() == tok.read_bytes()
    tokens = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(tokens)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
        got_hf = hf(tokens).logits
        got_og = opengemma.load(str(out), dtype="float32", device="cpu").model(tokens)
    torch.testing.assert_close(got_hf, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_og, want, rtol=0, atol=0)


def test_continuing_from_the_export_starts_where_the_run_ended(shards, reference, tmp_path):
    hf = checkpoint.export_hf(reference / "checkpoints/step_12", tmp_path / "hf")
    out = tmp_path / "continued"
    assert run(args(shards, out, model=hf, steps=1, warmup=0)).returncode == 0
    _, val = curve(out)
    assert val[0] == pytest.approx(curve(reference)[1][-1], rel=1e-5)  # the same weights on the same held-out rows
