"""What systemd hears from the agent: READY/RELOADING/STOPPING, the watchdog, and STATUS=."""

from __future__ import annotations

import os
import time

from mipart.daemon.snapshot import AgentSnapshot


def status_line(snap: AgentSnapshot) -> str:
    """One line for `systemctl status mipart-agent`: readiness, then the first problem."""
    line = f"{snap.ready_count}/{len(snap.instances)} instances ready"
    if snap.status.profile_error:
        line += f"; profile rejected, running the last good one: {snap.status.profile_error}"
    elif snap.status.reconcile_error:
        line += f"; {snap.status.reconcile_error}"
    elif snap.status.nginx_error:
        line += f"; nginx config rejected: {snap.status.nginx_error}"
    return line


class Notifier:
    """sd_notify, silent when not run by systemd (NOTIFY_SOCKET unset)."""

    def __init__(self):
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
