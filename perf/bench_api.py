"""Status API latency under an open-loop load, with 64 fake instances running and ready.

A simulated 8 x MI300X host (CPX/NPS4: 64 logical GPUs, 64 fake engines), the real agent
(`--runner process`, health interval 2s) and nginx; the agent's API on a free loopback port.
For each path the bench sends GET requests on a fixed schedule, --rate per second for
--seconds (open loop: request i is due at t0 + i/rate whether or not earlier ones answered),
over a pool of keep-alive HTTP/1.1 connections (raw asyncio streams: a cheap client), and
measures each latency from its *scheduled* time to the end of its body, so a stall shows
up in every request queued behind it. The first second is a warm-up and is not counted.

Printed per path: requests, errors, p50 / p90 / p99 / max latency, the client's own lateness
(p99 of sent - scheduled: if that is large the client, not the agent, was late), and the
agent's CPU over the phase. /healthz (which reads no host state) is run too, as a baseline.

Goal: p99 <= 20 ms for /v1/status, /v1/instances and /metrics.
Run: .venv/bin/python perf/bench_api.py [--rate 200] [--seconds 30] [--paths /v1/status,/v1/instances,/metrics,/healthz]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from bench_health import make_host, revision
from host import cpu_seconds, machine, workdir

from mipart.api.contract import Status

INSTANCES = 64
GOAL_MS = 20.0
REQUEST_TIMEOUT = 5.0
WARMUP = 1.0
BENCH_DEADLINE = 1500.0


class Pool:
    """Keep-alive connections to the API; a new one whenever all are busy."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self):
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    def put(self, conn) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def fetch(pool: Pool, path: str) -> tuple[int, int]:
    """(status, body bytes); (0, 0) on any failure."""
    conn = None
    try:
        conn = await pool.get()
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            pool.put(conn)
        return status, len(body)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        if conn is not None:
            conn[1].close()
        return 0, 0


async def open_loop(port: int, path: str, rate: float, seconds: float) -> list[tuple[float, float, float, int]]:
    """(scheduled, sent, done, status) per request; the schedule is fixed in advance."""
    loop = asyncio.get_running_loop()
    pool = Pool(port)
    results: list[tuple[float, float, float, int]] = []

    async def one(due: float) -> None:
        sent = loop.time()
        try:
            status, _ = await asyncio.wait_for(fetch(pool, path), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            status = 0
        results.append((due, sent, loop.time(), status))

    total = int(rate * (seconds + WARMUP))
    start = loop.time() + 0.05
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT + 10)
    pool.close()
    return [r for r in results if r[0] >= start + WARMUP]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per path (after 1 s warm-up)")
    parser.add_argument("--paths", default="/v1/status,/v1/instances,/metrics,/healthz")
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
            time.sleep(3.0)  # let the last reload and the first probes of everyone pass
            counts = host.api_read(Status, timeout=10).instances
            print(
                f"{INSTANCES} instances ready in {took:.1f} s; /v1/status says total {counts.total}, ready {counts.ready}; "
                f"API on 127.0.0.1:{host.api_port}"
            )
            print(
                f"open loop: {args.rate:g} requests/s for {args.seconds:g} s per path (+{WARMUP:g} s warm-up), keep-alive connections"
            )
            print(
                f"{'path':<14} {'requests':>8} {'errors':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'client late p99':>15} "
                f"{'agent CPU':>9}"
            )
            verdicts = []
            for path in args.paths.split(","):
                cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
                results = asyncio.run(open_loop(host.api_port, path, args.rate, args.seconds))
                cpu = (cpu_seconds(agent.pid) - cpu_before) / (time.monotonic() - wall_before) * 100
                latency = [(done - due) * 1000 for due, _, done, st in results]
                late = [(sent - due) * 1000 for due, sent, _, _ in results]
                errors = sum(1 for *_, st in results if st != 200)
                p99 = percentile(latency, 0.99)
                print(
                    f"{path:<14} {len(results):>8} {errors:>6} {percentile(latency, 0.5):>6.1f}ms {percentile(latency, 0.9):>6.1f}ms "
                    f"{p99:>6.1f}ms {max(latency):>6.1f}ms {percentile(late, 0.99):>13.1f}ms {cpu:>8.0f}%",
                    flush=True,
                )
                if path != "/healthz":
                    verdicts.append((path, p99, errors))
            missed = [p for p, p99, errors in verdicts if p99 > GOAL_MS or errors]
            print(
                f"goal p99 <= {GOAL_MS:g} ms, no errors: {'met' if not missed else 'MISSED for ' + ', '.join(missed)}"
            )
            if host.agent.poll() is not None:
                raise SystemExit(f"the agent exited during the bench\n{host.log_tail()}")
        finally:
            host.close()
    print(machine())


if __name__ == "__main__":
    sys.exit(main())
