"""What the host tells fleet load balancers (mipart.readiness): drained, or a host-wide change coming or running.

The drain comes from the drain file (drainfile), read at start, on reload and at each unit
check. A host-wide change (daemon.repartition's whole-host path) first flips readiness and
waits `gpus.drain_notice` after nginx serves the flip, so balancers stop sending before any
listener answers 503 (give_notice). It stays announced until every service has an instance in
rotation again, or `health.startup_timeout` after the change ended: a balancer sends again only
to a host that can serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mipart.drainfile import Drain, DrainFileError, read_drain
from mipart.log import Log
from mipart.readiness import READY, ReadyState, state_of


@dataclass
class HostChange:
    reason: str  # e.g. "memory mode NPS4 needs a driver reload"
    since: float  # wall clock it was announced
    ended: float = 0.0  # wall clock the change itself ended; 0 while it runs


class HostReadiness:
    def __init__(self, drain_file: Path, log: Log):
        self.drain_file, self.log = drain_file, log
        self.drain: Drain | None = None
        self.change: HostChange | None = None
        self.shown: ReadyState = READY  # what nginx was last given, to log each change once

    def read_drain(self) -> bool:
        """Blocking (a file read): the drain file's word now; True when it changed. A file that is there but
        not readable counts as drained: keeping the host out is the safe side of a damaged file."""
        try:
            drain = read_drain(self.drain_file)
        except DrainFileError as exc:
            old = self.drain
            drain = Drain(str(exc), old.since if old is not None else time.time())
        changed, self.drain = drain != self.drain, drain
        return changed

    def current(self, serving: bool, settle_limit: float) -> ReadyState:
        """The readiness nginx should answer now; `serving`: every service has an instance in rotation."""
        change = self.change
        if change is not None and change.ended and (serving or time.time() - change.ended > settle_limit):
            self.change = change = None
        drained = (self.drain.reason, self.drain.since) if self.drain is not None else None
        state = state_of(drained, (change.reason, change.since) if change is not None else None)
        if state != self.shown:
            self.log.info("readiness.changed", ready=state.ready, reason=state.reason or "serving")
            self.shown = state
        return state

    async def give_notice(self, reason: str, notice: float, flip: Callable[[], Awaitable[None]]) -> None:
        """Announce a host-wide change; return once balancers have seen readiness 503 for `notice` seconds.

        `flip` puts the readiness into nginx and waits until nginx serves it. A host drained
        longer than the notice goes on at once.
        """
        self.change = HostChange(reason, time.time())
        await flip()
        shown_since = self.shown.since if self.shown.since is not None else time.time()
        wait = max(0.0, notice - (time.time() - shown_since)) if self.shown.drained else notice
        self.log.info("readiness.notice", reason=reason, wait=f"{wait:g}s")
        await asyncio.sleep(wait)

    def change_ended(self) -> None:
        if self.change is not None:
            self.change.ended = time.time()
