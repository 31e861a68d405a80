"""A simulated GPU host that serves: the real agent under the process runner, a real nginx, fake engines.

The demo, the serving tests and the benchmarks all build their host here, so they start,
wait and clean up the same way. A host lives in a work dir of its own (the sysfs tree,
the profile, the instances' state dir, the agent's log), and its run and serving dirs are
directories of their own under /tmp, 0755 like /run/mipart and /run/mipart-vllm: nginx's
workers (www-data) must pass through every directory above an instance's socket, and a
test's work dir is its owner's alone. A host stops only what it started, by PID:
the agents it spawned, every process whose environment carries MIPART_RUN_DIR=<its run
dir> (launchers, servers and their process groups), and both nginx layers' processes, found
in /proc by their prefix (nginx.procs) or named by their pid files, checked to be ours first.
Readiness is read through the agent's status API and nginx.conf, and proven by one request
through nginx.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mipart.api.contract import InstanceCounts, Instances, R, Status
from mipart.names import RELOAD_CMD_VAR, RUN_DIR_VAR, SERVING_DIR_VAR, STATE_DIR_VAR, SYSFS_ROOT_VAR
from mipart.nginx import procs as nginx_procs
from mipart.paths import instance_socket, sockets_dir
from mipart.runners import procfs, records
from mipart.sim.fake_profile import SERVICE, ProfileSource

PACKAGE_PATH = str(Path(__file__).resolve().parents[2])  # the dir holding mipart/, for PYTHONPATH
STOP_TIMEOUT = 30.0


class HostError(RuntimeError):
    """The host did not get where it was asked to; the message ends with the agent's log."""


# The status API does not answer (yet, or any more); a ContractError (another shape) is a bug, so not in here.
NOT_ANSWERING = (OSError, http.client.HTTPException, json.JSONDecodeError, HostError)


def completion(
    port: int, model: str, prompt: str = "hi", max_tokens: int = 1, stream: bool = False, timeout: float = 30
) -> http.client.HTTPResponse:
    """POST /v1/completions on a loopback port; the response is unread (a stream reads on)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    return conn.getresponse()


class SimulatedHost:
    """One simulated 8-GPU host in `work`, serving `profile` once start_agent() is called.

    The sysfs tree starts in the profile's partition modes unless `compute`/`memory` say
    otherwise (the demo starts it elsewhere and applies the profile). `rules` is the simulated
    kernel's pair table (gpu.pair_tables.RULE_SETS), recorded in the root for every process.
    """

    def __init__(
        self,
        work: Path,
        profile: ProfileSource,
        compute: str | None = None,
        memory: str | None = None,
        gpus: int = 8,
        model: str = "mi300x",
        expected: int = 16,
        rules: str = "mainline",
    ):
        self.work = work
        self.run_dir, self.serving_dir = _open_dir("mipart-run-"), _open_dir("mipart-vllm-")
        self.root, self.log = work / "sys", work / "agent.log"
        self.profile = work / "profile.yaml"
        self.spec = profile
        self.expected = expected  # instances wait_ready() waits for by default
        # What the agent and the CLI need on top of our own environment.
        self.env = {
            "PYTHONPATH": PACKAGE_PATH,
            SYSFS_ROOT_VAR: str(self.root),
            RUN_DIR_VAR: str(self.run_dir),
            SERVING_DIR_VAR: str(self.serving_dir),
            STATE_DIR_VAR: str(work / "state"),
            RELOAD_CMD_VAR: f"{sys.executable} -m mipart sim reload {self.root}",
        }
        self.agent: subprocess.Popen | None = None
        self.spawned: list[subprocess.Popen] = []  # every agent this host started, for close()
        self.mipart(
            "sim",
            "create",
            str(self.root),
            "--model",
            model,
            "--gpus",
            str(gpus),
            "--compute",
            compute or profile.compute,
            "--memory",
            memory or profile.memory,
            "--rules",
            rules,
        )
        self.write_profile()

    def write_profile(self, **changes) -> None:
        """Rewrite the profile with some fields changed (the agent reads it at start and on SIGHUP)."""
        self.spec = replace(self.spec, **changes)
        self.ports = self.spec.ports
        self.listen, self.api_port = self.ports.listen, self.ports.api
        self.profile.write_text(self.spec.text())

    def mipart(self, *args: str) -> str:
        """Run the real CLI against this host, as a user would; its stdout, or HostError with its stderr."""
        done = subprocess.run(
            [sys.executable, "-m", "mipart", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise HostError(f"`mipart {' '.join(args)}` exited {done.returncode}:\n{done.stderr.strip()}")
        return done.stdout.rstrip()

    # -- the agent ---------------------------------------------------------------------------
    def start_agent(
        self, extra_env: dict | None = None, stop_on_exit: bool = False, python: str = sys.executable
    ) -> subprocess.Popen:
        """python: the interpreter that runs it (a bench measures the one the .deb runs, /usr/bin/python3)."""
        argv = [python, "-m", "mipart", "agent", "--profile", str(self.profile), "--runner", "process"]
        with open(self.log, "ab") as log:
            self.agent = subprocess.Popen(
                argv + ["--stop-on-exit"] * stop_on_exit,
                env={**os.environ, **self.env, **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.spawned.append(self.agent)
        return self.agent

    def stop_agent(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, as systemd stops it; SIGKILL if it has not exited within `timeout`."""
        if self.agent is not None:
            _stop(self.agent, timeout)

    def hup(self) -> None:
        self.agent.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    # -- what runs -----------------------------------------------------------------------------
    def instance_pids(self) -> dict[int, int]:
        """Instance number -> its server's pid, by the launcher's records (runners.records)."""
        return {n: launch.pid for n, launch in records.launches(self.serving_dir).items()}

    def backend(self, number: int) -> str:
        """Instance N's address, as nginx.conf and the fake engine's X-Fake-Engine header name it."""
        return f"unix:{instance_socket(number, sockets_dir(self.serving_dir))}"

    def nginx_conf(self) -> str:
        try:
            return (self.run_dir / "nginx/nginx.conf").read_text()
        except FileNotFoundError:
            return ""

    def ready_line(self) -> tuple[int, int]:
        """(ready, planned) from nginx.conf's `# service chat: R/N instances ready` comment."""
        for line in self.nginx_conf().splitlines():
            line = line.strip()
            if line.startswith(f"# service {SERVICE}:"):
                ready, planned = line.split(":")[1].split()[0].split("/")
                return int(ready), int(planned)
        return 0, 0

    def ready_count(self) -> int:
        return self.ready_line()[0]

    def api_text(self, path: str, timeout: float = 5) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise HostError(f"GET {path} on the agent's API answered {response.status}: {body[:300]!r}")
        return body.decode()

    def api_get(self, path: str, timeout: float = 5) -> dict:
        return json.loads(self.api_text(path, timeout))

    def api_read(self, response: type[R], timeout: float = 5) -> R:
        """A status response read by its type (api.contract); ContractError when the agent answers another shape."""
        return response.from_json(self.api_get(response.path, timeout))

    def api_ready(self) -> int | None:
        """Instances the status API reports in rotation; None while it does not answer."""
        try:
            return sum(1 for i in self.api_read(Instances, timeout=2).instances if i.ready)
        except NOT_ANSWERING:
            return None

    def api_counts(self) -> InstanceCounts | None:
        """The status's instance counts (those planned now: total, and by state); None while it does not answer."""
        try:
            return self.api_read(Status, timeout=2).instances
        except NOT_ANSWERING:
            return None

    def nginx_master(self, layer: str = "nginx") -> int | None:
        """The master of a layer ("nginx", the back, or "nginx-front") by its pid file, if it names our run dir."""
        return _nginx_master(self.run_dir, layer)

    def nginx_workers(self) -> set[int]:
        """Children of our nginx master (workers, old workers shutting down, cache helpers)."""
        master = self.nginx_master()
        if not master:
            return set()
        try:
            return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}
        except OSError:
            return set()

    # -- waiting -------------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30, what: str = "condition", poll: float = 0.05
    ) -> float:
        """Seconds until predicate() held; HostError on timeout or when the agent has exited."""
        started = time.monotonic()
        while not predicate():
            if self.agent is not None and self.agent.poll() is not None:
                raise HostError(
                    f"the agent exited ({self.agent.returncode}) while waiting for {what}\n{self.log_tail()}"
                )
            if time.monotonic() - started > timeout:
                raise HostError(f"timed out after {timeout:g}s waiting for {what}\n{self.log_tail()}")
            time.sleep(poll)
        return time.monotonic() - started

    def wait_ready(
        self, count: int | None = None, timeout: float = 90, progress: Callable[[], None] | None = None
    ) -> float:
        """Wait until `count` instances are ready in nginx.conf and in the status API, and nginx
        serves on that config (it is written before nginx re-reads it); returns the seconds waited.
        `progress` is called on every poll (the demo shows the status's counts)."""
        count = self.expected if count is None else count

        def ready() -> bool:
            if progress:
                progress()
            return self.ready_count() == count and self.api_ready() == count

        started = time.monotonic()
        self.wait_for(ready, timeout, f"{count} instances ready", poll=0.1)
        if count:
            self.wait_for(lambda: self.status_of_one_request() == 200, timeout=10, what="nginx serving the new config")
        return time.monotonic() - started

    # -- clients -------------------------------------------------------------------------------
    def request(
        self, prompt: str = "hi", max_tokens: int = 1, stream: bool = False, timeout: float = 30
    ) -> http.client.HTTPResponse:
        """One completion through nginx, for the service's model."""
        return completion(self.listen, self.spec.model, prompt, max_tokens, stream, timeout)

    def backend_of_one_request(self) -> tuple[int, str]:
        """(status, X-Fake-Engine) of one completion through nginx; OSError when it fails."""
        response = self.request()
        response.read()
        return response.status, response.getheader("X-Fake-Engine", "")

    def status_of_one_request(self) -> int | None:
        try:
            return self.backend_of_one_request()[0]
        except OSError:
            return None

    # -- cleanup -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything this host started, by PID; safe to call more than once."""
        for agent in self.spawned:
            _stop(agent, timeout=10)
        nginx = _nginx_processes(self.run_dir)
        for pid in procfs.pids():  # launchers and servers carry our run dir in their environment
            if pid not in (os.getpid(), *nginx) and procfs.environ_of(pid).get(RUN_DIR_VAR) == str(self.run_dir):
                _kill(pid, group=procfs.session_leader(pid))  # a server's group holds its children
        for pid in nginx:
            _kill(pid, group=procfs.session_leader(pid))  # a master's session: its workers, old workers
        for made in (self.run_dir, self.serving_dir):  # made by this host, under /tmp
            shutil.rmtree(made, ignore_errors=True)


def _nginx_master(run_dir: Path, layer: str) -> int | None:
    try:
        pid = int((run_dir / layer / "nginx.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(run_dir) in cmdline else None


def _nginx_processes(run_dir: Path) -> list[int]:
    """Both layers' masters (by pid file, or found in /proc by their prefix when a fault removed the
    file), their workers and strays: nginx rewrites its environment, so no run dir tag names them."""
    found = [m for m in (_nginx_master(run_dir, "nginx"), _nginx_master(run_dir, "nginx-front")) if m]
    for layer in ("nginx", "nginx-front"):
        procs = nginx_procs.scan(run_dir / layer)
        found += procs.masters + procs.workers + procs.strays + procs.shutting_down
    return list(dict.fromkeys(found))


def _open_dir(prefix: str) -> Path:
    """A directory of the host's own under /tmp that nginx's workers may pass through (0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _stop(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _kill(pid: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
