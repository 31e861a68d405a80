"""The agent's memory and idle CPU as the .deb runs it: under real systemd (nspawn, the system
tier's machine, tests/system/nspawn.py), mipart-agent.service with 64 ready instances.

perf/bench_agent_resources.py measures the same on the process runner (no systemd here); this
one gives the figure an operator sees: the unit's own interpreter and Debian's packages only (the
.deb's dependency closure, nothing a developer machine adds), the systemd runner, unit states
over D-Bus, the unit's sandbox. The host is bench_health's: 8 simulated MI300X in CPX/NPS4, one
fake engine per logical GPU (64 units), default health settings. After 64/64 ready and a settle,
per run: the agent's VmRSS, RssAnon/RssFile, PSS, then its CPU over --seconds with no API
request; `systemctl restart mipart-agent` between runs (the instances keep serving).

Goals (issue 22): RSS <= 40 MB; idle CPU <= 1 % of one core.
Run (root, as the system tier; about 6 minutes): .venv/bin/python perf/bench_agent_systemd.py [--runs 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent")]

from bench_agent_resources import CPU_GOAL, INSTANCES, RSS_GOAL_MB, memory  # noqa: E402
from bench_faults_systemd import GUEST_PYTHON, SIM, SystemdTarget  # noqa: E402
from bench_health import HOST_PROFILE, revision  # noqa: E402
from host import BENCH_PORTS, cpu_seconds, machine  # noqa: E402
from system.nspawn import Machine, build_deb, create_sim_host, install_deb  # noqa: E402

from mipart.names import AGENT_UNIT, RELOAD_CMD_VAR, SYSFS_ROOT_VAR  # noqa: E402
from mipart.sim.fake_profile import FakeEngineProfile, Ports  # noqa: E402


def serving(m: Machine, deb: Path) -> SystemdTarget:
    """The package installed, 8 GPUs in CPX/NPS4, 64 fake engines as units, the agent ready."""
    install_deb(m, deb)
    create_sim_host(m, SIM, gpus=8, compute="CPX", memory="NPS4")
    m.run(
        f"printf '%s\\n' '{SYSFS_ROOT_VAR}={SIM}' '{RELOAD_CMD_VAR}=\"mipart sim reload {SIM}\"' >/etc/default/mipart"
    )
    spec = FakeEngineProfile(Ports.free(*BENCH_PORTS), partitions="all", python=GUEST_PYTHON, **HOST_PROFILE)
    target = SystemdTarget(m, spec, count=INSTANCES)
    target.write_profile()
    m.run("systemctl start mipart-partition mipart-agent", timeout=600)
    target.wait_ready(INSTANCES, 900)
    return target


def measure(target: SystemdTarget, label: str, seconds: float, settle: float) -> dict[str, float]:
    target.wait_ready(INSTANCES, 300)
    time.sleep(settle)
    pid = target.host_pid(AGENT_UNIT)
    assert pid, "mipart-agent has no main PID"
    mem = memory(pid)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
    after = memory(pid)
    problems = target.problems()
    print(
        f"{label}: idle CPU {cpu:.2f} % of one core over {seconds:.0f} s; "
        f"VmRSS {mem['rss']:.1f} -> {after['rss']:.1f} MB (RssAnon {after['anon']:.1f} + RssFile {after['file']:.1f}), "
        f"VmHWM {after['hwm']:.1f} MB, PSS {after['pss']:.1f} MB, {after['threads']} threads"
        + (f"; {problems}" if problems else ""),
        flush=True,
    )
    return {"cpu": cpu, "rss": max(mem["rss"], after["rss"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window of each run")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after 64/64 ready before measuring")
    parser.add_argument("--runs", type=int, default=3, help="runs, the agent restarted between them")
    args = parser.parse_args()
    print(machine())
    print(revision())
    runs = []
    with tempfile.TemporaryDirectory(prefix="mipart-bench-agent-systemd-") as tmp:
        deb = build_deb(Path(tmp) / "deb")
        with Machine(Path(tmp) / "machine") as m:
            target = serving(m, deb)
            interpreter = m.run(f"{GUEST_PYTHON} -c 'import platform; print(platform.python_version())'")
            print(f"agent: {AGENT_UNIT} under the machine's systemd, {GUEST_PYTHON} {interpreter.stdout.strip()}")
            for run in range(args.runs):
                if run:
                    m.run(f"systemctl restart {AGENT_UNIT}", timeout=300)
                runs.append(measure(target, f"run {run + 1}", args.seconds, args.settle))
    cpu, rss = statistics.median(r["cpu"] for r in runs), max(r["rss"] for r in runs)
    print(
        f"median idle CPU {cpu:.2f} % of one core over {len(runs)} runs; largest VmRSS {rss:.1f} MB; "
        f"goal RSS <= {RSS_GOAL_MB:g} MB: {'met' if rss <= RSS_GOAL_MB else 'MISSED'}; "
        f"goal idle CPU <= {CPU_GOAL:g} %: {'met' if cpu <= CPU_GOAL else 'MISSED'}"
    )
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
