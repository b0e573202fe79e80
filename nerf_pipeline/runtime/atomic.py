"""Atomic file writes: write to a temporary name in the target's folder, then rename.

A stage that crashes (or is killed, or fills the disk) half-way through writing leaves
at most a stray temporary file, never a truncated output that DVC would cache.
``os.replace`` is atomic on POSIX when both names are on the same file system, which
they are since the temporary file lives beside its target.

A folder cannot be replaced by a rename (``rename`` refuses a non-empty target), so ``atomic_dir``
swaps the new folder with the old one in one step where the OS can (Linux's ``renameat2`` with
``RENAME_EXCHANGE``, glibc 2.28 and later, on file systems that support it): the target is
always there, old or new. Elsewhere it renames the old folder aside to ``.<name>.old`` and the new
one into place; a crash between the two leaves no target but that ``.old`` folder, which the next
``atomic_dir`` of the same path puts back before it starts.

A temporary name carries the id of the process that writes it (``.<name>.<pid>-<random><suffix>``). A process
killed outright (``kill -9``, out of memory, a segfault) leaves its temporary file or folder behind; the next
write of the same target removes those whose process is no longer running (``remove_leftovers``). A process
that still runs, even one that merely reuses a dead writer's id, keeps its own: nothing that may be in use is
removed, at worst a leftover waits for a later write.

Temporary files and folders are created with the modes a plain ``open``/``mkdir`` would give
(0666 and 0777, less the umask, which the kernel applies), so the published output has ordinary
permissions. The process umask is never read or changed: changing it, even for a moment, would
also change the mode of files that TensorFlow's and MLflow's threads create meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def sha256_of(path) -> str:
    """The hex sha256 of a file's bytes, read in blocks (a download's or a cached file's checksum)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def _writer_gone(pid: str | None) -> bool:
    """Whether the process that made a temporary name no longer runs (``pid``: the id in the name, ``None`` for a
    name made before names carried it: this write cannot tell whose it is, but it is older than this write)."""
    if pid is None:
        return True
    if int(pid) == os.getpid() or os.name != "posix":  # elsewhere os.kill(pid, 0) is no probe (a Ctrl-C on Windows)
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # EPERM: it runs, as another user; too large: no process id, not ours
        return False
    return False


def remove_leftovers(path, suffix: str = "") -> None:
    """Remove the temporary files or folders (of ``suffix``) that killed writes of ``path`` left beside it: those
    whose process no longer runs."""
    path = Path(path)
    name = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)-)?[0-9a-f]{12}" + re.escape(suffix))
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return
    for entry in entries:
        match = name.fullmatch(entry.name)
        if match is None or not _writer_gone(match.group(1)):
            continue
        log.info("removing %s, left by a write of %s that was killed", entry.path, path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: the write goes on
                os.remove(entry.path)


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
    """Yield a temporary path beside ``path``; on success rename it to ``path``. What killed writes of ``path``
    left is removed first (``remove_leftovers``).

    ``suffix`` (default: ``path``'s own suffix) is kept so writers that look at the file
    extension (Keras, imageio) pick the right format. On an exception the temporary file
    is removed and the previous ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else path.suffix
    remove_leftovers(path, suffix)
    tmp = _new_file(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
RENAME_EXCHANGE = 2  # <linux/fs.h>: swap the two names atomically
# renameat2 fails with these where the kernel, the C library or the file system has no exchange
EXCHANGE_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def _renameat2():
    """libc's ``renameat2``, or ``None`` where the C library has none (not Linux, glibc before 2.28)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(a, b) -> bool:
    """Swap the names ``a`` and ``b`` (both must exist) in one atomic step; ``False``, with nothing changed,
    where the OS or the file system cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _set_aside_name(path: Path) -> Path:
    """Where the two-rename fallback keeps the old folder while the new one moves in."""
    return path.parent / f".{path.name}.old"


def recover_dir(path) -> None:
    """Finish what a crash in ``atomic_dir``'s fallback left: the old folder, set aside, is put back
    when ``path`` is missing, and removed when the new folder made it into place."""
    path = Path(path)
    aside = _set_aside_name(path)
    if not os.path.lexists(aside):
        return
    if os.path.lexists(path):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(aside, path)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    With ``exchange`` the target is never missing; otherwise the old folder is renamed aside, the
    new one moved in, and the old one removed (``recover_dir``, run first, repairs a crash between). What killed
    writes of ``path`` left is removed first (``remove_leftovers``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    remove_leftovers(path)
    tmp = _new_folder(path)
    try:
        yield tmp
        if not os.path.lexists(path):
            os.replace(tmp, path)
        elif exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        else:
            aside = _set_aside_name(path)
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
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
