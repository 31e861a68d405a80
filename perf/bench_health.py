"""Health: how fast a hung instance leaves nginx, and what clients see during faults.

A simulated 8 x MI300X host (CPX/NPS4, 64 logical GPUs), the service restricted to
partitions 0-15 (16 fake engines), the real agent (`--runner process`) and the real nginx,
with the default health settings: interval 2s, timeout 1s, unhealthy_after 3.

(a) out of rotation: --repeats times, after a random 0-2 s pause (a random phase against the
    probe schedule) one instance's engine is SIGSTOPped (hung: its port still accepts
    connections, nothing answers). Polling every 10 ms, the bench timestamps

      degraded the agent's `instance.degraded` log line for it (first failed probe; its own timestamp)
      detect  the agent's `instance.unhealthy` log line for it (unhealthy_after failed probes)
      conf    nginx.conf has `server 127.0.0.1:PORT down;`
      reload  a new nginx worker exists (the master re-read the file: the HUP that followed)

    and afterwards sends 32 requests through nginx (8 at a time, 3 s timeout) to show none
    reaches the hung engine any more. Goal: fault -> reload <= interval x unhealthy_after + 0.5 s
    (6.5 s). The agent then restarts the instance; the next round waits for 16/16 ready.

(b) under load: --clients concurrent clients (a separate asyncio process, one POST
    /v1/completions of 5 tokens at 50 tokens/s, ~100 ms each, then --think seconds) through
    nginx for --load-seconds while one fault is injected --fault-at seconds in:

      hang     SIGSTOP one engine
      kill     SIGKILL one engine
      agent    SIGTERM the agent, wait for its exit, start it again
      none     no fault: the same load alone, for comparison (run first)

    For each: requests, failures, and the failures explained by the dead instance:
      in-flight  started before the fault, ended after it (in flight on it when it died)
      routed     started after the fault but before nginx reloaded without it (+0.1 s):
                 nginx could still pick the dead instance for them
    Anything else is "other". Goal: other = 0 (and 0 failures at all for the agent restart).

Run: .venv/bin/python perf/bench_health.py [--repeats 5] [--clients 300] [--think 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from common import finish_client
from host import BenchHost, machine, request, workdir

INSTANCES = 16
POLL = 0.010
ROUND_TIMEOUT = 60.0
BENCH_DEADLINE = 1800.0  # the whole run, whatever happens
INTERVAL, TIMEOUT, UNHEALTHY_AFTER = 2.0, 1.0, 3
GOAL = INTERVAL * UNHEALTHY_AFTER + 0.5

LOAD_CLIENT = r"""
import asyncio, json, sys, time
import aiohttp

async def client(session, url, until, results, think, body):
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                await r.read()
                results.append((started, time.monotonic(), r.status, r.headers.get("X-Fake-Engine", "")))
        except Exception as exc:
            results.append((started, time.monotonic(), 0, type(exc).__name__))
        await asyncio.sleep(think)

async def main(port, clients, seconds, think, out):
    until = time.monotonic() + seconds
    results = []
    body = json.dumps({"model": "test/fake-llm", "prompt": "hi", "max_tokens": 5})
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [client(session, f"http://127.0.0.1:{port}/v1/completions", until, results, think, body) for _ in range(clients)]
        await asyncio.wait_for(asyncio.gather(*tasks), seconds + 45)  # bounded: 30 s request timeout + slack
    with open(out, "w") as f:
        json.dump(results, f)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]))
"""


# -- the host -------------------------------------------------------------------------------


# The host's profile settings (FakeEngineProfile's fields): also bench_agent_systemd.py's, under systemd.
HOST_PROFILE = {
    "compute": "CPX",
    "memory": "NPS4",
    "delay": 1.0,
    "tps": 50,
    "interval": f"{INTERVAL:g}s",
    "timeout": f"{TIMEOUT:g}s",
    "unhealthy_after": UNHEALTHY_AFTER,
    "restart_backoff": "1s",
}


def make_host(tmp: Path, instances: int = INSTANCES) -> BenchHost:
    """This bench's host, with the default health settings and 50 tokens/s engines.

    Also used by bench_api.py and bench_agent_resources.py (64 instances: partitions all)."""
    partitions = "all" if instances == 64 else f"0-{instances - 1}"
    return BenchHost(tmp, partitions=partitions, **HOST_PROFILE)


def revision() -> str:
    """The commit the agent under test comes from, and whether agent/ has uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "agent"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "revision unknown"
    return f"agent from {head or 'unknown'}{' + uncommitted changes in agent/' if dirty else ''}"


def settle(host: BenchHost, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """16/16 ready, nginx serving, and no new nginx worker for `quiet` seconds (no reload pending)."""
    host.wait_ready(INSTANCES, timeout=timeout)
    deadline = time.monotonic() + timeout
    while request(host.listen, timeout=3)[0] != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"nginx not serving\n{host.log_tail()}")
        time.sleep(0.1)
    seen, calm_since = host.nginx_workers(), time.monotonic()
    while time.monotonic() - calm_since < quiet:
        if time.monotonic() > deadline:
            raise SystemExit("nginx workers never settled")
        now = host.nginx_workers()
        if now - seen:
            calm_since = time.monotonic()
        seen |= now
        time.sleep(0.05)


def wall_offset() -> float:
    """time.time() - time.monotonic(): turns the agent's log timestamps into monotonic time."""
    return time.time() - time.monotonic()


def log_events(host: BenchHost, event: str, unit: str) -> list[float]:
    """Monotonic times of the agent's `event` lines for `unit`."""
    offset, found = wall_offset(), []
    pattern = re.compile(rf"timestamp='([^']+)' level='\w+' event='{re.escape(event)}' unit='{re.escape(unit)}'")
    for line in host.log_tail(10**8).splitlines():
        match = pattern.search(line)
        if match:
            stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
            found.append(stamp - offset)
    return found


def watch_out(host: BenchHost, number: int, workers_before: set[int], fault_at: float) -> tuple[float, float]:
    """(conf, reload): monotonic times nginx.conf marked the instance down, and a new nginx worker existed after that."""
    down = f"server {host.backend(number)} down;"
    conf = reload = None
    deadline = fault_at + ROUND_TIMEOUT
    while reload is None:
        now = time.monotonic()
        if now > deadline:
            raise SystemExit(f"instance {number} not out of rotation after {ROUND_TIMEOUT}s\n{host.log_tail()}")
        if conf is None and down in host.nginx_conf():
            conf = now
        if conf is not None and host.nginx_workers() - workers_before:
            reload = time.monotonic()
        time.sleep(POLL)
    return conf, reload


def resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# -- (a) hung instance out of rotation ------------------------------------------------------------


def out_of_rotation(host: BenchHost, repeats: int) -> list[dict]:
    print(
        f"\n(a) hung instance (SIGSTOP) -> out of nginx rotation; {INSTANCES} instances, "
        f"interval {INTERVAL:g}s timeout {TIMEOUT:g}s unhealthy_after {UNHEALTHY_AFTER}"
    )
    print(
        f"{'#':>3} {'inst':>4} {'pause':>6} {'degraded':>8} {'detect':>8} {'conf':>8} {'reload':>8}   after: requests ok / hung-or-failed"
    )
    rows = []
    numbers = sorted(host.instance_pids())  # mipart's numbers: 8 x GPU + partition, with gaps
    victims = random.Random().sample(numbers, k=min(repeats, INSTANCES)) * (repeats // INSTANCES + 1)
    for index in range(repeats):
        settle(host)
        pause = random.uniform(0, INTERVAL)
        time.sleep(pause)
        number = victims[index]
        pid = host.instance_pids()[number]
        workers = host.nginx_workers()
        fault_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            conf, reload = watch_out(host, number, workers, fault_at)
            with ThreadPoolExecutor(8) as pool:
                after = list(pool.map(lambda _: request(host.listen, timeout=3), range(32)))
            detected = [
                t for t in log_events(host, "instance.unhealthy", f"mipart-vllm@{number}") if t >= fault_at - 0.05
            ]
            detect = detected[0] - fault_at if detected else float("nan")
            first = [t for t in log_events(host, "instance.degraded", f"mipart-vllm@{number}") if t >= fault_at - 0.05]
            degraded = first[0] - fault_at if first else float("nan")
            ok = sum(1 for status, _ in after if status == 200)
            on_victim = sum(1 for _, engine in after if engine == host.backend(number))
            row = {
                "instance": number,
                "pause": pause,
                "degraded": degraded,
                "detect": detect,
                "conf": conf - fault_at,
                "reload": reload - fault_at,
                "after_ok": ok,
                "after_bad": len(after) - ok,
                "after_on_victim": on_victim,
            }
            rows.append(row)
            print(
                f"{index + 1:>3} {number:>4} {pause:>4.2f} s {degraded:>6.2f} s {detect:>6.2f} s {row['conf']:>6.2f} s {row['reload']:>6.2f} s   {ok} / {len(after) - ok}",
                flush=True,
            )
            deadline = time.monotonic() + ROUND_TIMEOUT  # the agent restarts it: wait for a new process
            while host.instance_pids().get(number) in (None, pid):
                if time.monotonic() > deadline:
                    raise SystemExit(f"instance {number} was not restarted\n{host.log_tail()}")
                time.sleep(0.05)
        finally:
            resume(pid)
    reloads = [r["reload"] for r in rows]
    detects = [r["detect"] for r in rows]
    print(
        f"fault -> nginx reloaded without it: median {statistics.median(reloads):.2f} s, max {max(reloads):.2f} s "
        f"(goal <= {GOAL:g} s: {'met' if max(reloads) <= GOAL else 'MISSED'}); "
        f"fault -> agent detection median {statistics.median(detects):.2f} s, max {max(detects):.2f} s; "
        f"requests after the reload that hung or failed: {sum(r['after_bad'] for r in rows)} of {32 * len(rows)}"
    )
    return rows


# -- (b) client-visible errors under load ------------------------------------------------------------


def run_load(host: BenchHost, tmp: Path, clients: int, seconds: float, think: float) -> tuple[subprocess.Popen, Path]:
    script, out = tmp / "load.py", tmp / f"load-{time.monotonic_ns()}.json"
    script.write_text(LOAD_CLIENT)
    load = subprocess.Popen(
        [sys.executable, str(script), str(host.listen), str(clients), str(seconds), str(think), str(out)],
        stdin=subprocess.DEVNULL,
    )
    return load, out


def finish_load(load: subprocess.Popen, out: Path, seconds: float) -> list:
    finish_client(load, seconds + 90)
    return json.loads(out.read_text())


def fault_under_load(
    host: BenchHost, tmp: Path, kind: str, clients: int, seconds: float, think: float, fault_in: float
) -> dict:
    settle(host)
    number = random.choice(sorted(host.instance_pids()))
    pid = host.instance_pids()[number]
    workers = host.nginx_workers()
    master = host.nginx_master()
    load, out = run_load(host, tmp, clients, seconds, think)
    info: dict = {"fault": kind}
    stopped = []
    min_ready = INSTANCES
    try:
        time.sleep(fault_in)
        fault_at = time.monotonic()
        if kind == "hang":
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        elif kind == "kill":
            os.kill(pid, signal.SIGKILL)
        if kind == "none":
            out_at = fault_at
        elif kind in ("hang", "kill"):
            conf, reload = watch_out(host, number, workers, fault_at)
            info.update(instance=number, conf=conf - fault_at, reload=reload - fault_at)
            out_at = reload
        elif kind == "agent":
            before = host.log_tail(10**8).count("event='agent.ready'")
            host.stop_agent()
            stopped_at = time.monotonic()
            host.start_agent()
            deadline = time.monotonic() + ROUND_TIMEOUT
            while host.log_tail(10**8).count("event='agent.ready'") <= before:
                if time.monotonic() > deadline or host.agent.poll() is not None:
                    raise SystemExit(f"the new agent never got ready\n{host.log_tail()}")
                min_ready = min(min_ready, host.ready_line()[0])
                time.sleep(POLL)
            info.update(stop=stopped_at - fault_at, ready=time.monotonic() - stopped_at)
            out_at = fault_at  # no instance leaves: every failure is "other"
        while load.poll() is None:  # watch nginx.conf for the rest of the load
            if kind == "agent":
                min_ready = min(min_ready, host.ready_line()[0])
            time.sleep(0.05)
        results = finish_load(load, out, seconds)
    finally:
        for p in stopped:
            resume(p)
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
    inflight = routed = other = 0
    examples = []
    kinds: dict[str, int] = {}
    for started, ended, status, detail in results:
        if status == 200:
            continue
        what = str(status) if status else detail
        kinds[what] = kinds.get(what, 0) + 1
        if kind in ("hang", "kill") and started < fault_at <= ended:
            inflight += 1
        elif kind in ("hang", "kill") and fault_at <= started <= out_at + 0.1:
            routed += 1
        else:
            other += 1
            if len(examples) < 5:
                examples.append((round(started - fault_at, 3), status, detail))
    latencies = sorted(e - s for s, e, st, _ in results if st == 200)
    slow_starts = [s - fault_at for s, e, st, _ in results if st == 200 and e - s > 1.0]
    span = max(e for _, e, _, _ in results) - min(s for s, _, _, _ in results)
    info.update(
        requests=len(results),
        failed=sum(1 for r in results if r[2] != 200),
        inflight=inflight,
        routed=routed,
        other=other,
        examples=examples,
        kinds=kinds,
        rate=len(results) / span,
        p50=latencies[len(latencies) // 2],
        p99=latencies[int(len(latencies) * 0.99)],
        max=latencies[-1],
        slow=len(slow_starts),
        slow_window=(min(slow_starts), max(slow_starts)) if slow_starts else None,
        load=Path("/proc/loadavg").read_text().split()[0],
        min_ready=min_ready,
        same_master=host.nginx_master() == master,
    )
    return info


def under_load(host: BenchHost, tmp: Path, clients: int, seconds: float, think: float, fault_in: float) -> list[dict]:
    print(
        f"\n(b) faults under load: {clients} clients through nginx for {seconds:g} s each, fault at {fault_in:g} s "
        f"(5 tokens at 50 tokens/s per request, {think:g} s think time)"
    )
    print(
        f"{'fault':<16} {'requests':>8} {'req/s':>6} {'failed':>6} {'in-flight':>9} {'routed':>6} {'other':>5} "
        f"{'p50':>7} {'p99':>7} {'max':>7} {'>1s ok':>6}  out of rotation / notes"
    )
    rows = []
    for kind, label in (
        ("none", "none (control)"),
        ("hang", "hang (SIGSTOP)"),
        ("kill", "kill (SIGKILL)"),
        ("agent", "agent restart"),
    ):
        info = fault_under_load(host, tmp, kind, clients, seconds, think, fault_in)
        rows.append(info)
        if kind == "none":
            note = ""
        elif kind == "agent":
            note = (
                f"agent stop {info['stop']:.2f} s, start->agent.ready {info['ready']:.2f} s, "
                f"fewest ready in nginx.conf {info['min_ready']}/{INSTANCES}, nginx master unchanged {info['same_master']}"
            )
        else:
            note = (
                f"instance {info['instance']}: conf {info['conf']:.2f} s, reload {info['reload']:.2f} s after the fault"
            )
        print(
            f"{label:<16} {info['requests']:>8} {info['rate']:>6.0f} {info['failed']:>6} {info['inflight']:>9} {info['routed']:>6} "
            f"{info['other']:>5} {info['p50'] * 1000:>5.0f}ms {info['p99'] * 1000:>5.0f}ms {info['max']:>6.2f}s {info['slow']:>6}  {note}",
            flush=True,
        )
        if info["slow_window"]:
            print(
                f"    successes slower than 1 s started {info['slow_window'][0]:+.2f} .. {info['slow_window'][1]:+.2f} s from the fault "
                f"(1-min loadavg at the end: {info['load']})"
            )
        if info["kinds"]:
            print(f"    failures by status: {', '.join(f'{k} x{v}' for k, v in sorted(info['kinds'].items()))}")
        for example in info["examples"]:
            print(f"    other failure (start - fault s, status, detail): {example}")
    others = sum(r["other"] for r in rows)
    print(f"failures not explained by the dead instance: {others} (goal 0: {'met' if others == 0 else 'MISSED'})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--think", type=float, default=1.0, help="seconds each client waits between requests")
    parser.add_argument("--load-seconds", type=float, default=25.0)
    parser.add_argument("--fault-at", type=float, default=6.0)
    parser.add_argument("--skip", choices=("a", "b"), help="skip one part")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"bench exceeded {BENCH_DEADLINE:g} s")))
    signal.alarm(int(BENCH_DEADLINE))
    print(machine())
    print(revision())
    with workdir() as tmp:
        host = make_host(tmp)
        try:
            host.start_agent()
            settle(host, timeout=180)
            if args.skip != "a":
                out_of_rotation(host, args.repeats)
            if args.skip != "b":
                under_load(host, tmp, args.clients, args.load_seconds, args.think, args.fault_at)
        finally:
            host.close()
    print(machine())


if __name__ == "__main__":
    sys.exit(main())
