"""Per-instance health: a small state machine fed by /health probes and unit states.

starting -> ready -> degraded -> unhealthy -> restarting -> ready ... or failed;
draining: out of rotation, finishing its requests before a planned restart.
Only ready and degraded instances are in nginx. Startup is not a failure (model loads
take minutes): it has its own timeout. Restarts back off exponentially, and after
max_restarts in a row without becoming ready the instance is left `failed`, with the
reason kept, never restarted in a tight loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from mipart.profile.schema import HealthSpec

# Starting instances are probed this often, so a fresh server joins nginx quickly.
STARTING_PROBE_INTERVAL = 0.1  # a refused connection costs next to nothing
IN_ROTATION = ("ready", "degraded")


@dataclass
class InstanceHealth:
    number: int
    state: str = "starting"
    since: float = field(default_factory=time.time)  # wall clock, for people
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_probe: float = 0.0
    last_error: str = ""
    restart_attempts: int = 0  # restarts since it was last ready
    restarts_total: int = 0
    next_restart: float = 0.0

    @property
    def in_rotation(self) -> bool:
        return self.state in IN_ROTATION

    def _enter(self, state: str) -> bool:
        """Returns True when nginx membership changed."""
        if state == self.state:
            return False
        was = self.in_rotation
        self.state, self.since = state, time.time()
        return was != self.in_rotation

    def probe_interval(self, spec: HealthSpec) -> float:
        if self.state == "ready":
            return spec.interval
        if self.state == "degraded":
            return min(spec.interval, spec.timeout)  # confirm or clear a failure quickly
        return STARTING_PROBE_INTERVAL

    def due(self, now: float, spec: HealthSpec) -> bool:
        return self.state not in ("unhealthy", "failed", "draining") and now - self.last_probe >= self.probe_interval(spec)

    def record(self, ok: bool, error: str, spec: HealthSpec) -> bool:
        """`ok` with an `error` means healthy but overloaded (queue depth): degraded, still serving."""
        if ok:
            self.failures, self.restart_attempts, self.last_error = 0, 0, error
            return self._enter("degraded" if error else "ready")
        self.failures += 1
        self.last_error = error
        if self.state == "ready":
            return self._enter("unhealthy" if self.failures >= spec.unhealthy_after else "degraded")
        if self.state == "degraded" and self.failures >= spec.unhealthy_after:
            return self._enter("unhealthy")
        return False  # starting/restarting: not ready yet is not a failure

    def unit_gone(self, reason: str, now: float) -> bool:
        """The process died (or never ran): out of rotation at once.

        Not while draining: that instance's planned restart is already under way.
        """
        if self.state in ("failed", "unhealthy", "draining") or (self.state in ("starting", "restarting") and now < self.next_restart):
            return False
        self.last_error = reason
        return self._enter("unhealthy")

    def needs_restart(self, now: float, spec: HealthSpec) -> bool:
        if self.state == "unhealthy":
            return now >= self.next_restart
        if self.state in ("starting", "restarting") and now - self.started_at > spec.startup_timeout:
            self.last_error = f"not ready within health.startup_timeout ({spec.startup_timeout:g}s)"
            return True
        return False

    def begin_restart(self, now: float, spec: HealthSpec) -> float | None:
        """Schedules the restart; None when it should give up (the state is then failed)."""
        if self.restart_attempts >= spec.max_restarts:
            self.last_error = f"{self.last_error}; gave up after {self.restart_attempts} restarts"
            self._enter("failed")
            return None
        delay = min(spec.restart_backoff * (2**self.restart_attempts), spec.restart_backoff_max)
        self.restart_attempts += 1
        self.restarts_total += 1
        self.failures = 0
        self.started_at, self.next_restart = now, now + delay
        self._enter("restarting")
        return delay

    def drain(self) -> bool:
        return self._enter("draining")

    def fresh_start(self, grace: float) -> bool:
        """Started or restarted for a new spec: a new life, not a crash."""
        self.restart_attempts, self.failures, self.last_error = 0, 0, ""
        self.started_at, self.next_restart = time.monotonic(), time.monotonic() + grace
        return self._enter("starting")


async def probe(session, port: int, spec: HealthSpec) -> tuple[bool, str]:
    """One probe; a kept-alive connection the server had just closed gets one retry, not a failure."""
    import aiohttp

    try:
        return await _probe_once(session, port, spec)
    except aiohttp.ServerDisconnectedError:
        try:
            return await _probe_once(session, port, spec)
        except aiohttp.ServerDisconnectedError:
            return False, "/health failed: ServerDisconnectedError"


async def _probe_once(session, port: int, spec: HealthSpec) -> tuple[bool, str]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    try:
        async with session.get(f"http://127.0.0.1:{port}/health", timeout=timeout) as response:
            if response.status != 200:
                return False, f"/health answered {response.status}"
        if spec.queue_depth_limit is None:
            return True, ""
        async with session.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            waiting = queue_depth(await response.text())
        if waiting is not None and waiting > spec.queue_depth_limit:
            return True, f"{waiting:g} requests waiting > health.queue_depth_limit {spec.queue_depth_limit}"
        return True, ""
    except asyncio.TimeoutError:
        return False, f"/health did not answer within {spec.timeout:g}s"
    except aiohttp.ServerDisconnectedError:
        raise
    except aiohttp.ClientError as exc:
        return False, f"/health failed: {exc.__class__.__name__}"


def queue_depth(metrics: str) -> float | None:
    return metric_sum(metrics, "vllm:num_requests_waiting")


def metric_sum(metrics: str, name: str) -> float | None:
    """A vLLM gauge summed over its label sets, from Prometheus text; None when absent."""
    total, seen = 0.0, False
    for line in metrics.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except ValueError:
                continue
    return total if seen else None


async def running_requests(session, port: int, timeout: float) -> float:
    """Requests an instance is still generating (0 when it cannot tell)."""
    import aiohttp

    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return metric_sum(await response.text(), "vllm:num_requests_running") or 0.0
    except (asyncio.TimeoutError, aiohttp.ClientError):
        return 0.0
