"""The fleet test bed: mipart hosts on a network of their own, reached over SSH, behind a balancer.

Each host is an nspawn machine (nspawn.Machine) booted from one image baked for the session: the
cached bookworm rootfs with openssh-server added (cached as FLEET_ROOTFS), then the .deb installed
offline (`apt-get install ./mipart.deb`, no network), a simulated GPU host (`mipart sim create`,
one MI300X in DPX: two logical GPUs, two fake-engine instances) and a profile. Keys are made per
run: each host's own SSH host key, and one client key for the controller.

Networking, as it works on systemd 252: a network namespace of the test's own (`ip netns add`)
holds a bridge with SUBNET.1; each machine is started as `nsenter --net=/run/netns/NS
systemd-nspawn --network-bridge=br0 ...`, so nspawn makes its veth pair in that namespace and
enslaves the host side to the bridge, and systemd-networkd in the machine gives `host0` its
static address. Not `ip netns exec`: it mounts a fresh /sys for the namespace, which hides
/sys/fs/cgroup from nspawn. The controller (ansible-playbook), the balancer and the client loop
run in the same namespace (nsenter --net), so the hosts' ports clash with nothing on this
machine and no packet leaves the namespace.

Everything is removed at the end even on failure: machines powered off (then killed by PID),
the namespace deleted (with the veths nspawn left in it).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from testcache import cache_dir, cached

from .nspawn import HOST_TOOLS, Machine, _offline, _sh, ensure_rootfs

# Bump the suffix whenever the customisation in _build_fleet_rootfs changes.
FLEET_ROOTFS = "rootfs-bookworm-fleet-v1"
SUBNET = "10.87.0"  # only ever inside the fleet's own network namespace
BRIDGE = "br0"
SIM = "/var/lib/mipart-sim"
LISTEN = 8040  # every host serves `chat` here; hosts have addresses of their own, so the port is fixed
ENGINE = '["/usr/bin/python3", "-m", "mipart.sim.engine", "--startup-delay", "1"]'
PROFILE = """\
version: 1
gpus: {{compute: DPX, memory: NPS1}}
services:
  chat:
    model: test/chat
    listen: {listen}
    runtime: native
    command: {engine}
    args: {args}
health: {{interval: 500ms, timeout: 400ms, unhealthy_after: 2, restart_backoff: 200ms}}
"""
DEFAULTS = f'MIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD="mipart sim reload {SIM}"\n'
FLEET_TOOLS = {**HOST_TOOLS, "haproxy": "haproxy", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
_names = itertools.count()


def profile(args: str = "[]") -> str:
    """The fleet's profile, with ARGS (a YAML list) for the chat service."""
    return PROFILE.format(listen=LISTEN, engine=ENGINE, args=args)


def ensure_fleet_tools() -> None:
    missing = sorted({pkg for tool, pkg in FLEET_TOOLS.items() if not shutil.which(tool)})
    if missing:
        _sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=_apt_env())


def _apt_env() -> dict[str, str]:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def fleet_rootfs() -> Path:
    """The bookworm rootfs with sshd and systemd-networkd on, without host keys (each host gets its own)."""
    return cached(cache_dir(), FLEET_ROOTFS, _build_fleet_rootfs)


def _build_fleet_rootfs(tmp: Path) -> None:
    _sh(["cp", "-a", "--reflink=auto", f"{ensure_rootfs()}/.", str(tmp)])
    done = _offline(
        tmp,
        "apt-get update -q && apt-get install -y -q --no-install-recommends openssh-server "
        "&& rm -f /etc/ssh/ssh_host_* && systemctl enable -q ssh systemd-networkd && apt-get clean",
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"cannot add openssh-server to the fleet rootfs\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )


def bake_image(deb: Path, where: Path, text: str) -> Path:
    """WHERE: the fleet rootfs with the .deb installed offline, a simulated host and the profile TEXT."""
    where.mkdir(parents=True)
    _sh(["cp", "-a", "--reflink=auto", f"{fleet_rootfs()}/.", str(where)])
    shutil.copyfile(deb, where / "var/tmp" / deb.name)
    done = _offline(
        where,
        f"apt-get install -y -q --no-install-recommends /var/tmp/{deb.name} && rm /var/tmp/{deb.name} "
        f"&& mipart sim create {SIM} --model mi300x --gpus 1 --compute DPX --memory NPS1",
    )
    if done.returncode != 0:
        raise RuntimeError(f"baking the fleet image failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (where / "etc/default/mipart").write_text(DEFAULTS)
    (where / "etc/mipart/profile.yaml").write_text(text)
    return where


@dataclass
class Netns:
    """A network namespace with a bridge at SUBNET.1; `enter` prefixes a command to run in it."""

    name: str

    @property
    def enter(self) -> tuple[str, ...]:
        return ("nsenter", f"--net=/run/netns/{self.name}")

    def create(self) -> None:
        _sh(["ip", "netns", "add", self.name])
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", BRIDGE, "type", "bridge"],
            ["addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE],
            ["link", "set", BRIDGE, "up"],
        ):
            _sh(["ip", "-n", self.name, *cmd])

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@dataclass
class Host:
    name: str
    address: str
    machine: Machine


class Fleet:
    """COUNT hosts serving the image's profile, each with its own address; a context manager."""

    def __init__(self, workdir: Path, deb: Path, count: int = 3, text: str | None = None):
        self.workdir, self.deb, self.count = workdir, deb, count
        self.text = text or profile()
        self.netns = Netns(f"mipart-fleet-{os.getpid()}-{next(_names)}")
        self.ssh = workdir / "ssh"
        self.hosts: list[Host] = []
        self._stack = ExitStack()
        self.timings: dict[str, float] = {}

    def __enter__(self) -> Fleet:
        started = time.monotonic()
        try:
            ensure_fleet_tools()
            image = bake_image(self.deb, self.workdir / "image", self.text)
            self.timings["image"] = time.monotonic() - started
            self.netns.create()
            self._stack.callback(self.netns.remove)
            self._client_key()
            self.hosts = [self._host(index, image) for index in range(self.count)]
            with ThreadPoolExecutor(self.count) as boots:  # the boots overlap; each waits for its own systemd
                list(boots.map(lambda h: h.machine.boot(), self.hosts))
            self.timings["boot"] = time.monotonic() - started - self.timings["image"]
            for host in self.hosts:
                wait(lambda h=host: h.machine.run("mipart status", check=False).returncode == 0, 180, host.name)
            self.timings["serving"] = time.monotonic() - started
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()  # last in, first out: machines, then the namespace

    def _client_key(self) -> None:
        self.ssh.mkdir(parents=True)
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mipart-fleet", "-f", str(self.ssh / "id_ed25519")])

    def _host(self, index: int, image: Path) -> Host:
        name, address = f"h{index + 1}", f"{SUBNET}.{11 + index}"
        machine = Machine(
            self.workdir / name,
            base=image,
            name=f"mipart-f{os.getpid()}-{next(_names)}",
            args=(f"--network-bridge={BRIDGE}",),
            prefix=self.netns.enter,
        )
        self._stack.enter_context(machine)
        key = self.ssh / f"{name}_host_ed25519_key"
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)])
        files = {
            "/etc/systemd/network/10-host0.network": f"[Match]\nName=host0\n\n[Network]\nAddress={address}/24\n",
            "/etc/ssh/sshd_config.d/fleet.conf": "HostKey /etc/ssh/ssh_host_ed25519_key\n",
            "/root/.ssh/authorized_keys": (self.ssh / "id_ed25519.pub").read_text(),
            "/etc/ssh/ssh_host_ed25519_key": key.read_text(),
        }
        for path, text in files.items():
            target = machine.rootfs / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        (machine.rootfs / "root/.ssh").chmod(0o700)
        (machine.rootfs / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
        with open(self.ssh / "known_hosts", "a") as known:
            known.write(f"{address} {(key.parent / (key.name + '.pub')).read_text().rsplit(' ', 1)[0]}\n")
        return Host(name, address, machine)

    # -- the controller's view ---------------------------------------------------------------------
    def inventory(self, path: Path, group: str = "gpu_hosts") -> Path:
        """An INI inventory of the hosts, as a fleet operator writes one (root over SSH, our keys)."""
        ssh_args = f"-o UserKnownHostsFile={self.ssh / 'known_hosts'} -o StrictHostKeyChecking=yes"
        lines = [f"[{group}]"] + [f"{h.name} ansible_host={h.address}" for h in self.hosts]
        lines += [
            f"\n[{group}:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.ssh / 'id_ed25519'}",
            f"ansible_ssh_common_args='{ssh_args}'",
            "ansible_python_interpreter=/usr/bin/python3",
            f"mipart_sysfs_root={SIM}",
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def run(self, args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
        """ARGS run in the fleet's network namespace (the controller's place)."""
        return subprocess.run(
            [*self.netns.enter, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {timeout:g}s")
        time.sleep(0.5)
