"""A quiet console: TensorFlow's native start-up and runtime log lines filtered out of a stage's output.

TensorFlow 2.21 and XLA log from C++ through absl straight to file descriptor 2, before and regardless
of Python's logging and of ``TF_CPP_MIN_LOG_LEVEL`` ("I0000 … oneDNN custom operations are on",
"E0000 … failed call to cuInit", "Could not find cuda drivers"): on a machine without a GPU a new
user reads them as failures. ``quiet()`` puts a pipe in place of descriptor 2 and a thread that
copies every line to the real stderr except those native log lines (info and warning levels, and
errors about CUDA, which only say that there is no GPU). Other native errors, Python's own output
and tracebacks pass. ``NERF_PIPELINE_VERBOSE=1`` (or a stage's ``--verbose``) leaves stderr alone.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

VERBOSE_ENV = "NERF_PIPELINE_VERBOSE"
# absl's prefix: level letter, MMDD, time, thread id, file:line]
NATIVE_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] ")
NOISE = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"),
)
CUDA_ERROR = re.compile(rb"cuInit|CUDA|cuda", re.IGNORECASE)

_state: dict = {}


def is_noise(line: bytes) -> bool:
    """Whether a line of stderr is native log noise (see the module docstring)."""
    match = NATIVE_LINE.match(line)
    if match:
        return match.group(1) in (b"I", b"W") or (match.group(1) == b"E" and bool(CUDA_ERROR.search(line)))
    return any(pattern.match(line) for pattern in NOISE)


def _copy(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_noise(line))
            if kept:
                os.write(write_fd, kept)
        if pending and not is_noise(pending):
            os.write(write_fd, pending)


def quiet() -> None:
    """Filter native log noise out of this process's stderr (once; not when ``NERF_PIPELINE_VERBOSE`` is set)."""
    if _state or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what TensorFlow's Python side still honours
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_copy, args=(read_fd, real_stderr), name="quiet-stderr", daemon=True)
    thread.start()
    _state.update(real_stderr=real_stderr, thread=thread)
    atexit.register(restore)


def real_stderr_fd() -> int:
    """The descriptor of the unfiltered stderr (for a crash handler that must not depend on the copying thread)."""
    return _state.get("real_stderr", 2)


def restore() -> None:
    """Put the real stderr back and let the copying thread finish what is in the pipe."""
    if not _state:
        return
    sys.stderr.flush()
    os.dup2(_state["real_stderr"], 2)  # closes the pipe's last write end: the thread reads to its end
    _state["thread"].join(timeout=5)
