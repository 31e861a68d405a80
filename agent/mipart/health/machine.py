"""The per-instance health state machine, fed by probe results and unit states: pure.

Only ready and degraded instances are in nginx. Startup is not a failure (model loads
take minutes): it has its own timeout. Restarts back off exponentially, and after
max_restarts in a row without becoming ready the instance is left `failed`, with the
reason kept, never restarted in a tight loop. The states are listed in health.states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mipart.health.states import DEGRADED, DRAINING, FAILED, IN_ROTATION, READY, RESTARTING, STARTING, UNHEALTHY
from mipart.profile.schema import HealthSpec

# Starting instances are probed this often, so a fresh server joins nginx quickly.
STARTING_PROBE_INTERVAL = 0.1  # a refused connection costs next to nothing


@dataclass
class InstanceHealth:
    number: int
    state: str = STARTING
    since: float = field(default_factory=time.time)  # wall clock, for people
    started_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_probe: float = 0.0
    last_error: str = ""
    restart_attempts: int = 0  # restarts since it was last ready
    restarts_total: int = 0
    next_restart: float = 0.0
    exit_read: bool = False  # why the last server ended is in last_error; read once per death

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
        if self.state == READY:
            return spec.interval
        if self.state == DEGRADED:
            return min(spec.interval, spec.timeout)  # confirm or clear a failure quickly
        return STARTING_PROBE_INTERVAL

    def next_probe_at(self, spec: HealthSpec) -> float | None:
        """When the next scheduled probe is due (monotonic); None in the states that are not probed."""
        if self.state in (UNHEALTHY, FAILED, DRAINING):
            return None
        return self.last_probe + self.probe_interval(spec)

    def due(self, now: float, spec: HealthSpec) -> bool:
        at = self.next_probe_at(spec)
        return at is not None and now >= at

    def record(self, ok: bool, error: str, spec: HealthSpec) -> bool:
        """`ok` with an `error` means healthy but overloaded (queue depth): degraded, still serving."""
        if ok:
            self.failures, self.restart_attempts, self.last_error = 0, 0, error
            return self._enter(DEGRADED if error else READY)
        self.failures += 1
        self.last_error = error
        if self.state == READY:
            return self._enter(UNHEALTHY if self.failures >= spec.unhealthy_after else DEGRADED)
        if self.state == DEGRADED and self.failures >= spec.unhealthy_after:
            return self._enter(UNHEALTHY)
        return False  # starting/restarting: not ready yet is not a failure

    def condemn(self, reason: str, restart: bool) -> bool:
        """A decisive failure (see ProbeResult): out of rotation now; failed when a restart cannot help.

        A starting server is not condemned for a failed generation (it is not ready yet), but a
        GPU fault fails it too.
        """
        self.failures += 1
        self.last_error = reason
        if self.state in (FAILED, DRAINING):
            return False
        if not restart:
            return self._enter(FAILED)
        return self._enter(UNHEALTHY) if self.in_rotation else False

    def unit_gone(self, reason: str, now: float) -> bool:
        """The process died (or never ran): out of rotation at once.

        Not while draining: that instance's planned restart is already under way.
        """
        if self.state in (FAILED, UNHEALTHY, DRAINING) or (
            self.state in (STARTING, RESTARTING) and now < self.next_restart
        ):
            return False
        self.last_error = reason
        return self._enter(UNHEALTHY)

    def exited(self, reason: str) -> None:
        """The runner's account of the death (exit status, last log line) replaces whatever the
        probes saw of it (a refused connection says nothing an operator can act on)."""
        self.exit_read = True
        if reason:
            self.last_error = reason if self.state != FAILED else f"{reason}; {self.last_error}"

    def needs_restart(self, now: float, spec: HealthSpec) -> bool:
        if self.state == UNHEALTHY:
            return now >= self.next_restart
        if self.state in (STARTING, RESTARTING) and now - self.started_at > spec.startup_timeout:
            self.last_error = f"not ready within health.startup_timeout ({spec.startup_timeout:g}s)"
            return True
        return False

    def begin_restart(self, now: float, spec: HealthSpec) -> float | None:
        """Schedules the restart; None when it should give up (the state is then failed)."""
        if self.restart_attempts >= spec.max_restarts:
            self.last_error = f"{self.last_error}; gave up after {self.restart_attempts} restarts"
            self._enter(FAILED)
            return None
        delay = min(spec.restart_backoff * 2.0**self.restart_attempts, spec.restart_backoff_max)
        self.restart_attempts += 1
        self.restarts_total += 1
        self.failures, self.exit_read = 0, False
        self.started_at, self.next_restart = now, now + delay
        self._enter(RESTARTING)
        return delay

    def drain(self) -> bool:
        return self._enter(DRAINING)

    def fresh_start(self, grace: float) -> bool:
        """Started or restarted for a new spec: a new life, not a crash."""
        self.restart_attempts, self.failures, self.last_error, self.exit_read = 0, 0, "", False
        self.started_at, self.next_restart = time.monotonic(), time.monotonic() + grace
        return self._enter(STARTING)
