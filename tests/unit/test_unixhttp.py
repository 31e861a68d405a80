"""The agent's HTTP client to instances (mipart.unixhttp): every answer read with a bound, every
shape of body vLLM's and aiohttp's servers send, and anything else a failure in one line."""

from __future__ import annotations

import asyncio

import pytest

from mipart.unixhttp import HEAD_LIMIT, HttpError, InstanceClient, Reply

LIMIT = 1024


def exchange(tmp_path, answer: bytes, method: str = "GET", limit: int = LIMIT) -> tuple[Reply, bytes]:
    """(reply, request bytes) of one request to a socket that sends `answer` and closes."""
    socket, seen = str(tmp_path / "http.sock"), []

    async def serve(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(serve, socket)
        async with server:
            client = InstanceClient()
            if method == "GET":
                return await client.get(socket, "/metrics", 2.0, limit)
            return await client.post_json(socket, "/v1/completions", {"prompt": "x"}, 2.0, limit)

    return asyncio.run(main()), seen[0]


def test_a_content_length_answer_and_the_request_it_answers(tmp_path):
    reply, request = exchange(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello")
    assert (reply.status, reply.body, reply.headers["x-a"]) == (200, b"hello", "b")
    assert request.startswith(b"GET /metrics HTTP/1.1\r\n") and b"Connection: close\r\n" in request


def test_a_chunked_answer_and_one_that_ends_when_the_server_closes(tmp_path):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
    assert exchange(tmp_path, chunked)[0].body == b"hello!"
    assert exchange(tmp_path, b"HTTP/1.0 503 Service Unavailable\r\n\r\nno")[0] == Reply(503, {}, b"no")


def test_a_post_carries_json_with_its_length(tmp_path):
    reply, request = exchange(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", method="POST")
    assert reply.json() == {} and b"Content-Length: 15\r\n" in request  # {"prompt": "x"}


@pytest.mark.parametrize(
    "answer, words",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1025\r\n\r\n", "an answer of 1025 bytes, over the 1024 bytes"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1025, "an answer over the 1024 bytes"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"300\r\n" + b"x" * 768 + b"\r\n") * 2
            + b"0\r\n\r\n",
            "an answer over the 1024",
        ),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * HEAD_LIMIT + b"\r\n\r\n", "a header or chunk line longer than"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed before the answer was complete"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not hexadecimal"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "is not a number"),
    ],
    ids=["length-over", "close-over", "chunks-over", "endless-header", "not-http", "short", "bad-chunk", "bad-length"],
)
def test_an_answer_over_its_bound_or_not_http_fails_in_one_line(tmp_path, answer, words):
    with pytest.raises(HttpError, match=words):
        exchange(tmp_path, answer)


def test_no_socket_and_no_answer_are_the_errors_a_probe_names(tmp_path):
    client = InstanceClient()
    with pytest.raises(FileNotFoundError):
        asyncio.run(client.get(str(tmp_path / "none.sock"), "/health", 1.0))

    async def silent():
        server = await asyncio.start_unix_server(lambda r, w: asyncio.sleep(10), str(tmp_path / "hung.sock"))
        async with server:
            return await client.get(str(tmp_path / "hung.sock"), "/health", 0.2)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(silent())
