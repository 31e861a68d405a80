"""How the agent talks to instances: HTTP/1.1 over their unix sockets, every read bounded.

Instances listen only on `<serving dir>/sockets/N/http.sock` (serving.spec), where no other user
can listen. One request per connection (`Connection: close`): a unix connection costs no
handshake, and nothing is pooled. Each answer is read with a bound, a header block of
HEAD_LIMIT and a body of the caller's `limit`: an instance that sends more, or something that
is not HTTP, fails the request with HttpError and never grows the agent (one hostile /metrics
of 1 GiB once drove a drain check to 752 MiB). Stdlib only: probes, draining and the API's
metrics proxy share it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

HEAD_LIMIT = 16 << 10  # the status line and headers; also the longest chunk-size line
BODY_LIMIT = 64 << 10  # /health, a one-token completion
METRICS_LIMIT = 1 << 20  # a vLLM /metrics is tens of KiB (docs/vllm-nginx.md)


class HttpError(Exception):
    """The answer was not HTTP we read, or was larger than its bound; str() says which."""


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
    """Requests to instances by socket path. Raises asyncio.TimeoutError, OSError (no socket, refused) or HttpError."""

    async def get(self, socket: str, path: str, timeout: float, limit: int = BODY_LIMIT) -> Reply:
        return await asyncio.wait_for(_exchange(socket, "GET", path, b"", limit), timeout)

    async def post_json(self, socket: str, path: str, data: object, timeout: float, limit: int = BODY_LIMIT) -> Reply:
        body = json.dumps(data).encode()
        return await asyncio.wait_for(_exchange(socket, "POST", path, body, limit), timeout)


async def _exchange(socket: str, method: str, path: str, body: bytes, limit: int) -> Reply:
    reader, writer = await asyncio.open_unix_connection(socket, limit=HEAD_LIMIT)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        try:
            status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            return Reply(status, headers, await _read_body(reader, headers, limit))
        except asyncio.LimitOverrunError:
            raise HttpError(f"a header or chunk line longer than {HEAD_LIMIT} bytes") from None
        except asyncio.IncompleteReadError:
            raise HttpError("the connection closed before the answer was complete") from None
    finally:
        writer.close()


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
