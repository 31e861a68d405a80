"""Ready-to-route latency: from an instance's first /health 200 to nginx sending it a request.

64 fake instances (8 x MI300X CPX/NPS4, simulated) serve through the real agent and nginx.
Each round SIGKILLs one instance; the agent restarts it (backoff), it loads for
--startup-delay, and the bench, polling every ~10 ms, timestamps:

  health  its own /health first answers 200 (polled directly on its port)
  conf    nginx.conf lists it without `down` (the agent writes it after `nginx -t` passed)
  workers a new nginx worker process exists (the reload that follows the new file)
  routed  a request sent through nginx is answered with its X-Fake-Engine header

and prints health->conf and health->routed per round, then median and max. Goal: <= 0.5 s median.

How "routed" is detected: one short request through nginx every ~10 ms. nginx's upstream
zone is not reused across reloads (open-source nginx), so after the reload that adds the
instance back every peer starts at 0 connections in the new workers and least_conn breaks the
tie in upstream order: the first request goes to the first server listed. Keeping the other
backends busy does not survive that reload, so by default the bench kills instance 0 (listed
first), which the new workers pick first: what is measured is then the time until nginx's
live config routes to it, plus <= 10 ms of polling. With --instance K (K > 0) the tie-break
adds up to K request periods (about K x 10 ms) of round-robin before a request reaches it.

Run: PYTHONPATH=agent .venv/bin/python perf/bench_ready_to_route.py [--rounds 7] [--instance 0] [--startup-delay 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

from host import BenchHost, health_ok, machine, request, workdir

PERIOD = 0.010
ROUND_TIMEOUT = 60.0


def one_round(host: BenchHost, number: int) -> dict[str, float]:
    address = host.backend(number)
    up_line = f"server {address} max_fails"
    pid = host.instance_pids()[number]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + ROUND_TIMEOUT
    # out of rotation first (the agent sees the dead unit at its next unit check)
    while up_line in host.nginx_conf():
        if time.monotonic() > deadline:
            raise SystemExit(f"instance {number} never left rotation\n{host.log_tail()}")
        time.sleep(PERIOD)
    left = time.monotonic()
    marks: dict[str, float] = {}
    requests = 0
    next_tick = time.monotonic()
    while "routed" not in marks:
        now = time.monotonic()
        if now > deadline:
            raise SystemExit(f"round timed out: {marks}\n{host.log_tail()}")
        if "health" not in marks and health_ok(address, timeout=0.2):
            marks["health"] = time.monotonic()
            workers = host.nginx_workers()
        if "health" in marks:
            if "conf" not in marks and up_line in host.nginx_conf():
                marks["conf"] = time.monotonic()
            if "conf" in marks and "workers" not in marks and host.nginx_workers() - workers:
                marks["workers"] = time.monotonic()
            status, backend = request(host.listen, max_tokens=1, timeout=5)
            requests += 1
            if status == 200 and backend == address:
                marks["routed"] = time.monotonic()
                marks.setdefault("conf", marks["routed"])
                marks.setdefault("workers", marks["routed"])
        next_tick += PERIOD
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return {
        "left": left - killed,
        "down": marks["health"] - killed,
        "conf": marks["conf"] - marks["health"],
        "workers": marks["workers"] - marks["health"],
        "routed": marks["routed"] - marks["health"],
        "requests": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--instance", type=int, default=0, help="instance to kill (0-63); 0 is listed first in the upstream"
    )
    parser.add_argument("--startup-delay", type=float, default=1.0, help="fake engine load time, seconds")
    args = parser.parse_args()
    with workdir() as tmp:
        host = BenchHost(tmp, compute="CPX", memory="NPS4", delay=args.startup_delay)
        try:
            host.start_agent()
            waited = host.wait_ready(64, timeout=300)
            print(f"{machine()}")
            print(
                f"64 instances ready in {waited:.1f} s; killing instance {args.instance} {args.rounds} times "
                f"(startup delay {args.startup_delay:g} s, health interval 2s, restart_backoff 1s)"
            )
            print(
                f"{'round':>5} {'left rotation':>14} {'kill->health':>13} {'health->conf':>13} {'->new workers':>14} {'health->routed':>15} {'requests':>9}"
            )
            results = []
            for index in range(args.rounds):
                host.wait_ready(64, timeout=120)
                time.sleep(0.5)
                r = one_round(host, args.instance)
                results.append(r)
                print(
                    f"{index + 1:>5} {r['left']:>12.3f} s {r['down']:>11.3f} s {r['conf']:>11.3f} s {r['workers']:>12.3f} s {r['routed']:>13.3f} s {r['requests']:>9}",
                    flush=True,
                )
            conf = [r["conf"] for r in results]
            workers = [r["workers"] for r in results]
            routed = [r["routed"] for r in results]
            print(f"health->conf    median {statistics.median(conf) * 1000:6.0f} ms  max {max(conf) * 1000:6.0f} ms")
            print(
                f"health->workers median {statistics.median(workers) * 1000:6.0f} ms  max {max(workers) * 1000:6.0f} ms"
            )
            print(
                f"health->routed  median {statistics.median(routed) * 1000:6.0f} ms  max {max(routed) * 1000:6.0f} ms   (goal: median <= 500 ms)"
            )
        finally:
            host.close()


if __name__ == "__main__":
    sys.exit(main())
