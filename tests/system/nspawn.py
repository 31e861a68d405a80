"""Boot a real systemd in systemd-nspawn, for the system tier (see docs/testing.md).

Why nspawn: the .deb and its units are only proven by a real systemd and a real
apt. A Debian bookworm rootfs is debootstrapped once and cached; each test gets
its own overlay (or copy) of it, its own machine name, and kills only what it
started. The host network is shared (no --private-network) so apt inside can
reach the archive.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testcache import cache_dir, cached

REPO = Path(__file__).resolve().parents[2]
MIRROR = "http://deb.debian.org/debian"
# Bump the suffix whenever PACKAGES or the customisation below changes.
ROOTFS_NAME = "rootfs-bookworm-v3"
# Everything the .deb depends on is pre-installed, so installing it needs no network
# in the common case (apt still resolves; a missing dependency is fetched).
PACKAGES = (
    "systemd,systemd-sysv,dbus,adduser,procps,python3,python3-yaml,python3-click,python3-aiohttp,"
    "python3-structlog,python3-jeepney,python3-sdnotify,nginx"
)
HOST_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "nsenter": "util-linux",
}
# Commands inside get a clean environment: the host's PYTHONPATH etc. must not leak in.
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "TERM": "dumb",
}
_names = itertools.count()
# For a container whose units' DevicePolicy=/DeviceAllow= must hold (Machine(**DEVICE_POLICY)).
# systemd enforces them with a cgroup BPF program: that needs the unified cgroup hierarchy
# (nspawn gives the legacy one on a host that boots with it) and bpf(), which nspawn's own
# seccomp filter refuses unless asked and which needs CAP_BPF. Without them systemd logs
# "BPF device control is not supported" and lets every unit open every device.
DEVICE_POLICY = {
    "args": ("--capability=CAP_BPF", "--system-call-filter=bpf"),
    "env": {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
}
# Every container: nspawn's own seccomp filter refuses pidfd_getfd(2) (EPERM), which a host has
# and mipart-nginx.service uses to take over a killed master's sockets (nginx/launcher.py).
HOST_SYSCALLS = ("--system-call-filter=pidfd_getfd",)


def _sh(args: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a host command, raising with its output on failure."""
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def ensure_host_tools() -> None:
    """Install the host tools the tier needs (every test installs what it needs)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _sh(["apt-get", "install", "-y", "-q", *missing], env=env)


def ensure_rootfs() -> Path:
    """The cached bookworm rootfs, debootstrapped first if needed (see testcache)."""
    return cached(cache_dir(), ROOTFS_NAME, _build_rootfs)


def _build_rootfs(tmp: Path) -> None:
    _sh(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(tmp), MIRROR], timeout=1800)
    _customise(tmp)


def _customise(rootfs: Path) -> None:
    """Make the image fit for many concurrent boots on the host's network."""
    # The host network is shared: the distro nginx must not grab port 80.
    _offline(rootfs, "systemctl disable -q nginx.service && apt-get clean")
    # Empty machine-id and hostname: each boot gets its own id and the machine name.
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/hostname").unlink(missing_ok=True)


def _offline(rootfs: Path, cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run CMD in ROOTFS with no systemd running (exactly an image bake)."""
    name = f"mipart-bake-{os.getpid()}-{next(_names)}"
    return subprocess.run(
        [
            "systemd-nspawn",
            "-q",
            "-D",
            str(rootfs),
            "-M",
            name,
            "--register=no",
            "--keep-unit",
            "--pipe",
            *[f"--setenv={k}={v}" for k, v in GUEST_ENV.items()],
            "/bin/sh",
            "-c",
            cmd,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=GUEST_ENV,
    )


@functools.cache
def unavailable_reason() -> str | None:
    """Why the system tier cannot run here (None = it can). Detected once per session."""
    if os.geteuid() != 0:
        return "system tier needs root (systemd-nspawn, mounts)"
    try:
        ensure_host_tools()
        rootfs = ensure_rootfs()
        probe = _offline(rootfs, "echo ok", timeout=60)
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        return f"cannot prepare systemd-nspawn here: {exc}"
    if probe.returncode != 0 or "ok" not in probe.stdout:
        return f"systemd-nspawn cannot run here: {probe.stderr.strip()[-500:]}"
    return None


def build_deb(outdir: Path, version: str = "") -> Path:
    """Build the package with `make deb` (debhelper), as a release would; VERSION for a second build."""
    args = ["make", "-s", "-C", str(REPO), "deb", f"DEB_OUT={outdir}", f"DEB_BUILD={outdir}/build"]
    out = _sh(args + ([f"DEB_VERSION={version}"] if version else [])).stdout.strip().splitlines()
    return Path(out[-1])


@dataclass
class Machine:
    """One booted container over a private copy of the cached rootfs.

    Use as a context manager. The copy is made on entry; the boot happens on the
    first run() (or boot()), so pre_boot() can bake things into the image first.
    """

    workdir: Path
    base: Path = field(default_factory=ensure_rootfs)
    name: str = ""
    boot_timeout: float = 60
    args: tuple[str, ...] = ()  # more systemd-nspawn options (e.g. --bind-ro=, DEVICE_POLICY)
    env: dict[str, str] = field(default_factory=dict)  # more environment for systemd-nspawn
    prefix: tuple[str, ...] = ()  # what runs systemd-nspawn (e.g. nsenter --net=NETNS, as the fleet does)
    rootfs: Path = field(init=False)
    log: Path = field(init=False)
    _proc: subprocess.Popen | None = field(default=None, init=False)
    leader: int | None = field(default=None, init=False)
    _overlay: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"mipart-t{os.getpid()}-{next(_names)}"
        self.rootfs = self.workdir / "rootfs"
        self.log = self.workdir / "console.log"

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Machine:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rootfs.mkdir()
        # An overlay takes milliseconds where a copy of ~300 MB takes seconds;
        # fall back to a copy where overlayfs is unavailable.
        upper, work = self.workdir / "upper", self.workdir / "work"
        upper.mkdir(), work.mkdir()
        opts = f"lowerdir={self.base},upperdir={upper},workdir={work}"
        if (
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.rootfs)], capture_output=True
            ).returncode
            == 0
        ):
            self._overlay = True
        else:
            _sh(["cp", "-a", "--reflink=auto", f"{self.base}/.", str(self.rootfs)])
        resolv = self.rootfs / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        if self._overlay:
            subprocess.run(["umount", str(self.rootfs)], capture_output=True)
            if os.path.ismount(self.rootfs):
                subprocess.run(["umount", "-l", str(self.rootfs)], capture_output=True)
        for d in ("rootfs", "upper", "work"):
            shutil.rmtree(self.workdir / d, ignore_errors=True)

    def pre_boot(self, fn: Callable[[Machine], object]) -> object:
        """Modify the image before boot: fn(machine) may use offline() and copy_in()."""
        if self._proc is not None:
            raise RuntimeError("pre_boot after boot")
        return fn(self)

    def offline(self, cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run CMD in the image with no systemd running (before boot only)."""
        if self._proc is not None:
            raise RuntimeError("offline() after boot; use run()")
        return _offline(self.rootfs, cmd, timeout)

    def boot(self) -> None:
        """Boot and wait (bounded) until systemd reports running or degraded."""
        if self._proc is not None:
            return
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    *self.prefix,
                    "systemd-nspawn",
                    "-D",
                    str(self.rootfs),
                    "-M",
                    self.name,
                    "-b",
                    "--register=no",
                    "--keep-unit",
                    *HOST_SYSCALLS,
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**GUEST_ENV, **self.env},
            )
        deadline = time.monotonic() + self.boot_timeout
        while self.leader is None:
            self._check_alive()
            self.leader = _child_named(self._proc.pid, "systemd")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no systemd under nspawn pid {self._proc.pid}\n{self.console()}")
            time.sleep(0.05)
        state = ""
        while state not in ("running", "degraded"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"boot did not finish: {state!r}\n{self.console()}")
            self._check_alive()
            try:
                state = self.run("systemctl is-system-running --wait", check=False, timeout=left).stdout.strip()
            except subprocess.TimeoutExpired:
                continue
            if state not in ("running", "degraded"):
                time.sleep(0.1)  # the manager's socket is not up yet

    def shutdown(self, timeout: float = 30) -> None:
        """Power off cleanly; then kill only this test's nspawn (and its leader)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and self.leader:
            try:
                subprocess.run(self._enter("systemctl poweroff"), capture_output=True, timeout=10, env=GUEST_ENV)
            except subprocess.TimeoutExpired:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in (proc.pid, self.leader):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.wait(10)
        finally:
            self.leader = None

    # -- inside the machine ----------------------------------------------------
    def run(self, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command inside the booted machine (boots it on first use)."""
        self.boot()
        p = subprocess.run(self._enter(cmd), capture_output=True, text=True, timeout=timeout, env=GUEST_ENV)
        if check and p.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {cmd!r} -> {p.returncode}\n"
                f"--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
            )
        return p

    def copy_in(self, src: Path | str, dest: str) -> None:
        """Copy a host file or tree to DEST (absolute, in the machine's view).

        Before boot it goes straight into the image; once booted, through
        /proc/LEADER/root, so it also lands on the container's own mounts (e.g.
        the tmpfs nspawn puts on /tmp). An absolute symlink at DEST is replaced.
        """
        top = Path(f"/proc/{self.leader}/root") if self.leader else self.rootfs
        target = top / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        if Path(src).is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)

    def console(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    def _enter(self, cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", "-r", "-w", "/bin/sh", "-c", cmd]

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {self._proc.returncode}\n{self.console()}")


def _child_named(ppid: int, comm: str) -> int | None:
    """The child of PPID whose comm is COMM (the container's PID 1 for nspawn)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        m = re.match(r"\d+ \((.*)\) \S (\d+)", stat)
        if m and int(m.group(2)) == ppid and m.group(1) == comm:
            return int(entry.name)
    return None


def install_deb(m: Machine, deb: Path) -> subprocess.CompletedProcess:
    """apt-get install the .deb in a booted machine; refresh the lists only if needed."""
    m.copy_in(deb, f"/var/tmp/{deb.name}")
    cmd = f"cd /var/tmp && apt-get install -y -q ./{deb.name}"
    p = m.run(cmd, check=False, timeout=600)
    if p.returncode != 0:  # e.g. a dependency not in the image and stale lists
        p = m.run(f"apt-get update -q && {cmd}", timeout=900)
    return p


def create_sim_host(
    m: Machine,
    root: str = "/var/lib/mipart-sim",
    model: str = "mi300x",
    gpus: int = 8,
    compute: str = "SPX",
    memory: str = "NPS1",
) -> subprocess.CompletedProcess:
    """Create a simulated GPU host inside the machine with `mipart sim create`."""
    return m.run(f"mipart sim create {root} --model {model} --gpus {gpus} --compute {compute} --memory {memory}")
