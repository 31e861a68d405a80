"""mipart-nginx.service on a real systemd: a master that dies takes its workers with it.

nginx workers outlive a SIGKILLed master and keep the port with a frozen config. Under
systemd the unit's KillMode=mixed sends the final SIGKILL to the whole cgroup at once
(KillMode=control-group would send the workers SIGQUIT and wait for their streams to end,
up to TimeoutStopSec, with the port closed meanwhile), and Restart= brings a new master that
binds the port and serves the agent's current config.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from .test_serving_systemd import Host, host  # noqa: F401  (the booted, serving machine: a fixture)

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
        conn.request("POST", "/v1/completions", json.dumps({"model": "test/chat", "prompt": "hi", "max_tokens": 400, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        result["body"] = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        result["error"] = repr(exc)
    result["ended"] = time.monotonic()


def test_a_killed_nginx_master_takes_its_workers_and_the_unit_restarts_serving(host: Host):  # noqa: F811  (the fixture)
    """On the serving tests' machine (their module fixture): installed, serving, all ready."""
    m = host.m
    host.wait_serving("chat")
    assert host.show("mipart-nginx", "KillMode", "WorkingDirectory") == {"KillMode": "mixed", "WorkingDirectory": "/run/mipart/nginx"}
    master = int(host.show("mipart-nginx", "MainPID")["MainPID"])
    workers = children(host, master)
    assert workers, "no nginx workers under the unit's master"

    stream: dict = {}
    reader = threading.Thread(target=long_stream, args=(host.ports["chat_port"], stream), daemon=True)
    reader.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    m.run(f"kill -KILL {master}")
    deadline = killed_at + 20
    while alive(host, workers) or int(host.show("mipart-nginx", "MainPID")["MainPID"] or 0) in (0, master):
        assert time.monotonic() < deadline, (alive(host, workers), host.show("mipart-nginx", "ActiveState", "MainPID"))
        time.sleep(0.1)
    host.wait_serving("chat", timeout=20)
    reader.join(30)
    # The old workers died with their master (the stream in flight was cut, not finished
    # gracefully with the port closed), and a new master serves the agent's current config.
    assert "ended" in stream and "data: [DONE]" not in stream.get("body", ""), stream
    deadline = time.monotonic() + 10
    while not (status := api_status(host)["nginx"])["current"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["stray_workers"] == 0 and status["running"] is True
    assert host.backends("chat", 12) <= {0, 1, 2, 3}
    assert "Traceback" not in host.journal("mipart-agent")
