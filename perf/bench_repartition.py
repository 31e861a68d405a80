"""Repartition while serving: from the operator's command to full serving on the new layout.

A simulated 8 x MI300X host serves through the real agent (`--runner process`), a real nginx
and fake engines (1 s model load) that hold their simulated GPUs open. Each round edits
`gpus:` (DPX/NPS2 <-> CPX/NPS1: 16 <-> 64 instances, a memory change, so the host-wide path with
its driver reload; a change without one rolls GPU by GPU: perf/bench_rolling.py) and sends the agent
SIGHUP, what `systemctl reload mipart-agent` does; the readiness notice is 1 s (gpus.drain_notice,
10 s by default, is the fleet balancer's time and would only add itself). It prints per round:

  total    SIGHUP -> every new instance ready in nginx.conf and the status API, and one 200
           through nginx (the harness's wait_ready)
  drain    SIGHUP -> the first instance stop (nginx answers 503 from here on)
  stop     first stop -> the partition applied (stop, wait for the GPUs to be free, write, verify)
  start    applied -> the agent's repartition done (spec files written, every start issued)
  ready    done -> full serving (model loads, health probes, nginx reload)

The phase times come from the agent's own log lines. A bounded client loop runs through
nginx for every round; its answers are counted (goal: only 200 and the 503 JSON answer).

Run: .venv/bin/python perf/bench_repartition.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from datetime import datetime

from host import MODEL, BenchHost, machine, workdir

from mipart.sim.clients import ClientLoop

LAYOUTS = (("DPX", "NPS2", 16), ("CPX", "NPS1", 64))
EVENTS = {
    "stop": r"event='instance\.stop' unit='mipart-vllm@\d+' reason='repartition'",
    "applied": r"event='repartition\.applied'",
    "done": r"event='repartition\.done' ok=True",
}


def first_time(log: str, pattern: str) -> float:
    """Wall-clock time of the first log line matching `pattern` (the agent logs UTC ISO times)."""
    for line in log.splitlines():
        if re.search(pattern, line):
            stamp = re.search(r"timestamp='([^']+)'", line).group(1)
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise SystemExit(f"no log line matches {pattern!r}")


def run_round(host: BenchHost, compute: str, memory: str, count: int) -> dict:
    offset = len(host.log_text())
    host.write_profile(compute=compute, memory=memory, drain_notice="1s")
    sent, started = time.time(), time.monotonic()
    host.hup()
    host.wait_ready(count, timeout=600)
    total = time.monotonic() - started
    log = host.log_text()[offset:]
    stop, applied, done = (first_time(log, EVENTS[k]) for k in ("stop", "applied", "done"))
    return {
        "to": f"{compute} ({count})",
        "total": total,
        "drain": stop - sent,
        "stop": applied - stop,
        "start": done - applied,
        "ready": total - (done - sent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="layout changes, alternating DPX -> CPX -> DPX ...")
    args = parser.parse_args()
    print(machine())
    rows = []
    with workdir() as tmp:
        host = BenchHost(tmp, compute="DPX", memory="NPS2", rules="rocm-mi300x")  # CPX/NPS2: seed 000's rules
        try:
            host.start_agent()
            host.wait_ready(16, timeout=300)
            print(f"{'#':>3} {'to':>9} {'total':>8} {'drain':>7} {'stop':>7} {'start':>7} {'ready':>7}")
            with ClientLoop(host.listen, MODEL, limit=1800, pause=0.02) as clients:
                for index in range(args.rounds):
                    compute, memory, count = LAYOUTS[(index + 1) % 2]
                    row = run_round(host, compute, memory, count)
                    rows.append(row)
                    print(
                        f"{index + 1:>3} {row['to']:>9} {row['total']:>6.2f} s"
                        + "".join(f" {row[k]:>5.2f} s" for k in ("drain", "stop", "start", "ready")),
                        flush=True,
                    )
                    time.sleep(1.0)
        finally:
            host.close()
    for target in {r["to"] for r in rows}:
        totals = [r["total"] for r in rows if r["to"] == target]
        print(
            f"to {target}: command -> full serving median {statistics.median(totals):.2f} s, max {max(totals):.2f} s over {len(totals)} rounds"
        )
    print(
        f"answers through nginx meanwhile: {dict(sorted(clients.seen.items()))} (goal: only 200 and 503 ServiceUnavailable)"
    )


if __name__ == "__main__":
    main()
