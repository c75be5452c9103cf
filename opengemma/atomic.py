"""The one atomic write: everything opengemma puts on disk (caches, converted checkpoints, GGUF files, and
training checkpoints to come) is written under a temporary sibling name and renamed into place, so a crash or
kill -9 mid-write leaves the old version or none, never a half-written file that a later load would trust."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `dst` (write a file or fill a directory there); when the block ends without
    an exception it replaces `dst` by one rename (os.replace; a directory replaces a directory), otherwise it
    is removed. The name ends in ".tmp-<pid>", which no reader looks for, so a crashed writer's leftovers are
    never picked up, and two processes never write to the same temporary."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if dst.is_dir() and not dst.is_symlink():  # os.replace cannot replace a non-empty directory
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        _remove(tmp)
