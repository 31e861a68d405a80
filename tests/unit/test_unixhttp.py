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


def kept_exchanges(tmp_path, answers: list[bytes], keep_idle: float = 5.0, close_after: bool = False):
    """Requests through one client to a server that answers them in turn on whatever connection they come.

    Returns (replies, the connections opened, the requests seen); close_after: the server closes each
    connection after answering (without saying so), as a server whose keep-alive timeout ran out does.
    """
    socket, connections, requests = str(tmp_path / "http.sock"), [], []
    answers = list(answers)

    async def serve(reader, writer):
        connections.append(writer)
        while not reader.at_eof():
            try:
                requests.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError:
                break
            writer.write(answers.pop(0))
            await writer.drain()
            if close_after:
                break
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(serve, socket)
        async with server:
            client = InstanceClient(keep_idle=keep_idle)
            replies = []
            for _ in range(len(answers)):
                replies.append(await client.get(socket, "/health", 2.0))
                await asyncio.sleep(0.05)  # the server's close, if any, reaches the client first
            client.close()
            return replies

    return asyncio.run(main()), len(connections), requests


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_kept_connection_carries_the_next_get(tmp_path):
    replies, opened, requests = kept_exchanges(tmp_path, [OK, OK, OK])
    assert [r.body for r in replies] == [b"ok"] * 3 and opened == 1
    assert all(b"Connection: close" not in request for request in requests)


def test_a_connection_the_server_closed_is_replaced_for_the_same_request(tmp_path):
    replies, opened, _ = kept_exchanges(tmp_path, [OK, OK, OK], close_after=True)
    assert [r.status for r in replies] == [200] * 3 and opened == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_does_not_leave_the_connection_reusable_closes_it(tmp_path, answer):
    replies, opened, _ = kept_exchanges(tmp_path, [answer, answer])
    assert [r.body for r in replies] == [b"ok"] * 2 and opened == 2


def test_without_keep_idle_every_request_has_its_own_connection(tmp_path):
    replies, opened, requests = kept_exchanges(tmp_path, [OK, OK], keep_idle=0.0)
    assert len(replies) == 2 and opened == 2 and all(b"Connection: close\r\n" in r for r in requests)


def test_a_connection_kept_longer_than_keep_idle_is_not_used_again(tmp_path):
    socket, opened = str(tmp_path / "http.sock"), []

    async def serve(reader, writer):
        opened.append(writer)
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            writer.write(OK)
        writer.close()

    async def main():
        async with await asyncio.start_unix_server(serve, socket):
            client = InstanceClient(keep_idle=0.1)
            await client.get(socket, "/health", 2.0)
            await asyncio.sleep(0.2)
            await client.get(socket, "/health", 2.0)
            client.close()

    asyncio.run(main())
    assert len(opened) == 2


def test_a_get_that_timed_out_leaves_no_connection_to_reuse(tmp_path):
    socket, opened = str(tmp_path / "http.sock"), []

    async def serve(reader, writer):
        opened.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        if len(opened) == 1:
            await asyncio.sleep(1.0)  # the first answer comes after the client gave up
        writer.write(OK)
        await writer.drain()

    async def main():
        async with await asyncio.start_unix_server(serve, socket):
            client = InstanceClient(keep_idle=5.0)
            with pytest.raises(asyncio.TimeoutError):
                await client.get(socket, "/health", 0.2)
            reply = await client.get(socket, "/health", 2.0)
            client.close()
            return reply

    assert asyncio.run(main()).body == b"ok" and len(opened) == 2
