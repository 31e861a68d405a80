"""Boot to serving of a baked image: a mkosi image with mipart and 16 fake instances, booted in nspawn.

Against the same image booted with mipart's units masked ("no services"): the difference is
what mipart adds to a fleet host's boot (partitioning with one simulated driver reload, the
agent, 16 servers, nginx). The image is baked once with packaging/bake-image; every boot runs
on its own overlay copy. It reuses the system tier's nspawn driver (tests/system/nspawn.py),
the one piece of the test suite a benchmark takes: it is how we boot a real systemd here.

    .venv/bin/python perf/bench_image_boot.py [--rounds 3]
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
sys.path[:0] = [str(REPO / "tests"), str(REPO / "agent")]

from system.nspawn import Machine, build_deb  # noqa: E402
from system.test_image import bake, prepare_first_boot  # noqa: E402
from system.test_serving_systemd import Host  # noqa: E402


def boot_once(image: Path, workdir: Path, host: Host, serve: bool) -> float:
    """Seconds from starting systemd-nspawn to serving (or, masked, to a finished boot)."""
    with Machine(workdir, base=image, boot_timeout=300) as m:
        host.m = m
        prepare_first_boot(m)
        if not serve:
            m.pre_boot(lambda mm: mm.offline("systemctl mask -q mipart-partition.service mipart-agent.service"))
        start = time.monotonic()
        m.boot()  # returns once systemd reports running or degraded
        if serve:
            host.wait_ready(timeout=300)
            while host.request("code")[0] != 200:
                time.sleep(0.05)
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    signal.alarm(3600)  # the whole run is bounded
    with tempfile.TemporaryDirectory(prefix="mipart-bench-image-") as tmp:
        tmp = Path(tmp)
        deb = build_deb(tmp / "deb")
        host = Host(None, code_partitions="16-17,24-25,32-33,40-41,48-49,56-57")
        t0 = time.monotonic()
        image = bake(deb, host.profile_text(), tmp / "bake" / "image")
        print(f"bake (mkosi, bookworm, packages cached): {time.monotonic() - t0:.1f} s")
        figures: dict[str, list[float]] = {"no services": [], "mipart, 16 instances": []}
        for i in range(args.rounds):
            for label, serve in (("no services", False), ("mipart, 16 instances", True)):
                seconds = boot_once(image, tmp / f"m{i}{int(serve)}", host, serve)
                figures[label].append(seconds)
                print(f"round {i + 1}: {label:22s} {seconds:6.2f} s", flush=True)
    base, full = (statistics.median(figures[k]) for k in figures)
    print(
        f"\nmedians over {args.rounds} rounds: boot {base:.2f} s; boot to 16 instances serving {full:.2f} s "
        f"(+{full - base:.2f} s, x{full / base:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
