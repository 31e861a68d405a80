"""Running instances without systemd: a local process runner for the demo and tests.

It mirrors the few things the agent asks of systemd (list, start, stop, restart, and
nginx), and like systemd it keeps serving when the agent restarts: servers run in
their own sessions and are found again by the launcher's records of them (runners.records:
root's files naming each server by pid and start time, never a tag any process may copy).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mipart.names import RUN_DIR_VAR, instance_name
from mipart.nginx import procs as nginx_procs
from mipart.nginx.files import Layer, NginxFiles
from mipart.nginx.launcher import inherited_sockets
from mipart.paths import serving_dir
from mipart.runners import exits, procfs, records
from mipart.values import UnitState

STOP_TIMEOUT = 10.0
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the directory holding this mipart/
# Isolated (-I: no working directory on sys.path, no PYTHON* variables): `python -m mipart` would
# import a mipart/ planted in the agent's working directory, and run it as root.
RUN_OWN_PACKAGE = "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('mipart', alter_sys=True)"


def launcher_argv(number: int) -> list[str]:
    """`mipart exec N` from the package this runner is, whatever the working directory holds."""
    return [sys.executable, "-I", "-c", RUN_OWN_PACKAGE, PACKAGE_PARENT, "exec", str(number)]


class ProcessRunner:
    """runners.base.Runner on local processes; `shutdown` also stops what it serves."""

    def __init__(self, run_dir: Path, log_dir: Path | None = None):
        self.run_dir = run_dir
        self.serving_dir = serving_dir()
        self.log_dir = log_dir or run_dir / "logs"
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.nginx: dict[Layer, subprocess.Popen[bytes]] = {}  # the masters it started, by layer

    # -- instances -----------------------------------------------------------
    def _adopted(self) -> dict[int, int]:
        return {n: launch.pid for n, launch in records.launches(self.serving_dir).items()}

    def list_instances(self) -> dict[int, UnitState]:
        states = {n: UnitState("active", "running", pid) for n, pid in self._adopted().items()}
        for number, child in list(self.children.items()):
            if number in states:
                continue
            code = child.poll()
            if code is None:  # the launcher has not exec'd the server yet
                states[number] = UnitState("activating", "start", child.pid)
            else:
                states[number] = UnitState("failed" if code else "inactive", "failed" if code else "dead")
        return states

    def start(self, number: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, RUN_DIR_VAR: str(self.run_dir)}
        with open(self.log_dir / f"{instance_name(number)}.log", "ab") as log:
            self.children[number] = subprocess.Popen(
                launcher_argv(number),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, number: int) -> None:
        """Like systemd's KillMode=mixed: SIGTERM the server, then SIGKILL whatever is left of it."""
        pid = self._adopted().get(number)
        child = self.children.pop(number, None)
        for leader in {p for p in (pid, child.pid if child else None) if p is not None}:
            _terminate(leader)
            _kill_group(leader)  # its own children (vLLM's engine core) must not outlive it
        if child:
            child.wait(timeout=STOP_TIMEOUT)

    def restart(self, number: int) -> None:
        self.stop(number)
        self.start(number)

    def last_exit(self, number: int) -> str:
        """The return code of a server this runner started (unknown for an adopted one) and its last log line."""
        child = self.children.get(number)
        status = exits.exit_status(exits.returncode_props(child.poll() if child else None))
        return exits.describe(status, exits.log_file_line(number, self.log_dir))

    # -- nginx -----------------------------------------------------------------
    def ensure_nginx(self, files: NginxFiles) -> None:
        """Reload the master of ours that runs, or start one; strays (workers whose master died,
        still serving a frozen config) hand their listening sockets to it and quit gracefully."""
        found = nginx_procs.scan(files.prefix)
        master = self._master(files) or next(iter(found.masters), None)
        if master is not None:
            os.kill(master, signal.SIGHUP)  # by pid, not the pid file: it may be gone
            nginx_procs.quit_gracefully(found.strays)
        else:
            self._start_nginx(files)

    def replace_nginx(self, files: NginxFiles) -> None:
        child = self.nginx.pop(files.layer, None)
        for master in {*nginx_procs.scan(files.prefix).masters, *([child.pid] if child else [])}:
            _terminate(master, signal.SIGKILL)  # dead, its workers are strays: the new master takes them over
        if child is not None:
            child.wait(timeout=STOP_TIMEOUT)
        self._start_nginx(files)

    def _master(self, files: NginxFiles) -> int | None:
        """The master this runner started for FILES' layer, while it runs."""
        child = self.nginx.get(files.layer)
        return child.pid if child is not None and child.poll() is None else None

    def _start_nginx(self, files: NginxFiles) -> None:
        inherited = inherited_sockets(files)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **nginx_procs.inherit_env(inherited)} if inherited else None
        try:
            with open(self.log_dir / f"{files.unit.removesuffix('.service')}.log", "ab") as log:
                self.nginx[files.layer] = subprocess.Popen(
                    files.argv(),
                    cwd=files.prefix,
                    env=env,
                    pass_fds=inherited,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            for fd in inherited:
                os.close(fd)

    def nginx_running(self, files: NginxFiles) -> bool:
        return self._master(files) is not None or bool(nginx_procs.scan(files.prefix).masters)

    def shutdown(self, nginx: tuple[NginxFiles, ...]) -> None:
        """Stop everything this runner serves (the demo's Ctrl-C): instances, then the front and the back."""
        for number in set(self._adopted()) | set(self.children):
            self.stop(number)
        for files in nginx:
            found = nginx_procs.scan(files.prefix)
            nginx_procs.quit_gracefully(found.strays)
            for master in found.masters:
                _terminate(master, signal.SIGQUIT)
            child = self.nginx.pop(files.layer, None)
            if child is not None:
                child.wait(timeout=STOP_TIMEOUT)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _terminate(pid: int, sig: int = signal.SIGTERM) -> None:
    """Ask, wait, then insist: what systemd's stop does with TimeoutStopSec.

    A frozen (SIGSTOPped) server is killed as it is: woken to act on SIGTERM, it would start
    answering the requests that queued up while it was frozen and then cut them; killed, it
    resets them before any byte and nginx passes them to another instance.
    """
    try:
        os.kill(pid, signal.SIGKILL if procfs.stopped(pid) else sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while procfs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if procfs.alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
