"""The example figure of docs/bench.md: `mipart bench sweep` then `mipart bench compare -o`, as an operator runs them.

A simulated 2 x MI300X host in SPX/NPS1 (the operator's layout), the real agent under the
process runner, a real nginx and fake engines that each take at most --max-num-seqs streams
(so a layout with more instances holds more streams, and that is all the fake engine models of a
partition: no compute, no memory bandwidth). The real CLI sweeps SPX/NPS1 and DPX/NPS2, restores
SPX/NPS1, prints its table and verdict, and `compare` draws the PNG. The figures show what the
verbs print and draw. They are not a measurement of any GPU.

Run:  XDG_CACHE_HOME=/root/.cache/mipart-tests PYTHONPATH=agent .venv/bin/python perf/bench_sweep_figure.py -o docs/img/sweep-spx-vs-dpx.png
(XDG_CACHE_HOME only points at an existing guidellm venv; without it the first run installs one.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

SWEEP_DEADLINE = 1200.0  # the whole sweep, both layouts and the restore


def mipart(host: SimulatedHost, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mipart", *args],
        env={**os.environ, **host.env},
        capture_output=True,
        text=True,
        timeout=SWEEP_DEADLINE,
        cwd=host.work,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--concurrency", default="1,4,16,32,64")
    parser.add_argument("--duration", default="8")
    parser.add_argument("--max-num-seqs", default="8", help="streams each fake engine takes at once")
    args = parser.parse_args()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mipart-sweep-figure-"))
    profile = FakeEngineProfile(
        Ports.free(),
        compute="SPX",
        memory="NPS1",
        delay=0.3,
        tps=50,
        args=f'["--max-num-seqs", "{args.max_num_seqs}"]',
        interval="1s",
        timeout="500ms",
    )
    host = SimulatedHost(work, profile, gpus=2, expected=2)
    try:
        host.start_agent()
        host.wait_ready(2)
        started = time.monotonic()
        done = mipart(
            host,
            "bench",
            "sweep",
            "--profile",
            str(host.profile),
            "--layouts",
            "SPX/NPS1,DPX/NPS2",
            "--concurrency",
            args.concurrency,
            "--warmup",
            "2",
            "--duration",
            args.duration,
            "--prompt-tokens",
            "64",
            "--output-tokens",
            "64",
            "--no-progress",
            "--dir",
            str(work / "sweep"),
        )
        print(
            f"$ mipart bench sweep --layouts SPX/NPS1,DPX/NPS2 --concurrency {args.concurrency} --duration {args.duration} "
            f"({time.monotonic() - started:.0f} s, exit {done.returncode})"
        )
        print(done.stdout)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        files = [str(work / "sweep" / name) for name in ("SPX-NPS1.json", "DPX-NPS2.json")]
        drawn = mipart(host, "bench", "compare", *files, "-o", str(args.output.resolve()))
        print(f"$ mipart bench compare SPX-NPS1.json DPX-NPS2.json -o {args.output} (exit {drawn.returncode})")
        if drawn.returncode != 0:
            print(drawn.stderr[-3000:], file=sys.stderr)
        return drawn.returncode
    finally:
        host.close()


if __name__ == "__main__":
    sys.exit(main())
