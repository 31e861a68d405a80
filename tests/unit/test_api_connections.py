"""The status API's connection guard (api.connections): a bounded number of connections, none idle for long."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from conftest import AGENT

from mipart.api.connections import ConnectionGuard


class Transport:
    def __init__(self, name: str):
        self.name, self.aborted = name, False

    def abort(self) -> None:
        self.aborted = True


def run(coro):
    return asyncio.run(coro)


def test_beyond_the_limit_the_longest_idle_connection_makes_room():
    async def scenario():
        guard = ConnectionGuard(limit=2, idle_timeout=60)
        a, b, c, d = (Transport(n) for n in "abcd")
        assert guard.admit(a) and guard.admit(b)
        guard.busy(a)  # a is in a request: never evicted
        assert guard.admit(c)
        assert b.aborted and not a.aborted and guard.held == {a, c}
        guard.busy(c)
        assert not guard.admit(d)  # every held connection is busy: the new one is refused
        guard.went_idle(a)
        assert guard.admit(d) and a.aborted and guard.held == {c, d}

    run(scenario())


def test_an_idle_connection_is_closed_after_the_timeout_and_a_busy_one_is_not():
    async def scenario():
        guard = ConnectionGuard(limit=10, idle_timeout=0.05)
        idle, busy = Transport("idle"), Transport("busy")
        guard.admit(idle)
        guard.admit(busy)
        guard.busy(busy)
        await asyncio.sleep(0.2)
        assert idle.aborted and not busy.aborted and guard.held == {busy}
        guard.went_idle(busy)  # its answer is out: the clock starts again
        await asyncio.sleep(0.2)
        assert busy.aborted and guard.held == set() and guard.idle == {}

    run(scenario())


def test_a_request_that_takes_too_long_to_arrive_and_be_answered_is_closed():
    async def scenario():
        guard = ConnectionGuard(limit=10, idle_timeout=60, busy_timeout=0.05)
        trickle = Transport("trickle")  # headers a byte at a time, forever
        guard.admit(trickle)
        guard.busy(trickle)
        guard.busy(trickle)  # more bytes: the clock does not start again
        await asyncio.sleep(0.2)
        assert trickle.aborted and guard.held == set() and guard.busy_since == {}

    run(scenario())


class Inner(asyncio.Protocol):
    """aiohttp's per-connection protocol, standing in: it only takes what it is given."""

    def data_received(self, data: bytes) -> None:
        pass


def test_a_flood_of_silent_connections_never_evicts_a_client_whose_request_arrived():
    """Issue 20: an API flood made /v1/status time out. A connection is busy from its first byte, so
    connections that send nothing only ever make room by evicting each other."""

    async def scenario():
        guard = ConnectionGuard(limit=4, idle_timeout=60)
        guard.factory = Inner
        client = Transport("client")
        connection = guard()
        connection.connection_made(client)
        connection.data_received(b"GET /v1/status HTTP/1.1\r\n")  # its handler has not run yet
        flood = [Transport(f"flood{i}") for i in range(100)]
        for transport in flood:
            guard().connection_made(transport)
        assert not client.aborted and client in guard.held
        assert sum(not t.aborted for t in flood) == 3  # the rest were evicted, by each other

    run(scenario())


def test_a_closed_connection_is_forgotten():
    async def scenario():
        guard = ConnectionGuard(limit=1, idle_timeout=60)
        a, b = Transport("a"), Transport("b")
        guard.admit(a)
        guard.closed(a)
        assert guard.admit(b) and not a.aborted

    run(scenario())


def test_the_limit_is_a_quarter_of_the_file_limit_when_that_is_less():
    code = (
        "import resource, sys; from mipart.api.connections import connection_limit; "
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard)); print(connection_limit())"
    )
    found = {}
    for soft in (100, 1024, 4096):
        done = subprocess.run(
            [sys.executable, "-c", code, str(soft)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(AGENT)},
        )
        assert done.returncode == 0, done.stderr
        found[soft] = int(done.stdout)
    assert found == {100: 25, 1024: 256, 4096: 256}
