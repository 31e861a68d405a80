"""mipart-nginx.service on a real systemd: a master that dies costs no request.

nginx workers outlive a SIGKILLed master and keep the port with a frozen config. The unit's
KillMode=process leaves them alive with the streams they carry, and Restart= runs
`mipart exec-nginx`, which hands their listening sockets to the new master and tells them to
quit: they finish their streams and exit, and the new master serves the agent's current config.
(With KillMode=mixed systemd killed them, cutting every stream in flight: docs/faults.md.)
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from .test_serving_systemd import CHAT, Host, host  # noqa: F401  (the booted, serving machine: a fixture)

pytestmark = pytest.mark.system


def children(machine: Host, pid: int) -> set[int]:
    out = machine.m.run(f"cat /proc/{pid}/task/{pid}/children", check=False).stdout
    return {int(p) for p in out.split()}


def alive(machine: Host, pids: set[int]) -> set[int]:
    out = machine.m.run(" ; ".join(f"test -d /proc/{p} && echo {p}" for p in pids) + " ; true", check=False).stdout
    return {int(p) for p in out.split()}


def api_status(machine: Host) -> dict:
    """The agent's /v1/status, from the host (the network is shared)."""
    conn = http.client.HTTPConnection("127.0.0.1", machine.ports["api_port"], timeout=5)
    try:
        conn.request("GET", "/v1/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def long_stream(port: int, result: dict) -> None:
    """A completion streaming for ~8 s (400 tokens at 50 tokens/s): in flight when the master dies."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/v1/completions",
            json.dumps({"model": "test/chat", "prompt": "hi", "max_tokens": 400, "stream": True}),
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        result["body"] = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        result["error"] = repr(exc)
    result["ended"] = time.monotonic()


def short_requests(port: int, until: float, failures: list, count: list) -> None:
    """Bounded: one small completion every 50 ms until `until`; each failure is kept."""
    while time.monotonic() < until:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(
                "POST",
                "/v1/completions",
                json.dumps({"model": "test/chat", "prompt": "hi", "max_tokens": 1}),
                {"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
        count.append(1)
        time.sleep(0.05)


def test_a_killed_nginx_master_is_replaced_without_losing_a_request(host: Host):  # noqa: F811  (the fixture)
    """On the serving tests' machine (their module fixture): installed, serving, all ready."""
    m = host.m
    host.wait_serving("chat")
    assert host.show("mipart-nginx", "KillMode", "WorkingDirectory") == {
        "KillMode": "process",
        "WorkingDirectory": "/run/mipart/nginx",
    }
    master = int(host.show("mipart-nginx", "MainPID")["MainPID"])
    workers = children(host, master)
    assert workers, "no nginx workers under the unit's master"

    stream: dict = {}
    failures: list = []
    sent: list = []
    reader = threading.Thread(target=long_stream, args=(host.ports["chat_port"], stream), daemon=True)
    loop = threading.Thread(
        target=short_requests, args=(host.ports["chat_port"], time.monotonic() + 6, failures, sent), daemon=True
    )
    reader.start()
    loop.start()
    time.sleep(1.0)
    m.run(f"kill -KILL {master}")
    deadline = time.monotonic() + 20
    while int(host.show("mipart-nginx", "MainPID")["MainPID"] or 0) in (0, master):
        assert time.monotonic() < deadline, host.show("mipart-nginx", "ActiveState", "MainPID")
        time.sleep(0.1)
    reader.join(30)
    loop.join(30)
    # The stream in flight finished on its old worker; no request in the loop was refused or failed.
    assert "data: [DONE]" in stream.get("body", ""), stream
    assert len(sent) > 20 and failures == [], (len(sent), failures)
    journal = host.journal("mipart-nginx")
    assert "using inherited sockets" in journal, journal[-3000:]
    deadline = time.monotonic() + 20
    while alive(host, workers):  # they quit once their stream ended
        assert time.monotonic() < deadline, alive(host, workers)
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while not (status := api_status(host)["nginx"])["current"] or status["stray_workers"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["running"] is True
    host.wait_serving("chat", timeout=20)
    assert host.backends("chat", 12) <= set(CHAT)
    assert "Traceback" not in host.journal("mipart-agent")
