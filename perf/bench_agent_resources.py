"""The agent's own footprint with 64 instances ready: memory, and CPU when nothing happens.

A simulated 8 x MI300X host (CPX/NPS4: 64 logical GPUs, 64 fake engines), the real agent
(`--runner process`) and nginx, default health settings (interval 2s, timeout 1s). Once
64/64 are ready and --settle seconds have passed (no API request is made at any time):

  memory  VmRSS / VmHWM / RssAnon / RssFile from /proc/PID/status, Pss / Pss_Anon / Pss_File
          from /proc/PID/smaps_rollup, threads
  CPU     utime + stime from /proc/PID/stat over --seconds (default 60), as % of one core,
          printed per 10 s window too; with voluntary context switches per second (wake-ups)

For scale it also times, in this process, the /proc scan the process runner does once per
interval to list instances (ProcessRunner.list_instances: every process's environ is read);
under systemd that is one ListUnitsByPatterns D-Bus call instead.

Goals: RSS <= 80 MB; idle CPU <= 2 % of one core.
Run: .venv/bin/python perf/bench_agent_resources.py [--seconds 60] [--settle 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from bench_health import make_host, revision
from host import cpu_seconds, machine, workdir

INSTANCES = 64
RSS_GOAL_MB, CPU_GOAL = 80.0, 2.0
BENCH_DEADLINE = 1200.0
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


def proc_scan_ms(run_dir: Path) -> tuple[float, float, int]:
    """Median CPU ms and wall ms of ProcessRunner.list_instances() here, and how many processes /proc held."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
    from mipart.runners.process import ProcessRunner

    runner = ProcessRunner(run_dir)
    cpu, wall = [], []
    for _ in range(20):
        started, started_cpu = time.perf_counter(), time.process_time()
        found = runner.list_instances()
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    if len(found) != INSTANCES:
        print(f"  (list_instances found {len(found)} instances)")
    return (
        statistics.median(cpu) * 1000,
        statistics.median(wall) * 1000,
        sum(1 for name in os.listdir("/proc") if name.isdigit()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after 64/64 ready before measuring")
    parser.add_argument(
        "--agent-pythonpath",
        help="run the agent from another source tree (to compare a change); default: this repo's agent/",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"bench exceeded {BENCH_DEADLINE:g} s")))
    signal.alarm(int(BENCH_DEADLINE))
    print(machine())
    print(revision() if not args.agent_pythonpath else f"agent from {args.agent_pythonpath}")
    with workdir() as tmp:
        host = make_host(tmp, INSTANCES)
        try:
            agent = host.start_agent({"PYTHONPATH": args.agent_pythonpath} if args.agent_pythonpath else None)
            took = host.wait_ready(INSTANCES, timeout=600)
            time.sleep(args.settle)
            print(f"{INSTANCES} instances ready in {took:.1f} s, then {args.settle:g} s settle; agent pid {agent.pid}")
            mem = memory(agent.pid)
            print(
                f"memory: VmRSS {mem['rss']:.1f} MB (RssAnon {mem['anon']:.1f} + RssFile {mem['file']:.1f}), VmHWM {mem['hwm']:.1f} MB, "
                f"PSS {mem['pss']:.1f} MB (anon {mem['pss_anon']:.1f}, file {mem['pss_file']:.1f}), {mem['threads']} threads"
            )
            restarts_before = host.log_tail(10**8).count("event='instance.restart'")
            load_before = Path("/proc/loadavg").read_text().split()[0]
            cpu0, wall0, sw0 = cpu_seconds(agent.pid), time.monotonic(), mem["vcsw"]
            windows = []
            last_cpu, last_wall = cpu0, wall0
            while time.monotonic() - wall0 < args.seconds - 0.01:
                time.sleep(min(WINDOW, args.seconds - (time.monotonic() - wall0)))
                cpu, now = cpu_seconds(agent.pid), time.monotonic()
                windows.append((cpu - last_cpu) / (now - last_wall) * 100)
                last_cpu, last_wall = cpu, now
            wall = time.monotonic() - wall0
            cpu = (cpu_seconds(agent.pid) - cpu0) / wall * 100
            after = memory(agent.pid)
            restarts = host.log_tail(10**8).count("event='instance.restart'") - restarts_before
            ready = host.ready_line()
            print(
                f"idle CPU over {wall:.0f} s: {cpu:.2f} % of one core (per {WINDOW:g} s: {', '.join(f'{w:.1f}' for w in windows)} %); "
                f"{(after['vcsw'] - sw0) / wall:.1f} voluntary context switches/s; "
                f"loadavg {load_before} -> {Path('/proc/loadavg').read_text().split()[0]}; "
                f"meanwhile {restarts} instance restarts, nginx.conf {ready[0]}/{ready[1]} ready"
            )
            print(f"memory after: VmRSS {after['rss']:.1f} MB, PSS {after['pss']:.1f} MB, VmHWM {after['hwm']:.1f} MB")
            scan_cpu, scan_wall, processes = proc_scan_ms(host.run_dir)
            print(
                f"process runner's /proc scan (list_instances, once per interval), timed here: {scan_cpu:.2f} ms CPU ({scan_wall:.1f} ms wall) "
                f"with {processes} processes = {scan_cpu / 1000 / 2.0 * 100:.2f} % of one core at one scan per 2 s"
            )
            rss_ok, cpu_ok = max(mem["rss"], after["rss"]) <= RSS_GOAL_MB, cpu <= CPU_GOAL
            print(
                f"goal RSS <= {RSS_GOAL_MB:g} MB: {'met' if rss_ok else 'MISSED'}; goal idle CPU <= {CPU_GOAL:g} %: {'met' if cpu_ok else 'MISSED'}"
            )
        finally:
            host.close()
    print(machine())


if __name__ == "__main__":
    sys.exit(main())
