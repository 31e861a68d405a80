"""A loopback HTTP server on a free port that answers each path with what the test set: something that
is not mipart's status API, or a status the test wrote. A thread of this process; use it in a `with`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NOT_FOUND = (404, "text/html", b"<html><body><h1>404 Not Found</h1></body></html>")


class Answering:
    def __init__(self):
        self.answers: dict[str, tuple[int, str, bytes]] = {}
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                code, content_type, body = answers.get(self.path, NOT_FOUND)
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: str, code: int = 200, content_type: str = "application/json") -> None:
        self.answers[path] = (code, content_type, body.encode())

    def __enter__(self) -> Answering:
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
