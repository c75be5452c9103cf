"""atomic.py, the one atomic write behind every cache, converted checkpoint and GGUF file: a finished
write replaces the old version in one rename; a failed or killed one leaves the old version (or nothing) and
never a half-written file under the real name."""

import os
import signal
import subprocess
import sys

import pytest

from opengemma.atomic import atomic_path


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    dst = tmp_path / "f.bin"
    dst.write_text("old")
    with atomic_path(dst) as tmp:
        assert tmp != dst and tmp.parent == dst.parent
        tmp.write_text("new")
        assert dst.read_text() == "old"  # nothing visible until the block ends
    assert dst.read_text() == "new" and os.listdir(tmp_path) == ["f.bin"]


def test_a_failed_write_keeps_the_old_version(tmp_path):
    dst = tmp_path / "cache"
    dst.mkdir()
    (dst / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(dst) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text("half")
            raise RuntimeError("disk full")
    assert (dst / "config.json").read_text() == "old" and os.listdir(tmp_path) == ["cache"]


def test_a_directory_replaces_a_directory(tmp_path):
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "stale.txt").write_text("x")
    with atomic_path(dst) as tmp:
        tmp.mkdir()
        (tmp / "fresh.txt").write_text("y")
    assert sorted(os.listdir(dst)) == ["fresh.txt"]


def test_kill_9_mid_write_never_leaves_a_half_file_under_the_real_name(tmp_path):
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"complete old file")
    code = (
        "import os, sys, time\nfrom opengemma.atomic import atomic_path\n"
        f"with atomic_path({str(dst)!r}) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'half of a new'); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert dst.read_bytes() == b"complete old file"
    leftovers = [p for p in os.listdir(tmp_path) if p != dst.name]
    assert leftovers == [f"{dst.name}.tmp-{proc.pid}"]  # a name no loader reads
    with atomic_path(dst) as tmp:  # the next writer is not disturbed by it
        tmp.write_bytes(b"complete new file")
    assert dst.read_bytes() == b"complete new file"


def test_an_interrupted_gguf_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    """The loader's cache (weights/store.py) goes through atomic_path: a conversion that fails half way is
    not found complete by the next load, which converts again."""
    from helpers import tiny_model

    from opengemma.weights import store
    from opengemma.weights.gguf import save_gguf

    monkeypatch.setenv("OPENGEMMA_CACHE", str(tmp_path / "cache"))
    src = save_gguf(tiny_model("tiny-gemma3", std=0.1), tmp_path / "m.gguf")
    real_save = store.save_hf_dir

    def save_then_fail(model, path, **kw):
        real_save(model, path, **kw)
        raise KeyboardInterrupt  # Ctrl-C after the weights, before the source record

    monkeypatch.setattr(store, "save_hf_dir", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        store.resolve_source(src, progress=False)
    assert not list((tmp_path / "cache" / "gguf").iterdir())
    monkeypatch.setattr(store, "save_hf_dir", real_save)
    float_dir, _ = store.resolve_source(src, progress=False)
    assert (float_dir / "config.json").exists() and store.source_info(float_dir)["source"] == str(src)
