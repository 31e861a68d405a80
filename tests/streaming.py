"""Proof that a response is streamed to the client as the server sends it: by causality, not timing.

The server is frozen mid-generation, a few times. While it is frozen it sends nothing more,
so the client must come to hold every token the server has sent so far; once it thaws,
more must arrive. A proxy that buffers the response keeps back the tail of what was sent
until its buffer fills or the response ends, so with the server frozen the client never
catches up: the check fails, every time (test_streaming_check.py proves it with a real
nginx, `proxy_buffering on`). Nothing is asked of when tokens arrive, so a server that
emits in bursts (vLLM on CPU does, under load) passes as long as each burst is passed on.

What it cannot see is a proxy that holds data only while more keeps coming and passes it
all on once the server pauses: nginx's buffering does that with a chunked upstream (vLLM's
responses are chunked), so for mipart's config `proxy_buffering off;` is asserted as such
(tests/nginx/test_serving.py).

Tokens are counted on both sides: the client from each chunk's `token_ids` (the request
asks for them), the server by a counter of tokens it has sent (vLLM's
`vllm:generation_tokens_total`, read while its engine is frozen and its API server is not).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

SETTLE_POLL = 0.25  # the server's count must hold still across one poll: nothing is left in flight


class Inconclusive(Exception):
    """The stream ended before the server was frozen: a buffered proxy passes that too. Try a new request."""


class SseReader:
    """Reads a streamed completion in a thread of its own, counting what has arrived so far."""

    def __init__(self, response):
        self.response = response
        self.tokens = 0  # sum of len(token_ids) over the data chunks read
        self.events = 0
        self.chunks_without_choices: list[str] = []
        self.done = False  # `data: [DONE]` read
        self.error: BaseException | None = None
        self.finished = threading.Event()  # the response ended (or failed)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self.response:
                line = raw.decode().strip()
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    if not choices:
                        self.chunks_without_choices.append(line)
                    self.tokens += sum(len(choice.get("token_ids") or ()) for choice in choices)
                    self.events += 1
                elif line == "data: [DONE]":
                    self.done = True
        except BaseException as exc:  # reported by wait_end() and the checks, never lost in the thread
            self.error = exc
        finally:
            self.finished.set()

    def wait_end(self, timeout: float) -> None:
        if not self.finished.wait(timeout):
            raise AssertionError(f"the stream did not end within {timeout:g}s ({self.tokens} tokens so far)")
        if self.error is not None:
            raise AssertionError(f"reading the stream failed: {self.error!r}") from self.error


def prove_live(
    reader: SseReader,
    freeze: Callable[[], None],
    thaw: Callable[[], None],
    sent: Callable[[], int],
    max_tokens: int,
    rounds: int = 3,
    catch_up: float = 10.0,
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Freeze the server `rounds` times mid-stream; each time the client must catch up with it,
    and after each thaw more tokens must arrive. Returns (client, server) tokens per freeze.

    AssertionError: the client cannot catch up with a frozen server (the response is held
    back), or the stream stalls or fails. Inconclusive: the generation ended before a freeze.
    """
    seen: list[tuple[int, int]] = []
    client = 0
    for _ in range(rounds):
        _wait(
            lambda: reader.tokens > client or reader.finished.is_set(), timeout, f"the stream to pass {client} tokens"
        )
        if reader.error is not None:
            raise AssertionError(f"reading the stream failed: {reader.error!r}") from reader.error
        freeze()
        try:
            client, server = _caught_up(reader, sent, catch_up)
        finally:
            thaw()
        if reader.done or client >= max_tokens:
            raise Inconclusive(f"the server had sent all {max_tokens} tokens before it was frozen (after {seen})")
        seen.append((client, server))
    return seen


def _caught_up(reader: SseReader, sent: Callable[[], int], within: float) -> tuple[int, int]:
    """Once the frozen server's count holds still, the client must hold all of it."""
    deadline = time.monotonic() + within
    last = None
    while True:
        server, client = sent(), reader.tokens
        if server == last and server > 0 and client >= server:
            return client, server
        if time.monotonic() > deadline:
            if server <= 0:
                raise AssertionError("the server reports no token sent: is its token counter exported?")
            raise AssertionError(
                f"with the server frozen, the client holds {client} of the {server} tokens it has sent: "
                "the response is held back (buffered), not streamed"
            )
        last = server
        time.sleep(SETTLE_POLL)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
