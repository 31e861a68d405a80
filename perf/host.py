"""The serving benchmarks' host: mipart.sim.host's SimulatedHost with the benches' ports and defaults.

The same harness the demo and the tests use (mipart.sim.host): a `mipart sim` sysfs tree, a
profile whose command is the fake engine, loopback ports picked free (10001-19999, below the
kernel's ephemeral range and apart from the test suite's 20000-32767), and a cleanup that
kills only what the host started, by PID. Plus what only the benches need: CPU time, a work
dir kept when a bench fails, the machine line.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from mipart.api.client import UnixHTTPConnection
from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost, completion
from mipart.sim.ports import free_block

MODEL = "test/fake-llm"
BENCH_PORTS = (10001, 20000)


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (for engines started without mipart)."""
    return free_block(count, *BENCH_PORTS)


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


def health_ok(where: int | str, timeout: float = 0.5) -> bool:
    """GET /health directly on an engine's port, or an instance's address (unix:PATH): True on 200."""
    try:
        conn = (
            UnixHTTPConnection(where.removeprefix("unix:"), timeout)
            if isinstance(where, str)
            else http.client.HTTPConnection("127.0.0.1", where, timeout=timeout)
        )
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
        response = completion(port, MODEL, max_tokens=max_tokens, stream=stream, timeout=timeout)
        response.read()
        response.close()
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


class BenchHost(SimulatedHost):
    def __init__(
        self,
        tmp: Path,
        compute: str = "CPX",
        memory: str = "NPS4",
        partitions: str = "all",
        delay: float = 1.0,
        tps: float = 1000,
        interval: str = "2s",
        timeout: str = "1s",
        unhealthy_after: int = 3,
        restart_backoff: str = "1s",
        rules: str = "mainline",
    ):
        profile = FakeEngineProfile(
            Ports.free(*BENCH_PORTS),
            compute=compute,
            memory=memory,
            model=MODEL,
            partitions=json.dumps(partitions),
            delay=delay,
            tps=tps,
            args=None,
            interval=interval,
            timeout=timeout,
            unhealthy_after=unhealthy_after,
            restart_backoff=restart_backoff,
            hf_home=str(tmp / "hf"),
        )
        super().__init__(tmp, profile, expected=64, rules=rules)


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"nproc={os.cpu_count()} python={sys.version.split()[0]} loadavg(1/5/15 min)={'/'.join(load)}"
