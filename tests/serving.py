"""A simulated host serving through the real agent, real nginx and fake engines (local runner).

Everything it starts it also stops, by PID: the agent, then every process tagged with
this host's own run dir, then nginx from its pid file.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import AGENT, mipart

PROFILE = """\
version: 1
gpus: {{compute: {compute}, memory: {memory}}}
services:
  chat:
    model: test/fake-llm
    listen: "{listen_host}:{listen}"
    command: ["{python}", "-m", "mipart.sim.engine", "--startup-delay", "{delay}", "--tokens-per-second", "{tps}"]
    args: {args}
instances: {{base_port: {base}, user: root}}
health: {{interval: {interval}, timeout: 300ms, unhealthy_after: {unhealthy_after}, restart_backoff: 200ms}}
api: {{listen: "127.0.0.1:{api}"}}
"""


def free_ports(count: int) -> tuple[int, int]:
    """A listener port (base - 1) and a base port with `count` ports after it; base - 2 is the API's."""
    from mipart.sim.ports import free_block

    base = free_block(count + 2, low=20000) + 2  # benchmarks take 10001-19999
    return base - 1, base


class ServingHost:
    def __init__(self, tmp: Path, compute="DPX", memory="NPS2", delay=0.5, tps=50, interval="500ms", unhealthy_after=2, args="[]", instances=16):
        self.tmp = tmp
        self.root, self.run_dir = tmp / "sys", tmp / "run"
        self.listen, self.base = free_ports(64)
        self.expected = instances
        self.env = {
            "MIPART_SYSFS_ROOT": str(self.root),
            "MIPART_RUN_DIR": str(self.run_dir),
            "PYTHONPATH": str(AGENT),
        }
        done = mipart("sim", "create", self.root, "--model", "mi300x", "--gpus", "8", "--compute", compute, "--memory", memory)
        assert done.returncode == 0, done.stderr
        self.profile = tmp / "profile.yaml"
        self.values = dict(listen_host="127.0.0.1", compute=compute, memory=memory, listen=self.listen, python=sys.executable, delay=delay, tps=tps,
                           args=args, base=self.base, api=self.base - 2, interval=interval, unhealthy_after=unhealthy_after)
        self.write_profile()
        self.agent: subprocess.Popen | None = None
        self.log = tmp / "agent.log"

    def write_profile(self, **changes) -> None:
        self.values.update(changes)
        self.profile.write_text(PROFILE.format(**self.values))

    # -- agent ---------------------------------------------------------------
    def start_agent(self) -> None:
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "mipart", "agent", "--profile", str(self.profile), "--runner", "process"],
                env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            )

    def stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=30)

    def hup(self) -> None:
        self.agent.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    # -- what runs -------------------------------------------------------------
    def instance_pids(self) -> dict[int, int]:
        from mipart.runners import procs

        return procs.tagged_servers(str(self.run_dir))

    def nginx_conf(self) -> str:
        try:
            return (self.run_dir / "nginx/nginx.conf").read_text()
        except FileNotFoundError:
            return ""

    def ready_count(self) -> int:
        for line in self.nginx_conf().splitlines():
            if line.strip().startswith("# service chat:"):
                return int(line.split(":")[1].split("/")[0])
        return 0

    def wait_ready(self, count: int | None = None, timeout: float = 90) -> None:
        count = self.expected if count is None else count
        deadline = time.monotonic() + timeout
        while self.ready_count() != count:
            assert self.agent.poll() is None, self.log_text()[-3000:]
            assert time.monotonic() < deadline, f"{self.ready_count()}/{count} ready after {timeout}s\n{self.log_text()[-3000:]}"
            time.sleep(0.1)
        if count:  # the config is written before nginx has reloaded it: wait until it serves
            self.wait_for(lambda: self.backend_of_one_request_or_none() == 200, timeout=10, what="nginx serving the new config")

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.log_text()[-3000:]}"
            time.sleep(0.05)

    # -- clients ----------------------------------------------------------------
    def request(self, prompt="hi", max_tokens=1, stream=False, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.listen, timeout=timeout)
        body = json.dumps({"model": "test/fake-llm", "prompt": prompt, "max_tokens": max_tokens, "stream": stream})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        return conn.getresponse()

    def backend_of_one_request(self) -> tuple[int, str]:
        response = self.request()
        response.read()
        return response.status, response.getheader("X-Fake-Engine", "")

    def backend_of_one_request_or_none(self) -> int | None:
        try:
            return self.backend_of_one_request()[0]
        except OSError:
            return None

    # -- cleanup ------------------------------------------------------------------
    def close(self) -> None:
        self.stop_agent()
        for pid in self.instance_pids().values():
            _kill_group(pid)  # the server and its children (vLLM's engine core)
        try:
            master = int((self.run_dir / "nginx/nginx.pid").read_text())
            os.killpg(master, signal.SIGKILL)  # nginx runs in its own session: master and workers
        except (OSError, ValueError):
            pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
