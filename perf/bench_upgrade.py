"""Client-visible errors of a package upgrade (and downgrade) on a host serving 16 instances.

A booted nspawn machine (real systemd) serves 16 fake instances through mipart's nginx while a
client loop (tests/system/test_serving_systemd.Traffic: sequential completions to both services)
runs; the newer build is installed with apt, then the older one again. Prints requests, failures
and instance restarts per step. Goal: 0 failures, 0 instance restarts.

    .venv/bin/python perf/bench_upgrade.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent")]

from system.nspawn import Machine, build_deb  # noqa: E402
from system.test_packaging import NEXT, serve_16  # noqa: E402
from system.test_serving_systemd import Traffic, changed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="upgrade + downgrade pairs")
    args = parser.parse_args()
    signal.alarm(3600)
    with tempfile.TemporaryDirectory(prefix="mipart-bench-upgrade-") as tmp:
        tmp = Path(tmp)
        old = build_deb(tmp / "old")
        version = subprocess.run(
            ["dpkg-deb", "-f", str(old), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        new = build_deb(tmp / "new", version + NEXT)
        with Machine(tmp / "machine") as m:
            host = serve_16(m, old)
            print(f"{'step':10s} {'requests':>9s} {'failed':>7s} {'instance restarts':>18s} {'apt + agent back':>17s}")
            for _ in range(args.rounds):
                for label, deb, flags in (("upgrade", new, ""), ("downgrade", old, "--allow-downgrades")):
                    m.copy_in(deb, f"/var/tmp/{deb.name}")
                    before = host.units()
                    with Traffic(host) as traffic:
                        time.sleep(1)
                        start = time.monotonic()
                        m.run(f"cd /var/tmp && apt-get install -y -q {flags} ./{deb.name}", timeout=600)
                        host.wait_ready(timeout=120)
                        took = time.monotonic() - start
                        time.sleep(1)
                    restarts = len(changed(before, host.units()))
                    print(
                        f"{label:10s} {traffic.ok + len(traffic.failures):9d} {len(traffic.failures):7d} {restarts:18d} {took:15.1f} s",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
