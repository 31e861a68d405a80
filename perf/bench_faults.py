"""Faults under load, as a client sees them: the process runner's table in docs/results/faults-*.md.

For each fault a fresh host of the issue's kind (perf/faults.py: 2 x MI300X in DPX/NPS2, 4
fake engines, the agent under the process runner, nginx; interval 1 s, timeout 1 s,
unhealthy_after 2), --clients closed-loop streaming clients through nginx for --seconds, the
fault injected --fault-at seconds in. Per request: start, end, instance, outcome; a failure
is excused only if it was in flight on the faulted instance at the fault, and nginx's 503 JSON
answer to a request started in a documented gap (repartition) is counted in a column of its
own. The hang is sampled --hangs times on one host (a random phase against the probe schedule).

The faults are written against a Target (what a runner's host offers the bench); this file's
is the process runner's, perf/bench_faults_systemd.py has the systemd one in nspawn and runs
the same FAULTS. Columns: requests, failed, excused, gap 503s, failed not excused; "out" is the
time from the fault to the instance marked down in nginx.conf (instance faults), or to the
recovery named in the notes. Loopback only, bounded: BENCH_DEADLINE for the whole run.

Run: .venv/bin/python perf/bench_faults.py [--clients 100] [--seconds 10] [--hangs 12] [--only NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faults as harness
from host import BENCH_PORTS, machine, workdir

from mipart.api.contract import Status
from mipart.nginx import procs as nginx_procs
from mipart.nginx.conf import generation_of
from mipart.sim.host import NOT_ANSWERING, SimulatedHost

# An injection returns (the fault, seconds until out of rotation or recovered, notes, an undo or None).
Injected = tuple[harness.Fault, float, str, Callable[[], None] | None]

BENCH_DEADLINE = 1800.0
POLL = 0.005
WAIT = 30.0
SERVING = re.compile(r"server \S+ max_fails=")  # an instance in rotation, in nginx.conf


class Target(Protocol):
    """A serving host as the faults see it, whatever runs it. Paths and PIDs are the bench's view."""

    listen: int  # nginx's port
    count: int  # instances it serves now
    run_dir: Path
    profile: Path

    def address(self, number: int) -> str: ...
    def numbers(self) -> list[int]: ...  # the instances it runs now (mipart's numbers: 8 x GPU + partition)
    def instance_pid(self, number: int) -> int: ...
    def master(self, front: bool = False) -> int | None: ...  # the back's nginx master, or the front's
    def nginx_conf(self) -> str: ...
    def status(self) -> Status | None: ...  # /v1/status, None while the agent does not answer
    def ready_events(self) -> int: ...  # agent.ready lines logged so far
    def stop_agent(self, sig: int) -> None: ...  # SIGTERM: a planned restart; SIGKILL: a crash; then back
    def reload(self) -> None: ...  # what an operator runs after editing the profile
    def write_profile(self, **changes) -> None: ...  # FakeEngineProfile fields
    def wait_ready(self, count: int, timeout: float) -> None: ...
    def problems(self) -> str: ...  # "" while the agent runs as it should


@dataclass
class ProcessTarget:
    """A SimulatedHost whose agent runs the process runner."""

    host: SimulatedHost
    count: int = harness.INSTANCES

    def __post_init__(self) -> None:
        self.listen, self.run_dir, self.profile = self.host.listen, self.host.run_dir, self.host.profile

    def address(self, number: int) -> str:
        return self.host.backend(number)

    def numbers(self) -> list[int]:
        return sorted(self.host.instance_pids())

    def instance_pid(self, number: int) -> int:
        return self.host.instance_pids()[number]

    def master(self, front: bool = False) -> int | None:
        found = nginx_procs.scan(self.run_dir / ("nginx-front" if front else "nginx")).masters
        return found[0] if found else None

    def nginx_conf(self) -> str:
        return self.host.nginx_conf()

    def status(self) -> Status | None:
        try:
            return self.host.api_read(Status, timeout=2)
        except NOT_ANSWERING:
            return None

    def ready_events(self) -> int:
        return self.host.log_text().count("event='agent.ready'")

    def stop_agent(self, sig: int) -> None:
        self.host.agent.send_signal(sig)
        self.host.agent.wait(timeout=30)
        self.host.start_agent()

    def reload(self) -> None:
        self.host.hup()

    def write_profile(self, **changes) -> None:
        self.host.write_profile(**changes)

    def wait_ready(self, count: int, timeout: float) -> None:
        self.host.wait_ready(count, timeout=timeout)

    def problems(self) -> str:
        code = self.host.agent.poll()
        return "" if code is None else f"AGENT EXITED ({code})"


def wait(predicate, what: str, timeout: float = WAIT) -> float:
    """Seconds until predicate() held (polled every POLL); SystemExit on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - started


def status_says(target: Target, fact: Callable[[Status], object]) -> bool:
    """Whether `fact` holds of the status; False while the agent does not answer."""
    status = target.status()
    return status is not None and bool(fact(status))


def nginx_current(target: Target) -> bool:
    """Both layers serve the config installed last, and no stray of either does."""
    return status_says(target, lambda s: s.nginx.current and s.nginx.front.current)


def settled(target: Target, timeout: float = 60) -> None:
    target.wait_ready(target.count, timeout)
    wait(lambda: nginx_current(target), "nginx serving the current config")
    time.sleep(0.5)


# -- the faults: each injects, then says how long until it was out of rotation (or recovered) ------------


def engine_signal(sig: int, label: str):
    def inject(target: Target) -> Injected:
        number = random.choice(target.numbers())
        pid = target.instance_pid(number)
        fault = harness.Fault(label, time.time(), target.address(number))
        os.kill(pid, sig)
        down = f"server {fault.instance} down;"
        out = wait(lambda: down in target.nginx_conf(), "the instance out of nginx.conf")

        def undo() -> None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

        return fault, out, f"instance {number} down in nginx.conf", undo

    return inject


def kill_master(front: bool):
    """The back's master (its strays hold the services' unix sockets) or the front's (the clients' connections)."""

    def inject(target: Target) -> Injected:
        old = target.master(front)
        fault = harness.Fault(f"{'front ' * front}nginx master SIGKILL", time.time())
        os.kill(old, signal.SIGKILL)
        out = wait(lambda: target.master(front) not in (None, old), "a new nginx master")
        wait(lambda: nginx_current(target), "status: nginx current")
        return fault, out, "a new master serving; status current", None

    return inject


def agent_restart(sig: int, label: str):
    def inject(target: Target) -> Injected:
        before = target.ready_events()
        fault = harness.Fault(label, time.time())
        target.stop_agent(sig)
        out = wait(lambda: target.ready_events() > before, "the new agent ready")
        return fault, out, "the new agent ready", None

    return inject


def nginx_dir_replaced(target: Target) -> Injected:
    run = target.run_dir
    fault = harness.Fault("run dir's nginx/ replaced by a file", time.time())
    shutil.move(run / "nginx", run / "nginx.moved")
    (run / "nginx").write_text("in the way\n")
    out = wait(lambda: status_says(target, lambda s: "nginx" in s.files_error), "the damage reported")

    def undo() -> None:
        (run / "nginx").unlink()
        shutil.move(run / "nginx.moved", run / "nginx")
        wait(lambda: status_says(target, lambda s: s.files_error == ""), "the error cleared", timeout=60)

    return fault, out, "reported in status (files_error), agent alive", undo


def run_deleted(target: Target) -> Injected:
    """The back's unix socket goes with the run dir: until a new back master binds it again the front
    answers its 503 JSON (docs/faults.md), a documented gap counted apart; it ends when the socket is back."""
    fault = harness.Fault("/run deleted (the agent's run dir)", time.time())
    shutil.rmtree(target.run_dir)
    out = wait(
        lambda: (target.run_dir / "nginx/nginx.conf").exists() and (target.run_dir / "instances/0.json").exists(),
        "files rewritten",
    )
    wait(lambda: any((target.run_dir / "nginx").glob("svc-*.sock")), "the back's socket bound again")
    fault = dataclasses.replace(fault, gap=(fault.at, time.time()))
    wait(lambda: nginx_current(target), "status: nginx current")
    gap = fault.gap[1] - fault.at if fault.gap else 0.0
    return fault, out, f"nginx.conf and specs rewritten, the back bound anew; the 503 JSON gap {gap:.2f} s", None


def bad_profile(target: Target) -> Injected:
    good = target.profile.read_text()
    fault = harness.Fault("bad profile + reload", time.time())
    target.profile.write_text(good.replace("version: 1", "version: 1\nservices: [", 1))
    target.reload()
    out = wait(lambda: status_says(target, lambda s: s.profile_error), "the bad profile reported")

    def undo() -> None:
        target.profile.write_text(good)
        target.reload()
        wait(lambda: status_says(target, lambda s: not s.profile_error), "the good profile taken back")

    return fault, out, "rejected, the last good one kept", undo


NOTICE = "1s"


def repartitioned(target: Target, compute: str, memory: str, count: int) -> tuple[float, float]:
    """Edit gpus: and reload; (wall clock when nginx served the first new instance, seconds until all were ready).

    The gap ends when nginx.conf has an instance in rotation and the agent reports that generation
    in force (nginx.serving_generation): polled, so the gap measured is longer by a poll at most."""

    def progress() -> tuple[str, str]:
        status = target.status()
        return (status.repartition.finished or "", status.repartition.error) if status else ("", "")

    def served() -> bool:
        finished, error = progress()
        if error and error != before[1]:
            raise SystemExit(f"the repartition to {compute}/{memory} failed: {error}")
        conf = target.nginx_conf()
        serving = status_says(target, lambda s: s.nginx.serving_generation == generation_of(conf))
        return finished != before[0] and bool(SERVING.search(conf)) and serving

    before = progress()
    started = time.monotonic()
    # The readiness notice before a driver reload (gpus.drain_notice, 10 s by default) is the fleet
    # balancer's time to stop sending; here the gap after it is measured, so the notice is short.
    target.write_profile(compute=compute, memory=memory, drain_notice=NOTICE)
    target.reload()
    wait(served, "an instance serving on the new layout", timeout=120)
    first = time.time()
    target.count = count
    target.wait_ready(count, 180)
    return first, time.monotonic() - started


def repartition(target: Target) -> Injected:
    """DPX/NPS2 -> CPX/NPS1 (4 -> 16 instances, a driver reload) under load; the way back is the undo, with no load left."""
    fault = harness.Fault("repartition while serving", time.time())
    first, out = repartitioned(target, "CPX", "NPS1", harness.INSTANCES * 4)
    fault = dataclasses.replace(fault, gap=(fault.at, first))
    return (
        fault,
        out,
        f"16 instances on CPX/NPS1; the 503 JSON gap {first - fault.at:.2f} s",
        lambda: repartitioned(target, "DPX", "NPS2", harness.INSTANCES),
    )


def after_agent_restart(target: Target) -> None:
    """Restart the agent first: the nginx that serves is then one the new agent adopted."""
    before = target.ready_events()
    target.stop_agent(signal.SIGTERM)
    wait(lambda: target.ready_events() > before, "the new agent ready")
    settled(target)


@dataclass(frozen=True)
class Case:
    label: str  # the table's words
    inject: Callable[[Target], Injected]
    prepare: Callable[[Target], None] | None = None


FAULTS = {
    "engine-500": Case("engine dies, port stays open (500s)", engine_signal(signal.SIGUSR1, "engine 500")),
    "nginx-master": Case("nginx master SIGKILL (the back)", kill_master(front=False)),
    "nginx-front-master": Case("front nginx master SIGKILL", kill_master(front=True)),
    "nginx-master-after-agent-restart": Case(
        "nginx master SIGKILL after an agent restart", kill_master(front=False), after_agent_restart
    ),
    "nginx-dir-file": Case("run dir's nginx/ replaced by a file", nginx_dir_replaced),
    "engine-kill": Case("engine SIGKILL", engine_signal(signal.SIGKILL, "engine SIGKILL")),
    "agent-term": Case("agent SIGTERM + restart", agent_restart(signal.SIGTERM, "agent SIGTERM")),
    "agent-kill": Case("agent SIGKILL + restart", agent_restart(signal.SIGKILL, "agent SIGKILL")),
    "run-deleted": Case("/run deleted (the agent's run dir)", run_deleted),
    "bad-profile": Case("bad profile + reload", bad_profile),
    "repartition": Case("repartition while serving (DPX/NPS2 -> CPX/NPS1)", repartition),
}
HANG = "hang"


def one_run(target: Target, tmp: Path, inject, args) -> tuple[harness.Fault, harness.Tally, float, str]:
    out_file = tmp / f"load-{time.monotonic_ns()}.json"
    load = harness.start_load(
        target.listen,
        out_file,
        clients=args.clients,
        seconds=args.seconds,
        think=args.think,
        max_tokens=args.max_tokens,
    )
    undo = None
    try:
        time.sleep(args.fault_at)
        fault, out, notes, undo = inject(target)
        records = harness.finish_load(load, out_file, args.seconds)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        if undo:
            undo()
    if problem := target.problems():
        notes += f"; {problem}"
    return fault, harness.tally(records, fault), out, notes


def run_case(target: Target, name: str, cases: dict[str, Case], tmp: Path, args) -> harness.Row:
    """One fault (or the hang samples) on a settled target."""
    if name == HANG:
        return run_hangs(target, tmp, args)
    case = cases[name]
    if case.prepare:
        case.prepare(target)
    fault, tally, out, notes = one_run(target, tmp, case.inject, args)
    return harness.Row(case.label, tally, [out], notes)


def run_hangs(target: Target, tmp: Path, args) -> harness.Row:
    total, outs = harness.Tally(), []
    inject = engine_signal(signal.SIGSTOP, "hang (SIGSTOP)")
    for _ in range(args.hangs):
        settled(target)
        args_phase = argparse.Namespace(
            **{**vars(args), "fault_at": args.fault_at + random.uniform(0, harness.INTERVAL)}
        )
        fault, tally, out, _ = one_run(target, tmp, inject, args_phase)
        outs.append(out)
        print(
            f"    hang sample {len(outs)}: {fault.instance} out in {out:.2f} s; {tally.requests} requests, {tally.failed} failed, "
            f"{tally.not_excused} not excused; loadavg {Path('/proc/loadavg').read_text().split()[0]}",
            flush=True,
        )
        total.add(tally)
    notes = (
        f"{args.hangs} samples; out median {statistics.median(outs):.2f} s, max {max(outs):.2f} s "
        f"(bound {harness.BOUND:g} s: {'met' if max(outs) <= harness.BOUND else 'MISSED'})"
    )
    return harness.Row("hang (SIGSTOP)", total, outs, notes)


def run_process(name: str, tmp: Path, args) -> harness.Row:
    """A fresh host per fault, under the process runner."""
    host = harness.fault_host(tmp / name, BENCH_PORTS)
    try:
        host.start_agent()
        target = ProcessTarget(host)
        settled(target)
        return run_case(target, name, FAULTS, tmp, args)
    finally:
        host.close()


def parser(names: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fault-at", type=float, default=4.0)
    p.add_argument("--think", type=float, default=0.5)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--hangs", type=int, default=12)
    p.add_argument("--only", choices=names, action="append")
    return p


def run_all(args, runner: str, run: Callable[[str], harness.Row], names: list[str]) -> list[harness.Row]:
    """Every fault asked for, each row printed as it comes, then the table; bounded by BENCH_DEADLINE."""
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"bench exceeded {BENCH_DEADLINE:g} s")))
    signal.alarm(int(BENCH_DEADLINE))
    print(machine())
    print(
        f"{args.clients} streaming clients ({args.max_tokens} tokens at 50 tokens/s, {args.think:g} s think), {args.seconds:g} s each, "
        f"fault at {args.fault_at:g} s; 4 instances, interval {harness.INTERVAL:g}s timeout {harness.TIMEOUT:g}s "
        f"unhealthy_after {harness.UNHEALTHY_AFTER}; {runner} runner"
    )
    rows = []
    for name in args.only or names:
        row = run(name)
        rows.append(row)
        t = row.tally
        print(
            f"{row.fault}: {t.requests} requests, {t.failed} failed, {t.excused} excused, {t.gap} gap 503s, {t.not_excused} not excused; "
            f"out {max(row.out):.2f} s; {row.notes}; loadavg {Path('/proc/loadavg').read_text().split()[0]}",
            flush=True,
        )
    harness.print_table(rows)
    print(machine())
    return rows


def main() -> int:
    names = [*FAULTS, HANG]
    args = parser(names).parse_args()
    with workdir() as tmp:
        run_all(args, "process", lambda name: run_process(name, tmp, args), names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
