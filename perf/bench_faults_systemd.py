"""Faults under load on the systemd runner: the same FAULTS and client as perf/bench_faults.py,
on a real systemd booted in nspawn (tests/system/nspawn.py) with the .deb installed.

One machine serves the whole run: the issue's host (2 x MI300X in DPX/NPS2 simulated, 4 fake
engines as mipart-vllm@0, 1, 8, 9 (8 x GPU + partition), mipart-nginx, mipart-agent; interval 1 s, timeout 1 s,
unhealthy_after 2), and after each fault it is settled again (every instance ready, nginx
serving the current config). The container shares the host's network, so the load client
(perf/faults.py, its own process) runs on the host against nginx on 127.0.0.1, and both
sides read the same clock. The bench reaches the container's files through
/proc/LEADER/root and signals its processes by their PIDs as the host sees them.

Faults beyond the process bench's: a package upgrade (dpkg -i of a newer build of the same
.deb, built with DEB_VERSION). The agent's restarts are systemd's: SIGTERM is `systemctl
restart mipart-agent`, a SIGKILL is restarted by Restart=always, a reload is `systemctl reload
mipart-agent`.

Run (root, as the system tier): .venv/bin/python perf/bench_faults_systemd.py [--clients 100] [--only NAME]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent")]

import bench_faults as bench  # noqa: E402
import faults as harness  # noqa: E402
from host import BENCH_PORTS  # noqa: E402
from system.nspawn import Machine, build_deb, create_sim_host, install_deb  # noqa: E402
from system.test_packaging import NEXT  # noqa: E402  (the upgrade's version suffix)

from mipart.api.client import AgentDown, Api  # noqa: E402
from mipart.api.contract import Status, to_json  # noqa: E402
from mipart.names import (  # noqa: E402
    AGENT_UNIT,
    INSTANCE_PATTERN,
    NGINX_FRONT_UNIT,
    NGINX_UNIT,
    RELOAD_CMD_VAR,
    SYSFS_ROOT_VAR,
    instance_number,
    instance_unit,
)
from mipart.sim.fake_profile import FakeEngineProfile, Ports  # noqa: E402

SIM = "/var/lib/mipart-sim"
GUEST_PYTHON = "/usr/bin/python3"


@dataclass
class SystemdTarget:
    """A booted machine serving a FakeEngineProfile under systemd, as bench_faults.Target."""

    m: Machine
    spec: FakeEngineProfile
    count: int = harness.INSTANCES
    upgrade_deb: Path | None = None
    _pidns: str = field(init=False)
    _reported: int = 0  # journal lines problems() has reported

    def __post_init__(self) -> None:
        root = Path(f"/proc/{self.m.leader}/root")
        self.run_dir, self.profile = root / "run/mipart", root / "etc/mipart/profile.yaml"
        self.listen = self.spec.ports.listen
        self._pidns = os.readlink(f"/proc/{self.m.leader}/ns/pid")

    def host_pid(self, unit: str) -> int | None:
        """The unit's main PID as the host sees it (the container has a PID namespace of its own)."""
        inner = self.m.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        if inner in ("", "0"):
            return None
        for entry in os.scandir("/proc"):
            try:
                if entry.name.isdigit() and os.readlink(f"{entry.path}/ns/pid") == self._pidns:
                    nspid = next(
                        line
                        for line in Path(entry.path, "status").read_text().splitlines()
                        if line.startswith("NSpid:")
                    )
                    if nspid.split()[-1] == inner:
                        return int(entry.name)
            except (OSError, StopIteration):
                continue
        return None

    def address(self, number: int) -> str:
        return f"unix:/run/mipart-vllm/sockets/{number}/http.sock"  # as the machine's agent plans it

    def numbers(self) -> list[int]:
        units = self.m.run(f"systemctl list-units --plain --no-legend '{INSTANCE_PATTERN}'").stdout.split()
        return sorted(n for n in map(instance_number, units) if n is not None)

    def instance_pid(self, number: int) -> int:
        pid = self.host_pid(instance_unit(number))
        assert pid, f"{instance_unit(number)} has no main PID"
        return pid

    def master(self, front: bool = False) -> int | None:
        return self.host_pid(NGINX_FRONT_UNIT if front else NGINX_UNIT)

    def nginx_conf(self) -> str:
        try:
            return (self.run_dir / "nginx/nginx.conf").read_text()
        except OSError:
            return ""

    def status(self) -> Status | None:
        try:
            return Api(f"127.0.0.1:{self.spec.ports.api}").read(Status)
        except AgentDown:
            return None

    def journal(self, unit: str = AGENT_UNIT) -> str:
        return self.m.run(f"journalctl -q --no-pager -o cat -u {unit}", check=False).stdout

    def ready_events(self) -> int:
        return self.journal().count("event='agent.ready'")

    def stop_agent(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            self.m.run(f"systemctl restart --no-block {AGENT_UNIT}")
        else:
            os.kill(self.host_pid(AGENT_UNIT), sig)  # Restart=always brings it back

    def reload(self) -> None:
        self.m.run(f"systemctl reload {AGENT_UNIT}")

    def write_profile(self, **changes) -> None:
        # Servers run with the package's user (the profile's default: each as a uid of its own), not as root.
        self.spec = replace(self.spec, user="mipart", **changes)
        self.profile.write_text(self.spec.text())

    def wait_ready(self, count: int, timeout: float) -> None:
        def ready(status: Status) -> bool:
            return status.instances.total == count == status.instances.ready

        bench.wait(lambda: bench.status_says(self, ready), f"{count} of {count} instances ready", timeout=timeout)

    def problems(self) -> str:
        """A traceback or a failed step logged since the last call."""
        hits = [line for line in self.journal().splitlines() if "Traceback" in line or "agent.step_failed" in line]
        new, self._reported = hits[self._reported :], len(hits)
        return f"IN THE AGENT'S JOURNAL ({len(new)}): {new[0][:200]}" if new else ""

    def upgrade(self) -> None:
        self.m.copy_in(self.upgrade_deb, f"/var/tmp/{self.upgrade_deb.name}")
        self.m.run(f"dpkg -i /var/tmp/{self.upgrade_deb.name}", timeout=300)


def upgrade(target: SystemdTarget) -> bench.Injected:
    before = target.ready_events()
    started = time.monotonic()
    fault = harness.Fault("package upgrade (dpkg -i, newer version)", time.time())
    target.upgrade()
    bench.wait(lambda: target.ready_events() > before, "the upgraded agent ready")
    version = target.m.run("dpkg-query -W -f='${Version}' mipart").stdout.strip()
    return fault, time.monotonic() - started, f"{version} installed by dpkg, the agent restarted and ready", None


CASES = {**bench.FAULTS, "upgrade": bench.Case("package upgrade (dpkg -i, newer version)", upgrade)}
# Last, the faults that change what the machine runs for later ones: /run deleted (the repartition
# after it proves nginx is still followed: docs/faults.md, "Why the hardened units may write all
# of /run"), the repartition, the upgrade.
LAST = ("run-deleted", "repartition", "upgrade")
ORDER = [name for name in CASES if name not in LAST] + [bench.HANG, *LAST]


def runner(target: SystemdTarget, tmp: Path, args) -> Callable[[str], harness.Row]:
    """name -> its row, on the one machine, settled again before each fault."""

    def run(name: str) -> harness.Row:
        bench.settled(target)
        return bench.run_case(target, name, CASES, tmp, args)

    return run


def serving(m: Machine, deb: Path, upgrade_deb: Path | None = None) -> SystemdTarget:
    """The package installed in a booted machine, serving the issue's host under systemd."""
    install_deb(m, deb)
    create_sim_host(m, SIM, gpus=2, compute="DPX", memory="NPS2")
    m.run(
        f"printf '%s\\n' '{SYSFS_ROOT_VAR}={SIM}' '{RELOAD_CMD_VAR}=\"mipart sim reload {SIM}\"' >/etc/default/mipart"
    )
    target = SystemdTarget(
        m, harness.fault_profile(Ports.free(*BENCH_PORTS), python=GUEST_PYTHON), upgrade_deb=upgrade_deb
    )
    target.write_profile()
    m.run("systemctl start mipart-partition mipart-agent", timeout=180)
    target.wait_ready(target.count, 180)
    return target


def debs(tmp: Path) -> tuple[Path, Path]:
    """The tree's .deb and a newer build of it (its version + NEXT), as test_packaging builds them."""
    old = build_deb(tmp / "old")
    version = subprocess.run(
        ["dpkg-deb", "-f", str(old), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return old, build_deb(tmp / "new", version + NEXT)


def main() -> int:
    args = bench.parser(ORDER).parse_args()
    with tempfile.TemporaryDirectory(prefix="mipart-bench-faults-systemd-") as tmp:
        tmp = Path(tmp)
        old, new = debs(tmp)
        with Machine(tmp / "machine") as m:
            target = serving(m, old, new)
            try:
                rows = bench.run_all(args, "systemd (nspawn)", runner(target, tmp, args), ORDER)
            except (SystemExit, AssertionError):  # what the machine said, before it goes
                print(json.dumps(to_json(target.status()), indent=1), target.journal()[-6000:], sep="\n")
                raise
    return 0 if sum(r.tally.not_excused for r in rows) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
