"""Wall time of a profile rollout over the test fleet, next to the sum of the per-host apply times.

The system tier's rollout bed (tests/system/rollout_bed.py): three nspawn hosts with the .deb, two
simulated MI300Xs each (DPX, two fake engines per GPU that load in 1 s), reached over SSH, behind
HAProxy health-checking each host's readiness path, with a client loop through it. Each round runs the
collection's playbook (`ansible-playbook mipart.host.rollout`, waves 1 then 2) with a changed profile,
alternately:

- host-wide: the memory mode NPS1 <-> NPS2 (a simulated driver reload on every host; each host is
  drained, waits out gpus.drain_notice = 3 s, applies, is verified, undrained, and given 2 s to rejoin);
- rolling: GPU 1's compute mode DPX <-> SPX (per GPU, no drain).

Per round it prints the rollout's wall time (the whole ansible-playbook run, validation on every host
included), each host's apply time as mipart_apply reports it (`waited`: from the agent's reload until
the host serves the profile) and their sum, what a one-host-at-a-time loop over the applies alone
would take; and what the clients saw.

    .venv/bin/python perf/bench_fleet_rollout.py [--rounds 4]      # root; a few minutes
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent"), str(REPO / "perf")]

from ansible_tools import make_venv  # noqa: E402
from host import machine  # noqa: E402
from system.fleet import profile  # noqa: E402
from system.nspawn import build_deb  # noqa: E402
from system.rollout_bed import BASE, HOST_WIDE, ROLLING, RolloutBed, failed  # noqa: E402

APPLY = "Apply it and wait until the host serves it"
CHANGES = (("host-wide", HOST_WIDE), ("host-wide back", BASE), ("rolling", ROLLING), ("rolling back", BASE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rollouts, cycling through the changes above")
    args = parser.parse_args()
    signal.alarm(3600)  # the whole run is bounded
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory(prefix="mipart-bench-rollout-") as tmp:
        tmp = Path(tmp)
        deb = build_deb(tmp / "deb")
        ansible_bin = make_venv(tmp / "ansible")
        started = time.monotonic()
        with RolloutBed(tmp / "bed", deb, ansible_bin) as bed:
            print(f"fleet up in {time.monotonic() - started:.1f} s", flush=True)
            for i in range(args.rounds):
                label, gpus = CHANGES[i % len(CHANGES)]
                run, seen, _ = bed.rollout(profile(gpus=gpus))
                if run.done.returncode != 0:
                    raise SystemExit(f"round {i + 1} ({label}) failed:\n{run.output[-4000:]}")
                applies = {host: cases[0].result["waited"] for host, cases in sorted(run.task(APPLY).items())}
                rows.append((label, run.seconds, applies))
                print(
                    f"round {i + 1}: {label:15s} rollout {run.seconds:6.1f} s; apply per host "
                    + ", ".join(f"{h} {s:.1f} s" for h, s in applies.items())
                    + f"; sum {sum(applies.values()):.1f} s; clients: {failed(seen)} failed of {sum(seen.values())}",
                    flush=True,
                )
    print("\nmedians by change: rollout wall time | sum of per-host apply times")
    for label in dict.fromkeys(label for label, _, _ in rows):
        walls = [seconds for name, seconds, _ in rows if name == label]
        sums = [sum(applies.values()) for name, _, applies in rows if name == label]
        print(f"  {label:15s} {statistics.median(walls):6.1f} s | {statistics.median(sums):6.1f} s ({len(walls)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
