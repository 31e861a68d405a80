"""Faults under load, as a client sees them: the table in docs/faults.md.

For each fault a fresh host of the issue's kind (bench/faults.py: 2 x MI300X in DPX/NPS2, 4
fake engines, the agent under the process runner, nginx; interval 1 s, timeout 1 s,
unhealthy_after 2), --clients closed-loop streaming clients through nginx for --seconds, the
fault injected --fault-at seconds in. Per request: start, end, instance, outcome; a failure
is excused only if it was in flight on the faulted instance at the fault. The hang is
sampled --hangs times on one host (a random phase against the probe schedule each time).

Columns: requests, failed, excused, failed not excused; "out" is the time from the fault to
the instance marked down in nginx.conf (instance faults), or to the recovery named in the
notes (nginx, agent and file faults). Loopback only, bounded: BENCH_DEADLINE for the whole run.

Run: .venv/bin/python bench/bench_faults.py [--clients 100] [--seconds 10] [--hangs 12] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faults as harness
from host import BENCH_PORTS, machine, workdir
from mipart.runners import nginx_procs
from mipart.sim.host import HostError

# An injection returns (the fault, seconds until out of rotation or recovered, notes, an undo or None).
Injected = tuple[harness.Fault, float, str, Callable[[], None] | None]

BENCH_DEADLINE = 1800.0
POLL = 0.005
WAIT = 30.0


@dataclass
class Row:
    fault: str
    tally: harness.Tally
    out: list[float]  # seconds, one per sample
    notes: str


def wait(predicate, what: str, timeout: float = WAIT) -> float:
    """Seconds until predicate() held (polled every POLL); SystemExit on timeout."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)
    return time.monotonic() - started


def master(host) -> int | None:
    found = nginx_procs.scan(host.run_dir / "nginx").masters
    return found[0] if found else None


def nginx_status(host) -> dict:
    """/v1/status, {} while the agent does not answer."""
    try:
        return host.api_get("/v1/status", timeout=2)
    except (OSError, ValueError, HostError):
        return {}


def address(host, number: int) -> str:
    return f"127.0.0.1:{host.base + number}"


def settled(host) -> None:
    host.wait_ready(timeout=60)
    wait(lambda: nginx_status(host).get("nginx", {}).get("current"), "nginx serving the current config")
    time.sleep(0.5)


# -- the faults: each injects, then says how long until it was out of rotation (or recovered) ------------


def engine_signal(sig: int, label: str):
    def inject(host) -> Injected:
        number = random.randrange(harness.INSTANCES)
        pid = host.instance_pids()[number]
        fault = harness.Fault(label, time.time(), address(host, number))
        os.kill(pid, sig)
        down = f"server {fault.instance} down;"
        out = wait(lambda: down in host.nginx_conf(), "the instance out of nginx.conf")

        def undo() -> None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return fault, out, f"instance {number} down in nginx.conf", undo
    return inject


def kill_master(host) -> Injected:
    old = master(host)
    fault = harness.Fault("nginx master SIGKILL", time.time())
    os.kill(old, signal.SIGKILL)
    out = wait(lambda: master(host) not in (None, old), "a new nginx master")
    wait(lambda: nginx_status(host).get("nginx", {}).get("current"), "status: nginx current")
    return fault, out, "a new master took over the sockets; status current", None


def agent_restart(sig: int, label: str):
    def inject(host) -> Injected:
        before = host.log_text().count("event='agent.ready'")
        fault = harness.Fault(label, time.time())
        host.agent.send_signal(sig)
        host.agent.wait(timeout=30)
        host.start_agent()
        out = wait(lambda: host.log_text().count("event='agent.ready'") > before, "the new agent ready")
        return fault, out, "the new agent ready", None
    return inject


def nginx_dir_replaced(host) -> Injected:
    run = host.run_dir
    fault = harness.Fault("run dir's nginx/ replaced by a file", time.time())
    shutil.move(run / "nginx", run / "nginx.moved")
    (run / "nginx").write_text("in the way\n")
    out = wait(lambda: "nginx" in nginx_status(host).get("files_error", ""), "the damage reported")

    def undo() -> None:
        (run / "nginx").unlink()
        shutil.move(run / "nginx.moved", run / "nginx")
        wait(lambda: nginx_status(host).get("files_error", "x") == "", "the error cleared", timeout=60)
    return fault, out, "reported in status (files_error), agent alive", undo


def run_deleted(host) -> Injected:
    fault = harness.Fault("/run deleted (the agent's run dir)", time.time())
    shutil.rmtree(host.run_dir)
    out = wait(lambda: (host.run_dir / "nginx/nginx.conf").exists() and (host.run_dir / "instances/0.json").exists(), "files rewritten")
    wait(lambda: nginx_status(host).get("nginx", {}).get("current"), "status: nginx current")
    return fault, out, "nginx.conf and specs rewritten; status current", None


def bad_profile(host) -> Injected:
    good = host.profile.read_text()
    fault = harness.Fault("bad profile + SIGHUP", time.time())
    host.profile.write_text(good.replace("version: 1", "version: 1\nservices: [", 1))
    host.hup()
    out = wait(lambda: nginx_status(host).get("profile_error"), "the bad profile reported")

    def undo() -> None:
        host.profile.write_text(good)
    return fault, out, "rejected, the last good one kept", undo


def after_agent_restart(host) -> None:
    """Restart the agent first: the nginx that serves is then one the new agent adopted."""
    before = host.log_text().count("event='agent.ready'")
    host.stop_agent()
    host.start_agent()
    wait(lambda: host.log_text().count("event='agent.ready'") > before, "the new agent ready")
    settled(host)


# name -> (the table's words, what to do first or None, the injection)
FAULTS = {
    "engine-500": ("engine dies, port stays open (500s)", None, engine_signal(signal.SIGUSR1, "engine 500")),
    "nginx-master": ("nginx master SIGKILL", None, kill_master),
    "nginx-master-after-agent-restart": ("nginx master SIGKILL after an agent restart", after_agent_restart, kill_master),
    "nginx-dir-file": ("run dir's nginx/ replaced by a file", None, nginx_dir_replaced),
    "engine-kill": ("engine SIGKILL", None, engine_signal(signal.SIGKILL, "engine SIGKILL")),
    "agent-term": ("agent SIGTERM + restart", None, agent_restart(signal.SIGTERM, "agent SIGTERM")),
    "agent-kill": ("agent SIGKILL + restart", None, agent_restart(signal.SIGKILL, "agent SIGKILL")),
    "run-deleted": ("/run deleted (the agent's run dir)", None, run_deleted),
    "bad-profile": ("bad profile + SIGHUP", None, bad_profile),
}


def one_run(host, tmp: Path, inject, args) -> tuple[harness.Fault, harness.Tally, float, str]:
    out_file = tmp / f"load-{time.monotonic_ns()}.json"
    load = harness.start_load(host.listen, out_file, clients=args.clients, seconds=args.seconds, think=args.think, max_tokens=args.max_tokens)
    undo = None
    try:
        time.sleep(args.fault_at)
        fault, out, notes, undo = inject(host)
        records = harness.finish_load(load, out_file, args.seconds)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        if undo:
            undo()
    if host.agent.poll() is not None:
        notes += f"; AGENT EXITED ({host.agent.returncode})"
    return fault, harness.tally(records, fault), out, notes


def run_fault(name: str, tmp: Path, args) -> Row:
    label, prepare, inject = FAULTS[name]
    host = harness.fault_host(tmp / name, BENCH_PORTS)
    try:
        host.start_agent()
        settled(host)
        if prepare:
            prepare(host)
        fault, tally, out, notes = one_run(host, tmp, inject, args)
        return Row(label, tally, [out], notes)
    finally:
        host.close()
        harness.end_nginx(host)  # after the agent: it would start nginx again


def run_hangs(tmp: Path, args) -> Row:
    host = harness.fault_host(tmp / "hang", BENCH_PORTS)
    total, outs = harness.Tally(), []
    inject = engine_signal(signal.SIGSTOP, "hang (SIGSTOP)")
    try:
        host.start_agent()
        for _ in range(args.hangs):
            settled(host)
            args_phase = argparse.Namespace(**{**vars(args), "fault_at": args.fault_at + random.uniform(0, harness.INTERVAL)})
            fault, tally, out, _ = one_run(host, tmp, inject, args_phase)
            outs.append(out)
            print(f"    hang sample {len(outs)}: {fault.instance} out in {out:.2f} s; {tally.requests} requests, {tally.failed} failed, "
                  f"{tally.not_excused} not excused; loadavg {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
            for key in ("requests", "failed", "excused"):
                setattr(total, key, getattr(total, key) + getattr(tally, key))
            total.kinds.update(tally.kinds)
            total.examples += tally.examples[: 5 - len(total.examples)]
        notes = (f"{args.hangs} samples; out median {statistics.median(outs):.2f} s, max {max(outs):.2f} s "
                 f"(bound {harness.BOUND:g} s: {'met' if max(outs) <= harness.BOUND else 'MISSED'})")
        return Row("hang (SIGSTOP)", total, outs, notes)
    finally:
        host.close()
        harness.end_nginx(host)


def print_table(rows: list[Row]) -> None:
    print("\n| fault | requests | failed | excused | failed, not excused | out / recovered | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        t = row.tally
        out = f"{max(row.out):.2f} s"
        print(f"| {row.fault} | {t.requests} | {t.failed} | {t.excused} | {t.not_excused} | {out} | {row.notes} |")
    for row in rows:
        for example in row.tally.examples:
            print(f"    {row.fault}: not excused (start - fault s, instance, outcome): {example}")
        if row.tally.kinds:
            print(f"    {row.fault}: failures by kind: {dict(row.tally.kinds)}")
    bad = sum(r.tally.not_excused for r in rows)
    print(f"\nfailed requests not excused: {bad} (goal 0: {'met' if bad == 0 else 'MISSED'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fault-at", type=float, default=4.0)
    parser.add_argument("--think", type=float, default=0.5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--hangs", type=int, default=12)
    parser.add_argument("--only", choices=[*FAULTS, "hang"], action="append")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit(f"bench exceeded {BENCH_DEADLINE:g} s")))
    signal.alarm(int(BENCH_DEADLINE))
    print(machine())
    print(f"{args.clients} streaming clients ({args.max_tokens} tokens at 50 tokens/s, {args.think:g} s think), {args.seconds:g} s each, "
          f"fault at {args.fault_at:g} s; 4 instances, interval {harness.INTERVAL:g}s timeout {harness.TIMEOUT:g}s "
          f"unhealthy_after {harness.UNHEALTHY_AFTER}; process runner")
    rows = []
    with workdir() as tmp:
        for name in args.only or [*FAULTS, "hang"]:
            row = run_hangs(tmp, args) if name == "hang" else run_fault(name, tmp, args)
            rows.append(row)
            t = row.tally
            print(f"{row.fault}: {t.requests} requests, {t.failed} failed, {t.excused} excused, {t.not_excused} not excused; "
                  f"out {max(row.out):.2f} s; {row.notes}", flush=True)
    print_table(rows)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
