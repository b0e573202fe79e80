"""A quiet console: the known native start-up lines of TensorFlow filtered out of a stage's output.

TensorFlow 2.21 and XLA log from C++ through absl straight to file descriptor 2, before and regardless
of Python's logging and of ``TF_CPP_MIN_LOG_LEVEL``: on a machine without a GPU each process that
imports TensorFlow says "Could not find cuda drivers", "failed call to cuInit: … CUDA error" and
more, which a new user reads as failures. ``quiet()`` puts a pipe in place of descriptor 2 and a
thread that copies every line to the real stderr except those known lines, named one by one below
(each seen in this project's stages on a CPU-only machine). Every other line passes: any other
native info, warning, error or fatal line (a CUDA out-of-memory or driver error, an XLA failure),
Python's own output and tracebacks. ``NERF_PIPELINE_VERBOSE=1`` (or a stage's ``--verbose``) leaves
stderr alone.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

VERBOSE_ENV = "NERF_PIPELINE_VERBOSE"
# The native log prefix: level letter, date, time, thread id, source location], then the message. The date is
# absl's MMDD (TensorFlow) or glog's YYYYMMDD (COLMAP through pycolmap: "W20261201 23:02:18.912224 1406708869
# feature_extraction.cc:258] ..."); the location is file:line, or glog's file:function:line for a message logged
# from Python ("<string>:<module>:4").
NATIVE_LINE = re.compile(rb"^([IWEF])(?:\d{8}|\d{4}) \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] (.*)$")
# (level, the start of the message) of each native line known to be noise on a CPU-only machine
NATIVE_NOISE = (
    (b"I", re.compile(rb"oneDNN custom operations are on\. You may see slightly different numerical results")),
    (b"I", re.compile(rb"Could not find cuda drivers on your machine, GPU will not be used\.$")),
    (b"I", re.compile(rb"This TensorFlow binary is optimized to use available CPU instructions in "
                      rb"performance-critical")),
    # What cuInit says where there is no CUDA driver at all; a driver that fails says something else, and is kept.
    (b"E", re.compile(rb"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR \(303\)$")),
    (b"I", re.compile(rb"XLA service 0x[0-9a-f]+ initialized for platform Host \(this does not guarantee")),
    (b"I", re.compile(rb"  StreamExecutor \[0\]: Host, Default Version")),
    (b"I", re.compile(rb"disabling MLIR crash reproducer, set env var `MLIR_CRASH_REPRODUCER_DIRECTORY` to enable\.$")),
    (b"I", re.compile(rb"Compiled cluster using XLA!  This line is logged at most once")),
    (b"W", re.compile(rb"Input of GeneratorDatasetOp::Dataset will not be optimized")),
)
# Lines without absl's prefix that TensorFlow prints at start
OTHER_NOISE = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)

_state: dict = {}


def native_message(line: bytes) -> tuple[bytes, bytes] | None:
    """``(level, message)`` of a native (absl or glog) log line without its newline; None for any other line."""
    match = NATIVE_LINE.match(line)
    return None if match is None else (match[1], match[2])


def is_noise(line: bytes) -> bool:
    """Whether a line of stderr (without its newline) is one of the known native start-up lines."""
    native = native_message(line)
    if native:
        level, message = native
        return any(level == known and pattern.match(message) for known, pattern in NATIVE_NOISE)
    return any(pattern.match(line) for pattern in OTHER_NOISE)


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
