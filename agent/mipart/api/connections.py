"""The status API's connections, bounded: how many it holds and how long one may sit idle.

aiohttp waits for a connection's first request forever and holds as many connections as
clients open; about a thousand idle ones would use up the agent's file descriptors
(systemd's default soft limit is 1024) and everything else the agent opens would then
fail with EMFILE. So every connection passes through a ConnectionGuard:

- it is closed when it has been idle for IDLE_TIMEOUT: no byte received since it was opened
  (a client that connects and waits) or since its last answer (an idle keep-alive);
- it is closed when it has been busy for BUSY_TIMEOUT: a request that takes longer to arrive
  and be answered (headers sent a byte at a time) holds a slot no longer than that;
- at most `limit` are held; a new one beyond that takes the place of the connection idle
  the longest, and is closed at once only when every held one is busy. A connection counts as
  busy from its first byte, so a flood of connections that send nothing (issue 20: a flood made
  /v1/status time out) only ever evicts its own, never a client whose request has arrived.

When accept() itself fails (EMFILE, ENFILE), asyncio logs it and retries a second later
(asyncio.selector_events, ACCEPT_RETRY_DELAY): the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import resource

from aiohttp import web

IDLE_TIMEOUT = 10.0
BUSY_TIMEOUT = 15.0  # above every handler's own bound (an instance's metrics: api.server.PROXY_TIMEOUT)
MAX_CONNECTIONS = 256
SHUTDOWN_TIMEOUT = 2.0  # in-flight requests at agent stop get this long


def connection_limit(cap: int = MAX_CONNECTIONS) -> int:
    """`cap`, or a quarter of this process's file descriptors when that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return cap if soft == resource.RLIM_INFINITY else max(8, min(cap, soft // 4))


class ConnectionGuard:
    """A protocol factory in front of aiohttp's: admits, times out and evicts connections."""

    def __init__(self, limit: int, idle_timeout: float = IDLE_TIMEOUT, busy_timeout: float = BUSY_TIMEOUT):
        self.limit = limit
        self.idle_timeout, self.busy_timeout = idle_timeout, busy_timeout
        self.factory = None  # aiohttp's web.Server, set when the site starts
        self.held: set[asyncio.BaseTransport] = set()
        self.idle: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}  # idle the longest first
        self.busy_since: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if len(self.held) >= self.limit:
            if not self.idle:
                return False
            self.drop(next(iter(self.idle)))
        self.held.add(transport)
        self.went_idle(transport)
        return True

    def went_idle(self, transport) -> None:
        """Between requests (or before the first): the idle clock runs."""
        self._stop_clocks(transport)
        if transport in self.held:
            self.idle[transport] = asyncio.get_running_loop().call_later(self.idle_timeout, self.drop, transport)

    def busy(self, transport) -> None:
        """A request arriving or being answered: not evicted, and the busy clock runs (once)."""
        handle = self.idle.pop(transport, None)
        if handle is not None:
            handle.cancel()
        if transport in self.held and transport not in self.busy_since:
            self.busy_since[transport] = asyncio.get_running_loop().call_later(self.busy_timeout, self.drop, transport)

    def drop(self, transport) -> None:
        self.closed(transport)
        transport.abort()

    def closed(self, transport) -> None:
        self._stop_clocks(transport)
        self.held.discard(transport)

    def _stop_clocks(self, transport) -> None:
        for clocks in (self.idle, self.busy_since):
            handle = clocks.pop(transport, None)
            if handle is not None:
                handle.cancel()


GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard) if hasattr(web, "AppKey") else "connection_guard"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, created only once the guard admitted it."""

    def __init__(self, guard: ConnectionGuard):
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport) -> None:
        if not self.guard.admit(transport):
            transport.abort()
            return
        self.transport = transport
        self.inner = self.guard.factory()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None and self.transport is not None:
            self.guard.busy(self.transport)  # its request is arriving: no longer a candidate to evict
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc) -> None:
        if self.transport is not None:
            self.guard.closed(self.transport)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP (host, port) or unix (path) listener whose connections pass through `guard`."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, where: tuple[str, int] | str):
        super().__init__(runner, shutdown_timeout=SHUTDOWN_TIMEOUT)
        self.guard = guard
        self.where = where

    @property
    def name(self) -> str:
        return f"unix:{self.where}" if isinstance(self.where, str) else f"http://{self.where[0]}:{self.where[1]}"

    async def start(self) -> None:
        await super().start()
        self.guard.factory = self._runner.server
        loop = asyncio.get_running_loop()
        if isinstance(self.where, str):
            self._server = await loop.create_unix_server(self.guard, self.where, backlog=self._backlog)
        else:
            host, port = self.where
            self._server = await loop.create_server(self.guard, host, port, backlog=self._backlog, reuse_address=True)


@web.middleware
async def mark_busy(request: web.Request, handler):
    """A request in progress is never cut by the idle clock; its end starts it again."""
    guard = request.app.get(GUARD_KEY)
    transport = request.transport
    if guard is None or transport is None:
        return await handler(request)
    guard.busy(transport)
    try:
        return await handler(request)
    finally:
        guard.went_idle(transport)
