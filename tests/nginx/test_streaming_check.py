"""The streaming check of test_real_vllm.py, proven on itself: it passes a stream a real nginx
passes on (even one the server emits in bursts) and fails the same stream through an nginx
that buffers, every time. The server is a small SSE origin whose generation can be frozen,
standing in for vLLM; no vLLM is started here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from streaming import SseReader, prove_live

from mipart.sim.ports import free_block

MAX_TOKENS = 400
PADDING = "x" * 160  # a chunk about the size of vLLM's (~250 bytes): 16 to nginx's 4k buffer

NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{origin};
            proxy_http_version 1.1;
            proxy_buffering {buffering};
        }}
    }}
}}
"""


class Origin(ThreadingHTTPServer):
    """Streams MAX_TOKENS completion chunks, `burst` at a time, while `running` is set; `sent` counts them."""

    daemon_threads = True

    def __init__(self, burst: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.burst = burst
        self.running = threading.Event()
        self.running.set()
        self.sent = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.running.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        origin: Origin = self.server
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for first in range(0, MAX_TOKENS, origin.burst):
            origin.running.wait()
            tokens = range(first, min(first + origin.burst, MAX_TOKENS))
            chunks = [
                {"object": "text_completion", "choices": [{"index": 0, "text": PADDING, "token_ids": [t]}]}
                for t in tokens
            ]
            self.wfile.write(b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks))  # one write: a burst
            origin.sent = tokens[-1] + 1
            time.sleep(0.005 * len(tokens))
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def nginx(tmp_path):
    """nginx(origin_port, buffering) -> its listen port; every nginx started is killed by its pid."""
    started: list[subprocess.Popen] = []

    def start(origin: int, buffering: str) -> int:
        prefix = tmp_path / f"nginx-{len(started)}"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir(parents=True)
        listen = free_block(1, low=20000)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, listen=listen, origin=origin, buffering=buffering))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        started.append(
            subprocess.Popen(
                [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(prefix / "error.log", "wb"),  # noqa: SIM115 (the nginx child keeps it)
                start_new_session=True,
            )
        )
        _wait_listening(listen, started[-1], prefix)
        return listen

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the master and its workers
        process.wait(timeout=10)


def _wait_listening(port: int, process: subprocess.Popen, prefix: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, (prefix / "error.log").read_text()
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx not listening on {port}\n{(prefix / 'error.log').read_text()}")


def check(port: int, origin: Origin, catch_up: float) -> list[tuple[int, int]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"stream": True}), {"Content-Type": "application/json"})
    reader = SseReader(conn.getresponse())
    try:
        return prove_live(
            reader, origin.running.clear, origin.running.set, lambda: origin.sent, MAX_TOKENS, catch_up=catch_up
        )
    finally:
        origin.running.set()
        reader.wait_end(60)
        conn.close()


@pytest.mark.parametrize("burst", [1, 25], ids=["token-by-token", "bursts-of-25"])
def test_the_check_passes_a_stream_nginx_passes_on(nginx, burst):
    origin = Origin(burst)
    try:
        rounds = check(nginx(origin.server_address[1], "off"), origin, catch_up=10)
    finally:
        origin.close()
    assert len(rounds) == 3 and all(client == server for client, server in rounds), rounds


@pytest.mark.parametrize("attempt", range(3))
def test_the_check_fails_a_buffered_stream_every_time(nginx, attempt):
    origin = Origin(1)
    try:
        with pytest.raises(AssertionError, match="held back"):
            check(nginx(origin.server_address[1], "on"), origin, catch_up=2)
    finally:
        origin.close()
