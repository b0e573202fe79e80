"""Ctrl-C and SIGTERM stop a stage between TensorFlow calls, never inside one.

Python raises ``KeyboardInterrupt`` at whatever bytecode runs when a signal lands. Inside
TensorFlow's Python layers (a ``tf.function`` call, a ``tf.data`` iterator, Keras' fit loop)
that can leave native state half-built, and a CI run saw the train stage die of SIGSEGV,
not exit 130, when it was terminated mid-fit. So while a ``held()`` block runs, a signal
is only recorded, and ``check()`` raises it at the end of a step or a render chunk. A
second signal raises at once: a stage stuck where ``check`` is never reached can still be
stopped. Outside ``held()`` a signal raises at once, as Python's own Ctrl-C does.

The state is process-wide because signal handlers are.
"""

from __future__ import annotations

import contextlib
import signal

_depth = 0  # how many held() blocks are open
_pending: int | None = None  # the signal received while held, not yet raised


def install() -> None:
    """Make SIGINT and SIGTERM raise ``KeyboardInterrupt`` (held while a ``held()`` block runs)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum, frame):
    global _pending
    if _depth and _pending is None:
        _pending = signum  # no I/O here: the interrupted bytecode may be mid-write to stderr
        return
    _pending = None
    raise KeyboardInterrupt


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal was received inside a ``held()`` block."""
    global _pending
    if _pending is not None:
        _pending = None
        raise KeyboardInterrupt


@contextlib.contextmanager
def held():
    """Within: a first signal waits for the next ``check()`` (or the end of the block)."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    except BaseException:
        if _depth == 1:
            _pending = None  # the stage is ending anyway, with this exception
        raise
    finally:
        _depth -= 1
    if not _depth:
        check()
