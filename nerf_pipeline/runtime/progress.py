"""Progress of long loops: a log line every tenth of the way, at most one every ``MIN_REPORT_S`` seconds, and
none for a loop that ends sooner. Lines, not a bar: a stage's stderr is the quiet console's pipe
(``runtime/console.py``), a DVC queue's log or CI's, where a bar's carriage returns would pile up."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("nerf_pipeline.progress")

MIN_REPORT_S = 5.0


class Progress:
    """``with Progress(total, "rendering frames") as step: ... step(done)``; ``done`` counts up to ``total``."""

    def __init__(self, total: int, description: str, unit: str = "it"):
        self.total, self.description, self.unit = max(int(total), 1), description, unit
        self._next_report, self._start, self._last = 0.1, 0.0, 0.0

    def __enter__(self):
        self._start = self._last = time.perf_counter()
        return self

    def __call__(self, done: int, total: int | None = None, **postfix) -> None:
        """``done`` of ``total`` so far; ``postfix`` (e.g. ``loss=0.01``) is shown beside the count."""
        fraction, now = done / self.total, time.perf_counter()
        if (fraction >= self._next_report or done == self.total) and now - self._last >= MIN_REPORT_S:
            self._last, elapsed = now, now - self._start
            left = elapsed * (1.0 - fraction) / fraction if fraction > 0 else 0.0
            extra = "".join(f", {k} {_short(v)}" for k, v in postfix.items())
            log.info("%s: %d/%d %s (%.0f%%, %.0f s, about %.0f s left%s)", self.description, done, self.total,
                     self.unit, 100 * fraction, elapsed, left, extra)
            while self._next_report <= fraction:
                self._next_report += 0.1

    def __exit__(self, *exc):
        return False


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
