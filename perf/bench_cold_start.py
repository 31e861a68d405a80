"""Cold start to full serving: mipart (all instances at once) against a serial start.

For each N, on a simulated 8 x MI300X CPX/NPS4 host (64 logical GPUs) with the profile's
services.chat.partitions = "0-{N-1}" and fake engines that load for a fixed --startup-delay
(5 s), it times:

  mipart  from starting `mipart agent --runner process` (nothing running, no nginx) until
          nginx.conf says `# service chat: N/N instances ready` AND a completion sent through
          nginx answers 200;
  serial  the seed's method: start one engine (`python -m mipart.sim.engine`, directly), wait
          for its /health 200, then start the next; until the N-th answers.

Serial runs take N x (delay + interpreter start), so only N <= --serial-max is measured; larger
N are extrapolated from the largest measured serial run's seconds per instance, and printed
as such. Pass --serial-max 64 to measure them all (about 5.5 min for N = 64).

Goal: about the startup delay (5 s), flat in N. Every fake engine is a Python process (plus a
`mipart exec` launcher interpreter before it): on a small machine the N interpreter starts
compete for the CPUs, which bounds what any starter can reach; the table says how much.

Run: .venv/bin/python perf/bench_cold_start.py [--ns 1,4,16,64] [--serial-max 16] [--startup-delay 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import ENV
from host import BenchHost, cpu_seconds, free_ports, health_ok, kill, machine, request, workdir

TIMEOUT = 600.0
POLL = 0.02


def mipart_cold_start(n: int, delay: float) -> tuple[float, float, float, float]:
    """Seconds from agent start to N/N ready in nginx.conf + a 200 through nginx, and to the conf line alone;
    CPU seconds the instances (launcher + engine) and the agent had used by then."""
    with workdir() as tmp:
        host = BenchHost(tmp, compute="CPX", memory="NPS4", partitions=f"0-{n - 1}", delay=delay)
        try:
            started = time.monotonic()
            host.start_agent()
            deadline = started + TIMEOUT
            conf_at = None
            while True:
                if host.agent.poll() is not None:
                    raise SystemExit(f"agent exited {host.agent.returncode}\n{host.log_tail()}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"N={n}: {host.ready_line()} after {TIMEOUT}s\n{host.log_tail()}")
                if host.ready_line() == (n, n):
                    conf_at = conf_at or time.monotonic()
                    if request(host.listen, timeout=5)[0] == 200:
                        full = time.monotonic() - started
                        engines = sum(cpu_seconds(pid) for pid in host.instance_pids().values())
                        return full, conf_at - started, engines, cpu_seconds(host.agent.pid)
                time.sleep(POLL)
        finally:
            host.close()


def serial_start(n: int, delay: float) -> float:
    """The seed's way: one engine at a time, each waited for before the next."""
    base = free_ports(n)
    engines: list[subprocess.Popen] = []
    started = time.monotonic()
    deadline = started + TIMEOUT * 2
    try:
        for number in range(n):
            port = base + number
            engines.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mipart.sim.engine",
                        "--port",
                        str(port),
                        "--startup-delay",
                        str(delay),
                        "--tokens-per-second",
                        "1000",
                        "--model",
                        "test/fake-llm",
                    ],
                    env=ENV,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            while not health_ok(port, timeout=0.5):
                if engines[-1].poll() is not None:
                    raise SystemExit(f"serial engine on port {port} exited {engines[-1].returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"serial start of {n} timed out")
                time.sleep(POLL)
        return time.monotonic() - started
    finally:
        for engine in engines:
            kill(engine.pid)
            engine.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default="1,4,16,64", help="comma-separated instance counts (1-64)")
    parser.add_argument(
        "--serial-max", type=int, default=16, help="measure the serial start only up to this N; extrapolate above"
    )
    parser.add_argument("--startup-delay", type=float, default=5.0, help="fake engine load time, seconds")
    args = parser.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    if any(not 1 <= n <= 64 for n in ns):
        raise SystemExit("--ns: each N must be 1-64")
    print(machine())
    print(f"startup delay {args.startup_delay:g} s; host 8 x MI300X CPX/NPS4 (64 logical GPUs), partitions 0-(N-1)")
    rows = []
    per_instance = None
    for n in ns:
        full, conf, engines_cpu, agent_cpu = mipart_cold_start(n, args.startup_delay)
        if n <= args.serial_max:
            serial = serial_start(n, args.startup_delay)
            per_instance = serial / n
            label = "measured"
        else:
            serial, label = None, "extrapolated"
        rows.append((n, full, conf, serial, label, engines_cpu, agent_cpu))
        print(
            f"  N={n}: mipart {full:.2f} s (conf N/N at {conf:.2f} s; CPU used by then: instances {engines_cpu:.1f} s, agent {agent_cpu:.1f} s)"
            + (f", serial {serial:.2f} s" if serial else ""),
            flush=True,
        )
    print()
    cpus = os.cpu_count() or 1
    print(
        f"{'N':>3} {'mipart s':>9} {'(conf N/N)':>11} {'serial s':>9} {'serial is':>13} {'serial/mipart':>14} {'mipart - delay':>15} {'CPU floor':>10}"
    )
    for n, full, conf, serial, label, engines_cpu, agent_cpu in rows:
        if serial is None:
            if per_instance is None:
                serial_text, ratio_text = "-", "-"
            else:
                serial = per_instance * n
                serial_text, ratio_text = f"~{serial:.1f}", f"~{serial / full:.1f}x"
        else:
            serial_text, ratio_text = f"{serial:.1f}", f"{serial / full:.1f}x"
        print(
            f"{n:>3} {full:>9.2f} {conf:>11.2f} {serial_text:>9} {label if serial else '-':>13} {ratio_text:>14} {full - args.startup_delay:>13.2f} s {(engines_cpu + agent_cpu) / cpus:>8.1f} s"
        )
    if per_instance is not None and any(r[3] is None for r in rows):
        print(
            f"extrapolated serial = N x {per_instance:.2f} s (seconds per instance of the largest measured serial run)"
        )
    print(
        f"CPU floor = CPU seconds the instances (launcher + engine start) and the agent used until full serving, / {cpus} CPUs:"
        " starting N interpreters at once needs about that much wall time before the last engine even begins its delay"
    )


if __name__ == "__main__":
    sys.exit(main())
