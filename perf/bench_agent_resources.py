"""The agent's own footprint with 64 instances ready: memory, and CPU when nothing happens.

A simulated 8 x MI300X host (CPX/NPS4: 64 logical GPUs, 64 fake engines), the real agent
(`--runner process`) and nginx, default health settings (interval 2s, timeout 1s). Once
64/64 are ready and --settle seconds have passed (no API request is made at any time):

  memory  VmRSS / VmHWM / RssAnon / RssFile from /proc/PID/status, Pss / Pss_Anon / Pss_File
          from /proc/PID/smaps_rollup, threads
  CPU     utime + stime from /proc/PID/stat over --seconds (default 60), as % of one core,
          printed per 10 s window too; with voluntary context switches per second (wake-ups)

With --compare DIR it runs a second agent (from another tree's agent/, e.g. the commit before
a change) on the same host, interleaved with the first, --runs times each in the order A B,
B A, A B...: each agent is started on the engines already serving (the process runner adopts
them, as after an agent restart), measured, and stopped. The figure is the median per agent,
with the ratio; the machine line before and after says what else loaded the host.

For scale it also times, in this process, the unit read the process runner does once per
interval (ProcessRunner.list_instances: the launch records of 64 servers); under systemd that
is one D-Bus list call instead (runners.unit_state; perf/bench_unit_read.py measures it).

The agent runs under the interpreter mipart-agent.service runs (/usr/bin/python3 with Debian's
packages) when that has the runtime dependencies: a test venv's extras (its .pth hooks; rich,
which structlog imports when present) add about 5 MB an installed agent does not carry. The
agent here runs the process runner; the bench prints what the systemd runner's modules add to
its imports (measured by import: D-Bus is runners.unit_bus, which both load).

Goals (issue 22): RSS <= 40 MB; idle CPU <= 1 % of one core, the median of several runs.
Run: .venv/bin/python perf/bench_agent_resources.py [--seconds 60] [--settle 10] [--runs 5]
     [--compare OTHER_TREE/agent]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_health import make_host, revision
from host import cpu_seconds, machine, workdir

INSTANCES = 64
RSS_GOAL_MB, CPU_GOAL = 40.0, 1.0  # issue 22
BENCH_DEADLINE = 1200.0
DEB_PYTHON = "/usr/bin/python3"  # what mipart-agent.service runs
WINDOW = 10.0


def status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def kb(text: str) -> float:
    """'12345 kB' -> MB."""
    return int(text.split()[0]) / 1024


def smaps_rollup(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            found[key] = kb(value.strip())
    return found


def memory(pid: int) -> dict[str, float]:
    status, rollup = status_fields(pid), smaps_rollup(pid)
    return {
        "rss": kb(status["VmRSS"]),
        "hwm": kb(status["VmHWM"]),
        "anon": kb(status["RssAnon"]),
        "file": kb(status["RssFile"]),
        "pss": rollup.get("Pss", 0.0),
        "pss_anon": rollup.get("Pss_Anon", 0.0),
        "pss_file": rollup.get("Pss_File", 0.0),
        "threads": int(status["Threads"]),
        "vcsw": int(status["voluntary_ctxt_switches"]),
        "ivcsw": int(status["nonvoluntary_ctxt_switches"]),
    }


def unit_read_ms(serving_dir: Path) -> tuple[float, float]:
    """Median CPU ms and wall ms of ProcessRunner.list_instances() here: the unit read of every health interval
    (the launch records of 64 servers; under systemd one `systemctl show` instead)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
    from mipart.names import SERVING_DIR_VAR
    from mipart.runners.process import ProcessRunner

    os.environ[SERVING_DIR_VAR] = str(serving_dir)
    runner = ProcessRunner(serving_dir)
    cpu, wall = [], []
    for _ in range(20):
        started, started_cpu = time.perf_counter(), time.process_time()
        found = runner.list_instances()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    if len(found) != INSTANCES:
        print(f"  (list_instances found {len(found)} instances)")
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def installed_python() -> str:
    """The interpreter the .deb's agent runs (/usr/bin/python3 with Debian's packages) when it has the runtime
    dependencies; else this one. A test venv's extras (.pth hooks, rich beside structlog) would add to the RSS."""
    probe = (
        subprocess.run(
            [DEB_PYTHON, "-c", "import aiohttp, structlog, yaml, click, sdnotify"], capture_output=True, check=False
        )
        if Path(DEB_PYTHON).exists()
        else None
    )
    return DEB_PYTHON if probe is not None and probe.returncode == 0 else sys.executable


SYSTEMD_COST = """
import mipart.daemon.loop, mipart.runners.process
def rss(): return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
before = rss()
import mipart.runners.systemd
print(f"{rss() - before:.1f}")
"""


def systemd_cost(python: str, pythonpath: str) -> str:
    """MB that the systemd runner's imports add to an agent's beside the process runner's."""
    done = subprocess.run(
        [python, "-c", SYSTEMD_COST], capture_output=True, env={**os.environ, "PYTHONPATH": pythonpath}, check=False
    )
    return done.stdout.decode().strip() or f"? ({done.stderr.decode().strip().splitlines()[-1:]})"


def platform_of(python: str) -> str:
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True)
    return done.stdout.decode().strip() or "?"


def measure(host, label: str, pythonpath: str | None, seconds: float, settle: float, python: str) -> dict[str, float]:
    """One agent's run: started on the host (its instances already serving, or started by it), 64/64 ready,
    `settle` seconds, then its memory and its CPU over `seconds`; stopped after."""
    agent = host.start_agent({"PYTHONPATH": pythonpath} if pythonpath else None, python=python)
    try:
        took = host.wait_ready(INSTANCES, timeout=600)
        time.sleep(settle)
        mem = memory(agent.pid)
        restarts_before = host.log_tail(10**8).count("event='instance.restart'")
        load_before = Path("/proc/loadavg").read_text().split()[0]
        cpu0, wall0 = cpu_seconds(agent.pid), time.monotonic()
        windows = []
        last_cpu, last_wall = cpu0, wall0
        while time.monotonic() - wall0 < seconds - 0.01:
            time.sleep(min(WINDOW, seconds - (time.monotonic() - wall0)))
            cpu, now = cpu_seconds(agent.pid), time.monotonic()
            windows.append((cpu - last_cpu) / (now - last_wall) * 100)
            last_cpu, last_wall = cpu, now
        wall = time.monotonic() - wall0
        cpu = (cpu_seconds(agent.pid) - cpu0) / wall * 100
        after = memory(agent.pid)
        restarts = host.log_tail(10**8).count("event='instance.restart'") - restarts_before
        ready = host.ready_line()
    finally:
        host.stop_agent()
    print(
        f"{label}: ready in {took:.1f} s; idle CPU {cpu:.2f} % of one core over {wall:.0f} s "
        f"(per {WINDOW:g} s: {', '.join(f'{w:.1f}' for w in windows)}); "
        f"{(after['vcsw'] - mem['vcsw']) / wall:.1f} voluntary context switches/s; "
        f"VmRSS {mem['rss']:.1f} -> {after['rss']:.1f} MB (RssAnon {after['anon']:.1f} + RssFile {after['file']:.1f}), "
        f"VmHWM {after['hwm']:.1f} MB, PSS {after['pss']:.1f} MB, {after['threads']} threads; "
        f"loadavg {load_before} -> {Path('/proc/loadavg').read_text().split()[0]}; "
        f"{restarts} instance restarts, nginx.conf {ready[0]}/{ready[1]} ready",
        flush=True,
    )
    return {"cpu": cpu, "rss": max(mem["rss"], after["rss"]), "hwm": after["hwm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window of each run")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after 64/64 ready before measuring")
    parser.add_argument("--runs", type=int, default=1, help="runs of each agent (the median is the figure)")
    parser.add_argument(
        "--agent-pythonpath",
        help="run the agent from another source tree (to compare a change); default: this repo's agent/",
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also run the agent from DIR (another tree's agent/), interleaved with the first on the same host",
    )
    parser.add_argument(
        "--agent-python",
        help="the interpreter that runs the agent; default: /usr/bin/python3 when it has the runtime dependencies "
        "(as installed from the .deb), else this one",
    )
    args = parser.parse_args()
    python = args.agent_python or installed_python()
    if not os.access(python, os.X_OK):
        parser.error(
            f"--agent-python {python}: not an executable file; give an interpreter path such as /usr/bin/python3"
        )
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"bench exceeded {BENCH_DEADLINE:g} s")))
    signal.alarm(int(BENCH_DEADLINE))
    print(machine())
    print(revision() if not args.agent_pythonpath else f"agent from {args.agent_pythonpath}")
    print(f"agent interpreter: {python} (Python {platform_of(python)})")
    agents = [("A", args.agent_pythonpath)] + ([("B", args.compare)] if args.compare else [])
    if args.compare:
        print(f"B: agent from {args.compare}; order A B, B A, ... (one host, its engines kept across agents)")
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in agents}
    with workdir() as tmp:
        host = make_host(tmp, INSTANCES)
        try:
            for run in range(args.runs):
                for label, pythonpath in agents if run % 2 == 0 else agents[::-1]:
                    results[label].append(
                        measure(host, f"run {run + 1} {label}", pythonpath, args.seconds, args.settle, python)
                    )
            scan_cpu, scan_wall = unit_read_ms(host.serving_dir)
            print(
                f"process runner's unit read (list_instances, once per interval), timed here: {scan_cpu:.2f} ms CPU "
                f"({scan_wall:.1f} ms wall) = {scan_cpu / 1000 / 2.0 * 100:.2f} % of one core at one read per 2 s"
            )
        finally:
            host.close()
    for label, runs in results.items():
        cpu, rss = statistics.median(r["cpu"] for r in runs), max(r["rss"] for r in runs)
        each = ", ".join(f"{r['cpu']:.2f}" for r in runs)
        print(
            f"{label}: median idle CPU {cpu:.2f} % of one core over {len(runs)} runs "
            f"({each}); largest VmRSS {rss:.1f} MB; "
            f"goal RSS <= {RSS_GOAL_MB:g} MB: {'met' if rss <= RSS_GOAL_MB else 'MISSED'}; "
            f"goal idle CPU <= {CPU_GOAL:g} %: {'met' if cpu <= CPU_GOAL else 'MISSED'}"
        )
    agent_tree = args.agent_pythonpath or str(Path(__file__).resolve().parents[1] / "agent")
    print(f"under systemd the agent's runner imports add +{systemd_cost(python, agent_tree)} MB")
    if args.compare:
        a, b = (statistics.median(r["cpu"] for r in results[label]) for label in ("A", "B"))
        print(f"A / B median idle CPU: {a / b:.2f}")
    print(machine())


if __name__ == "__main__":
    sys.exit(main())
