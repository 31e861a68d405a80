"""What the systemd runner's unit reads cost on real systemd: 64 instance units, in nspawn.

The systemd runner reads unit state with `systemctl show` (runners.unit_state): once per
health interval for the 64 instances (a glob, `mipart-vllm@*.service`), and once per layer for
whether each nginx unit runs (NginxLayer's periodic check); and, for comparison, the states
alone from one ListUnitsByPatterns (`systemctl list-units`, `busctl call`). This boots the system tier's
container (tests/system/nspawn.py, root), loads a template unit whose instances sleep, starts
64 of them, then runs each read --calls times inside the container and prints, per call, the
CPU of the systemctl process (its user + system time, from the shell's `times`) and of the
container's systemd (PID 1: /proc/PID/stat, utime + stime, before and after), as % of one
core at one call per 2 s.

Run (root): .venv/bin/python perf/bench_unit_read.py [--calls 100]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent")]

from host import cpu_seconds, machine  # noqa: E402
from system.nspawn import Machine  # noqa: E402

INSTANCES = 64
UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"
READS = {
    "64 instances (glob)": "systemctl show -p Id,ActiveState,SubState,MainPID -- 'mipart-vllm@*.service'",
    "one nginx unit": "systemctl show -p Id,ActiveState,SubState,MainPID -- mipart-nginx.service",
    # for comparison: the states alone, one ListUnitsByPatterns (no MainPID), through systemctl and through busctl
    "list-units, 64 instances and nginx": "systemctl list-units --all --plain --no-legend --no-pager "
    "'mipart-vllm@*.service' 'mipart-nginx*.service'",
    "busctl ListUnitsByPatterns": "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
    "org.freedesktop.systemd1.Manager ListUnitsByPatterns asas 0 2 'mipart-vllm@*.service' 'mipart-nginx*.service'",
}


def per_call(m: Machine, command: str, calls: int) -> tuple[float, float]:
    """(ms of CPU in systemctl, ms in PID 1) per call."""
    script = f"for i in $(seq {calls}); do {command} >/dev/null; done; times"
    pid1 = cpu_seconds(m.leader)
    out = m.run(f"bash -c {shlex.quote(script)}").stdout.split()
    pid1 = cpu_seconds(m.leader) - pid1
    children = sum(_seconds(t) for t in out[-2:])  # `times`: the shell's own, then its children's user and system
    return children / calls * 1000, pid1 / calls * 1000


def _seconds(text: str) -> float:
    minutes, _, seconds = text.rstrip("s").partition("m")
    return int(minutes) * 60 + float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="mipart-unitread-") as tmp, Machine(Path(tmp)) as m:
        m.pre_boot(lambda m: (m.rootfs / "etc/systemd/system/mipart-vllm@.service").write_text(UNIT))
        m.pre_boot(lambda m: (m.rootfs / "etc/systemd/system/mipart-nginx.service").write_text(UNIT))
        m.run("systemctl start mipart-nginx.service " + " ".join(f"mipart-vllm@{n}" for n in range(INSTANCES)))
        running = m.run("systemctl list-units --no-legend --state=running 'mipart-vllm@*'").stdout.count("\n")
        print(f"{running} instance units running")
        for what, command in READS.items():
            child, pid1 = per_call(m, command, args.calls)
            print(
                f"{what}: systemctl {child:.2f} ms CPU + systemd {pid1:.2f} ms per call = "
                f"{(child + pid1) / 2000 * 100:.2f} % of one core at one call per 2 s"
            )
    print(machine())


if __name__ == "__main__":
    main()
