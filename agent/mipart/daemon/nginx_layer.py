"""One nginx layer (the back or the front, nginx.files): its config installed and in force, its master running.

The layer also knows what its nginx actually serves. A reload is taken only once no worker
from before it accepts connections any more (old workers close their listeners when told
to shut down; until then they still serve the old config): then the config's generation
is the one served (status: nginx.serving_generation). Workers of ours left without a
master are strays (nginx.procs); a damaged config file and nginx refusing a config are
reported in the layer's LayerState, never raised, and a failed write is tried again with
backoff. A unix socket it listens on whose file is gone (the run dir deleted) is bound anew
by a new master (Runner.replace_nginx): a reload keeps the socket nobody can reach.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from mipart.daemon.retry import Backoff, describe
from mipart.daemon.snapshot import LayerState
from mipart.errors import UserError
from mipart.fsutil import write_atomic
from mipart.log import Log
from mipart.nginx import procs as nginx_procs
from mipart.nginx.conf import generation_of
from mipart.nginx.files import NginxFiles, NginxRejected, install_config, unix_listeners
from mipart.runners.base import Runner

# A reload whose old workers still accept after this is reported; restarts waiting for it go ahead.
SWITCH_LIMIT = 3.0


@dataclass(frozen=True)
class Switch:
    """A reload under way: the workers that accepted before it, and the generation it brings."""

    generation: str
    old: frozenset[int]
    since: float


class NginxLayer:
    def __init__(self, files: NginxFiles, runner: Runner, log: Log, state: LayerState):
        self.files, self.runner, self.log, self.state = files, runner, log, state
        self.switch: Switch | None = None
        self.retry = Backoff()
        self.dirty = False  # an update could not be done: it is due again
        self.reloaded = False  # the first update reloads (or starts) nginx, so what serves is known
        self.text = ""  # what nginx was last told to run: a file rewritten with the same text needs no reload
        self.stale = False  # the periodic check found it gone, strays, or lost sockets: start, reload or replace it
        self.sockets: tuple[str, ...] = ()  # the unix sockets the config installed last listens on
        self.lost: tuple[str, ...] = ()  # those of them whose file is gone: a new master must bind them

    async def apply(self, text: str, **what: object) -> None:
        """Install `text` if nginx -t accepts it; reload nginx when it runs another text, or start it if it does
        not run. `what` is logged."""
        if not self.retry.due(time.monotonic()):
            self.dirty = True
            return
        self.dirty = False
        try:
            await asyncio.to_thread(install_config, self.files, text)
            if not self.reloaded and await asyncio.to_thread(self._serves, text):
                self.reloaded, self.text, self.state.serving = True, text, generation_of(text)
                self.log.info("nginx.adopted", generation=generation_of(text), layer=self.files.layer)
            if text != self.text or not self.reloaded or self.stale:
                old = await asyncio.to_thread(nginx_procs.scan, self.files.prefix)
                if old.strays:
                    self._strays_found(old.strays)
                act = self.runner.replace_nginx if self.lost and old.masters else self.runner.ensure_nginx
                await asyncio.to_thread(act, self.files)
                await asyncio.to_thread(write_atomic, self.files.handed, generation_of(text) + "\n")
                self.switch = Switch(generation_of(text), frozenset(old.accepting), time.monotonic())
                self.reloaded, self.stale, self.lost, self.text = True, False, (), text
                self.log.info("nginx.updated", **what, generation=generation_of(text), layer=self.files.layer)
            else:
                await asyncio.to_thread(self._keep_handed, text)
        except NginxRejected as exc:
            if self.state.error != str(exc):
                self.log.error(
                    "nginx.config_rejected",
                    reason=str(exc),
                    kept=str(self.files.conf),
                    rejected=str(self.files.rejected),
                    layer=self.files.layer,
                )
            self.state.error = str(exc)
            return
        except UserError as exc:  # nginx missing, systemd unreachable
            self._failed(str(exc))
            return
        except OSError as exc:  # the nginx dir replaced by a file, a full disk
            self._failed(describe(exc))
            return
        self.state.error = ""
        self.state.generation = generation_of(text)
        self.sockets = unix_listeners(text)
        if self.retry.error:
            self.log.info("nginx.files_ok", file=str(self.files.conf), layer=self.files.layer)
        self.retry.succeeded()
        self.state.files_error = ""

    def _keep_handed(self, text: str) -> None:
        """nginx runs `text` (this agent handed it): say so again where the record was lost with the run
        dir. Else the next agent could not tell that nginx runs it, and would reload nginx, closing the
        clients' idle connections."""
        record = generation_of(text) + "\n"
        try:
            if self.files.handed.read_text() == record:
                return
        except OSError:
            pass  # gone (or unreadable): written again below
        write_atomic(self.files.handed, record)

    def _serves(self, text: str) -> bool:
        """At agent start: the nginx of the last agent runs `text` already (it was handed that config, no
        stray, every socket there). Then no reload, which would close clients' idle keep-alive connections:
        restarting the agent never disturbs serving."""
        try:
            handed = self.files.handed.read_text().strip()
        except OSError:
            return False
        if handed != generation_of(text) or _missing(unix_listeners(text)):
            return False
        found = nginx_procs.scan(self.files.prefix)
        return bool(found.masters and found.workers) and not found.strays

    async def running(self) -> bool | None:
        """None when it cannot be told (systemd unreadable; the agent's unit check says so): no verdict."""
        try:
            return await asyncio.to_thread(self.runner.nginx_running, self.files)
        except UserError:
            return None

    def _failed(self, error: str) -> None:
        self.dirty = self.stale = True  # tried again whole: the config may be in place and nginx not told
        action = self.retry.failure(error, time.monotonic(), "keeps serving what runs")
        self.state.files_error = error
        if action:
            self.log.error("nginx.update_failed", reason=error, action=action, layer=self.files.layer)

    async def needs_update(self, found: nginx_procs.NginxProcs | None = None) -> bool:
        """Periodic: a failed update due again, its config gone (rewritten), or nginx gone, strays holding the
        port, a socket lost (nginx itself needs acting on: stale). found: its processes, scanned by the caller."""
        if self.dirty:
            return self.retry.due(time.monotonic())
        missing = not await asyncio.to_thread(self.files.conf.exists)
        if missing:
            self.log.warning("files.missing", file=str(self.files.conf), action="rewrite")
        if found is None:
            found = await asyncio.to_thread(nginx_procs.scan, self.files.prefix)
        self.stale = await self._stale(found)
        return missing or self.stale

    async def _stale(self, found: nginx_procs.NginxProcs) -> bool:
        lost, self.lost = self.lost, await asyncio.to_thread(_missing, self.sockets)
        if self.lost and self.lost != lost:
            self.log.warning(
                "nginx.socket_lost",
                sockets=",".join(self.lost),
                action="a new master binds them; the old one's workers finish what they carry",
                layer=self.files.layer,
            )
        if len(found.strays) != self.state.strays:
            self.state.strays = len(found.strays)
            if found.strays:
                self._strays_found(found.strays)
        self._confirm(found)
        if await self.running() is False:
            self.log.warning("nginx.gone", action="start it with the current config", layer=self.files.layer)
            return True
        return bool(found.strays or self.lost)

    def _strays_found(self, strays: list[int]) -> None:
        self.log.warning(
            "nginx.strays",
            workers=",".join(map(str, strays)),
            reason="nginx workers of ours serve without their master",
            action="a new master takes over their sockets; they finish their requests and exit",
            layer=self.files.layer,
        )

    async def settled(self) -> bool:
        """The last reload has taken (or is overdue): no worker from before it serves any more."""
        if self.switch is None:
            return True
        if self._confirm(await asyncio.to_thread(nginx_procs.scan, self.files.prefix)):
            return True
        return time.monotonic() - self.switch.since > SWITCH_LIMIT

    async def wait_settled(self, limit: float = SWITCH_LIMIT, poll: float = 0.02) -> None:
        deadline = time.monotonic() + limit
        while not await self.settled() and time.monotonic() < deadline:
            await asyncio.sleep(poll)

    def _confirm(self, found: nginx_procs.NginxProcs) -> bool:
        switch = self.switch
        if switch is None:
            return True
        if not set(found.accepting) & switch.old and set(found.workers) - switch.old:
            self.state.serving, self.state.overdue = switch.generation, False
            self.switch = None
            return True
        if not self.state.overdue and time.monotonic() - switch.since > SWITCH_LIMIT:
            self.state.overdue = True
            self.log.warning(
                "nginx.reload_not_taken",
                generation=switch.generation,
                serving=self.state.serving or "unknown",
                reason=f"workers from before the reload still accept after {SWITCH_LIMIT:g}s (see nginx's log)",
                layer=self.files.layer,
            )
        return False


def _missing(paths: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(path for path in paths if not os.path.exists(path))
