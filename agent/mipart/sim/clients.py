"""A bounded client loop through nginx, in a thread: what a serving host's users saw.

Each answer is counted by kind: "200", "503 <error type>" (nginx's JSON answer while a
service has no ready instance is "503 ServiceUnavailable"), or the exception's repr for a
hang, a reset or a refused connection. Tests, benches and the nspawn tier use it alike.
"""

from __future__ import annotations

import json
import threading
import time

from mipart.sim.host import completion


class ClientLoop:
    def __init__(self, port: int, model: str, limit: float = 600, pause: float = 0.01, timeout: float = 10):
        self.port, self.model, self.limit, self.pause, self.timeout = port, model, limit, pause, timeout
        self.seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def answer(self) -> str:
        try:
            response = completion(self.port, self.model, timeout=self.timeout)
            body = response.read()
            response.close()
        except OSError as exc:
            return repr(exc)
        if response.status != 503:
            return str(response.status)
        try:
            return f"503 {json.loads(body)['error']['type']}"
        except (ValueError, KeyError, TypeError):
            return f"503 {body[:80]!r}"

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            kind = self.answer()
            self.seen[kind] = self.seen.get(kind, 0) + 1
            time.sleep(self.pause)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)
