"""What systemd hears from the agent: READY/RELOADING/STOPPING, the watchdog, and STATUS=."""

from __future__ import annotations

import os
import time

from mipart.daemon.snapshot import AgentSnapshot, AgentStatus


def status_line(snap: AgentSnapshot) -> str:
    """One line for `systemctl status mipart-agent`: readiness, then the first problem."""
    return summary(snap.ready_count, len(snap.instances), snap.status)


def summary(ready: int, instances: int, st: AgentStatus) -> str:
    """status_line from the counts: the loop says it every tick without copying a snapshot of every instance."""
    line = f"{ready}/{instances} instances ready"
    problems = (
        st.profile_error and f"profile rejected, running the last good one: {st.profile_error}",
        st.repartition_step and f"rolling repartition: {st.repartition_step}",
        st.repartition_phase and f"repartitioning: {st.repartition_phase}",
        st.repartition_error and f"repartition failed: {st.repartition_error}",
        st.reconcile_error,
        st.nginx.error and f"nginx config rejected: {st.nginx.error}",
        st.nginx.problem,
        st.front.error and f"nginx front config rejected: {st.front.error}",
        st.front.problem and f"nginx front: {st.front.problem}",
        st.files_error and f"{st.files_error} (retrying)",
        st.api_error and f"status API not listening: {st.api_error} (retrying)",
    )
    # A repartition that failed midway says the host's layout on further lines: STATUS= is one line.
    first = next((problem for problem in problems if problem), "").split("\n", 1)[0]
    override = (
        st.profile_override and f"profile override by mipart bench sweep: {st.profile_override}"
    )  # whatever else is wrong
    ready_path = not st.readiness.ready and f"balancers told not ready: {st.readiness.reason}"  # a drain, say
    return "; ".join(part for part in (line, first, ready_path, override) if part)


class Notifier:
    """sd_notify, silent when not run by systemd (NOTIFY_SOCKET unset)."""

    def __init__(self) -> None:
        import sdnotify

        self._notifier = sdnotify.SystemdNotifier()
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_interval = usec / 2e6 if usec else 0.0
        self._last_watchdog = 0.0
        self._last_status = ""

    def send(self, message: str) -> None:
        self._notifier.notify(message)

    def status(self, line: str) -> None:
        """STATUS=, only when it changed (the agent calls this every tick)."""
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        now = time.monotonic()
        if self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")
