"""The fleet's load balancer and its clients, both in the fleet's network namespace.

HAProxy (Debian's), not nginx: a fleet balancer must stop sending to a host that says it is not
ready before its listener refuses anyone, which needs active health checks. Open-source nginx
has only passive ones (`max_fails`: a server leaves after real requests failed on it); active
`health_check` is NGINX Plus only. HAProxy's `option httpchk` asks each host's readiness path
every `inter` and takes it out after `fall` failures. The path is a parameter: the hosts' own
`GET /v1/models` through their service listener until mipart answers a readiness path of its own.

The client loop is mipart.sim.clients.ClientLoop, run by tests/system/fleet_clients.py inside
the namespace: bounded in time, each answer counted by kind.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .fleet import LISTEN, Fleet, wait

REPO = Path(__file__).resolve().parents[2]
FRONTEND = 8000  # on the namespace's loopback: nothing else listens there
CONFIG = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend chat
    bind 127.0.0.1:{port}
    default_backend hosts
backend hosts
    balance roundrobin
    option httpchk GET {path}
    http-check expect status 200
    default-server inter {inter} fall 2 rise 2
{servers}
"""


class Balancer:
    """HAProxy over the fleet's hosts, health-checking HEALTH_PATH on each; a context manager."""

    def __init__(self, fleet: Fleet, workdir: Path, health_path: str = "/v1/models", inter: str = "500ms"):
        self.fleet, self.workdir = fleet, workdir
        self.sock = workdir / "haproxy.sock"
        servers = "\n".join(f"    server {h.name} {h.address}:{LISTEN} check" for h in fleet.hosts)
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(sock=self.sock, port=FRONTEND, path=health_path, inter=inter, servers=servers)
        )
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Balancer:
        subprocess.run(["haproxy", "-c", "-q", "-f", str(self.config)], check=True, capture_output=True)
        log = open(self.workdir / "haproxy.log", "wb")  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen(
            [*self.fleet.netns.enter, "haproxy", "-db", "-f", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait(lambda: self.sock.exists() and all(s["status"] == "UP" for s in self.servers().values()), 60, "haproxy")
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's own counters per host (`show stat`): status, hrsp_2xx, ..."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(self.sock))
            conn.sendall(b"show stat\n")
            data = b"".join(iter(lambda: conn.recv(65536), b""))
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "hosts" and r["svname"] not in ("BACKEND", "FRONTEND")}


class Clients:
    """A bounded client loop through the balancer, in the namespace; stop() returns its counts."""

    def __init__(self, fleet: Fleet, limit: float = 600, model: str = "test/chat"):
        self.fleet, self.limit, self.model = fleet, limit, model
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Clients:
        script = Path(__file__).with_name("fleet_clients.py")
        self._proc = subprocess.Popen(
            [*self.fleet.netns.enter, sys.executable, str(script), str(FRONTEND), self.model, str(self.limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={"PYTHONPATH": str(REPO / "agent"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        return self

    def stop(self) -> dict[str, int]:
        """Every answer the loop got, counted by kind ("200", "503 ...", an exception's repr)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return {}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        return json.loads(out)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
