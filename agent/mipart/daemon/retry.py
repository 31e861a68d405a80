"""When to try a failed file-system step again: pure.

A step that failed (a spec file, nginx.conf, a directory someone replaced by a file) is tried
again after BACKOFF_FIRST, doubling up to BACKOFF_MAX, and at once after it succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def describe(exc: OSError) -> str:
    """One line: what failed on which path (an OSError's own words)."""
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot write{where}: {exc.strerror or exc}"


@dataclass
class Backoff:
    error: str = ""
    failures: int = 0
    next_try: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_try

    def failed(self, error: str, now: float) -> float:
        """Records the failure; returns the delay before the next try."""
        delay = min(BACKOFF_FIRST * 2.0**self.failures, BACKOFF_MAX)
        self.error, self.failures, self.next_try = error, self.failures + 1, now + delay
        return delay

    def failure(self, error: str, now: float, action: str) -> str | None:
        """Records the failure; what to log as its action, once per distinct error: `action`, then when it
        is tried again. None: the error is the one already logged."""
        new = error != self.error
        delay = self.failed(error, now)
        return f"{action}; retries with backoff (next in {delay:g}s)" if new else None

    def succeeded(self) -> None:
        self.error, self.failures, self.next_try = "", 0, 0.0
