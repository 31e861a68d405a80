"""The balancer bench's processes: fake engines, and nginx run from a config text (the variants' configs).

Every process is started here and killed by its PID at the end (`Procs`). nginx runs in the
foreground (`daemon off`) under a prefix of its own, so a reload is a SIGHUP to a master we know.
CPU time is read from /proc (utime + stime), for a master with its workers, or any PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from host import cpu_seconds, health_ok, kill

from mipart.nginx.conf import render_nginx
from mipart.nginx.files import nginx_binary
from mipart.nginx.front import CLIENT_KEEPALIVE, render_front
from mipart.profile.load import check_profile
from mipart.profile.schema import Profile
from mipart.serving.spec import InstanceSpec

MODEL = "test/fake-llm"
KEEPALIVE_0 = "    keepalive_timeout 0;"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass
class Procs:
    """What the bench started, by PID; `close` kills them all (nginx masters first, so workers follow)."""

    popen: list[subprocess.Popen] = field(default_factory=list)

    def start(self, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kw)
        self.popen.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.popen):
            kill(proc.pid, signal.SIGTERM)
        for proc in reversed(self.popen):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill(proc.pid)
                proc.wait(timeout=10)


def start_engines(procs: Procs, ports: list[int], tps: float, max_seqs: int, logs: Path) -> list[int]:
    """Fake engines on `ports`, each admitting `max_seqs` streams at `tps` tokens/s; their PIDs once all answer /health."""
    pids = []
    for port in ports:
        argv = [
            sys.executable,
            "-m",
            "mipart.sim.engine",
            "--port",
            str(port),
            "--model",
            MODEL,
            "--tokens-per-second",
            f"{tps:g}",
            "--max-num-seqs",
            str(max_seqs),
        ]
        pids.append(
            procs.start(
                argv,
                logs / f"engine-{port}.log",
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "agent")},
            ).pid
        )
    wait_for(lambda: all(health_ok(p) for p in ports), 30, "the fake engines to answer /health")
    return pids


def wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class Nginx:
    """One nginx master under `prefix`, running `text`; `reload(text)` installs a new config and SIGHUPs it."""

    def __init__(self, procs: Procs, prefix: Path, text: str, probe_port: int | None):
        self.prefix = prefix
        for name in TEMP_DIRS:
            (prefix / name).mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(text)
        globals_ = (
            "daemon off;"
            + ("" if "\npid " in text else f" pid {prefix}/nginx.pid;")
            + ("" if "\nerror_log " in text else f" error_log {prefix}/error.log notice;")
        )
        argv = [nginx_binary(), "-c", str(self.conf), "-p", str(prefix), "-g", globals_]
        check = subprocess.run([*argv[:-2], "-t", "-q", "-g", globals_], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"nginx -t refused {self.conf}: {check.stderr.strip()}")
        self.master = procs.start(argv, prefix / "nginx.out").pid
        wait_for(
            lambda: len(self.workers()) > 0 and (probe_port is None or _listening(probe_port)), 15, f"nginx in {prefix}"
        )

    def workers(self) -> list[int]:
        return children(self.master)

    def cpu(self) -> float:
        """CPU seconds of the master and its live workers (a worker that exited after a reload is not counted)."""
        return tree_cpu(self.master)

    def reloads_seen(self) -> int:
        """SIGHUPs nginx logged (at notice level): proof that the reloads reached it."""
        logs = [self.prefix / "nginx.out", self.prefix / "error.log"]
        return sum(path.read_text(errors="replace").count("(SIGHUP) received") for path in logs if path.is_file())

    def reload(self, text: str) -> None:
        tmp = self.conf.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.conf)
        os.kill(self.master, signal.SIGHUP)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (vLLM's engine core is a child of its API server)."""
    return cpu_seconds(pid) + sum(tree_cpu(child) for child in children(pid))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def profile_of(listen: str, ports: list[int], max_seqs: int = 256, routing: str = "least_conn") -> Profile:
    """A one-service profile of these instances, as an operator would write it."""
    return check_profile(
        "\n".join(
            [
                "version: 1",
                "gpus: {compute: DPX, memory: NPS2}",
                "services:",
                "  chat:",
                f"    model: {MODEL}",
                f'    listen: "{listen}"',
                f'    partitions: "0-{len(ports) - 1}"',
                f'    args: ["--max-num-seqs", "{max_seqs}"]',
                f"    routing: {routing}",
                "health: {interval: 2s}",
                "",
            ]
        )
    )


def specs_of(ports: list[int]) -> tuple[InstanceSpec, ...]:
    """The instances as the agent plans them; their sockets stand for the engines' ports (back_text)."""
    return tuple(
        InstanceSpec(
            number=i,
            service="chat",
            model=MODEL,
            served_model_name=MODEL,
            logical_gpus=(i,),
            physical_gpus=(0,),
            render_nodes=(),
            socket=_stand_in(port),
            runtime="process",
            argv=(),
            env=(),
            user=None,
            hf_home="/nonexistent",
        )
        for i, port in enumerate(ports)
    )


def back_text(profile: Profile, ports: list[int], ready: frozenset[int], prefix: Path, direct: bool = False) -> str:
    """The back's text as the agent writes it (render_nginx), but for the instances' upstreams: the bench's
    engines listen on loopback ports, where the direct variant's client reaches them too, and not on the
    unix sockets a host's instances listen on."""
    text = render_nginx(profile, specs_of(ports), ready, prefix, direct)
    for port in ports:
        text = text.replace(f"server unix:{_stand_in(port)} ", f"server 127.0.0.1:{port} ")
    return text


def _stand_in(port: int) -> str:
    return f"/nonexistent/engine-{port}.sock"


def single_text(listen: str, ports: list[int], ready: frozenset[int], prefix: Path, max_seqs: int) -> str:
    """One nginx serving the clients itself with keep-alive (the reference): the back's text as the agent
    writes it, listening on the service's port too (render_nginx's `direct`), keepalive_timeout 75s."""
    text = back_text(profile_of(listen, ports, max_seqs), ports, ready, prefix, direct=True)
    if KEEPALIVE_0 not in text:
        raise SystemExit("render_nginx no longer writes `keepalive_timeout 0;`: update perf/balancer_setup.py")
    return text.replace(KEEPALIVE_0, f"    keepalive_timeout {CLIENT_KEEPALIVE};")


def layer_texts(
    listen: str, ports: list[int], ready: frozenset[int], back: Path, front: Path, max_seqs: int
) -> tuple[str, str]:
    """mipart's two layers, as the agent writes them: (the back's text, the front's)."""
    profile = profile_of(listen, ports, max_seqs)
    return back_text(profile, ports, ready, back), render_front(profile, specs_of(ports), back, front)
