"""Atomic file writes: write to a temporary name in the target's folder, then rename.

A stage that crashes (or is killed, or fills the disk) half-way through writing leaves
at most a stray temporary file, never a truncated output that DVC would cache.
``os.replace`` is atomic on POSIX when both names are on the same file system, which
they are since the temporary file lives beside its target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp, mode: int) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would have."""
    os.chmod(tmp, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    ``suffix`` (default: ``path``'s own suffix) is kept so writers that look at the file
    extension (Keras, imageio) pick the right format. On an exception the temporary file
    is removed and the previous ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, 0o666)  # mkstemp makes files private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    The old folder is first renamed aside and removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _publish(tmp, 0o777)  # mkdtemp makes folders private (0700)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "content")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npz(path, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, so it can be read quickly), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
