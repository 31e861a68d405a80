"""Readiness of each instance from its /health, as nginx membership follows it.

An instance becomes ready on its first 200 and leaves rotation after `unhealthy_after`
failed probes in a row (one slow answer does not flap the pool), or at once when its
process is gone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# Starting instances are probed this often, so a fresh server joins nginx quickly.
STARTING_PROBE_INTERVAL = 0.2


@dataclass
class InstanceHealth:
    number: int
    ready: bool = False
    failures: int = 0
    since: float = field(default_factory=time.time)
    last_probe: float = 0.0
    last_error: str = ""
    restart_attempts: int = 0  # restarts since it was last ready
    restarts_total: int = 0
    next_restart: float = 0.0
    gave_up: bool = False

    def due(self, now: float, interval: float) -> bool:
        return now - self.last_probe >= (interval if self.ready else STARTING_PROBE_INTERVAL)

    def record(self, ok: bool, error: str, unhealthy_after: int) -> bool:
        """Returns True when readiness changed."""
        self.last_probe = time.monotonic()
        if ok:
            self.failures, self.last_error, self.restart_attempts = 0, "", 0
            if not self.ready:
                self.ready, self.since = True, time.time()
                return True
            return False
        self.failures += 1
        self.last_error = error
        if self.ready and self.failures >= unhealthy_after:
            self.ready, self.since = False, time.time()
            return True
        return False

    def restart_due(self, now: float) -> bool:
        return now >= self.next_restart

    def schedule_restart(self, now: float, base: float, cap: float, reason: str) -> float:
        """Exponential backoff: base, 2*base, 4*base ... up to cap, never a tight loop."""
        delay = min(base * (2 ** self.restart_attempts), cap)
        self.restart_attempts += 1
        self.restarts_total += 1
        self.next_restart = now + delay
        self.last_error = reason
        return delay

    def give_up(self, reason: str) -> None:
        self.gave_up, self.last_error = True, reason

    def reset(self) -> bool:
        """The process went away or was restarted: out of rotation now."""
        changed = self.ready
        self.ready, self.failures, self.since = False, 0, time.time() if changed else self.since
        return changed


async def probe(session, port: int, timeout: float) -> tuple[bool, str]:
    import aiohttp

    try:
        async with session.get(f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status == 200, "" if response.status == 200 else f"/health answered {response.status}"
    except asyncio.TimeoutError:
        return False, f"/health did not answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        return False, f"/health failed: {exc.__class__.__name__}"
