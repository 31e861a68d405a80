"""How the agent talks to instances: HTTP/1.1 over their unix sockets, every read bounded.

Instances listen only on `<serving dir>/sockets/N/http.sock` (serving.spec), where no other user
can listen. Each answer is read with a bound, a header block of HEAD_LIMIT and a body of the
caller's `limit`: an instance that sends more, or something that is not HTTP, fails the request
with HttpError and never grows the agent (one hostile /metrics of 1 GiB once drove a drain check
to 752 MiB). Stdlib only: probes, draining and the API's metrics proxy share it.

A client made with `keep_idle` keeps one idle connection per socket for GETs, for at most that
long: the agent's probes (/health and /metrics of 64 instances every 2 s) then open no
connection at all when nothing changes, where a connection each cost most of the idle agent's
CPU (docs/results/agent-footprint-2026-12-07.md). A kept connection the server closed meanwhile
is replaced by a new one for the same request, once, when nothing of the answer came. A POST
(a completion: not to be sent twice) and any answer that does not leave the connection
reusable (an error, a timeout, `Connection: close`, a body that ends at close) close it.
Without `keep_idle`, one request per connection (`Connection: close`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

HEAD_LIMIT = 16 << 10  # the status line and headers; also the longest chunk-size line
BODY_LIMIT = 64 << 10  # /health, a one-token completion
METRICS_LIMIT = 1 << 20  # a vLLM /metrics is tens of KiB (docs/vllm-nginx.md)


class HttpError(Exception):
    """The answer was not HTTP we read, or was larger than its bound; str() says which."""


class _Closed(Exception):
    """A kept connection the server had closed: nothing of the answer came."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes

    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class InstanceClient:
    """Requests to instances by socket path. Raises asyncio.TimeoutError, OSError (no socket, refused) or HttpError.

    keep_idle: seconds a GET's connection may wait idle for the next GET to the same socket (0: none is kept).
    It must stay under the servers' own keep-alive timeout (vLLM's uvicorn: 5 s), so they seldom close one first.
    """

    def __init__(self, keep_idle: float = 0.0):
        self.keep_idle = keep_idle
        self._idle: dict[str, tuple[_Connection, float]] = {}  # socket -> a connection and when it was put back
        self._pruned = 0.0

    async def get(self, socket: str, path: str, timeout: float, limit: int = BODY_LIMIT) -> Reply:
        return await asyncio.wait_for(self._get(socket, path, limit), timeout)

    async def post_json(self, socket: str, path: str, data: object, timeout: float, limit: int = BODY_LIMIT) -> Reply:
        return await asyncio.wait_for(self._post(socket, path, json.dumps(data).encode(), limit), timeout)

    async def _post(self, socket: str, path: str, body: bytes, limit: int) -> Reply:
        conn = await _Connection.open(socket)  # never a kept one: a completion is not sent twice
        try:
            return (await conn.exchange("POST", path, body, limit, keep=False))[0]
        finally:
            conn.close()

    def close(self) -> None:
        """Close the idle connections kept."""
        for conn, _ in self._idle.values():
            conn.close()
        self._idle.clear()

    async def _get(self, socket: str, path: str, limit: int) -> Reply:
        kept = self._take(socket)
        if kept is not None:
            try:
                return await self._on(kept, path, limit)
            except _Closed:
                pass
        return await self._on(await _Connection.open(socket), path, limit, fresh=True)

    async def _on(self, conn: _Connection, path: str, limit: int, fresh: bool = False) -> Reply:
        """One GET on `conn`, which is kept for the next when the answer allows and closed otherwise."""
        reusable = False
        try:
            reply, reusable = await conn.exchange("GET", path, b"", limit, keep=self.keep_idle > 0, fresh=fresh)
            return reply
        finally:
            if reusable:
                self._put(conn)
            else:
                conn.close()

    def _take(self, socket: str) -> _Connection | None:
        conn, since = self._idle.pop(socket, (None, 0.0))
        if conn is not None and (conn.ended() or time.monotonic() - since > self.keep_idle):
            conn.close()
            return None
        return conn

    def _put(self, conn: _Connection) -> None:
        now = time.monotonic()
        second = self._idle.pop(conn.socket, None)
        if second is not None:
            second[0].close()
        self._idle[conn.socket] = (conn, now)
        if now - self._pruned > self.keep_idle:  # of instances no longer asked: once a keep_idle, not every put
            self._pruned = now
            for socket, (old, since) in list(self._idle.items()):
                if now - since > self.keep_idle:
                    old.close()
                    del self._idle[socket]


class _Connection:
    def __init__(self, socket: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.socket, self.reader, self.writer = socket, reader, writer

    @classmethod
    async def open(cls, socket: str) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(socket, limit=HEAD_LIMIT)
        return cls(socket, reader, writer)

    def ended(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def exchange(
        self, method: str, path: str, body: bytes, limit: int, keep: bool, fresh: bool = True
    ) -> tuple[Reply, bool]:
        """(the reply, whether the connection may carry another request). A kept connection (not fresh) that
        turns out closed before any byte of the answer raises _Closed."""
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n" + ("" if keep else "Connection: close\r\n")
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            self.writer.write(head.encode("latin-1") + b"\r\n" + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not fresh and not exc.partial:
                raise _Closed from None
            raise HttpError("the connection closed before the answer was complete") from None
        except asyncio.LimitOverrunError:
            raise HttpError(f"a header or chunk line longer than {HEAD_LIMIT} bytes") from None
        except ConnectionError:
            if not fresh:
                raise _Closed from None
            raise
        status, headers = _parse_head(raw)
        try:
            reply = Reply(status, headers, await _read_body(self.reader, headers, limit))
        except asyncio.LimitOverrunError:
            raise HttpError(f"a header or chunk line longer than {HEAD_LIMIT} bytes") from None
        except asyncio.IncompleteReadError:
            raise HttpError("the connection closed before the answer was complete") from None
        delimited = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        reusable = (
            keep and delimited and raw.startswith(b"HTTP/1.1 ") and headers.get("connection", "").lower() != "close"
        )
        return reply, reusable


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
        raise HttpError(f"not an HTTP status line: {lines[0][:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit)
    length = headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise HttpError(f"Content-Length {length[:20]!r} is not a number")
        if int(length) > limit:
            raise HttpError(f"an answer of {length} bytes, over the {limit} bytes this reader takes")
        return await reader.readexactly(int(length))
    data = await reader.read(limit + 1)  # no length given: the body ends when the server closes
    while data and len(data) <= limit:
        more = await reader.read(limit + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > limit:
        raise HttpError(f"an answer over the {limit} bytes this reader takes")
    return data


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            size = -1
        if size < 0:
            raise HttpError(f"a chunk size that is not hexadecimal: {line[:20]!r}")
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise HttpError(f"an answer over the {limit} bytes this reader takes")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
