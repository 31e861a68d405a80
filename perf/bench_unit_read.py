"""What the systemd runner's unit reads cost on real systemd: 64 instance units, in nspawn.

The systemd runner reads unit state through runners.unit_state: once per health interval for
the 64 instances (a glob, `mipart-vllm@*.service`), and once per layer for whether each nginx
unit runs (NginxLayer's periodic check). This boots the system tier's container
(tests/system/nspawn.py, root), loads a template unit whose instances sleep, starts 64 of them
and both nginx units, then:

- runs the reader itself inside the container (this tree's agent/ copied in, the container's
  python3 and python3-jeepney), --calls times per read, old (`systemctl show`, the fallback) and new
  (D-Bus in process, runners.unit_bus), and prints per call the CPU of the reading process (its
  own, all threads), of its children (systemctl) and of the container's systemd (PID 1:
  /proc/PID/stat, utime + stime, before and after); and the same for one health interval's reads;
- for comparison, command lines run from a shell: the CPU of the child process (the shell's
  `times`) and of PID 1.

Figures are % of one core at one read (or interval) per 2 s.

Run (root): .venv/bin/python perf/bench_unit_read.py [--calls 100]
"""

from __future__ import annotations

import argparse
import json
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
NGINX = ("mipart-nginx.service", "mipart-nginx-front.service")
AGENT = "/opt/bench-agent"  # this tree's agent/, in the container
# The reader in the container: per read, CPU of the process, of its children, as JSON (PID 1 is measured outside).
READER = """
import json, os, sys, time
from mipart.runners import unit_bus, unit_state
calls, transport, reads = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if transport == "systemctl":
    unit_bus.connect = lambda: None
assert transport == "systemctl" or unit_bus.connect() is not None, "no system bus"
def once():
    for units in reads:
        shown = unit_state.show(units, unit_state.STATE)
        assert shown and all(p["ActiveState"] == "active" for p in shown.values()), shown
once()
cpu, children = time.process_time(), os.times().children_user + os.times().children_system
for _ in range(calls):
    once()
children = os.times().children_user + os.times().children_system - children
print(json.dumps([(time.process_time() - cpu) / calls, children / calls]))
"""
IN_PROCESS = {
    "64 instances (glob)": [["mipart-vllm@*.service"]],
    "one nginx unit": [[NGINX[0]]],
    "one health interval (the glob, then each nginx unit)": [["mipart-vllm@*.service"], [NGINX[0]], [NGINX[1]]],
}
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


def reader(m: Machine, transport: str, reads: list[list[str]], calls: int) -> tuple[float, float, float]:
    """(ms of CPU in the reading process, in its children, in PID 1) per read (or interval)."""
    command = (
        f"PYTHONPATH={AGENT} python3 -c {shlex.quote(READER)} {calls} {transport} {shlex.quote(json.dumps(reads))}"
    )
    pid1 = cpu_seconds(m.leader)
    own, children = json.loads(m.run(command, timeout=600).stdout.splitlines()[-1])
    # PID 1's share of the interpreter's start and of the one warm-up read is left in: it is small and the same for both
    return own * 1000, children * 1000, (cpu_seconds(m.leader) - pid1) / calls * 1000


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
        for unit in NGINX:
            m.pre_boot(lambda m, unit=unit: (m.rootfs / "etc/systemd/system" / unit).write_text(UNIT))
        m.run(f"systemctl start {' '.join(NGINX)} " + " ".join(f"mipart-vllm@{n}" for n in range(INSTANCES)))
        m.copy_in(REPO / "agent", AGENT)
        running = m.run("systemctl list-units --no-legend --state=running 'mipart-vllm@*'").stdout.count("\n")
        print(f"{running} instance units running")
        for what, reads in IN_PROCESS.items():
            for transport in ("systemctl", "dbus"):
                own, children, pid1 = reader(m, transport, reads, args.calls)
                print(
                    f"reader, {transport}, {what}: agent {own:.2f} ms CPU + systemctl {children:.2f} ms + systemd "
                    f"{pid1:.2f} ms = {(own + children + pid1) / 2000 * 100:.3f} % of one core at one per 2 s"
                )
        for what, command in READS.items():
            child, pid1 = per_call(m, command, args.calls)
            print(
                f"{what}: systemctl {child:.2f} ms CPU + systemd {pid1:.2f} ms per call = "
                f"{(child + pid1) / 2000 * 100:.2f} % of one core at one call per 2 s"
            )
    print(machine())


if __name__ == "__main__":
    main()
