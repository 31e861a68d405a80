"""`mipart validate` and `mipart partition plan` start-up cost on a 64-logical-GPU simulated host.

Prints medians against a bare `python -c pass`, interleaved so machine noise hits all alike.
Goal (issue 2): validate within 150 ms of bare interpreter start.
Run: .venv/bin/python perf/bench_cli.py [ROUNDS]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import ENV, REPO, median_ms, mipart_argv, wall

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 21


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "sim"
        wall(
            mipart_argv(
                "sim", "create", str(sim), "--model", "mi300x", "--gpus", "8", "--compute", "CPX", "--memory", "NPS4"
            )
        )
        env = {**ENV, "MIPART_SYSFS_ROOT": str(sim)}
        profile = REPO / "etc/mipart/profile.yaml"
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "mipart validate": mipart_argv("validate", str(profile)),
            "mipart partition plan": mipart_argv("partition", "plan", "--profile", str(profile)),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(ROUNDS):
            for name, argv in cases.items():
                samples[name].append(wall(argv, env=env))
    base = median_ms(samples["python -c pass"])
    print(f"rounds={ROUNDS} host=8 x MI300X CPX/NPS4 (64 logical GPUs) python={sys.version.split()[0]}")
    for name, values in samples.items():
        value = median_ms(values)
        print(f"{name:24s} median {value:7.1f} ms   (+{value - base:6.1f} ms over bare interpreter)")


if __name__ == "__main__":
    main()
