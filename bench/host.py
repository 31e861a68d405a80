"""A simulated host for the serving benchmarks: real agent (process runner), real nginx, fake engines.

The same ideas as tests/serving.py (not imported from there): a `mipart sim` sysfs tree, a
profile whose command is the fake engine, loopback ports picked free, and a cleanup that
kills only what this host started, by PID: the agents it spawned, every process whose
environment carries MIPART_RUN_DIR=<this host's run dir> (launchers and engines), and the
nginx process group named by <run>/nginx/nginx.pid (checked to be ours before the kill).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ENV, mipart_argv, wall
from mipart.runners import procs
from mipart.sim.ports import free_block

PROFILE = """\
version: 1
gpus: {{compute: {compute}, memory: {memory}}}
services:
  chat:
    model: test/fake-llm
    listen: "127.0.0.1:{listen}"
    partitions: {partitions}
    command: ["{python}", "-m", "mipart.sim.engine", "--startup-delay", "{delay}", "--tokens-per-second", "{tps}"]
instances: {{base_port: {base}, user: root, hf_home: "{hf_home}"}}
health: {{interval: {interval}, timeout: {timeout}, unhealthy_after: {unhealthy_after}, restart_backoff: {restart_backoff}}}
api: {{listen: "127.0.0.1:{api_port}"}}
"""

MODEL = "test/fake-llm"


def free_ports(count: int) -> tuple[int, int]:
    """A listener port and a base port with `count` ports after it, and one more for the API
    (base + count), all free: from 10001-19999, below the kernel's ephemeral range and apart
    from the test suite's 20000-32767."""
    base = free_block(count + 2, low=10001, high=20000) + 1
    return base - 1, base


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (kept across exec: a launcher's and its server's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def health_ok(port: int, timeout: float = 0.5) -> bool:
    """GET /health directly on an instance port: True on 200."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status == 200
    except OSError:
        return False


def request(port: int, max_tokens: int = 1, stream: bool = False, timeout: float = 10.0) -> tuple[int, str]:
    """One completion through nginx (or anything); returns (status, X-Fake-Engine), (0, error) on failure."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": stream})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, response.getheader("X-Fake-Engine", "")
    except OSError as exc:
        return 0, exc.__class__.__name__


@contextlib.contextmanager
def workdir():
    """A temporary directory, removed on success and kept (path printed) when the bench fails."""
    path = Path(tempfile.mkdtemp(prefix="mipart-bench-"))
    try:
        yield path
    except BaseException:
        print(f"bench failed; logs kept in {path} (agent.log, run/logs/)", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)


class BenchHost:
    def __init__(self, tmp: Path, compute: str = "CPX", memory: str = "NPS4", partitions: str = "all", delay: float = 1.0, tps: float = 1000,
                 interval: str = "2s", timeout: str = "1s", unhealthy_after: int = 3, restart_backoff: str = "1s"):
        self.tmp = tmp
        self.root, self.run_dir = tmp / "sys", tmp / "run"
        self.listen, self.base = free_ports(65)  # nginx listener, 64 instance ports, the agent's API
        self.api_port = self.base + 64
        wall(mipart_argv("sim", "create", str(self.root), "--model", "mi300x", "--gpus", "8", "--compute", compute, "--memory", memory))
        self.env = {**ENV, "MIPART_SYSFS_ROOT": str(self.root), "MIPART_RUN_DIR": str(self.run_dir)}
        self.profile = tmp / "profile.yaml"
        self.values = dict(compute=compute, memory=memory, listen=self.listen, partitions=json.dumps(partitions), python=sys.executable, delay=delay,
                           tps=tps, base=self.base, hf_home=str(tmp / "hf"), api_port=self.api_port, interval=interval, timeout=timeout, unhealthy_after=unhealthy_after,
                           restart_backoff=restart_backoff)
        self.profile.write_text(PROFILE.format(**self.values))
        self.log = tmp / "agent.log"
        self.agent: subprocess.Popen | None = None
        self.spawned: list[subprocess.Popen] = []  # every agent this host started, for the cleanup

    # -- agent -------------------------------------------------------------------
    def start_agent(self, extra_env: dict | None = None) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen(mipart_argv("agent", "--profile", str(self.profile), "--runner", "process"),
                                          env={**self.env, **(extra_env or {})}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.spawned.append(self.agent)
        return self.agent

    def stop_agent(self, timeout: float = 30) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # -- what runs -----------------------------------------------------------------
    def instance_pids(self) -> dict[int, int]:
        return procs.tagged_servers(str(self.run_dir))

    def nginx_conf(self) -> str:
        try:
            return (self.run_dir / "nginx/nginx.conf").read_text()
        except FileNotFoundError:
            return ""

    def ready_line(self) -> tuple[int, int]:
        """(ready, planned) from the `# service chat: R/N instances ready` comment of nginx.conf."""
        for line in self.nginx_conf().splitlines():
            line = line.strip()
            if line.startswith("# service chat:"):
                ready, total = line.split(":")[1].split()[0].split("/")
                return int(ready), int(total)
        return 0, 0

    def wait_ready(self, count: int, timeout: float = 180) -> float:
        """Wait for count/count ready in nginx.conf; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while self.ready_line() != (count, count):
            if self.agent is not None and self.agent.poll() is not None:
                raise SystemExit(f"agent exited {self.agent.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.ready_line()} ready after {timeout}s, wanted {count}\n{self.log_tail()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def nginx_master(self) -> int | None:
        """The nginx master pid from our pid file, only if its command line names our run dir."""
        try:
            pid = int((self.run_dir / "nginx/nginx.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if str(self.run_dir) in cmdline else None

    def nginx_workers(self) -> set[int]:
        """Children of our nginx master (workers, old workers shutting down, cache helpers)."""
        master = self.nginx_master()
        if not master:
            return set()
        try:
            return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
        except OSError:
            return set()

    # -- cleanup -------------------------------------------------------------------
    def close(self) -> None:
        for agent in self.spawned:
            if agent.poll() is None:
                kill(agent.pid)
                agent.wait(timeout=10)
        master = self.nginx_master()
        for name in os.listdir("/proc"):  # launchers and engines tagged with our run dir
            if name.isdigit() and int(name) != os.getpid() and procs.environ_of(int(name)).get("MIPART_RUN_DIR") == str(self.run_dir):
                if int(name) != master:
                    kill(int(name))
        if master:
            try:
                os.killpg(master, signal.SIGKILL)  # its own session: master, workers, old workers
            except ProcessLookupError:
                pass


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"nproc={os.cpu_count()} python={sys.version.split()[0]} loadavg(1/5/15 min)={'/'.join(load)}"
