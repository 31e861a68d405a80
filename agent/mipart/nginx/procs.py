"""Our nginx in /proc: its masters, their workers, and workers left without a master (strays).

Which prefix a process serves is read from what it says of itself: both runners start nginx
with the prefix as its working directory (workers inherit it and nginx never changes it),
and a master's title keeps its command line (`-p PREFIX`). Whether it is ours at all is
decided only by what the kernel reports and no user can forge (OurNginx): it runs our nginx
binary, as root or nginx's worker user, in our network namespace and, under systemd, in the
control group of a layer's unit (mipart-nginx.service, mipart-nginx-front.service). Any user
can set a process's name, title and working directory (issue 20: a fake stray of an
unprivileged user was adopted and got clients' requests). A worker whose master is gone
(SIGKILLed: workers do not die with it) keeps the listening sockets and the config it had;
that is a stray. A new master takes over the strays' listening sockets (`take_over`, only
sockets in our network namespace), then they quit gracefully: the process runner does it
when it starts nginx, and on systemd `mipart exec-nginx [--front]`, the ExecStart of each
layer's unit (nginx.launcher).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mipart.errors import UserError
from mipart.names import AGENT_UNIT, NGINX_UNITS, NGINX_WORKER_USER
from mipart.nginx.files import nginx_binary
from mipart.runners import procfs
from mipart.runners.procfs import PROC, alive, pids

MASTER = "nginx: master process"
WORKER = "nginx: worker process"
SHUTTING_DOWN = "nginx: worker process is shutting down"  # set just before it closes its listeners
PIDFD_GETFD = 438  # the same number on every Linux architecture (added after the syscall tables merged)
LISTEN_STATE = "0A"
UNIX_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listening socket
UNIX_UNCONNECTED = "01"  # SS_UNCONNECTED, the state a listening unix socket shows
INHERIT_VAR = "NGINX"  # nginx takes over the listening sockets it names ("fd;fd;") at start
RELEASE_TIMEOUT = 2.0  # a stray told to quit closes its listeners at once


@dataclass
class NginxProcs:
    masters: list[int] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)  # accepting connections, under a master of ours
    shutting_down: list[int] = field(default_factory=list)  # finishing their requests, listeners closed
    strays: list[int] = field(default_factory=list)  # accepting, with no master of ours: a frozen config

    @property
    def accepting(self) -> list[int]:
        return self.workers + self.strays


@dataclass(frozen=True)
class OurNginx:
    """The kernel's facts a process of our nginx has, which no other user can arrange."""

    binary: tuple[int, int] | None  # (device, inode) of the nginx we run; None: not installed
    path: str
    uids: frozenset[int]  # root (the master), nginx's worker user, and we
    netns: tuple[int, int] | None
    cgroups: frozenset[str] | None  # the two layers' units' (NGINX_UNITS), under systemd; None: not checked

    @classmethod
    def here(cls) -> OurNginx:
        import pwd

        try:
            path = nginx_binary()
            info = os.stat(path)
            binary: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except (UserError, OSError):
            path, binary = "", None
        try:
            worker = {pwd.getpwnam(NGINX_WORKER_USER).pw_uid}
        except KeyError:
            worker = set()
        own = procfs.cgroup_of(os.getpid())  # the agent's unit or a layer's: both layers' units are beside it
        cgroups = (
            frozenset(f"{own.rsplit('/', 1)[0]}/{unit}" for unit in NGINX_UNITS)
            if own and procfs.unit_in(own) in (AGENT_UNIT, *NGINX_UNITS)
            else None
        )
        return cls(binary, path, frozenset({0, os.geteuid(), *worker}), procfs.netns_of("self"), cgroups)

    def owns(self, pid: int) -> bool:
        return (
            self.binary is not None
            and self._runs_binary(pid)
            and procfs.uid_of(pid) in self.uids
            and procfs.netns_of(pid) == self.netns
            and (self.cgroups is None or procfs.cgroup_of(pid) in self.cgroups)
        )

    def _runs_binary(self, pid: int) -> bool:
        """Our nginx's inode, or, after nginx was upgraded under it, the same path deleted (only root replaces it)."""
        try:
            info = os.stat(PROC / str(pid) / "exe")
            target = os.readlink(PROC / str(pid) / "exe")
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self.binary or target == f"{self.path} (deleted)"


def scan(prefix: Path) -> NginxProcs:
    """One pass over /proc for the nginx processes of ours started in `prefix`."""
    found = NginxProcs()
    prefix_text = str(prefix)
    ours = OurNginx.here()
    workers: list[tuple[int, int, str]] = []
    for pid in pids():
        if _read(pid, "comm").strip() != "nginx" or not alive(pid):
            continue
        title = _read(pid, "cmdline").replace("\0", " ").strip()
        master = title.startswith(MASTER) and (f" -p {prefix_text} " in f"{title} " or _cwd(pid) == prefix_text)
        worker = title.startswith(WORKER) and _cwd(pid) == prefix_text
        if not (master or worker) or not ours.owns(pid):
            continue
        if master:
            found.masters.append(pid)
        else:
            workers.append((pid, _ppid(pid), title))
    for pid, ppid, title in workers:
        if title.startswith(SHUTTING_DOWN):
            found.shutting_down.append(pid)
        elif ppid in found.masters:
            found.workers.append(pid)
        else:
            found.strays.append(pid)
    return found


def listening_sockets(pid: int, unix: bool = True) -> dict[int, int]:
    """inode -> fd of each listening TCP socket the process holds, and of each listening unix socket
    unless `unix` is False (the back layer listens on those), that is in our network namespace (the
    tables of our own /proc/self/net list only those): a socket bound elsewhere is never taken."""
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in _read("self", f"net/{table}").splitlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[3] == LISTEN_STATE:
                listening.add(int(cols[9]))
    for inode, path in _unix_listening() if unix else ():
        if os.path.exists(path):  # one whose file is gone is reached by no one: a new master binds afresh
            listening.add(inode)
    held = {}
    try:
        fds = os.listdir(PROC / str(pid) / "fd")
    except OSError:
        return {}
    for fd in fds:
        try:
            target = os.readlink(PROC / str(pid) / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in listening:
            held[int(target[8:-1])] = int(fd)
    return held


def unix_listening_paths() -> set[str]:
    """The paths of the listening unix sockets in our network namespace: a socket file no one listens on is stale."""
    return {path for _, path in _unix_listening()}


def _unix_listening() -> list[tuple[int, str]]:
    """(inode, path) of each listening unix socket bound to a path, in our network namespace."""
    found = []
    for line in _read("self", "net/unix").splitlines()[1:]:
        cols = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
        if len(cols) > 7 and int(cols[3], 16) & UNIX_ACCEPTING and cols[5] == UNIX_UNCONNECTED:
            found.append((int(cols[6]), cols[7]))
    return found


def take_fd(pid: int, fd: int) -> int:
    """A copy of another process's file descriptor (pidfd_getfd(2); root or ptrace rights needed)."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        copy: int = libc.syscall(PIDFD_GETFD, pidfd, fd, 0)  # ctypes calls are untyped; syscall(2) gives an int
        if copy < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd on pid {pid}: {os.strerror(err)}")
        return copy
    finally:
        os.close(pidfd)


def take_over(strays: list[int]) -> list[int]:
    """Copies of the strays' listening sockets, one per socket, for a new master to inherit
    (nginx's own hand-over, INHERIT_VAR). The socket, and the connections waiting in its accept
    queue, live on in the new master: nothing is refused. Where none can be copied, the strays
    are told to quit first and their port is waited for: a short gap, but the port is free."""
    copies: dict[int, int] = {}
    failed = ""
    for pid in strays:
        for inode, fd in listening_sockets(pid).items():
            if inode in copies:
                continue
            try:
                copies[inode] = take_fd(pid, fd)
            except OSError as exc:
                failed = str(exc)
    if strays and not copies:
        print(
            f"mipart: cannot take over the sockets of nginx workers {strays} "
            f"({failed or 'no listening socket found'}): "
            "they quit first, and the port is closed for a moment",
            file=sys.stderr,
            flush=True,
        )
        quit_gracefully(strays)
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while any(listening_sockets(pid) for pid in strays) and time.monotonic() < deadline:
            time.sleep(0.01)
    return list(copies.values())


def inherit_env(fds: list[int]) -> dict[str, str]:
    return {INHERIT_VAR: "".join(f"{fd};" for fd in fds)} if fds else {}


def quit_gracefully(pids_: list[int]) -> None:
    """SIGQUIT: a worker closes its listeners at once and exits when its requests are done."""
    for pid in pids_:
        try:
            os.kill(pid, signal.SIGQUIT)
        except (ProcessLookupError, PermissionError):  # gone, or (not root) never ours to stop
            pass


def _read(pid: int | str, name: str) -> str:
    try:
        return (PROC / str(pid) / name).read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(PROC / str(pid) / "cwd").removesuffix(" (deleted)")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    stat = _read(pid, "stat")
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return 0
