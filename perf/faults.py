"""What a client sees while a fault is injected: a load client of its own, per-request records, the excused rule.

The host is the issue's: a simulated 2 x MI300X in DPX/NPS2 (4 logical GPUs), 4 fake engines,
the real agent under the process runner, the real nginx; health interval 1 s, timeout 1 s,
unhealthy_after 2. The client (`python perf/faults.py PORT OUT ...`, its own process so
the harness's work does not slow it) runs closed-loop streaming completions through nginx
and writes one record per request: start and end (wall clock), the instance that answered
(the fake engine's X-Fake-Engine header, "" when no answer came) and the outcome ("ok", or
what went wrong: an HTTP status, a stream cut or carrying an error event, a reset...).

A failed request is excused only when it was already in flight on the faulted instance at
the fault's time (started before, ended after, answered by that instance): no proxy can
save a stream whose server dies under it. nginx's 503 JSON answer to a request started in a
documented gap (a repartition's) is the designed outcome: counted in a column of its own.
Every other failure counts. Loopback only; every loop is bounded in count and time.

Used by perf/bench_faults.py and perf/bench_faults_systemd.py (the tables in docs/results/faults-*.md),
tests/nginx/test_fault_defects.py and tests/system/test_faults_systemd.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import finish_client

from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

MODEL = "test/fake-llm"
INTERVAL, TIMEOUT, UNHEALTHY_AFTER = 1.0, 1.0, 2
BOUND = INTERVAL * UNHEALTHY_AFTER + 0.5  # a hang leaves rotation within this (issue 13)
INSTANCES = 4
REQUEST_TIMEOUT = 30.0
OK = "ok"
GAP_ANSWER = "HTTP 503 ServiceUnavailable"  # nginx's JSON answer while no instance serves (docs/repartition.md)


@dataclass(frozen=True)
class Record:
    start: float
    end: float
    instance: str  # host:port of the engine that answered; "" when none did
    outcome: str  # OK, or what failed


@dataclass(frozen=True)
class Fault:
    name: str
    at: float  # wall clock
    instance: str = ""  # host:port of the faulted instance; "" for a fault of nginx, the agent or files
    gap: tuple[float, float] | None = None  # wall clock: a documented gap (repartition), answered GAP_ANSWER by design


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    excused: int = 0
    gap: int = 0  # GAP_ANSWER in the documented gap: the designed outcome, counted apart, never hidden
    examples: list[tuple[float, str, str]] = field(
        default_factory=list
    )  # (start - fault s, instance, outcome), not excused
    kinds: Counter = field(default_factory=Counter)

    @property
    def not_excused(self) -> int:
        return self.failed - self.excused - self.gap

    def add(self, other: Tally) -> None:
        """Sum of samples (the hang): counts add, examples up to 5 kept."""
        for key in ("requests", "failed", "excused", "gap"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.kinds.update(other.kinds)
        self.examples += other.examples[: 5 - len(self.examples)]


def excused(record: Record, fault: Fault) -> bool:
    return bool(fault.instance) and record.instance == fault.instance and record.start <= fault.at <= record.end


def in_gap(record: Record, fault: Fault) -> bool:
    """The designed answer of a documented gap: nginx's 503 JSON to a request started in it."""
    return fault.gap is not None and record.outcome == GAP_ANSWER and fault.gap[0] <= record.start <= fault.gap[1]


def tally(records: list[Record], fault: Fault) -> Tally:
    out = Tally(requests=len(records))
    for r in records:
        if r.outcome == OK:
            continue
        out.failed += 1
        out.kinds[r.outcome] += 1
        if excused(r, fault):
            out.excused += 1
        elif in_gap(r, fault):
            out.gap += 1
        elif len(out.examples) < 5:
            out.examples.append((round(r.start - fault.at, 3), r.instance, r.outcome))
    return out


@dataclass
class Row:
    fault: str
    tally: Tally
    out: list[float]  # seconds, one per sample
    notes: str


def print_table(rows: list[Row]) -> None:
    print(
        "\n| fault | requests | failed | excused | 503 JSON in the gap | failed, not excused | out / recovered | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        t = row.tally
        print(
            f"| {row.fault} | {t.requests} | {t.failed} | {t.excused} | {t.gap} | {t.not_excused} | {max(row.out):.2f} s | {row.notes} |"
        )
    for row in rows:
        for example in row.tally.examples:
            print(f"    {row.fault}: not excused (start - fault s, instance, outcome): {example}")
        if row.tally.kinds:
            print(f"    {row.fault}: failures by kind: {dict(row.tally.kinds)}")
    bad = sum(r.tally.not_excused for r in rows)
    print(f"\nfailed requests not excused: {bad} (goal 0: {'met' if bad == 0 else 'MISSED'})")


def fault_profile(ports: Ports, tps: float = 50, delay: float = 0.5, **more) -> FakeEngineProfile:
    """The issue's profile: DPX/NPS2, fake engines, interval 1 s, timeout 1 s, unhealthy_after 2 (whatever the runner)."""
    return FakeEngineProfile(
        ports,
        compute="DPX",
        memory="NPS2",
        model=MODEL,
        delay=delay,
        tps=tps,
        interval=f"{INTERVAL:g}s",
        timeout=f"{TIMEOUT:g}s",
        unhealthy_after=UNHEALTHY_AFTER,
        restart_backoff="500ms",
        **more,
    )


def fault_host(work: Path, ports: tuple[int, int], tps: float = 50, delay: float = 0.5) -> SimulatedHost:
    """The issue's host: 2 x MI300X in DPX/NPS2 (4 instances) serving fault_profile."""
    return SimulatedHost(work, fault_profile(Ports.free(*ports), tps, delay), gpus=2, expected=INSTANCES)


# -- the load client, in a process of its own --------------------------------------------------


def start_load(
    port: int,
    out: Path,
    clients: int = 100,
    seconds: float = 10.0,
    think: float = 0.5,
    max_tokens: int = 8,
    keepalive: bool = True,
) -> subprocess.Popen:
    """keepalive: each client reuses its connection (the front layer keeps it); else one connection per request."""
    argv = [sys.executable, __file__, str(port), str(out), str(clients), str(seconds), str(think), str(max_tokens)]
    return subprocess.Popen(argv + ["keepalive"] * keepalive, stdin=subprocess.DEVNULL)


def finish_load(load: subprocess.Popen, out: Path, seconds: float) -> list[Record]:
    finish_client(load, seconds + REQUEST_TIMEOUT + 30)
    return [Record(*row) for row in json.loads(out.read_text())]


async def _one(session, url: str, body: str) -> Record:
    import asyncio

    import aiohttp

    start, instance, outcome = time.time(), "", OK
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            instance = response.headers.get("X-Fake-Engine", "")
            if response.status != 200:
                body = await response.read()
                outcome = (
                    GAP_ANSWER
                    if response.status == 503 and b'"ServiceUnavailable"' in body
                    else f"HTTP {response.status}"
                )
            else:
                done = False
                async for line in response.content:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b'data: {"error"'):
                        outcome = "error event in the stream"
                if outcome == OK and not done:
                    outcome = "stream ended without [DONE]"
    except asyncio.TimeoutError:
        outcome = f"no end within {REQUEST_TIMEOUT:g}s"
    except aiohttp.ClientError as exc:
        outcome = exc.__class__.__name__
    return Record(start, time.time(), instance, outcome)


async def _client(session, url: str, body: str, until: float, think: float, records: list[Record]) -> None:
    import asyncio
    import random

    await asyncio.sleep(random.uniform(0, think))  # clients out of step: some in flight at every moment
    while time.monotonic() < until:
        records.append(await _one(session, url, body))
        await asyncio.sleep(think)


async def _load(
    port: int, out: Path, clients: int, seconds: float, think: float, max_tokens: int, keepalive: bool
) -> None:
    import asyncio

    import aiohttp

    body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": True})
    records: list[Record] = []
    until = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=not keepalive)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://127.0.0.1:{port}/v1/completions"
        await asyncio.wait_for(
            asyncio.gather(*(_client(session, url, body, until, think, records) for _ in range(clients))),
            seconds + REQUEST_TIMEOUT + 10,
        )
    out.write_text(json.dumps([[r.start, r.end, r.instance, r.outcome] for r in records]))


def main(argv: list[str]) -> int:
    import asyncio

    port, out, clients, seconds, think, max_tokens, *keepalive = argv
    asyncio.run(
        _load(
            int(port),
            Path(out),
            int(clients),
            float(seconds),
            float(think),
            int(max_tokens),
            keepalive == ["keepalive"],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
