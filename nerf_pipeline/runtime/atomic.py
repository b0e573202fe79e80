"""Atomic file writes: write to a temporary name in the target's folder, then rename.

A stage that crashes (or is killed, or fills the disk) half-way through writing leaves
at most a stray temporary file, never a truncated output that DVC would cache.
``os.replace`` is atomic on POSIX when both names are on the same file system, which
they are since the temporary file lives beside its target.

Temporary files and folders are created with the modes a plain ``open``/``mkdir`` would give
(0666 and 0777, less the umask, which the kernel applies), so the published output has ordinary
permissions. The process umask is never read or changed: changing it, even for a moment, would
also change the mode of files that TensorFlow's and MLflow's threads create meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"


def _new_file(path: Path, suffix: str) -> Path:
    """Create an empty file with a fresh name beside ``path``, mode 0666 less the umask."""
    while True:
        tmp = _temporary_name(path, suffix)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _new_folder(path: Path) -> Path:
    """Create an empty folder with a fresh name beside ``path``, mode 0777 less the umask."""
    while True:
        tmp = _temporary_name(path, "")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    ``suffix`` (default: ``path``'s own suffix) is kept so writers that look at the file
    extension (Keras, imageio) pick the right format. On an exception the temporary file
    is removed and the previous ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path, suffix if suffix is not None else path.suffix)
    try:
        yield tmp
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
    tmp = _new_folder(path)
    try:
        yield tmp
        old = None
        if path.exists():
            old = _new_folder(path.parent / f"{path.name}.old")
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
