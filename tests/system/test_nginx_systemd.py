"""mipart-nginx.service (the back layer) and mipart-nginx-front.service on a real systemd: a master
that dies costs no request, and a back that restarts costs kept-alive clients no connection.

nginx workers outlive a SIGKILLed master and keep the port (the front's) or the service's unix
socket (the back's) with a frozen config. The units' KillMode=process leaves them alive with the
streams they carry, and Restart= runs `mipart exec-nginx [--front]`, which hands their listening
sockets to the new master and tells them to quit: they finish their streams and exit, and the new
master serves the agent's current config. (With KillMode=mixed systemd killed them, cutting every
stream in flight: docs/faults.md.) The front holds the clients' connections: `systemctl restart
mipart-nginx` leaves them open, and the front answers its JSON 503 while the back is down.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from .nspawn import REPO
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


def killed_master_is_replaced(serving: Host, unit: str) -> None:
    """SIGKILL the unit's master with a stream in flight and a request loop (a connection each) going:
    the stream finishes on its old worker, the loop sees no failure, the new master inherits the sockets."""
    m = serving.m
    master = int(serving.show(unit, "MainPID")["MainPID"])
    workers = children(serving, master)
    assert workers, f"no nginx workers under {unit}'s master"

    stream: dict = {}
    failures: list = []
    sent: list = []
    reader = threading.Thread(target=long_stream, args=(serving.ports["chat_port"], stream), daemon=True)
    loop = threading.Thread(
        target=short_requests, args=(serving.ports["chat_port"], time.monotonic() + 6, failures, sent), daemon=True
    )
    reader.start()
    loop.start()
    time.sleep(1.0)
    m.run(f"kill -KILL {master}")
    deadline = time.monotonic() + 20
    while int(serving.show(unit, "MainPID")["MainPID"] or 0) in (0, master):
        assert time.monotonic() < deadline, serving.show(unit, "ActiveState", "MainPID")
        time.sleep(0.1)
    reader.join(30)
    loop.join(30)
    # The stream in flight finished on its old worker; no request in the loop was refused or failed.
    assert "data: [DONE]" in stream.get("body", ""), stream
    assert len(sent) > 20 and failures == [], (len(sent), failures)
    journal = serving.journal(unit)
    assert "using inherited sockets" in journal, journal[-3000:]
    deadline = time.monotonic() + 20
    while alive(serving, workers):  # they quit once their stream ended
        assert time.monotonic() < deadline, alive(serving, workers)
        time.sleep(0.2)


def nginx_current(serving: Host) -> dict:
    """/v1/status's nginx once both layers serve their current config with no stray (bounded wait)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status = api_status(serving)["nginx"]
        except TimeoutError:  # a loaded machine: the agent answers late, which is not what this asks
            assert time.monotonic() < deadline, "the agent's API did not answer"
            continue
        if all(layer["current"] and not layer["stray_workers"] for layer in (status, status["front"])):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_a_killed_nginx_master_is_replaced_without_losing_a_request(host: Host):  # noqa: F811  (the fixture)
    """The back's master, on the serving tests' machine (their module fixture): installed, serving, all ready."""
    host.wait_serving("chat")
    assert host.show("mipart-nginx", "KillMode", "WorkingDirectory") == {
        "KillMode": "process",
        "WorkingDirectory": "/run/mipart/nginx",
    }
    front = host.show("mipart-nginx-front", "MainPID")["MainPID"]
    killed_master_is_replaced(host, "mipart-nginx")
    status = nginx_current(host)
    assert status["running"] is True and status["front"]["running"] is True
    assert host.show("mipart-nginx-front", "MainPID")["MainPID"] == front  # the clients' layer was not touched
    host.wait_serving("chat", timeout=20)
    assert host.backends("chat", 12) <= set(CHAT)
    assert "Traceback" not in host.journal("mipart-agent")


def test_a_killed_front_master_is_replaced_without_losing_a_request(host: Host):  # noqa: F811  (the fixture)
    host.wait_serving("chat")
    assert host.show("mipart-nginx-front", "KillMode", "WorkingDirectory") == {
        "KillMode": "process",
        "WorkingDirectory": "/run/mipart/nginx-front",
    }
    killed_master_is_replaced(host, "mipart-nginx-front")
    assert nginx_current(host)["front"]["running"] is True
    assert host.backends("chat", 12) <= set(CHAT)


def test_a_back_restart_keeps_the_clients_connections(host: Host):  # noqa: F811  (the fixture)
    """`systemctl restart mipart-nginx` with keep-alive clients on the front: they keep their
    connections, and while the back is down get the front's JSON 503, nothing else."""
    host.wait_serving("chat")
    clients, seconds = 16, 8
    client = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "perf" / "balancer_client.py"),
            f"--port={host.ports['chat_port']}",
            f"--concurrency={clients}",
            f"--seconds={seconds}",
            "--model=test/chat",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "agent")},
    )
    time.sleep(2)
    back = host.show("mipart-nginx", "MainPID")["MainPID"]
    host.m.run("systemctl restart mipart-nginx", timeout=60)
    out, _ = client.communicate(timeout=seconds + 90)
    result = json.loads(out)
    assert host.show("mipart-nginx", "MainPID")["MainPID"] != back
    assert result["requests"] > 100 and set(result["failures"]) <= {"http 503"}, result["failures"]
    assert result["connections_opened"] == clients
    host.wait_serving("chat", timeout=20)
    nginx_current(host)
