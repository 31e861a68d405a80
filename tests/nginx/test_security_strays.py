"""A fake stray nginx worker of another user is never adopted (issue 20, finding 1).

The attacker is uid 65534 running the real nginx binary with a config of its own, started in
mipart's nginx prefix and then orphaned (its master SIGKILLed): its name is `nginx`, its title
`nginx: worker process`, its working directory our prefix, all that nginx.procs used to trust.
Once with a listening socket in our network namespace, once in a namespace of its own
(`unshare -Urn`, where a listener would otherwise have taken over the service's port). Neither
`mipart exec-nginx [--front]` (each layer's ExecStart) nor the process runner takes its socket
or signals it, in the back's prefix or the front's; nor does the front take the listeners of
another user's nginx that passes for a single-layer back master (the handover). Our own strays
are still taken over (tests/nginx/test_fault_defects.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mipart.nginx import procs
from mipart.nginx.files import BACK, FRONT, TEMP_DIRS, NginxFiles, nginx_binary
from mipart.nginx.launcher import back_listeners
from mipart.runners import procfs
from mipart.runners.process import ProcessRunner
from mipart.sim.ports import free_block

NOBODY = 65534
OURS = """\
user www-data;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{}}
http {{ access_log off; {temp} server {{ listen 127.0.0.1:{port}; return 200 "ours\\n"; }} }}
"""
EVIL = """\
{user}pid {prefix}/nginx.pid;
worker_processes 1;
events {{}}
http {{ access_log off; {temp} server {{ listen {port} reuseport; return 200 "evil\\n"; }} }}
"""


def conf(template: str, prefix: Path, **values) -> str:
    """A private nginx config with its temporary directories under `prefix`."""
    temp = " ".join(f"{name}_temp_path {prefix}/{name};" for name in TEMP_DIRS)
    return template.format(prefix=prefix, temp=temp, **values)


def title_of(pid: int) -> str:
    return (procfs.PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def old_rule(pid: int, prefix: Path, title: str = procs.WORKER) -> bool:
    """What made a stray (or a master) before: the name, the title and the working directory, all the
    process's own to set."""
    comm = (procfs.PROC / str(pid) / "comm").read_text().strip()
    return comm == "nginx" and title_of(pid).startswith(title) and os.readlink(f"/proc/{pid}/cwd") == str(prefix)


@dataclass(frozen=True)
class Prefix:
    path: Path
    port: int  # where our nginx listens
    files: NginxFiles  # the layer's


@pytest.fixture(params=[BACK, FRONT])
def ours(request):
    """A run dir as mipart's (0755 under /tmp, so another user can enter the prefix) with an nginx.conf of
    ours in the prefix of either layer."""
    run = Path(tempfile.mkdtemp(prefix="mipart-run-"))
    run.chmod(0o755)
    files = NginxFiles.of(request.param, run)
    prefix = Prefix(files.prefix, free_block(1, low=21000), files)
    prefix.path.mkdir(mode=0o755)
    (prefix.path / "nginx.conf").write_text(conf(OURS, prefix.path, port=prefix.port))
    yield prefix
    shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def fake_stray(ours):
    """make(own_netns) -> the pid of an orphaned nginx worker of uid 65534 whose working directory is our prefix;
    make(own_netns, orphan=False) -> the pid of such a master, its worker beside it."""
    made: list[tuple[Path, subprocess.Popen, int]] = []

    def make(own_netns: bool, orphan: bool = True) -> int:
        home = Path(tempfile.mkdtemp(prefix="evil-"))
        os.chown(home, NOBODY, NOBODY)
        port = free_block(1, low=22000)
        (home / "nginx.conf").write_text(conf(EVIL, home, user="user root root;\n" if own_netns else "", port=port))
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        argv = [*drop, *(["unshare", "-Urn"] if own_netns else []), nginx_binary()]
        argv += ["-e", str(home / "error.log"), "-c", str(home / "nginx.conf"), "-g", "daemon off;"]
        with open(home / "stderr", "wb") as err:
            master = subprocess.Popen(argv, cwd=ours.path, stdin=subprocess.DEVNULL, stderr=err)
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        [worker] = map(int, children.read_text().split())
        made.append((home, master, worker))
        if not orphan:
            return master.pid
        master.kill()  # its workers live on without it: what a stray is
        master.wait()
        deadline = time.monotonic() + 10
        while procfs.alive(worker) and not old_rule(worker, ours.path) and time.monotonic() < deadline:
            time.sleep(0.05)  # its title is set once it runs
        assert old_rule(worker, ours.path), "the fake must pass for a stray by name, title and working directory"
        return worker

    yield make
    for home, master, worker in made:
        master.kill()  # nothing once it was reaped
        master.wait()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(home, ignore_errors=True)


def answers(port: int) -> bytes:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    finally:
        conn.close()


def until(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("own_netns", [False, True], ids=["our-netns", "own-netns"])
def test_mipart_exec_nginx_adopts_no_fake_stray(ours, fake_stray, own_netns):
    stray = fake_stray(own_netns)
    assert procs.scan(ours.path).strays == []
    log = ours.path.parent / "exec-nginx.log"
    with open(log, "wb") as out:
        nginx = subprocess.Popen(
            [sys.executable, "-m", "mipart", "exec-nginx", *(["--front"] if ours.files.layer == FRONT else [])],
            env={
                **os.environ,
                "PYTHONPATH": str(Path(procs.__file__).parents[2]),
                "MIPART_RUN_DIR": str(ours.path.parent),
            },
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        until(lambda: answers(ours.port) == b"ours\n", "our nginx to answer")
        assert "inherited" not in log.read_text() and "cannot take over" not in log.read_text()
        assert procfs.alive(stray)  # never signalled: not ours to stop
    finally:
        os.killpg(nginx.pid, signal.SIGKILL)
        nginx.wait()


@pytest.mark.parametrize("own_netns", [False, True], ids=["our-netns", "own-netns"])
def test_the_process_runner_adopts_no_fake_stray(ours, fake_stray, own_netns):
    stray = fake_stray(own_netns)
    runner = ProcessRunner(ours.path.parent)
    runner.ensure_nginx(ours.files)
    master = runner.nginx[ours.files.layer]
    try:
        until(lambda: answers(ours.port) == b"ours\n", "our nginx to answer")
        log = (ours.path.parent / "logs" / f"{ours.files.unit.removesuffix('.service')}.log").read_text()
        assert "inherited" not in log and procfs.alive(stray)
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()


@pytest.mark.parametrize("ours", [BACK], indirect=True)
@pytest.mark.parametrize("own_netns", [False, True], ids=["our-netns", "own-netns"])
def test_the_front_takes_no_listener_of_another_users_nginx_passing_for_a_back_master(ours, fake_stray, own_netns):
    """The handover copies the TCP listeners of a single-layer back master of ours (nginx.launcher): a master
    title and the back's prefix as working directory are the process's own to set."""
    master = fake_stray(own_netns, orphan=False)
    until(lambda: old_rule(master, ours.path, procs.MASTER), "it to pass for a back master by the old rule")
    if not own_netns:
        assert procs.listening_sockets(master, unix=False), "it holds a listener the front could have taken"
    assert procs.scan(ours.path).masters == [] and back_listeners(ours.files) == []


def test_a_root_nginx_in_another_network_namespace_is_not_ours(ours):
    """Root's own binary in our prefix, but its sockets are in a namespace of its own: that alone decides."""
    conf = ours.path / "elsewhere.conf"  # 127.0.0.1 needs a loopback that is up: any address instead
    conf.write_text((ours.path / "nginx.conf").read_text().replace(f"127.0.0.1:{ours.port}", str(ours.port)))
    argv = ["unshare", "-n", nginx_binary(), "-p", str(ours.path), "-c", str(conf), "-g", "daemon off;"]
    other = subprocess.Popen(argv, cwd=ours.path, stdin=subprocess.DEVNULL, start_new_session=True)
    children = Path(f"/proc/{other.pid}/task/{other.pid}/children")
    try:
        until(lambda: children.read_text().split(), "its workers")
        assert old_rule(int(children.read_text().split()[0]), ours.path)
        assert procfs.uid_of(other.pid) == 0 and not procs.OurNginx.here().owns(other.pid)
        assert procs.scan(ours.path).masters == [] and procs.scan(ours.path).strays == []
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()
